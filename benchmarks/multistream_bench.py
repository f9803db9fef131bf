"""Many streams, one model: ``det-run V V V V`` (one process, frames of the 4 streams batched into one
detection call per step) vs 4 ``det-run V`` processes started together on the same machine.

Same frames for both (the first ``--frames`` frames of the video, 4 copies), CPU, same detector
exported three ways by ``export_onnx`` (what ``det-export`` writes): the dynamic single-image graph,
the static batch-1 graph and the static batch-``--streams`` graph (``det-export --batch N``). The
configurations, each with and without ``--save`` (annotated mp4), run interleaved ``--repeats``
times in one benchmark run (median kept), so that a machine whose load changes affects them alike
(each round also measures each graph's CPU floor per frame, :func:`cpu_floor`, from which the
ceiling of one process on this machine's cores is printed):

- ``procs``: ``--streams`` det-run processes, each on one copy, with the dynamic or static batch-1 graph;
- ``streams``: one det-run on all copies with the dynamic or static batch-1 graph (one forward pass
  per frame inside the step's call) or the static batch-N graph (one forward pass per step).

Aggregate FPS = all frames / wall-clock seconds from starting the process(es) to the last exit
(model loading and warm-up included, as a user starting them sees it). CPU ms/frame = user + system
CPU time of the process(es) per frame (start-up included): on a machine shared with other work the
wall-clock figures also measure how the scheduler shares the cores (more processes, more threads,
a larger share), the CPU time is what each frame costs. The ratio of the best ``streams`` row to the
best ``procs`` row is printed for both; issue 15's target is >= 1.3x aggregate FPS.

Detector: ``--ckpt`` (a det-toolkit ``.pt``, e.g. the trained nano model), else a randomly
initialised ``fasterrcnn_mini_darknet_nano_head`` at 320 px (the model has no pretrained weights;
seed 0, <= 20 boxes per image, needs torch); exports are cached in the temp dir.

    python -m det_toolkit.benchmarks.multistream_bench --ckpt runs/train/nano/weights/best.pt --frames 100
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

from det_toolkit.benchmarks.common import VTEST, read_frames
from det_toolkit.runtime.backends.onnx_backend import physical_cores
from det_toolkit.runtime.pipeline import WARMUP_FRAMES

#: Aggregate FPS of one multi-stream det-run / that of the det-run processes (issue 15).
TARGET = 1.3
NANO = "fasterrcnn_mini_darknet_nano_head"


def random_nano(folder: Path, imgsz: int = 320, max_det: int = 20) -> Path:
    """A randomly initialised nano detector checkpoint ``folder/nano.pt`` (seed 0, one class ``person``)."""
    import torch

    from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
    from det_toolkit.train.models import build_model

    torch.manual_seed(0)
    det = build_model(NANO, 1, weights="auto", box_detections_per_img=max_det)
    return save_atomic(make_checkpoint(det, ["person"], imgsz), folder / "nano.pt")


def export_graphs(ckpt: Path | None, streams: int) -> tuple[str, dict[str, Path]]:
    """The detector's three graphs (cached by checkpoint bytes and export code); returns its description
    and ``{"dynamic", "static1", "staticN"}`` paths."""
    from det_toolkit.benchmarks.artifacts import code_fingerprint
    from det_toolkit.export.onnx_export import export_onnx

    h = hashlib.sha256(code_fingerprint().encode())
    if ckpt is not None:
        h.update(ckpt.read_bytes())
    folder = Path(tempfile.gettempdir()) / f"det_toolkit_{getpass.getuser()}" / f"multistream_{h.hexdigest()[:12]}"
    folder.mkdir(parents=True, exist_ok=True)
    what = (f"{ckpt} (trained)" if ckpt is not None else
            f"randomly initialised {NANO} at 320 px (seed 0; no trained nano given)")
    if ckpt is None:
        ckpt = folder / "nano.pt"
        if not ckpt.is_file():
            random_nano(folder)
    frames = read_frames(VTEST, max(streams, 2), every=50)
    graphs = {"dynamic": folder / "dynamic.onnx", "static1": folder / "static_b1.onnx",
              "staticN": folder / f"static_b{streams}.onnx"}
    for key, path in graphs.items():
        if not path.is_file():
            batch = streams if key == "staticN" else 1
            export_onnx(ckpt, path, static=key != "dynamic", batch=batch, parity_images=frames, echo=lambda _: None)
    return what, graphs


def cpu_floor(graph: Path, streams: int, frames: int) -> dict[str, float]:
    """CPU ms per frame of the work every way of running the streams does, each part on one thread
    as a multi-stream det-run runs it: decoding a vtest frame (one decoder thread, as each stream's
    reader), letterboxing it (:meth:`Predictor.prepare`) and ``graph``'s forward pass with filtering
    (:meth:`Predictor.predict_prepared` on ``streams`` frames per call, one intra-op thread, as each
    detection call in flight), over the first ``min(frames, 100)`` frames after one warm-up call.

    Returns:
        ``{"decode", "prepare", "model"}`` in CPU ms per frame.
    """
    from det_toolkit.runtime.backends.onnx_backend import CPU_EP, OnnxBackend
    from det_toolkit.runtime.predictor import Predictor
    from det_toolkit.runtime.video_sources import open_video

    n = min(frames, 100)
    src = open_video(VTEST, decode_threads=1)
    it = iter(src)
    next(it)
    c0 = time.process_time()
    imgs = [next(it)[2] for _ in range(n)]
    decode = (time.process_time() - c0) * 1e3 / n
    src.close()
    predictor = Predictor(OnnxBackend(graph, [CPU_EP], threads=1))
    c0 = time.process_time()
    prepared = [predictor.prepare(img) for img in imgs]
    prepare = (time.process_time() - c0) * 1e3 / n
    predictor.predict_prepared(prepared[:streams])
    c0 = time.process_time()
    for i in range(0, n, streams):
        predictor.predict_prepared(prepared[i:i + streams])
    return {"decode": decode, "prepare": prepare, "model": (time.process_time() - c0) * 1e3 / n}


def det_run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "det_toolkit.runtime.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=os.environ.copy())


def run_config(kind: str, graph: Path, streams: int, frames: int, save: bool, out: Path) -> dict:
    """One configuration: ``{"frames", "wall_s", "fps" (frames / wall s), "cpu_ms" (CPU time of the
    processes, user + system, start-up included, per frame)}`` (+ ``mean_batch`` for one process)."""
    common = ["--weights", str(graph), "--max-frames", str(frames), "--device", "cpu", "--project", str(out),
              *([] if save else ["--no-save"])]
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    if kind == "procs":
        procs = [det_run([str(VTEST), *common, "--name", f"p{i}"]) for i in range(streams)]
        folders = [out / f"p{i}" for i in range(streams)]
    else:
        procs = [det_run([*[str(VTEST)] * streams, *common, "--name", "s"])]
        folders = [out / "s"]
    errs = [p.communicate()[1] for p in procs]
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime
    for p, e in zip(procs, errs):
        if p.returncode:
            raise click.ClickException(f"det-run failed ({p.returncode}): {e.decode()[-1500:]}")
    summaries = [json.loads((f / "summary.json").read_text()) for f in folders]
    total = sum(s["frames"] for s in summaries)
    row = {"frames": total, "wall_s": wall, "fps": total / wall, "cpu_ms": cpu_s * 1e3 / total}
    if kind == "streams":
        row["mean_batch"] = summaries[0]["mean_batch"]
    return row


@click.command(context_settings={"show_default": True})
@click.option("--ckpt", default=None, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Detector checkpoint (.pt); default: a randomly initialised nano at 320 px.")
@click.option("--streams", default=4, type=click.IntRange(2), help="Copies of the video (streams / processes).")
@click.option("--frames", default=100, type=click.IntRange(WARMUP_FRAMES + 2), help="Frames per stream.")
@click.option("--repeats", default=3, type=click.IntRange(1), help="Interleaved rounds; the median is kept.")
@click.option("--save-modes", type=click.Choice(["both", "no-save", "save"]), default="both",
              help="Runs without --save, with the annotated video, or both.")
def main(ckpt: Path | None, streams: int, frames: int, repeats: int, save_modes: str) -> None:
    """Print the aggregate FPS of one multi-stream det-run and of det-run processes, and their ratio."""
    if not VTEST.is_file():
        read_frames(VTEST, 1)  # raises with the hint
    what, graphs = export_graphs(ckpt, streams)
    configs = [("procs", "dynamic"), ("procs", "static1"), ("streams", "dynamic"), ("streams", "static1"),
               ("streams", "staticN")]
    saves = {"both": [False, True], "no-save": [False], "save": [True]}[save_modes]
    runs: dict[tuple, list[dict]] = {(k, g, s): [] for s in saves for k, g in configs}
    load0 = os.getloadavg()[0]
    floor: dict[str, list[dict[str, float]]] = {g: [] for g in graphs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for g in floor:
                floor[g].append(cpu_floor(graphs[g], streams, frames))
            for i, key in enumerate(runs):
                out = Path(tmp) / f"{r}_{i}"
                runs[key].append(run_config(key[0], graphs[key[1]], streams, frames, key[2], out))
    click.echo(f"{VTEST.name}: {streams} copies x {frames} frames, detector {what}; CPU, {os.cpu_count()} logical "
               f"CPUs, 1-min load average {load0:.1f} at the start and {os.getloadavg()[0]:.1f} at the end; "
               f"{repeats} interleaved rounds (median)")
    cores = physical_cores()
    label = {"dynamic": "dynamic graph", "static1": "static batch-1 graph", "staticN": f"static batch-{streams} graph"}
    med = {g: {k: statistics.median(r[k] for r in rows) for k in rows[0]} for g, rows in floor.items()}
    for g, m in med.items():
        click.echo(f"CPU floor, one thread each, {label[g]}: decode {m['decode']:.2f} + letterbox {m['prepare']:.2f} "
                   f"+ model {m['model']:.2f} ({streams} frames per call) = {sum(m.values()):.2f} ms/frame")
    click.echo(f"{'configuration':<66} {'save':>4} {'FPS':>7} {'CPU ms/frame':>12}  FPS per round")
    for save in saves:
        best: dict[tuple[str, str], float] = {}
        for kind, g in configs:
            rows = runs[(kind, g, save)]
            fps, cpu = statistics.median(r["fps"] for r in rows), statistics.median(r["cpu_ms"] for r in rows)
            name = (f"{streams} det-run processes, {label[g]}" if kind == "procs" else
                    f"1 det-run, {streams} streams, {label[g]} ({rows[0]['mean_batch']:.2f} frames/call)")
            click.echo(f"{name:<66} {'yes' if save else 'no':>4} {fps:>7.2f} {cpu:>12.1f}  "
                       + ", ".join(f"{r['fps']:.2f}" for r in rows))
            best[(kind, "fps")] = max(best.get((kind, "fps"), 0.0), fps)
            best[(kind, "cpu")] = min(best.get((kind, "cpu"), float("inf")), cpu)
        ratio = best[("streams", "fps")] / best[("procs", "fps")]
        cpu_ratio = best[("procs", "cpu")] / best[("streams", "cpu")]
        click.echo(f"  {'with' if save else 'without'} --save: aggregate FPS, best one-process row / best processes "
                   f"row = {ratio:.2f}x (target >= {TARGET}x: {'PASS' if ratio >= TARGET else 'FAIL'}); CPU time per "
                   f"frame, best processes row / best one-process row = {cpu_ratio:.2f}x")
        ceiling = cores * 1e3 / min(sum(m.values()) for m in med.values())
        click.echo(f"  ceiling of one process on {cores} cores: {cores} x 1000 / the lowest CPU floor = {ceiling:.1f} "
                   f"FPS = {ceiling / best[('procs', 'fps')]:.2f}x the best processes row (no start-up, hand-off, "
                   f"tracking{'' if not save else ' or encoding'}; the rows include start-up, so compare on long "
                   f"runs, e.g. --frames 795)")


if __name__ == "__main__":
    main()
