"""det-run's threaded pipeline vs the model alone, and vs the sum of its stages with Deep SORT.

Three runs on the first ``--frames`` frames of the video, same ONNX artifact, CPU:

1. model only: :class:`det_toolkit.runtime.predictor.Predictor` (letterbox + ONNX Runtime + filtering) on
   frames decoded beforehand -> model FPS;
2. pipeline without tracking (decode, detect, draw + encode mp4 in threads) -> end-to-end FPS,
   target >= 0.85x the model FPS;
3. pipeline with Deep SORT (ONNX embedder) -> end-to-end FPS, target >= 0.85x of
   1 / (sum of the measured per-frame stage times).

Every figure is printed with per-stage ms (means after :data:`det_toolkit.runtime.pipeline.WARMUP_FRAMES`
warm-up frames), plus the embedder's batched cost per crop. Without ``--weights`` a random-head
detector and the Deep SORT embedder are exported first (needs torch; cached in the temp dir).

    python -m det_toolkit.benchmarks.pipeline_bench --frames 60
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from det_toolkit.benchmarks.common import VTEST, read_frames
from det_toolkit.runtime.backends import load_backend
from det_toolkit.runtime.embedder import EMBEDDER_FILENAME, OnnxEmbedder
from det_toolkit.runtime.pipeline import WARMUP_FRAMES, run_pipeline
from det_toolkit.runtime.predictor import Predictor
from det_toolkit.runtime.sources import open_source
from det_toolkit.runtime.tracking import DEFAULT_TRACKER_CONFIG, Tracker, TrackerConfig
from det_toolkit.runtime.writers import RunOutputs


def stages(summary: dict) -> str:
    return ", ".join(f"{k} {v:.1f}" for k, v in summary["mean_ms"].items() if v)


def pipeline(weights: Path, frames: int, conf: float, tracker: Tracker | None, out: Path) -> dict:
    src = open_source(VTEST)
    predictor = Predictor(load_backend(weights, "cpu"), conf)
    try:
        with RunOutputs(out, src.info, predictor.backend.meta.class_names, track=tracker is not None,
                        save=True) as outputs:
            return run_pipeline(src, predictor, tracker, outputs, frames, progress=False)
    finally:
        src.close()


@click.command(context_settings={"show_default": True})
@click.option("--frames", default=60, type=click.IntRange(WARMUP_FRAMES + 2))
@click.option("--weights", default=None, type=click.Path(exists=True, path_type=Path),
              help="Detector ONNX (an embedder ONNX beside it for the tracked run); default: built.")
@click.option("--tracker", "tracker_cfg", default=DEFAULT_TRACKER_CONFIG, type=click.Path(exists=True, path_type=Path))
@click.option("--conf", default=0.25, type=float)
def main(frames: int, weights: Path | None, tracker_cfg: Path, conf: float) -> None:
    """Print model-only FPS, end-to-end FPS with and without Deep SORT, and per-stage ms."""
    if weights is None:
        from det_toolkit.benchmarks.artifacts import cached_detector
        from det_toolkit.export.embedder import export_embedder

        weights = cached_detector(256, 8)[1]
        if not (weights.parent / EMBEDDER_FILENAME).is_file():
            export_embedder(weights.parent / EMBEDDER_FILENAME, echo=lambda _: None)
    imgs = read_frames(VTEST, frames)
    predictor = Predictor(load_backend(weights, "cpu"), conf)
    ms = []
    for f in imgs:
        t = time.perf_counter()
        predictor(f)
        ms.append((time.perf_counter() - t) * 1e3)
    model_ms = sum(ms[WARMUP_FRAMES:]) / len(ms[WARMUP_FRAMES:])
    model_fps = 1e3 / model_ms
    h, w = imgs[0].shape[:2]
    click.echo(f"{VTEST.name} {w}x{h}, {frames} frames ({WARMUP_FRAMES} warm-up), {predictor.backend.name}, "
               f"imgsz {predictor.imgsz[0]}, conf {conf}")
    click.echo(f"model only (pre-decoded frames): {model_fps:.2f} FPS = {model_ms:.1f} ms/frame")

    with tempfile.TemporaryDirectory() as tmp:
        plain = pipeline(weights, frames, conf, None, Path(tmp))
        click.echo(f"pipeline, no tracking:           {plain['fps']:.2f} FPS = {plain['fps'] / model_fps:.2f}x "
                   f"model (target >= 0.85x); stage ms: {stages(plain)}")
        cfg = TrackerConfig.from_yaml(tracker_cfg)
        emb = OnnxEmbedder(weights.parent / EMBEDDER_FILENAME, None, cfg.embedder_input_size)
        (Path(tmp) / "t").mkdir()
        tracked = pipeline(weights, frames, conf, Tracker(emb, cfg), Path(tmp) / "t")
    total = sum(tracked["mean_ms"].values())
    click.echo(f"pipeline, Deep SORT:             {tracked['fps']:.2f} FPS = "
               f"{tracked['fps'] * total / 1e3:.2f}x of 1/(sum of stages) = {1e3 / total:.2f} FPS "
               f"(target >= 0.85x); stage ms: {stages(tracked)} (sum {total:.1f})")
    e = tracked["embedder"]
    click.echo(f"embedder {e['name']} at {e['input_size']} px: {e['ms_per_crop']:.2f} ms/crop "
               f"(batched per frame, {e['crops']} crops, {e['crops'] / frames:.1f} per frame)")


if __name__ == "__main__":
    main()
