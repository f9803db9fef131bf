"""``det-bench``: every export format of a detector measured on the same images, as a report.

Per model and format (``torch``, ``onnx``, ``onnx-fp16``, ``onnx-int8``, ``onnx-static``, ``trt``) the report has:
file size (MiB), COCO mAP@[.5:.95] and AP50 on the data config's val split (through
:func:`det_toolkit.train.evaluate.evaluate_weights`, i.e. the runtime backends and letterbox, as ``det-eval``),
latency p50/p95 (ms per ``Backend.infer`` call on a batch of letterboxed val images, after warm-up;
the backends return host arrays, so GPU timings include the device synchronisation), throughput
(images/s at that batch), peak resident memory of a fresh process (MiB, ``VmHWM``) and the
end-to-end ``det-run`` FPS on a video clip (decode -> detect -> draw -> encode, from its
``summary.json``). Every format runs in its own subprocess, so memory figures do not mix.
Missing artifacts are exported first (beside the weights); a format that cannot run here is a
row with the reason. Reports: Markdown + JSON + a PNG of mAP vs latency, with machine information.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMATS = ("torch", "onnx", "onnx-fp16", "onnx-int8", "onnx-static", "trt")
SUFFIX = {"torch": ".pt", "onnx": ".onnx", "onnx-fp16": "_fp16.onnx", "onnx-int8": "_int8.onnx",
          "onnx-static": "_static.onnx", "trt": ".engine"}


class Unavailable(RuntimeError):
    """A format cannot be produced or run on this machine (the message is the reason)."""


@dataclass
class Row:
    """One model x format measurement; ``None`` where not measured. Times in ms, sizes in MiB."""

    model: str
    format: str
    status: str = "ok"
    note: str = ""
    path: str = ""
    size_mib: float | None = None
    params_m: float | None = None
    gflops: float | None = None
    map: float | None = None
    ap50: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    throughput: float | None = None
    batch: int = 1
    peak_rss_mib: float | None = None
    video_fps: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def artifact(fmt: str, weights: Path, imgsz: int | None, batch: int,
             echo: Callable[[str], None] = print) -> Path:
    """Path of ``weights``' artifact in format ``fmt``, exported (beside ``weights``) if missing.

    Raises:
        Unavailable: TensorRT missing for ``trt``; an export failing its checks (the reason).
    """
    if fmt == "torch":
        return weights
    size = f"_{imgsz}" if imgsz else ""
    stem = weights.with_name(weights.stem + size)
    if fmt == "trt":
        from det_toolkit.export.trt_build import TrtBuildError, require_tensorrt

        try:
            require_tensorrt()
        except TrtBuildError as e:
            raise Unavailable(str(e).split(";")[0]) from e
    from det_toolkit.export.fp16 import export_fp16
    from det_toolkit.export.onnx_export import export_onnx
    hw = (imgsz, imgsz) if imgsz else None
    from det_toolkit.export.parity import read_image, val_image_paths
    from det_toolkit.train.checkpoint import load_checkpoint

    # exports made here verify parity on up to 50 val images, as det-export does
    imgs = [read_image(p) for p in val_image_paths(load_checkpoint(weights).get("data") or {})[:50]] or None
    try:
        if fmt == "onnx":
            p = Path(f"{stem}.onnx")
            return p if p.is_file() else export_onnx(weights, p, imgsz=hw, parity_images=imgs, echo=echo)
        static = Path(f"{stem}_b{batch}_static.onnx")
        if not static.is_file() and fmt in ("onnx-static", "onnx-fp16", "onnx-int8", "trt"):
            export_onnx(weights, static, imgsz=hw, static=True, batch=batch, parity_images=imgs, echo=echo)
        if fmt == "onnx-static":
            return static
        if fmt == "onnx-fp16":
            src = static  # FP16 variant of the static graph (the dynamic one has If subgraphs)
            p = src.with_name(f"{src.stem}_fp16.onnx")
            if not p.is_file():  # gate off: the measured FP16 match rate (and pass/fail) is reported
                from det_toolkit.export.parity import synthetic_images

                export_fp16(src, p, images=imgs or synthetic_images(), min_match=0.0, echo=echo)
            return p
        if fmt == "onnx-int8":  # INT8 (QDQ) variant of the static graph, as det-export --batch N --int8
            p = static.with_name(f"{static.stem}_int8.onnx")
            if not p.is_file():  # gate off: the measured INT8 match rate (and pass/fail) is reported
                from det_toolkit.export.int8 import calibration_images, export_int8
                from det_toolkit.export.parity import synthetic_images

                calib, source = calibration_images(load_checkpoint(weights), echo=echo)
                export_int8(static, p, calib_images=calib, calib_source=source,
                            parity_images=imgs or synthetic_images(), min_match=0.0, echo=echo)
            return p
        from det_toolkit.export.trt_build import build_engine

        engine = static.with_suffix(".engine")
        return engine if engine.is_file() else build_engine(static, engine, fp16=True, echo=echo)
    except Exception as e:
        raise Unavailable(f"export failed: {type(e).__name__}: {str(e)[:300]}") from e


def measure(path: str, data: str, batch: int, warmup: int, iters: int, device: str) -> dict[str, Any]:
    """Worker body (own process): latency, throughput, accuracy and peak RSS of one artifact."""
    import numpy as np

    from det_toolkit.runtime.backends import load_backend
    from det_toolkit.runtime.preprocess import letterbox, to_input
    from det_toolkit.train.config import load_data_config
    from det_toolkit.train.data.formats import read_split
    from det_toolkit.train.data.images import load_rgb
    from det_toolkit.train.evaluate import evaluate_weights

    backend = load_backend(path, device=device)
    samples = read_split(load_data_config(data), "val")[0]
    imgs = []  # the first `batch` val images that decode (the same decoder as training and det-eval)
    for s in samples:
        try:
            imgs.append(load_rgb(s.image))
        except OSError:
            continue
        if len(imgs) == batch:
            break
    if len(imgs) < batch:
        raise ValueError(f"{data}: fewer than {batch} decodable val images for the latency batch")
    x = np.concatenate([to_input(letterbox(im, backend.meta.imgsz, backend.meta.pad_value)[0]) for im in imgs])
    for _ in range(warmup):
        backend.infer(x)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        backend.infer(x)
        times.append((time.perf_counter() - t0) * 1e3)
    result, info = evaluate_weights(path, data, "val", 0.001, None, device)[:2]  # EvalOutput (result, info, ...)
    ms = np.asarray(times)
    return {"p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "throughput": float(len(x) * 1e3 / ms.mean()), "map": float(result.stats["mAP"]),
            "ap50": float(result.stats["AP50"]), "backend": backend.name,
            "eval_ms_per_image": float(info["ms_per_image"]),
            "peak_rss_mib": peak_rss_mib()}


def peak_rss_mib() -> float:
    """Peak resident memory of this process in MiB: ``VmHWM`` of ``/proc/self/status`` (Linux).

    Not ``getrusage(RUSAGE_SELF).ru_maxrss``: on Linux a forked child's memory map starts with its
    parent's high-water mark and ``execve`` keeps that peak (getrusage(2): usage is preserved across
    execve), so every worker started by a grown det-bench process reported the parent's peak
    (measured: 1564.4 MiB on six rows in a row). ``VmHWM`` belongs to the exec'd process's own map.
    ``ru_maxrss`` remains the fallback where ``/proc`` is unavailable.
    """
    import resource

    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


#: Environment of every measuring subprocess (a value already set in the environment wins).
#: ``OMP_WAIT_POLICY=PASSIVE``: PyTorch's OpenMP workers sleep instead of spin-waiting, as the ONNX
#: Runtime sessions of :mod:`det_toolkit.runtime.backends.onnx_backend` do (``session.intra_op.allow_spinning=0``).
#: With spinning, a CPU shared with another job slowed the PyTorch rows 10-20x (measured on this
#: 2-core machine beside a training run: 2.0-7.1 s instead of 0.44-0.51 s per 416 px forward of the
#: default model) while ONNX Runtime was unaffected, so the rows would not compare.
WORKER_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def _subprocess(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python ARGS`` with :data:`WORKER_ENV`, in this process's working directory (relative paths
    mean the same in both); the installed ``det_toolkit`` is imported there."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          env={**WORKER_ENV, **os.environ})


def video_fps(path: Path, video: Path, frames: int, device: str, workdir: Path) -> float:
    """End-to-end ``det-run`` FPS on the first ``frames`` frames of ``video`` (annotated video saved).

    Raises:
        RuntimeError: det-run failed (its output is in the message).
    """
    name = f"{path.name}-{time.time_ns()}"
    proc = _subprocess(["-m", "det_toolkit.runtime.cli", str(video), "--weights", str(path), "--device", device,
                        "--max-frames", str(frames), "--project", str(workdir), "--name", name,
                        "--conf", "0.25"], timeout=1800)
    summary = workdir / name / "summary.json"
    if proc.returncode != 0 or not summary.is_file():
        raise RuntimeError(f"det-run failed: {(proc.stdout + proc.stderr)[-500:]}")
    return float(json.loads(summary.read_text())["fps"])


def model_stats(weights: Path, imgsz: int | None) -> tuple[str, float, float]:
    """``(model name, parameters in millions, GFLOPs at imgsz)`` of a checkpoint."""
    from det_toolkit.train.checkpoint import load_checkpoint, model_from_checkpoint
    from det_toolkit.train.models.common import count_parameters, gflops

    ck = load_checkpoint(weights)
    model = model_from_checkpoint(ck)
    return ck["model"], count_parameters(model) / 1e6, gflops(model, imgsz or int(ck["imgsz"]))


def machine_info() -> dict[str, Any]:
    """CPU, GPU and library versions of this machine."""
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = {}
    for pkg in ("torch", "torchvision", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim",
                "onnxconverter-common", "numpy", "opencv-python", "tensorrt", "cuda-python"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    gpu = "none"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=False)
        gpu = out.stdout.strip() or gpu
    except (OSError, subprocess.SubprocessError):
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": gpu,
            "load_avg_1_5_15": [round(v, 2) for v in os.getloadavg()], "python": platform.python_version(),
            "platform": platform.platform(), "versions": versions,
            "worker_env": {k: os.environ.get(k, v) for k, v in WORKER_ENV.items()},
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}


def run_bench(weights: list[Path], data: str, formats: list[str], imgsz: int | None = None,
              batch: int = 1, device: str = "cpu", warmup: int = 3, iters: int = 20,
              video: Path | None = None, video_frames: int = 30, workdir: Path = Path("runs/bench"),
              echo: Callable[[str], None] = print) -> list[Row]:
    """Measure every format of every checkpoint in ``weights`` (see the module docstring).

    Raises:
        ValueError: an unknown format.
    """
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"unknown formats {bad}; choose from {', '.join(FORMATS)}")
    rows: list[Row] = []
    for w in weights:
        name, params, gfl = model_stats(w, imgsz)
        for fmt in formats:
            row = Row(model=name, format=fmt, batch=batch, params_m=round(params, 3), gflops=round(gfl, 2))
            rows.append(row)
            echo(f"== {name} / {fmt}")
            try:
                path = artifact(fmt, w, imgsz, batch, echo)
            except Unavailable as e:
                row.status, row.note = "skipped", str(e)
                echo(f"   skipped: {e}")
                continue
            row.path, row.size_mib = str(path), round(path.stat().st_size / 2**20, 2)
            if fmt in ("onnx-fp16", "onnx-int8"):
                import onnx

                from det_toolkit.runtime.meta import META_KEY, ModelMeta

                props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
                meta = ModelMeta.from_json(props[META_KEY])
                if fmt == "onnx-fp16":
                    fp = meta.extra.get("fp16_parity", {})
                    row.extra.update({f"fp16_{k}": fp.get(k) for k in (
                        "match_rate", "n_matched", "n_ref_boxes", "criterion", "strict_match_rate", "n_images")})
                else:
                    q = meta.quantization or {}
                    row.extra.update({f"int8_{k}": q.get("parity", {}).get(k) for k in (
                        "match_rate", "n_matched", "n_ref_boxes", "criterion", "strict_match_rate", "n_images")})
                    row.extra.update(int8_scope=q.get("scope"), int8_calib_images=q.get("calib_images"))
            if fmt in ("onnx", "onnx-fp16", "torch") and batch > 1:
                row.note = "batch-1 graph: images run one by one"
            row.extra["load_avg_1m_before"] = round(os.getloadavg()[0], 2)  # other jobs on this CPU
            proc = _subprocess(["-m", "det_toolkit.benchmarks.bench", "--worker", json.dumps(
                [str(path), data, batch, warmup, iters, device])], timeout=3600)
            if proc.returncode != 0:
                row.status, row.note = "failed", (proc.stderr.strip().splitlines() or ["?"])[-1][:300]
                echo(f"   failed: {row.note}")
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            for k in ("p50_ms", "p95_ms", "throughput", "map", "ap50", "peak_rss_mib"):
                setattr(row, k, round(res[k], 4 if k in ("map", "ap50") else 2))
            row.extra.update(backend=res["backend"], eval_ms_per_image=round(res["eval_ms_per_image"], 2))
            if video is not None and video.is_file():
                try:
                    row.video_fps = round(video_fps(path, video, video_frames, device, workdir), 2)
                except RuntimeError as e:
                    row.note = (row.note + "; " if row.note else "") + str(e)[:200]
            echo(f"   mAP {row.map} AP50 {row.ap50} p50 {row.p50_ms} ms p95 {row.p95_ms} ms "
                 f"{row.throughput} img/s RSS {row.peak_rss_mib} MiB det-run {row.video_fps} FPS")
    return rows


def parity_note(extra: dict[str, Any], key: str, gate: float, strict: str) -> str:
    """The match-rate part of a reduced-precision row's note from its ``<key>_*`` extras (see
    :func:`run_bench`): rate against the FP32 graph (matched/compared on N val images), the criterion
    and the verdict against ``gate``, and the strict all-boxes figure (``strict`` names its criterion)."""
    rate = extra[f"{key}_match_rate"]
    note = f"{key.upper()} vs FP32 boxes matched {rate:.1%}"
    if extra.get(f"{key}_n_ref_boxes") is not None:
        note += f" ({extra.get(f'{key}_n_matched')}/{extra[f'{key}_n_ref_boxes']}"
        note += f" on {extra[f'{key}_n_images']} val images)" if extra.get(f"{key}_n_images") else ")"
    if extra.get(f"{key}_criterion"):
        note += f" [{extra[f'{key}_criterion']}], {'PASS' if rate >= gate else 'FAIL'} at {gate:.0%}"
    if extra.get(f"{key}_strict_match_rate") is not None:
        note += f"; all boxes at {strict}: {extra[f'{key}_strict_match_rate']:.1%}"
    return note


def fp16_note(extra: dict[str, Any]) -> str:
    """The report note of an ``onnx-fp16`` row (:func:`parity_note` against the 98% FP16 gate)."""
    from det_toolkit.export.fp16 import FP16_MIN_MATCH

    return parity_note(extra, "fp16", FP16_MIN_MATCH, "|score diff| <= 0.01")


def int8_note(extra: dict[str, Any]) -> str:
    """The report note of an ``onnx-int8`` row (:func:`parity_note` against det-export's INT8 gate),
    plus the scope and calibration."""
    from det_toolkit.export.int8 import INT8_MIN_MATCH

    note = parity_note(extra, "int8", INT8_MIN_MATCH, "IoU >= 0.9, |score diff| <= 0.01")
    if extra.get("int8_scope"):
        note += f"; scope {extra['int8_scope']}, {extra.get('int8_calib_images')} calibration images"
    return note


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) and v < 1 else f"{v}"


def write_report(rows: list[Row], info: dict[str, Any], out_dir: Path, name: str,
                 command: str = "") -> dict[str, Path]:
    """Write ``<name>.md``, ``<name>.json`` and ``<name>.png`` (mAP vs p50 latency) to ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {k: out_dir / f"{name}.{k}" for k in ("md", "json", "png")}
    paths["json"].write_text(json.dumps({"machine": info, "command": command,
                                         "rows": [asdict(r) for r in rows]}, indent=2))
    head = ("| model | format | size MiB | params M | GFLOPs | mAP | AP50 | p50 ms | p95 ms | "
            "img/s | batch | peak RSS MiB | det-run FPS | note |")
    lines = [f"# det-bench report ({info['date_utc']} UTC)", "",
             (f"- CPU: {info['cpu']} ({info['cpu_count']} logical cores, load average "
              f"{info.get('load_avg_1_5_15', '?')} when the report was written); GPU: {info['gpu']}"),
             f"- Python {info['python']}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
             *([f"- command: `{command}`"] if command else []),
             *([f"- measuring processes: {' '.join(f'{k}={v}' for k, v in info['worker_env'].items())}"]
               if info.get("worker_env") else []), "", head,
             "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        note = r.note if r.status == "ok" else f"{r.status}: {r.note}"
        if r.extra.get("fp16_match_rate") is not None:
            note = fp16_note(r.extra) + (f"; {note}" if note else "")
        if r.extra.get("int8_match_rate") is not None:
            note = int8_note(r.extra) + (f"; {note}" if note else "")
        note = note.replace("|", "\\|")  # a literal pipe inside a Markdown table cell
        lines.append("| " + " | ".join(_fmt(v) for v in (
            r.model, r.format, r.size_mib, r.params_m, r.gflops, r.map, r.ap50, r.p50_ms, r.p95_ms,
            r.throughput, r.batch, r.peak_rss_mib, r.video_fps)) + f" | {note} |")
    legend = ("Latency: one `Backend.infer` call on `batch` letterboxed val images after warm-up; "
              "mAP/AP50: COCO on the val split at conf 0.001 (det-eval); det-run FPS: decode to encode "
              "on the video clip; peak RSS: the measuring process. The JSON has the 1-minute load "
              "average before each row (`extra.load_avg_1m_before`): on a shared CPU, other jobs move "
              "the timings.")
    lines += ["", legend, f"![mAP vs latency]({paths['png'].name})", ""]
    paths["md"].write_text("\n".join(lines))
    _plot(rows, paths["png"])
    return paths


MARKERS = {"torch": "o", "onnx": "s", "onnx-static": "^", "onnx-fp16": "D", "onnx-int8": "v", "trt": "*"}


def _plot(rows: list[Row], path: Path) -> None:
    """mAP vs p50 latency: one colour per model (legend), one marker per format (labelled)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    models = list(dict.fromkeys(r.model for r in rows))
    colours = plt.get_cmap("tab10")
    for m, model in enumerate(models):
        done = [r for r in rows if r.model == model and r.p50_ms is not None and r.map is not None]
        for k, r in enumerate(sorted(done, key=lambda r: r.p50_ms)):
            ax.scatter(r.p50_ms, r.map, color=colours(m % 10), marker=MARKERS.get(r.format, "o"),
                       label=model if k == 0 else None)
            ax.annotate(r.format, (r.p50_ms, r.map), fontsize=7, textcoords="offset points",
                        xytext=(5, 6 + 9 * (k % 3)))
    ax.margins(x=0.08, y=0.15)
    ax.set_xlabel("latency p50 (ms per batch)")
    ax.set_ylabel("mAP@[.5:.95] (val)")
    ax.set_title("accuracy vs latency")
    ax.grid(alpha=0.3)
    if models:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    print(json.dumps(measure(*json.loads(sys.argv[2]))))
