"""``det-run``: detect (and track) objects in images, folders, globs and videos.

Everything here runs on ``onnxruntime`` alone for ``.onnx`` weights; torch is imported only for
``.pt`` checkpoints (see :mod:`det_toolkit.runtime.backends`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click
import cv2
import numpy as np

from det_toolkit import __version__
from det_toolkit.runtime.backends import Backend, load_backend
from det_toolkit.runtime.classes import ClassSpecError
from det_toolkit.runtime.device import DEVICE
from det_toolkit.runtime.embedder import EMBEDDER_FILENAME, EMBEDDER_INT8_FILENAME
from det_toolkit.runtime.files import check_writable, increment_path
from det_toolkit.runtime.pipeline import FramePredictor
from det_toolkit.runtime.preprocess import MAX_IMGSZ
from det_toolkit.runtime.ray_run import ray_address_option
from det_toolkit.runtime.run import RunSettings, expand_sources, make_predictor, make_tracker, run_source
from det_toolkit.runtime.source_types import Source
from det_toolkit.runtime.sources import open_source
from det_toolkit.runtime.trackers import TRACKERS
from det_toolkit.runtime.tracking import Tracker


def has_display() -> bool:
    """Whether a window can be shown (Windows/macOS, or ``DISPLAY``/``WAYLAND_DISPLAY`` set)."""
    return sys.platform in ("win32", "darwin") or bool(os.environ.get("DISPLAY") or
                                                          os.environ.get("WAYLAND_DISPLAY"))


def show_window(title: str) -> Callable[[np.ndarray], bool]:
    """A frame callback showing frames in an OpenCV window; returns ``False`` once ``q``/Esc is pressed."""
    def show(frame: np.ndarray) -> bool:
        cv2.imshow(title, frame)
        return cv2.waitKey(1) & 0xFF not in (ord("q"), 27)
    return show


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "--version", prog_name="det-run")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--weights", required=True, type=click.Path(path_type=Path),
              help="Detector: .onnx (onnxruntime) or .pt checkpoint (PyTorch).")
@click.option("--conf", default=0.25, type=click.FloatRange(0, 1), help="Minimum detection score kept.")
@click.option("--classes", default=None, show_default="all", help="Keep only these classes: names or "
              "0-based ids, comma separated (e.g. 'raccoon' or '0,2').")
@click.option("--imgsz", default=None, type=click.IntRange(32, MAX_IMGSZ), show_default="the model's",
              help="Letterbox size in pixels (square); only for models exported with dynamic H/W.")
@click.option("--rect/--square", "rect", default=False, show_default="square",
              help="Rectangular inputs (frame scaled to fit --imgsz, padded only to the model's stride; "
              "dynamic H/W graphs only) or letterboxed to the full square. --sahi is always square.")
@click.option("--device", default="auto", type=DEVICE,
              help="Inference device; auto picks CUDA when available.")
@click.option("--track", is_flag=True, default=False, show_default="off",
              help="Track objects across frames (with --tracker's tracker; Deep SORT if not given).")
@click.option("--tracker", "tracker_spec", default=None, metavar="NAME|PATH.yaml", show_default="deepsort with --track",
              help=f"Tracker ({'|'.join(TRACKERS)}: the shipped configs/tracker/NAME.yaml) or a settings YAML "
              "(its 'tracker:' key or file name says which; Deep SORT otherwise). Implies --track. Only "
              "deepsort uses appearance (needs the embedder ONNX); the others track by motion alone.")
@click.option("--embedder", default=None, type=click.Path(path_type=Path),
              show_default=f"{EMBEDDER_FILENAME} beside --weights "
                           f"({EMBEDDER_INT8_FILENAME} with embedder_precision: int8)",
              help="Appearance embedder ONNX for --track (written by det-export).")
@click.option("--project", default="runs/run", type=click.Path(path_type=Path),
              help="Parent folder of runs.")
@click.option("--name", default="exp", help="Run folder name; an existing one gets a number appended "
              "(exp2, exp3, ...), never overwritten.")
@click.option("--save/--no-save", default=True, help="Save the annotated video or images.")
@click.option("--save-txt", is_flag=True, default=False, show_default="off",
              help="Save YOLO-format labels (class cx cy w h, normalised) per image/frame in labels/.")
@click.option("--save-json", is_flag=True, default=False, show_default="off",
              help="Save COCO-style detection results in predictions.json.")
@click.option("--live/--no-live", default=None, show_default="on for cameras and URLs",
              help="Keep only the newest frame (bounded latency; frames may be dropped). Files and "
              "stdin are never dropped from unless --live is given.")
@click.option("--show", is_flag=True, default=False, show_default="off",
              help="Display annotated frames in a window (q or Esc stops); needs a display.")
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
@click.option("--max-tiles", default=64, type=click.IntRange(1),
              help="--sahi: most tiles per frame (each is one detector input); more is an error.")
@click.option("--sahi-class-agnostic", is_flag=True, default=False, show_default="off",
              help="SAHI: merge detections of different classes too.")
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="auto", metavar="[ADDRESS]",
              show_default="off", help="Run the sources on a Ray cluster (the [ray] extra): 'auto' (the "
              "default when --ray has no value: a running cluster, else a local one), 'local', or a cluster "
              "address (HOST:PORT, ray://HOST:PORT). Write it after the sources or as --ray=ADDRESS. "
              "PROJECT/NAME is not incremented: running the same job again skips finished sources.",
              callback=ray_address_option)
@click.option("--ray-workers", default=None, type=click.IntRange(1), show_default="one per source, at most the CPUs",
              help="--ray: worker actors (each loads the model once).")
@click.option("--ray-threads", default=None, type=click.IntRange(1),
              show_default="the most that fit: workers x threads <= each node's CPUs",
              help="--ray: CPUs per worker (its ONNX Runtime and OpenCV threads).")
def main(sources: tuple[str, ...], weights: Path, conf: float, classes: str | None, imgsz: int | None, rect: bool,
         device: str, track: bool, tracker_spec: str | None, embedder: Path | None, project: Path, name: str,
         save: bool, save_txt: bool, save_json: bool, live: bool | None, show: bool, max_frames: int | None,
         sahi: bool, slice_size: int | None, slice_height: int | None, slice_width: int | None,
         overlap: float, overlap_height: float | None, overlap_width: float | None, sahi_full_frame: bool,
         sahi_merge: str, sahi_match: str, sahi_match_thr: float, sahi_class_agnostic: bool,
         max_tiles: int, ray_address: str | None, ray_workers: int | None, ray_threads: int | None) -> None:
    """Detect (and with --track, track) objects in SOURCE: an image, a folder of images, a glob
    pattern (quote it), a video file, a camera index (0), a stream URL (rtsp://, http://, ...) or
    - for concatenated JPEG/PNG images on stdin (e.g. ffmpeg -i IN -f image2pipe -c:v mjpeg -).

    Writes into PROJECT/NAME: the annotated video (<stem>.mp4) or images, predictions.jsonl
    (one line per frame), <stem>_mot.txt (MOT-challenge tracks, with --track) and summary.json
    (frames, FPS, mean ms per stage). Decoding, detection and writing run in overlapping threads;
    Ctrl-C stops reading and finishes the outputs with every frame detected so far.

    Several SOURCEs (or a *.streams file listing one per line) run as streams of one model: one
    folder per source under PROJECT/NAME (what a det-run on that source alone writes) plus one
    summary.json; a source that fails is reported and the others go on. With --ray the sources are
    shared out to Ray workers instead.
    """
    sahi_settings = None
    if sahi:
        # deferred: sahi takes ~0.25 s to import and only --sahi needs it
        from det_toolkit.runtime.tiling import SliceConfig

        sh, sw = slice_height or slice_size, slice_width or slice_size
        if (sh is None) != (sw is None):  # one axis given: the other defaults to it
            sh = sw = sh or sw
        try:
            sahi_settings = SliceConfig(sh, sw, overlap if overlap_height is None else overlap_height,
                                        overlap if overlap_width is None else overlap_width, sahi_full_frame,
                                        sahi_merge, sahi_match, sahi_match_thr, sahi_class_agnostic, max_tiles)
        except ValueError as e:
            raise click.ClickException(str(e)) from e
    settings = RunSettings(weights, conf, classes, imgsz, rect, device,
                           (tracker_spec or "deepsort") if (track or tracker_spec is not None) else None,
                           embedder, save, save_txt, save_json, live, max_frames, sahi_settings)
    try:
        specs = expand_sources(sources)
    except (FileNotFoundError, ValueError) as e:
        raise click.ClickException(str(e)) from e
    if ray_address is None and (ray_workers or ray_threads):
        raise click.UsageError("--ray-workers and --ray-threads apply to --ray only")
    if ray_address is not None:
        _run_ray(specs, settings, project, name, ray_address, show, ray_workers, ray_threads)
    elif len(specs) > 1:
        _run_streams(specs, settings, project, name, show)
    else:
        _run_one(specs[0], settings, project, name, show)


def _usage_errors(fn: Callable[[], object]) -> object:
    """Call ``fn``, turning bad-input exceptions into click errors (no traceback for the user)."""
    try:
        return fn()
    except ClassSpecError as e:
        raise click.BadParameter(str(e), param_hint="--classes") from e
    except (FileNotFoundError, ValueError, NotImplementedError, OSError) as e:
        raise click.ClickException(str(e)) from e


def _run_ray(specs: list[str], settings: RunSettings, project: Path, name: str, address: str, show: bool,
             workers: int | None, threads: int | None) -> None:
    """``--ray``: the sources on a Ray cluster (:mod:`det_toolkit.runtime.ray_run`); exits with status 1
    when a source failed (the job summary says why)."""
    from det_toolkit.runtime.deps import MissingExtraError
    from det_toolkit.runtime.ray_run import run_on_ray

    if show:
        click.echo("note: --show ignored with --ray: workers have no display", err=True)
    try:
        job = _usage_errors(lambda: run_on_ray(specs, settings, project, name, address, echo=click.echo,
                                               workers=workers, threads=threads))
    except MissingExtraError as e:
        raise click.ClickException(str(e)) from e
    if job["failed"]:
        raise click.ClickException(f"{job['failed']} of {len(specs)} sources failed (reasons in "
                                   f"{project / name / 'summary.json'}); run the same command again to retry them")


def _run_streams(specs: list[str], settings: RunSettings, project: Path, name: str, show: bool) -> None:
    """Several sources as streams of one model in this process (:mod:`det_toolkit.runtime.multistream`).

    Exit status: 128 + signal when interrupted, 1 when a source failed (the others still finish,
    as with --ray), else 0.
    """
    from det_toolkit.runtime.multistream import run_streams

    if show:
        click.echo("note: --show ignored with several sources", err=True)
    summary = _usage_errors(lambda: run_streams(specs, settings, project, name, echo=click.echo))
    if summary["interrupted"]:
        sig = summary["signal"]
        click.echo(f"interrupted ({sig}): outputs hold every frame processed so far", err=True)
        sys.exit(128 + int(getattr(signal, sig)))
    failed = sum(r["status"] == "failed" for r in summary["streams"])
    if failed:
        raise click.ClickException(f"{failed} of {len(summary['streams'])} sources failed (reasons in "
                                   f"{summary['run_dir']}/summary.json); the others finished")


def _run_one(source: str, settings: RunSettings, project: Path, name: str, show: bool) -> None:
    """One source: the threaded pipeline into PROJECT/NAME (incremented), summary printed."""
    def prepare() -> tuple[Backend, FramePredictor, Tracker | None, Source]:
        # everything that can fail on bad input fails here, before any output is written
        check_writable(project / name, "--project/--name")
        settings.check()  # cheap checks first
        backend = load_backend(settings.weights, settings.device)
        predictor = make_predictor(settings, backend)
        tracker = _make_tracker(settings)
        src = open_source(source)  # last: a camera or stdin starts delivering frames once opened
        if settings.sahi is not None and src.info.height and src.info.width:  # images: checked per frame
            try:
                predictor.config.check_tiles(src.info.height, src.info.width)
            except ValueError:
                src.close()
                raise
        return backend, predictor, tracker, src

    backend, predictor, tracker, src = _usage_errors(prepare)
    if settings.conf < backend.meta.score_thresh:
        click.echo(f"note: --conf {settings.conf} is below the graph's score threshold "
                   f"{backend.meta.score_thresh}; lower scores were already dropped", err=True)
    on_frame = None
    if show and has_display():
        on_frame = show_window(f"det-run {src.info.stem}")
    elif show:
        click.echo("note: --show ignored: no display found (DISPLAY/WAYLAND_DISPLAY unset)", err=True)
    run_dir = increment_path(project / name)
    try:
        summary = run_source(settings, backend, source, src, run_dir, predictor, tracker, on_frame)
    except ValueError as e:  # a frame that breaks a limit (e.g. --sahi --max-tiles on a large image)
        raise click.ClickException(f"{e}; outputs so far are in {run_dir}") from e
    finally:
        src.close()
        if on_frame is not None:
            cv2.destroyAllWindows()
    if summary["frames"] == 0 and not summary["interrupted"]:  # the folder holds only empty files
        shutil.rmtree(run_dir)
        raise click.ClickException(f"no frame of {source} could be decoded ({summary['skipped']} unreadable); "
                                   "nothing was processed")
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _print_summary(summary, run_dir)
    if summary["interrupted"]:
        sig = summary["signal"]
        click.echo(f"interrupted ({sig}): outputs hold every frame processed so far", err=True)
        sys.exit(128 + int(getattr(signal, sig)))  # the shell's convention: 130 SIGINT, 143 SIGTERM


def _make_tracker(settings: RunSettings) -> Tracker | None:
    """:func:`det_toolkit.runtime.run.make_tracker`, notes to stderr; a missing default embedder
    (none given) is a usage problem whose message says what to do."""
    try:
        return make_tracker(settings, note=lambda m: click.echo(m, err=True))
    except FileNotFoundError as e:
        if settings.embedder is None:
            raise click.UsageError(str(e)) from e
        raise


def _print_summary(summary: dict, run_dir: Path) -> None:
    """The end-of-run lines: frames, FPS and per-stage ms, tracker, truncated images, embedder, SAHI."""
    ms = ", ".join(f"{k} {v:.1f}" for k, v in summary["mean_ms"].items())
    dropped = f", {summary['dropped']} dropped (live)" if summary["dropped"] else ""
    click.echo(f"{summary['frames']} frames processed ({summary['skipped']} skipped{dropped}) with "
               f"{summary['backend']}\n"
               f"{summary['fps']:.2f} FPS after {summary['warmup_frames']} warm-up frames; "
               f"mean ms per frame: {ms}")
    if "tracker" in summary:
        click.echo(f"tracker {summary['tracker']}: {summary['track_ids']} track ids")
    if summary["truncated"]:
        n = len(summary["truncated"])
        click.echo(f"{n} truncated image{'s' * (n != 1)} decoded (grey bottom rows): "
                   f"{', '.join(summary['truncated'])}")
    if "embedder" in summary:
        e = summary["embedder"]
        click.echo(f"embedder {e['name']} at {e['input_size']} px: {e['ms_per_crop']:.2f} ms/crop "
                   f"(batched, {e['crops']} crops)")
    if "sahi" in summary:
        click.echo(f"SAHI: {summary['sahi']['tiles']} detector inputs per frame (tiles + full frame)")
    click.echo(f"Results saved to {run_dir}")


if __name__ == "__main__":
    main()
