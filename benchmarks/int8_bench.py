"""INT8 vs FP32 detector graphs on street-video frames, interleaved in one run.

    python -m det_toolkit.benchmarks.int8_bench WEIGHTS [--imgsz 416] [--frames 100] [--calib-images 64]
        [--scope auto] [--method auto] [--profile]

Four ONNX Runtime CPU sessions of one checkpoint, opened with det-run's session options
(:func:`det_toolkit.runtime.backends.onnx_backend.create_session`): the FP32 static graph, its INT8
variant, the INT8 dynamic graph and the FP32 dynamic graph. Missing graphs are exported beside
WEIGHTS (``<stem>_<imgsz>_b1_static.onnx``, ``<stem>_<imgsz>.onnx`` and their ``_int8.onnx``,
det-bench's names; the INT8 ones by :func:`det_toolkit.export.int8.export_int8` on training images of
the checkpoint's dataset, gate on). Every frame of the video (``$DET_VIDEO``, default vtest.avi) is
letterboxed once (square ``imgsz``, as the parity checks) and run by the four sessions in turn, so
load changes on a shared CPU hit all of them alike; the first ``--warmup`` frames are not timed.
Prints per graph the median and 95th percentile latency (ms per ``session.run``), the speed-up of
the median over the FP32 static graph's, and the boxes each INT8 graph shares with its FP32 graph
on these frames (score >= 0.25, same class, IoU >= 0.5). ``--profile`` adds ONNX Runtime's
profile of the INT8 static graph summed by op type (where the time goes).
A figure printer, not a test.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np

from det_toolkit.benchmarks.common import VTEST, read_frames


def graphs(weights: Path, imgsz: int, calib_images: int, scope: str, method: str,
           echo: Callable[[str], None] = print) -> dict[str, Path]:
    """``{"fp32-static", "int8-static", "int8-dynamic", "fp32-dynamic"}`` graph paths of ``weights``
    at ``imgsz`` px, exported beside it when missing (see the module docstring).

    Raises:
        det_toolkit.export.parity.ParityError: an export or INT8 graph misses its parity gate.
        ValueError: the checkpoint's training images cannot be found for calibration.
    """
    from det_toolkit.export.int8 import calibration_images, export_int8
    from det_toolkit.export.onnx_export import export_onnx
    from det_toolkit.export.parity import default_parity_images
    from det_toolkit.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(weights)
    stem = weights.with_name(f"{weights.stem}_{imgsz}")
    fp32 = {"fp32-static": Path(f"{stem}_b1_static.onnx"), "fp32-dynamic": Path(f"{stem}.onnx")}
    val = calib = None
    out: dict[str, Path] = {}
    for kind, path in fp32.items():
        if not path.is_file():
            val = val or default_parity_images(ckpt, echo=echo)
            export_onnx(weights, path, imgsz=(imgsz, imgsz), static=kind == "fp32-static", parity_images=val,
                        echo=echo)
        q = path.with_name(f"{path.stem}_int8.onnx")
        if not q.is_file():
            val = val or default_parity_images(ckpt, echo=echo)
            calib = calib or calibration_images(ckpt, calib_images, echo=echo)
            export_int8(path, q, calib_images=calib[0], calib_source=calib[1], parity_images=val, scope=scope,
                        method=method, echo=echo)
        out[kind] = path
        out[kind.replace("fp32", "int8")] = q
    return {k: out[k] for k in ("fp32-static", "int8-static", "int8-dynamic", "fp32-dynamic")}


def _profile_by_op(sess: object, x: np.ndarray, input_name: str, runs: int = 5) -> list[tuple[str, float]]:
    """Time per op type (ms per run, descending) from an ONNX Runtime profile of ``runs`` calls."""
    for _ in range(runs):
        sess.run(None, {input_name: x})  # type: ignore[attr-defined]
    trace_path = Path(sess.end_profiling())  # type: ignore[attr-defined]
    trace = json.loads(trace_path.read_text())
    trace_path.unlink()
    per_op: dict[str, float] = {}
    for ev in trace:
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            op = ev.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0.0) + ev["dur"] / 1000 / runs
    return sorted(per_op.items(), key=lambda kv: -kv[1])


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("weights", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--imgsz", type=click.IntRange(32, 4096), default=416, show_default=True,
              help="square letterbox size (px) of every graph")
@click.option("--frames", type=click.IntRange(min=2), default=100, show_default=True, help="video frames timed")
@click.option("--warmup", type=click.IntRange(min=0), default=3, show_default=True, help="frames not timed")
@click.option("--video", type=click.Path(path_type=Path), default=VTEST, show_default=True)
@click.option("--calib-images", type=click.IntRange(min=1), default=64, show_default=True,
              help="training images calibrating INT8 graphs exported here")
@click.option("--scope", default="auto", show_default=True, help="INT8 scope of graphs exported here")
@click.option("--method", default="auto", show_default=True,
              help="INT8 calibration of graphs exported here (as det-export --calib-method)")
@click.option("--profile", is_flag=True, default=False, help="also print the INT8 static graph's time per op type")
def main(weights: Path, imgsz: int, frames: int, warmup: int, video: Path, calib_images: int, scope: str,
         method: str, profile: bool) -> None:
    """Median/p95 latency and speed-up of INT8 vs FP32 graphs of WEIGHTS on video frames."""
    import onnxruntime as ort

    from det_toolkit.export.parity import compare_detections, onnx_detections, parity_inputs
    from det_toolkit.runtime.backends.onnx_backend import create_session, physical_cores, providers_for
    from det_toolkit.runtime.meta import META_KEY, ModelMeta

    try:
        paths = graphs(weights, imgsz, calib_images, scope, method, echo=click.echo)
        clip = read_frames(video, frames + warmup)
    except (FileNotFoundError, ValueError, RuntimeError) as e:  # ParityError is a RuntimeError
        raise click.ClickException(str(e)) from e
    sessions = {k: create_session(p, providers_for("cpu")) for k, p in paths.items()}
    metas = {k: ModelMeta.from_json(s.get_modelmeta().custom_metadata_map[META_KEY]) for k, s in sessions.items()}
    xs = parity_inputs(clip, metas["fp32-static"])
    times: dict[str, list[float]] = {k: [] for k in sessions}
    dets: dict[str, list] = {k: [] for k in sessions}
    for i, x in enumerate(xs):
        for k, sess in sessions.items():
            t0 = time.perf_counter()
            d = onnx_detections(sess, metas[k], [x])[0]
            if i >= warmup:
                times[k].append(1000 * (time.perf_counter() - t0))
                dets[k].append(d)
    q = {k: metas[k].quantization or {} for k in sessions}
    click.echo(f"{weights} at {imgsz} px on {len(xs) - warmup} frames of {video} (+{warmup} warm-up), ONNX Runtime "
               f"{ort.__version__} CPU, {physical_cores()} intra-op threads, load average "
               f"{' '.join(f'{v:.2f}' for v in os.getloadavg())} (1/5/15 min) at the end")
    base = statistics.median(times["fp32-static"])
    click.echo(f"{'graph':<14}{'MiB':>7}{'median ms':>11}{'p95 ms':>9}{'speed-up':>10}  INT8 scope / boxes vs fp32")
    for k, ts in times.items():
        med, p95 = statistics.median(ts), float(np.percentile(ts, 95))
        note = ""
        if k.startswith("int8"):
            ref = k.replace("int8", "fp32")
            rep = compare_detections(dets[ref], dets[k], metas[ref], 0.5, 1.0, 0.0, 0.25, ("fp32", "int8"))
            note = (f"{q[k].get('scope')}, {q[k].get('calib_images')} calib images / {rep.n_matched}/"
                    f"{rep.n_ref_boxes} fp32 boxes matched ({rep.match_rate:.1%}, score >= 0.25, IoU >= 0.5)")
        click.echo(f"{k:<14}{paths[k].stat().st_size / 2**20:>7.1f}{med:>11.1f}{p95:>9.1f}{base / med:>9.2f}x  {note}")
    if profile:
        opts = ort.SessionOptions()
        opts.enable_profiling = True
        opts.profile_file_prefix = str(Path(tempfile.gettempdir()) / "int8_bench_profile")
        opts.intra_op_num_threads = physical_cores()
        for k in ("fp32-static", "int8-static"):
            sess = ort.InferenceSession(str(paths[k]), opts, providers=["CPUExecutionProvider"])
            top = _profile_by_op(sess, xs[0], metas[k].input_name)
            click.echo(f"{k} profile (ms per run by op type): "
                       + ", ".join(f"{op} {ms:.1f}" for op, ms in top[:10]))


if __name__ == "__main__":
    main()
