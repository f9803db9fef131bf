"""det-run's threaded pipeline vs the model alone, and with each tracker vs without tracking.

On the first ``--frames`` frames of the video, same ONNX artifact, CPU:

1. model only: :class:`det_toolkit.runtime.predictor.Predictor` (letterbox + ONNX Runtime + filtering) on
   frames decoded beforehand -> model FPS;
2. the pipeline (decode, detect + track, draw + encode mp4 in threads) without tracking and with
   each tracker of ``--trackers`` (names or settings YAMLs, as ``det-run --tracker`` takes them;
   ``SPEC@EMBEDDER.onnx`` runs Deep SORT with another embedder, e.g. the INT8 one),
   run interleaved ``--repeats`` times (none, tracker 1, tracker 2, none, ...) so that a machine
   whose load changes affects every configuration alike; the median FPS of each is compared with
   the pipeline without tracking. Targets: the pipeline >= 0.85x the model; ByteTrack >= 0.85x and
   Deep SORT >= 0.6x the pipeline without tracking.

Every figure is printed with per-stage ms (means after :data:`det_toolkit.runtime.pipeline.WARMUP_FRAMES`
warm-up frames), plus Deep SORT's embedder cost per crop and crops per frame.

3. frame-interleaved costs (``--interleaved``, the default): on the pre-decoded frames, each frame
   is detected once (timed) and then passed to every tracker in turn (each timed), so that load
   changes on a shared machine hit all of them within milliseconds of each other; the tracker's
   mean ms per frame is set against the detector's, and ``det / (det + tracking)`` estimates the
   FPS ratio of det-run, whose detection and tracking run one after the other in one thread. Without ``--weights``
a random-head detector and the Deep SORT embedder are exported first (needs torch; cached in the
temp dir).

    python -m det_toolkit.benchmarks.pipeline_bench --weights best.onnx --frames 120 \
        --trackers bytetrack,deepsort,deepsort@deepsort_embedder_int8.onnx
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click

from det_toolkit.benchmarks.common import VTEST, read_frames
from det_toolkit.runtime.api import open_embedder
from det_toolkit.runtime.backends import load_backend
from det_toolkit.runtime.embedder import EMBEDDER_FILENAME
from det_toolkit.runtime.pipeline import WARMUP_FRAMES, run_pipeline
from det_toolkit.runtime.predictor import Predictor
from det_toolkit.runtime.sources import open_source
from det_toolkit.runtime.trackers import AnyTrackerConfig, build_tracker, load_tracker_config
from det_toolkit.runtime.tracking import DeepSortTracker, Tracker, TrackerConfig
from det_toolkit.runtime.writers import RunOutputs

#: FPS with a tracker / FPS without tracking that each tracker should reach (issue 15).
TARGETS = {"bytetrack": 0.85, "deepsort": 0.6}


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


def make_tracker(cfg: AnyTrackerConfig, weights: Path, embedder: Path | None) -> Tracker:
    """A fresh tracker for one run (Deep SORT with the embedder ONNX, on the CPU)."""
    if isinstance(cfg, TrackerConfig):
        return build_tracker(cfg, open_embedder(weights, embedder, "cpu", cfg.embedder_input_size))
    return build_tracker(cfg)


def interleaved_costs(predictor: Predictor, imgs: list, trackers: dict[str, Tracker]) -> dict[str, float]:
    """Mean ms per frame after the warm-up frames: ``"detect"`` (letterbox + ONNX Runtime + filtering)
    and each of ``trackers`` (``update`` on the detections of the same frame), frame by frame in turn."""
    ms: dict[str, list[float]] = {"detect": [], **{k: [] for k in trackers}}
    for frame in imgs:
        t = time.perf_counter()
        dets = predictor(frame)
        ms["detect"].append((time.perf_counter() - t) * 1e3)
        for k, trk in trackers.items():
            t = time.perf_counter()
            trk.update(frame, dets)
            ms[k].append((time.perf_counter() - t) * 1e3)
    return {k: sum(v[WARMUP_FRAMES:]) / len(v[WARMUP_FRAMES:]) for k, v in ms.items()}


def parse_spec(entry: str) -> tuple[str, Path | None]:
    """``"deepsort@emb_int8.onnx"`` -> ``("deepsort", Path("emb_int8.onnx"))``; no ``@``: ``(entry, None)``.

    Raises:
        click.BadParameter: the embedder file after ``@`` does not exist.
    """
    spec, _, emb = entry.partition("@")
    if emb and not Path(emb).is_file():
        raise click.BadParameter(f"embedder not found: {emb}", param_hint="--trackers")
    return spec, Path(emb) if emb else None


@click.command(context_settings={"show_default": True})
@click.option("--frames", default=60, type=click.IntRange(WARMUP_FRAMES + 2))
@click.option("--weights", default=None, type=click.Path(exists=True, path_type=Path),
              help="Detector ONNX (Deep SORT's embedder ONNX beside it); default: built.")
@click.option("--embedder", default=None, type=click.Path(exists=True, path_type=Path),
              show_default=f"{EMBEDDER_FILENAME} beside --weights", help="Deep SORT's embedder ONNX.")
@click.option("--trackers", default="bytetrack,deepsort",
              help="Comma-separated trackers: names or settings YAMLs (as det-run --tracker); "
              "SPEC@EMBEDDER.onnx: Deep SORT with that embedder instead of --embedder.")
@click.option("--repeats", default=3, type=click.IntRange(0),
              help="Interleaved pipeline rounds; the median FPS is kept (0: the frame-interleaved costs only).")
@click.option("--conf", default=0.25, type=float)
@click.option("--interleaved/--no-interleaved", default=True,
              help="Also time every tracker frame by frame on the same detections (robust to load changes).")
def main(frames: int, weights: Path | None, embedder: Path | None, trackers: str, repeats: int, conf: float,
         interleaved: bool) -> None:
    """Print model-only FPS, end-to-end FPS without tracking and with each tracker, and per-stage ms."""
    if weights is None:
        from det_toolkit.benchmarks.artifacts import cached_detector
        from det_toolkit.export.embedder import export_embedder

        weights = cached_detector(256, 8)[1]
        if embedder is None and not (weights.parent / EMBEDDER_FILENAME).is_file():
            export_embedder(weights.parent / EMBEDDER_FILENAME, echo=lambda _: None)
    specs = [s.strip() for s in trackers.split(",") if s.strip()]
    parsed = {entry: parse_spec(entry) for entry in specs}
    configs = {entry: load_tracker_config(spec) for entry, (spec, _) in parsed.items()}
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
               f"imgsz {predictor.imgsz[0]}, conf {conf}, {repeats} interleaved rounds (median)")
    click.echo(f"model only (pre-decoded frames): {model_fps:.2f} FPS = {model_ms:.1f} ms/frame")

    if interleaved:
        trks = {spec: make_tracker(configs[spec], weights, parsed[spec][1] or embedder) for spec in specs}
        cost = interleaved_costs(predictor, imgs, trks)
        click.echo(f"frame-interleaved, same frames and detections: detect {cost['detect']:.1f} ms/frame; "
                   "tracking ms/frame (det / (det + tracking)):")
        for spec, trk in trks.items():
            extra = ""
            if isinstance(trk, DeepSortTracker):
                e = trk.summary()["embedder"]
                extra = (f"; embedder {e['name']} {e['input_size']}: {e['ms_per_crop']:.2f} ms/crop, "
                         f"{e['crops'] / frames:.2f} crops + {e['reused'] / frames:.2f} reused per frame")
            click.echo(f"  {spec}: {cost[spec]:.1f} ({cost['detect'] / (cost['detect'] + cost[spec]):.2f}x){extra}")

    if not repeats:
        return
    runs: dict[str, list[dict]] = {"none": [], **{s: [] for s in specs}}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            for i, spec in enumerate(runs):
                trk = None if spec == "none" else make_tracker(configs[spec], weights, parsed[spec][1] or embedder)
                out = Path(tmp) / f"{r}_{i}"
                out.mkdir()
                runs[spec].append(pipeline(weights, frames, conf, trk, out))

    def median_run(spec: str) -> dict:  # the run with the median FPS (its stage times go with it)
        ordered = sorted(runs[spec], key=lambda s: s["fps"])
        return ordered[len(ordered) // 2]

    plain = median_run("none")
    fps_list = ", ".join(f"{s['fps']:.2f}" for s in runs["none"])
    click.echo(f"pipeline, no tracking: {plain['fps']:.2f} FPS ({fps_list}) = {plain['fps'] / model_fps:.2f}x "
               f"model (target >= 0.85x); stage ms: {stages(plain)}")
    for spec in specs:
        run = median_run(spec)
        name = run["tracker"]
        target = TARGETS.get(name)
        ratio = run["fps"] / plain["fps"]
        fps_list = ", ".join(f"{s['fps']:.2f}" for s in runs[spec])
        click.echo(f"pipeline, {spec}: {run['fps']:.2f} FPS ({fps_list}) = {ratio:.2f}x no tracking"
                   + (f" (target >= {target}x: {'PASS' if ratio >= target else 'FAIL'})" if target else "")
                   + f"; stage ms: {stages(run)}")
        if "embedder" in run:
            e = run["embedder"]
            click.echo(f"  embedder {e['name']} at {e['input_size']} px (HxW): {e['ms_per_crop']:.2f} ms/crop "
                       f"(batched per frame), {e['crops'] / frames:.2f} crops/frame, "
                       f"{e['reused'] / frames:.2f} embeddings reused/frame")


if __name__ == "__main__":
    main()
