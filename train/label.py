"""``det-label``: auto-annotate video frames or images with a teacher detector and write a dataset.

A *teacher* proposes boxes; ``det-label`` keeps every ``--every``-th frame of ``--start:--end``,
saves it as JPG with the teacher's boxes as Pascal VOC XML, YOLO txt or COCO JSON, splits the
frames into train/val and writes a data YAML that ``det-train`` reads. The labels are only as good
as the teacher: review them (labelImg, CVAT) before trusting a model trained on them.

Teachers (:mod:`det_toolkit.runtime.teachers`): :class:`~det_toolkit.runtime.teachers.HogTeacher`
(OpenCV's HOG people detector, class ``person``) and :class:`~det_toolkit.runtime.teachers.ArtifactTeacher`
(any det-toolkit artifact). Writers: :mod:`det_toolkit.train.data.writers`.

Dataset layout under ``--project/--name`` (or ``--out``; frames are ``images/<stem>.jpg``; video frames are named
``<video stem>_<frame index, 6 digits>``)::

    images/                 every labelled frame (JPG)
    annotations/<stem>.xml  voc: labelImg-compatible Pascal VOC, 1-based inclusive integer pixels
    labels/<stem>.txt       yolo: class cx cy w h normalised (plus labels/classes.txt for labelImg)
    annotations/train.json  coco: one file per split, category ids 1..C, bbox [x, y, w, h] pixels
    train.txt, val.txt      voc: image stems; yolo: ./images/<stem>.jpg paths
    data.yaml               the data config (same schema as configs/raccoon.yaml)
    label_summary.json      teacher, frame range, counts, teacher ms per frame

Train/val split: the last ``--val-fraction`` of the labelled frames, in source order, as one
contiguous block. Consecutive video frames are near-duplicates, so interleaving (every k-th frame to
val) would put a near-copy of each val frame into train and inflate the val mAP; a tail block only
touches train at its first frame. For a folder the order is the sorted file names.

torch-free: torch is imported only when an artifact teacher is a ``.pt`` checkpoint. This module
sits in the ``train`` layer because it writes datasets with the training readers' conventions; it
imports nothing of ``train`` that needs torch.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click
import cv2
import numpy as np
from tqdm import tqdm

from det_toolkit import __version__
from det_toolkit.runtime.classes import ClassSpecError
from det_toolkit.runtime.device import DEVICE
from det_toolkit.runtime.files import check_writable, increment_path
from det_toolkit.runtime.preprocess import MAX_IMGSZ
from det_toolkit.runtime.source_types import Source
from det_toolkit.runtime.sources import open_source
from det_toolkit.runtime.teachers import ARTIFACT_SUFFIXES, Teacher, clip_detections, is_artifact_spec, make_teacher
from det_toolkit.train.data.formats import FORMATS
from det_toolkit.train.data.writers import LabelledFrame, write_dataset


class LabelError(ValueError):
    """Labelling cannot start or finish (bad frame selection, empty frame range, output not empty)."""


@dataclass
class LabelSummary:
    """What a labelling run produced.

    Attributes:
        data: path of the written ``data.yaml``.
        frames: frames labelled (saved), ``train + val``.
        train / val: frames per split.
        negatives: frames where the teacher found nothing (kept as background images).
        boxes: boxes written in total; ``boxes_per_class`` per class name.
        boxes_per_frame: ``(mean, min, max)``.
        teacher_ms: ``(mean, median)`` teacher wall time per frame in ms.
        first_frame / last_frame: source indices of the first and last labelled frame.
        skipped: source images/frames that could not be decoded (not labelled).
        truncated: file names of truncated JPEGs decoded (grey bottom rows) and labelled.
        interrupted: Ctrl-C stopped reading early (the dataset holds the frames labelled so far).
    """

    data: str
    teacher: str
    source: str
    format: str
    every: int
    frames: int = 0
    train: int = 0
    val: int = 0
    negatives: int = 0
    boxes: int = 0
    boxes_per_class: dict[str, int] = field(default_factory=dict)
    boxes_per_frame: tuple[float, int, int] = (0.0, 0, 0)
    teacher_ms: tuple[float, float] = (0.0, 0.0)
    first_frame: int = -1
    last_frame: int = -1
    skipped: int = 0
    truncated: list[str] = field(default_factory=list)
    interrupted: bool = False

    def table(self) -> str:
        """A human-readable summary (several lines)."""
        mean, lo, hi = self.boxes_per_frame
        per_class = ", ".join(f"{n} {k}" for n, k in self.boxes_per_class.items())
        lines = [f"{self.frames} frames labelled (source frames {self.first_frame}-{self.last_frame}, "
                 f"every {self.every}): {self.train} train, {self.val} val",
                 f"{self.boxes} boxes ({per_class}); boxes per frame: mean {mean:.2f}, min {lo}, max {hi}; "
                 f"{self.negatives} frames without boxes kept as negative images",
                 f"teacher: {self.teacher}",
                 f"teacher ms per frame: mean {self.teacher_ms[0]:.1f}, median {self.teacher_ms[1]:.1f}"]
        if self.skipped:
            lines.append(f"{self.skipped} unreadable source images/frames skipped")
        if self.truncated:
            n = len(self.truncated)
            lines.append(f"{n} truncated image{'s' * (n != 1)} decoded (grey bottom rows): "
                         f"{', '.join(self.truncated)}")
        return "\n".join(lines)


def select_frames(source: Source, every: int = 1, start: int = 0,
                  end: int | None = None) -> Iterator[tuple[int, str, np.ndarray]]:
    """The frames of ``source`` with index in ``[start, end)`` and ``(index - start) % every == 0``.

    Yields ``(index, name, frame_bgr)`` as :class:`~det_toolkit.runtime.source_types.Source` does; stops reading at
    ``end`` (exclusive). Frames before ``start`` are decoded and dropped (sources cannot seek).
    """
    for index, name, frame in source:
        if end is not None and index >= end:
            return
        if index >= start and (index - start) % every == 0:
            yield index, name, frame


def label_source(source: str | Path, teacher: Teacher, out: str | Path, fmt: str = "voc",
                 every: int = 1, start: int = 0, end: int | None = None, val_fraction: float = 0.2,
                 jpg_quality: int = 95, progress: bool = True) -> LabelSummary:
    """Label frames of ``source`` with ``teacher`` and write a dataset under ``out``.

    Args:
        source: anything :func:`det_toolkit.runtime.sources.open_source` opens (video file, folder, glob, list
            file, image, camera index, URL, ``-``).
        teacher: a :class:`Teacher`.
        out: dataset folder; created, must be empty or absent.
        fmt: ``voc``, ``yolo`` or ``coco``.
        every: keep every N-th frame of the range (>= 1).
        start / end: source frame index range ``[start, end)``; ``end=None`` runs to the end.
        val_fraction: fraction of the labelled frames in ``[0, 1)`` that form the val split, taken
            as the contiguous tail block (at least one val frame when > 0 and 2+ frames).
        jpg_quality: JPEG quality (1-100) of the saved frames.
        progress: show a tqdm progress bar.

    Returns:
        :class:`LabelSummary` (also written to ``out/label_summary.json``).

    A run that fails (an exception other than a first Ctrl-C while reading frames) leaves ``out`` as
    it found it, absent or empty, so the same call can be repeated.

    Raises:
        FileNotFoundError / det_toolkit.runtime.source_types.SourceError: ``source`` cannot be opened.
        NotADirectoryError / PermissionError: ``out`` cannot be created
            (:func:`det_toolkit.runtime.files.check_writable`).
        LabelError: bad arguments, ``out`` not empty, no frame in the range, a frame that cannot be
            saved, a teacher that fails on a frame, or a live source without ``end``.
    """
    if fmt not in FORMATS:
        raise LabelError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    if every < 1 or start < 0 or (end is not None and end <= start):
        raise LabelError(f"bad frame selection: every={every} (>= 1), start={start} (>= 0), "
                         f"end={end} (> start)")
    if not 0 <= val_fraction < 1:
        raise LabelError(f"val fraction must be in [0, 1), got {val_fraction}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabelError(f"output {out} exists and is not an empty folder; choose another --out or "
                         "remove it (det-label never mixes two labelling runs)")
    check_writable(out, "output")
    src = open_source(source)
    if src.info.live and end is None:
        src.close()
        raise LabelError(f"{source} is a live source: give --end to say when to stop")
    existed = out.exists()
    created = out  # the topmost folder this call creates when out is absent
    while not created.parent.exists():
        created = created.parent
    try:
        return _label(src, source, teacher, out, fmt, every, start, end, val_fraction, jpg_quality, progress)
    except BaseException:  # a failed run leaves out as it found it: absent or empty
        if existed:
            for p in out.iterdir():  # out was empty: everything in it is this run's
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        elif created.exists():
            shutil.rmtree(created)
        raise


def _label(src: Source, source: str | Path, teacher: Teacher, out: Path, fmt: str, every: int, start: int,
           end: int | None, val_fraction: float, jpg_quality: int, progress: bool) -> LabelSummary:
    """The work of :func:`label_source` on an opened ``src`` (closed here); the caller removes the
    output when this raises."""
    images = out / "images"
    frames: list[LabelledFrame] = []
    times: list[float] = []
    used: set[str] = set()
    interrupted = False
    total = None
    if src.info.frames:
        last = min(src.info.frames, end) if end is not None else src.info.frames
        total = max(0, math.ceil((last - start) / every))
    bar = None
    try:
        images.mkdir(parents=True, exist_ok=True)
        bar = tqdm(select_frames(src, every, start, end), total=total, unit="frame",
                   desc=f"labelling {src.info.stem}", disable=not progress)
        for index, name, frame in bar:
            t0 = time.perf_counter()
            try:
                dets = teacher(frame)
            except Exception as e:  # noqa: BLE001 - any teacher failure ends the run with its frame named
                raise LabelError(f"teacher {teacher.name} failed on frame {index} ({name}) of {source}: "
                                 f"{type(e).__name__}: {e}; nothing was written") from e
            times.append((time.perf_counter() - t0) * 1e3)
            h, w = frame.shape[:2]
            dets = clip_detections(dets, w, h)
            stem = f"{src.info.stem}_{index:06d}" if src.info.is_video else Path(name).stem
            if stem in used:
                stem = f"{stem}_{index:06d}"
            used.add(stem)
            f = LabelledFrame(stem, index, w, h, dets)
            if not cv2.imwrite(str(images / f.file_name), frame, [cv2.IMWRITE_JPEG_QUALITY, jpg_quality]):
                raise LabelError(f"cannot write {images / f.file_name}")
            frames.append(f)
            bar.set_postfix(boxes=len(dets), ms=f"{times[-1]:.0f}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
        src.close()
    if not frames:
        raise LabelError(f"no frame of {source} in the selection start={start}, end={end}, every={every} "
                         f"({src.info.frames} frames/images in the source, {src.skipped} unreadable)")
    n_val = 0
    if val_fraction > 0 and len(frames) >= 2:
        n_val = min(len(frames) - 1, max(1, round(len(frames) * val_fraction)))
    names = list(teacher.class_names)
    counts = np.array([len(f.dets) for f in frames])
    per_class = np.bincount(np.concatenate([f.dets.labels for f in frames]).astype(np.int64),
                            minlength=len(names)) if counts.sum() else np.zeros(len(names), np.int64)
    summary = LabelSummary(
        data=str(out / "data.yaml"), teacher=teacher.name, source=str(source), format=fmt, every=every,
        frames=len(frames), train=len(frames) - n_val, val=n_val, negatives=int((counts == 0).sum()),
        boxes=int(counts.sum()), boxes_per_class={n: int(k) for n, k in zip(names, per_class)},
        boxes_per_frame=(round(float(counts.mean()), 3), int(counts.min()), int(counts.max())),
        teacher_ms=(round(float(np.mean(times)), 2), round(float(np.median(times)), 2)),
        first_frame=frames[0].index, last_frame=frames[-1].index, skipped=src.skipped,
        truncated=list(src.truncated), interrupted=interrupted)
    header = (f"Auto-labelled by det-label: {summary.frames} frames of {source} "
              f"(frames {summary.first_frame}-{summary.last_frame}, every {every}); val = the last "
              f"{n_val} frames.\nTeacher: {teacher.name}.\n"
              "Machine labels, not human annotation: review them (labelImg, CVAT) before trusting them.")
    write_dataset(out, fmt, frames, n_val, names, header)
    (out / "label_summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary


# --- CLI ------------------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "--version", prog_name="det-label")
@click.argument("source")
@click.option("--teacher", default="hog", help="'hog' (OpenCV's HOG people detector, class 'person') "
              "or a detector artifact: .onnx, .pt, .engine.")
@click.option("--format", "fmt", default="voc", type=click.Choice(FORMATS),
              help="Label format: Pascal VOC XML (labelImg), YOLO txt or COCO JSON.")
@click.option("--project", default="runs/label", type=click.Path(path_type=Path),
              help="Parent folder of the dataset folder.")
@click.option("--name", default=None, show_default="the source's stem",
              help="Dataset folder name; an existing one gets a number appended (vtest2, ...), never reused.")
@click.option("--out", default=None, type=click.Path(file_okay=False, path_type=Path),
              show_default="PROJECT/NAME", help="Exact dataset folder instead of PROJECT/NAME (not "
              "incremented; must be empty or absent), for scripts that train on it next.")
@click.option("--every", default=1, type=click.IntRange(1), help="Label every N-th frame of the range.")
@click.option("--start", default=0, type=click.IntRange(0), help="First source frame (0-based) labelled.")
@click.option("--end", default=None, type=click.IntRange(1), show_default="the end",
              help="Stop before this source frame (exclusive).")
@click.option("--val-fraction", default=0.2, type=click.FloatRange(0, 1, max_open=True),
              help="Fraction of the labelled frames held out as val: the contiguous last block in "
              "source order (no near-duplicate neighbours across the split).")
@click.option("--conf", default=0.5, type=click.FloatRange(0, 1), help="Artifact teacher: minimum score kept.")
@click.option("--classes", default=None, show_default="all", help="Artifact teacher: keep only these "
              "classes (names or 0-based ids, comma separated); the dataset has these classes.")
@click.option("--imgsz", default=None, type=click.IntRange(32, MAX_IMGSZ), show_default="the model's",
              help="Artifact teacher: letterbox size in pixels.")
@click.option("--device", default="auto", type=DEVICE,
              help="Artifact teacher: inference device.")
@click.option("--hog-score", default=0.5, type=float, help="HOG: minimum SVM decision value kept.")
@click.option("--hog-upscale", default=1.0, type=click.FloatRange(1, 4),
              help="HOG: enlarge frames by this factor first, to find people under ~128 px tall "
              "(cost ~ factor squared).")
@click.option("--hog-stride", default=8, type=click.IntRange(1), help="HOG: window stride in pixels.")
@click.option("--quality", default=95, type=click.IntRange(1, 100), help="JPEG quality of the saved frames.")
def main(source: str, teacher: str, fmt: str, project: Path, name: str | None, out: Path | None, every: int,
         start: int, end: int | None,
         val_fraction: float, conf: float, classes: str | None, imgsz: int | None, device: str,
         hog_score: float, hog_upscale: float, hog_stride: int, quality: int) -> None:
    """Auto-annotate frames of SOURCE (a video file, a folder of images, a quoted glob, a list file)
    with a teacher and write a dataset (JPG frames, labels, train/val lists, data.yaml) ready to
    review in labelImg or CVAT and to train on with det-train.

    \b
    det-label ../shared/videos/vtest.avi --teacher hog --end 500 --every 3 --name people
    det-label photos/ --teacher best.onnx --format coco --conf 0.6 --classes person
    """
    artifact = teacher.lower() != "hog"
    ctx = click.get_current_context()
    if artifact and not is_artifact_spec(teacher):
        raise click.BadParameter(f"'{teacher}' is neither 'hog' nor a detector artifact "
                                 f"({', '.join(ARTIFACT_SUFFIXES)})", param_hint="--teacher")
    if not artifact:
        given = [f"--{p}" for p in ("conf", "classes", "imgsz", "device")
                 if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to artifact teachers only; the HOG teacher "
                                   "has one class, 'person' (use --hog-score for its threshold)")
    else:
        given = [f"--{p.replace('_', '-')}" for p in ("hog_score", "hog_upscale", "hog_stride")
                 if ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to --teacher hog only")
    if end is not None and end <= start:
        raise click.BadParameter(f"--end {end} must be greater than --start {start}", param_hint="--end")
    if out is not None and any(ctx.get_parameter_source(p) == click.core.ParameterSource.COMMANDLINE
                               for p in ("project", "name")):
        raise click.UsageError("--out is the exact dataset folder: give it or --project/--name, not both")
    created = None
    try:
        check_writable(out or project, "--out" if out else "--project")  # before the teacher loads
        t = make_teacher(teacher, device, conf, classes, imgsz, hog_score, hog_upscale, hog_stride)
        if out is None:  # after the teacher loaded: a bad teacher leaves no folder behind
            out = created = increment_path(project / (name or Path(source).stem or "source"))
        summary = label_source(source, t, out, fmt, every, start, end, val_fraction, quality)
    except ClassSpecError as e:
        raise click.BadParameter(str(e), param_hint="--classes") from e
    except (FileNotFoundError, ValueError, OSError) as e:
        if created is not None and not any(created.iterdir()):
            created.rmdir()  # e.g. a missing source: leave no empty run folder behind
        raise click.ClickException(str(e)) from e
    click.echo(summary.table())
    if summary.interrupted:
        click.echo("interrupted (Ctrl-C): the dataset holds the frames labelled so far", err=True)
    click.echo(f"Dataset ({fmt}) saved to {out}; train with: det-train --data {summary.data}")


if __name__ == "__main__":
    main()
