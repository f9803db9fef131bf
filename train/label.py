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

Several sources make one dataset, in the order given (:func:`label_sources`; a frame name already
taken gets ``_<index, 6 digits>`` appended); each source's frames are saved under
``.shards/<k>/`` first and moved to ``images/`` under their final names at the end. With ``--ray``
(:func:`label_on_ray`) Ray workers label the sources (videos: one task each; the selected images
of folders: Ray Data) and the same dataset is written (:mod:`det_toolkit.runtime.ray_run`).

torch-free: torch is imported only when an artifact teacher is a ``.pt`` checkpoint. This module
sits in the ``train`` layer because it writes datasets with the training readers' conventions; it
imports nothing of ``train`` that needs torch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import click
import cv2
import numpy as np
from tqdm import tqdm

from det_toolkit import __version__
from det_toolkit.runtime.classes import ClassSpecError
from det_toolkit.runtime.deps import MissingExtraError
from det_toolkit.runtime.device import DEVICE
from det_toolkit.runtime.files import check_writable, increment_path
from det_toolkit.runtime.preprocess import MAX_IMGSZ
from det_toolkit.runtime.ray_run import ray_address_option
from det_toolkit.runtime.source_types import Source, SourceInfo
from det_toolkit.runtime.sources import ImageSource, open_source
from det_toolkit.runtime.teachers import ARTIFACT_SUFFIXES, Teacher, clip_detections, is_artifact_spec, make_teacher
from det_toolkit.train.data.formats import FORMATS
from det_toolkit.train.data.writers import LabelledFrame, write_dataset

if TYPE_CHECKING:
    from det_toolkit.runtime.ray_run import Workers


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
        failed: sources that could not be opened or labelled (``source``, ``reason``); the dataset
            holds the others.
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
    failed: list[dict[str, str]] = field(default_factory=list)

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
        lines += [f"failed: {f['source']}: {f['reason']}" for f in self.failed]
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


#: Folder under the dataset where each source's frames wait (``<k>/<index, 8 digits>.jpg``) until
#: :func:`merge_shards` gives them their final names under ``images/``.
SHARDS_DIR = ".shards"


@dataclass
class Shard:
    """The labelled frames of one source, saved as ``<folder>/<source index, 8 digits>.jpg``.

    Attributes:
        source: the source as given.
        folder: where its frames are saved.
        frames: labelled frames in source order; ``stem`` is the frame's own name (video frames
            ``<video stem>_<index, 6 digits>``, images their file stem), not yet made unique.
        times_ms: teacher wall time per frame, ms.
        skipped / truncated / interrupted: as in :class:`LabelSummary`.
        total: frames/images the source holds (``SourceInfo.frames``).
    """

    source: str
    folder: str
    frames: list[LabelledFrame] = field(default_factory=list)
    times_ms: list[float] = field(default_factory=list)
    skipped: int = 0
    truncated: list[str] = field(default_factory=list)
    interrupted: bool = False
    total: int = 0


def shard_file(index: int) -> str:
    """File name of source frame ``index`` in its shard folder."""
    return f"{index:08d}.jpg"


def label_frame(teacher: Teacher, frame: np.ndarray, index: int, stem: str, folder: Path, jpg_quality: int,
                where: str) -> tuple[LabelledFrame, float]:
    """Label one frame: the teacher's boxes, clipped to the frame, and the frame saved as
    ``folder/`` :func:`shard_file` ``(index)``.

    Args:
        frame: uint8 ``[H, W, 3]`` BGR.
        stem: the frame's name in the dataset (before :func:`merge_shards` makes it unique).
        where: the frame's name and source, for messages.

    Returns:
        The :class:`LabelledFrame` and the teacher's wall time in ms.

    Raises:
        LabelError: the teacher fails on the frame or the JPG cannot be written.
    """
    t0 = time.perf_counter()
    try:
        dets = teacher(frame)
    except Exception as e:  # noqa: BLE001 - any teacher failure ends the source with its frame named
        raise LabelError(f"teacher {teacher.name} failed on frame {index} {where}: "
                         f"{type(e).__name__}: {e}; nothing was written") from e
    ms = (time.perf_counter() - t0) * 1e3
    h, w = frame.shape[:2]
    path = folder / shard_file(index)
    if not cv2.imwrite(str(path), frame, [cv2.IMWRITE_JPEG_QUALITY, jpg_quality]):
        raise LabelError(f"cannot write {path}")
    return LabelledFrame(stem, index, w, h, clip_detections(dets, w, h)), ms


def label_shard(src: Source, source: str, teacher: Teacher, folder: Path, every: int = 1, start: int = 0,
                end: int | None = None, jpg_quality: int = 95, progress: bool = True) -> Shard:
    """Label the selected frames of the opened ``src`` (:func:`select_frames`) into ``folder``
    (created); a first Ctrl-C stops reading and keeps the frames labelled so far. ``src`` stays open.

    Raises:
        LabelError: see :func:`label_frame`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shard = Shard(source, str(folder), total=src.info.frames)
    total = None
    if src.info.frames:
        last = min(src.info.frames, end) if end is not None else src.info.frames
        total = max(0, math.ceil((last - start) / every))
    bar = None
    try:
        bar = tqdm(select_frames(src, every, start, end), total=total, unit="frame",
                   desc=f"labelling {src.info.stem}", disable=not progress)
        for index, name, frame in bar:
            stem = f"{src.info.stem}_{index:06d}" if src.info.is_video else Path(name).stem
            f, ms = label_frame(teacher, frame, index, stem, folder, jpg_quality, f"({name}) of {source}")
            shard.frames.append(f)
            shard.times_ms.append(ms)
            bar.set_postfix(boxes=len(f.dets), ms=f"{ms:.0f}")
    except KeyboardInterrupt:
        shard.interrupted = True
    finally:
        if bar is not None:
            bar.close()
    shard.skipped, shard.truncated = src.skipped, list(src.truncated)
    return shard


def merge_shards(out: Path, shards: Sequence[Shard]) -> list[LabelledFrame]:
    """Move the shards' frames, in order, to ``out/images/<stem>.jpg``; a stem already taken gets
    ``_<index, 6 digits>`` appended. Removes ``out/`` :data:`SHARDS_DIR`.

    Returns:
        The frames under their final stems, in order.
    """
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    frames = []
    for s in shards:
        for f in s.frames:
            stem = f"{f.stem}_{f.index:06d}" if f.stem in used else f.stem
            used.add(stem)
            g = replace(f, stem=stem)
            os.replace(Path(s.folder) / shard_file(f.index), images / g.file_name)
            frames.append(g)
    shutil.rmtree(out / SHARDS_DIR, ignore_errors=True)
    return frames


def _check_request(fmt: str, every: int, start: int, end: int | None, val_fraction: float, out: Path) -> None:
    """The argument checks of a labelling run (nothing is opened or written).

    Raises:
        LabelError: bad format, frame selection or val fraction, or ``out`` not empty.
        NotADirectoryError / PermissionError: ``out`` cannot be created.
    """
    if fmt not in FORMATS:
        raise LabelError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    if every < 1 or start < 0 or (end is not None and end <= start):
        raise LabelError(f"bad frame selection: every={every} (>= 1), start={start} (>= 0), "
                         f"end={end} (> start)")
    if not 0 <= val_fraction < 1:
        raise LabelError(f"val fraction must be in [0, 1), got {val_fraction}")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise LabelError(f"output {out} exists and is not an empty folder; choose another --out or "
                         "remove it (det-label never mixes two labelling runs)")
    check_writable(out, "output")


def _open(source: str | Path, end: int | None) -> Source:
    """Open ``source`` for labelling.

    Raises:
        FileNotFoundError / SourceError: it cannot be opened.
        LabelError: a live source without ``end``.
    """
    src = open_source(source)
    if src.info.live and end is None:
        src.close()
        raise LabelError(f"{source} is a live source: give --end to say when to stop")
    return src


@contextmanager
def _leave_as_found(out: Path) -> Iterator[None]:
    """On any exception, leave ``out`` as it was before (absent, or an empty folder), then re-raise."""
    existed = out.exists()
    created = out  # the topmost folder this run creates when out is absent
    while not created.parent.exists():
        created = created.parent
    try:
        yield
    except BaseException:
        if existed:
            for p in out.iterdir():  # out was empty: everything in it is this run's
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        elif created.exists():
            shutil.rmtree(created)
        raise


def label_source(source: str | Path, teacher: Teacher, out: str | Path, fmt: str = "voc",
                 every: int = 1, start: int = 0, end: int | None = None, val_fraction: float = 0.2,
                 jpg_quality: int = 95, progress: bool = True) -> LabelSummary:
    """Label frames of ``source`` with ``teacher`` and write a dataset under ``out``:
    :func:`label_sources` of one source.

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
    return label_sources([source], teacher, out, fmt, every, start, end, val_fraction, jpg_quality, progress)


def label_sources(sources: Sequence[str | Path], teacher: Teacher, out: str | Path, fmt: str = "voc",
                  every: int = 1, start: int = 0, end: int | None = None, val_fraction: float = 0.2,
                  jpg_quality: int = 95, progress: bool = True) -> LabelSummary:
    """Label the frames of several sources, one after the other, into one dataset under ``out``
    (arguments as :func:`label_source`; the frame selection applies to each source).

    Frames keep the order of ``sources`` (val is the tail of the last ones); a frame whose name is
    already taken by an earlier frame gets ``_<index, 6 digits>`` appended. With several sources,
    one that cannot be opened or labelled is recorded in :attr:`LabelSummary.failed` and the others
    are labelled; with one, its error is raised.

    Raises:
        As :func:`label_source`; ``LabelError`` also when every source failed.
    """
    out = Path(out)
    _check_request(fmt, every, start, end, val_fraction, out)
    first = _open(sources[0], end) if len(sources) == 1 else None  # one source: opened before out is made
    shards: list[Shard] = []
    failed: list[dict[str, str]] = []
    with _leave_as_found(out):
        for k, source in enumerate(sources):
            try:
                src = first if first is not None else _open(source, end)
                try:
                    shards.append(label_shard(src, str(source), teacher, out / SHARDS_DIR / str(k), every, start,
                                              end, jpg_quality, progress))
                finally:
                    src.close()
            except (OSError, ValueError) as e:
                if len(sources) == 1:
                    raise
                failed.append({"source": str(source), "reason": str(e)})
            if shards and shards[-1].interrupted:
                break
        return write_labelled(out, shards, failed, teacher.name, teacher.class_names, sources, fmt, every, start,
                              end, val_fraction)


def write_labelled(out: Path, shards: Sequence[Shard], failed: list[dict[str, str]], teacher_name: str,
                   class_names: Sequence[str], sources: Sequence[str | Path], fmt: str, every: int, start: int,
                   end: int | None, val_fraction: float) -> LabelSummary:
    """Finish a labelling run: :func:`merge_shards`, the val tail split, the labels and ``data.yaml``
    (:func:`write_dataset`) and ``label_summary.json``.

    Raises:
        LabelError: no frame was labelled (the reasons of failed sources named).
    """
    source = ", ".join(str(s) for s in sources)
    if not any(s.frames for s in shards):
        why = "; ".join(f"{f['source']}: {f['reason']}" for f in failed)
        total, skipped = sum(s.total for s in shards), sum(s.skipped for s in shards)
        raise LabelError(f"no frame of {source} in the selection start={start}, end={end}, every={every} "
                         f"({total} frames/images in the source, {skipped} unreadable)"
                         + (f"; failed: {why}" if why else ""))
    frames = merge_shards(out, shards)
    times = [t for s in shards for t in s.times_ms]
    n_val = 0
    if val_fraction > 0 and len(frames) >= 2:
        n_val = min(len(frames) - 1, max(1, round(len(frames) * val_fraction)))
    names = list(class_names)
    counts = np.array([len(f.dets) for f in frames])
    per_class = np.bincount(np.concatenate([f.dets.labels for f in frames]).astype(np.int64),
                            minlength=len(names)) if counts.sum() else np.zeros(len(names), np.int64)
    summary = LabelSummary(
        data=str(out / "data.yaml"), teacher=teacher_name, source=source, format=fmt, every=every,
        frames=len(frames), train=len(frames) - n_val, val=n_val, negatives=int((counts == 0).sum()),
        boxes=int(counts.sum()), boxes_per_class={n: int(k) for n, k in zip(names, per_class)},
        boxes_per_frame=(round(float(counts.mean()), 3), int(counts.min()), int(counts.max())),
        teacher_ms=(round(float(np.mean(times)), 2), round(float(np.median(times)), 2)),
        first_frame=frames[0].index, last_frame=frames[-1].index, skipped=sum(s.skipped for s in shards),
        truncated=[t for s in shards for t in s.truncated], interrupted=any(s.interrupted for s in shards),
        failed=list(failed))
    header = (f"Auto-labelled by det-label: {summary.frames} frames of {source} "
              f"(frames {summary.first_frame}-{summary.last_frame}, every {every}); val = the last "
              f"{n_val} frames.\nTeacher: {teacher_name}.\n"
              "Machine labels, not human annotation: review them (labelImg, CVAT) before trusting them.")
    write_dataset(out, fmt, frames, n_val, names, header)
    (out / "label_summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary


# --- det-label --ray ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TeacherSpec:
    """det-label's teacher options (:func:`make_teacher`'s arguments), picklable: Ray workers build
    their own teacher from it."""

    spec: str
    device: str = "auto"
    conf: float = 0.5
    classes: str | None = None
    imgsz: int | None = None
    hog_score: float = 0.5
    hog_upscale: float = 1.0
    hog_stride: int = 8

    def build(self, threads: int | None = None) -> Teacher:
        """The teacher (:func:`make_teacher`); ``threads``: intra-op threads of an ONNX artifact's
        session (``None``: one per physical core).

        Raises:
            See :func:`make_teacher`.
        """
        if threads is None or Path(self.spec).suffix.lower() != ".onnx":
            return make_teacher(self.spec, self.device, self.conf, self.classes, self.imgsz, self.hog_score,
                                self.hog_upscale, self.hog_stride)
        from det_toolkit.runtime.classes import parse_classes
        from det_toolkit.runtime.ray_run import load_backend_threads
        from det_toolkit.runtime.teachers import ArtifactTeacher

        backend = load_backend_threads(self.spec, self.device, threads)
        ids = parse_classes(self.classes, backend.meta.class_names) if self.classes else None
        teacher = ArtifactTeacher(backend, self.conf, ids, self.imgsz)
        teacher.name = f"{Path(self.spec).name}: {teacher.name}"  # as make_teacher names it
        return teacher


@dataclass(frozen=True)
class _Selection:
    """Frame selection and JPG quality of a labelling run, for workers."""

    every: int
    start: int
    end: int | None
    jpg_quality: int


class ShardRunner:
    """Ray worker function (:func:`det_toolkit.runtime.ray_run.run_jobs`): labels a whole source
    (video, stream) into its shard folder; called with ``(source, folder)``, returns its :class:`Shard`.

    Raises (call): FileNotFoundError / SourceError / LabelError as :func:`label_sources`.
    """

    def __init__(self, teacher: TeacherSpec, threads: int, sel: _Selection) -> None:
        self.teacher, self.sel = teacher.build(threads), sel

    def __call__(self, job: tuple[str, str]) -> Shard:
        source, folder = job
        src = _open(source, self.sel.end)
        try:
            return label_shard(src, source, self.teacher, Path(folder), self.sel.every, self.sel.start,
                               self.sel.end, self.sel.jpg_quality, progress=False)
        finally:
            src.close()


class ImageBatchLabeller:
    """Ray Data worker function (:func:`det_toolkit.runtime.ray_run.map_rows`): labels a batch of
    images of image-set sources into their shard folders (decoded as det-label does, with
    :class:`~det_toolkit.runtime.sources.ImageSource`).

    Call:
        ``rows``: dicts ``src`` (source number), ``index`` (position in the source), ``path``.
        Returns per row: ``src``, ``index``, ``name``, ``stem``, ``ok`` (decoded), ``truncated``,
        ``error`` (the teacher's or writer's failure, ``""``), ``width``/``height`` px, ``boxes``
        (float32 ``[K, 4]`` xyxy px as bytes), ``scores`` (float32 bytes), ``labels`` (int64 bytes), ``ms``.
    """

    def __init__(self, teacher: TeacherSpec, threads: int, sel: _Selection, sources: list[str],
                 folders: list[str]) -> None:
        self.teacher, self.sel, self.sources, self.folders = teacher.build(threads), sel, sources, folders

    def __call__(self, rows: list[dict]) -> list[dict]:
        src = ImageSource(SourceInfo("batch", False, len(rows)), [Path(r["path"]) for r in rows])
        done: dict[int, tuple[str, LabelledFrame | None, float, str]] = {}
        for j, name, img in src:
            r = rows[j]
            try:
                f, ms = label_frame(self.teacher, img, r["index"], Path(name).stem, Path(self.folders[r["src"]]),
                                    self.sel.jpg_quality, f"({name}) of {self.sources[r['src']]}")
                done[j] = (name, f, ms, "")
            except LabelError as e:
                done[j] = (name, None, 0.0, str(e))
        truncated = set(src.truncated)
        out = []
        for j, r in enumerate(rows):
            name, f, ms, error = done.get(j, (Path(r["path"]).name, None, 0.0, ""))
            d = f.dets if f is not None else None
            out.append({"src": r["src"], "index": r["index"], "name": name, "stem": f.stem if f else "",
                        "ok": j in done, "truncated": name in truncated, "error": error,
                        "width": f.width if f else 0, "height": f.height if f else 0,
                        "boxes": d.boxes.astype(np.float32).tobytes() if d is not None else b"",
                        "scores": d.scores.astype(np.float32).tobytes() if d is not None else b"",
                        "labels": d.labels.astype(np.int64).tobytes() if d is not None else b"", "ms": ms})
        return out


def label_on_ray(sources: Sequence[str], teacher: TeacherSpec, out: str | Path, fmt: str = "voc", every: int = 1,
                 start: int = 0, end: int | None = None, val_fraction: float = 0.2, jpg_quality: int = 95,
                 address: str = "auto", workers: int | None = None, threads: int | None = None,
                 echo: Callable[[str], None] = print) -> LabelSummary:
    """``det-label SOURCES... --ray``: :func:`label_sources` with the sources shared out to Ray
    workers (:mod:`det_toolkit.runtime.ray_run`), writing the same dataset: videos and streams one
    actor task each (:class:`ShardRunner`), the selected images of folders, globs and list files
    through Ray Data (:class:`ImageBatchLabeller`); the workers save the frames into
    ``out/.shards/<k>/`` (a folder every node sees), the driver names them, splits and writes labels.

    A source that cannot be opened or labelled (or whose worker died past Ray's retries) is
    recorded in :attr:`LabelSummary.failed`. ``skipped`` counts the unreadable images among the
    selected ones (a plain run also counts those between them).

    Args:
        teacher: the teacher's options; the driver builds it once to check them.
        address / workers / threads: ``--ray``, ``--ray-workers``, ``--ray-threads``
            (:func:`~det_toolkit.runtime.ray_run.plan_workers`).
        echo: where progress lines go.
        Others: as :func:`label_source`.

    Raises:
        As :func:`label_sources`; RayJobError / MissingExtraError as
        :func:`det_toolkit.runtime.ray_run.run_on_ray`.
    """
    from det_toolkit.runtime import ray_run

    out = Path(out)
    _check_request(fmt, every, start, end, val_fraction, out)
    ray_run.require_extra(ray_run.RAY, "det-label --ray")
    if "-" in sources:
        raise ray_run.RayJobError("stdin (-) cannot be shared out to Ray workers: run it without --ray")
    checked = teacher.build()  # bad teacher options fail here, before Ray starts
    sel = _Selection(every, start, end, jpg_quality)
    shards: list[Shard | None] = [None] * len(sources)
    failed: dict[int, str] = {}
    whole: list[int] = []
    rows: list[dict] = []
    with _leave_as_found(out):
        for k, source in enumerate(sources):
            folder = (out / SHARDS_DIR / str(k)).resolve()  # workers' working folder may differ
            folder.mkdir(parents=True)
            try:
                kind, files = ray_run.source_kind(source)
            except (OSError, ValueError) as e:
                failed[k] = str(e)
                continue
            if kind == "stream" and end is None:
                failed[k] = f"{source} is a live source: give --end to say when to stop"
            elif kind == "images":
                shards[k] = Shard(source, str(folder), total=len(files))
                stop = len(files) if end is None else min(end, len(files))
                rows += [{"src": k, "index": i, "path": str(files[i].resolve())} for i in range(start, stop, every)]
            else:
                whole.append(k)
        for k, why in failed.items():
            echo(f"failed: {sources[k]}: {why}")
        if whole or rows:
            with ray_run.connect(address):
                plan = ray_run.plan_workers(max(len(whole), -(-len(rows) // ray_run.DATA_BATCH)), workers, threads,
                                            teacher.device if is_artifact_spec(teacher.spec) else "cpu")
                echo(f"Ray: {plan.nodes} node(s), {plan.cpus} CPUs; {plan.count} worker(s) x {plan.threads} "
                     f"thread(s); {len(whole)} source task(s), {len(rows)} images on Ray Data")
                if whole:
                    jobs = [(sources[k], str((out / SHARDS_DIR / str(k)).resolve())) for k in whole]
                    for k, r in zip(whole, ray_run.run_jobs(ShardRunner, (teacher, plan.threads, sel), jobs, plan)):
                        if r.error is not None:
                            failed[k] = r.error
                            echo(f"failed: {sources[k]}: {r.error}")
                        else:
                            shards[k] = r.value
                            echo(f"done: {sources[k]}: {len(r.value.frames)} frames on {r.worker}")
                if rows:
                    _label_rows(rows, shards, failed, teacher, plan, sel, list(sources), out, echo)
        ok = [s for k, s in enumerate(shards) if s is not None and k not in failed]
        return write_labelled(out, ok, [{"source": sources[k], "reason": failed[k]} for k in sorted(failed)],
                              checked.name, checked.class_names, sources, fmt, every, start, end, val_fraction)


def _label_rows(rows: list[dict], shards: list[Shard | None], failed: dict[int, str], teacher: TeacherSpec,
                plan: Workers, sel: _Selection, sources: list[str], out: Path, echo: Callable[[str], None]) -> None:
    """The image rows of :func:`label_on_ray` on Ray Data: each result row becomes a frame of its
    source's shard (rows arrive in order); a row's error or a Ray Data failure fails its source(s)."""
    from det_toolkit.runtime import ray_run
    from det_toolkit.runtime.predictor import Detections

    folders = [str((out / SHARDS_DIR / str(k)).resolve()) for k in range(len(sources))]
    try:
        for r in ray_run.map_rows(ImageBatchLabeller, (teacher, plan.threads, sel, sources, folders), rows, plan,
                                  ray_run.DATA_BATCH):
            k, s = int(r["src"]), shards[int(r["src"])]
            if r["error"]:
                failed.setdefault(k, r["error"])
            elif not r["ok"]:
                s.skipped += 1
            else:
                dets = Detections(np.frombuffer(r["boxes"], np.float32).reshape(-1, 4),
                                  np.frombuffer(r["scores"], np.float32), np.frombuffer(r["labels"], np.int64))
                s.frames.append(LabelledFrame(r["stem"], int(r["index"]), int(r["width"]), int(r["height"]), dets))
                s.times_ms.append(float(r["ms"]))
                if r["truncated"]:
                    s.truncated.append(r["name"])
    except Exception as e:  # noqa: BLE001 - Ray Data gave up: its sources fail, the others are kept
        why = f"Ray Data failed: {(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}"
        for k in {r["src"] for r in rows}:
            failed.setdefault(k, why)
    for k in sorted({r["src"] for r in rows}):
        if k in failed:
            echo(f"failed: {sources[k]}: {failed[k]}")
        else:
            echo(f"done: {sources[k]}: {len(shards[k].frames)} images on Ray Data")


# --- CLI ------------------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, "--version", prog_name="det-label")
@click.argument("sources", nargs=-1, required=True, metavar="SOURCE...")
@click.option("--teacher", default="hog", help="'hog' (OpenCV's HOG people detector, class 'person') "
              "or a detector artifact: .onnx, .pt, .engine.")
@click.option("--format", "fmt", default="voc", type=click.Choice(FORMATS),
              help="Label format: Pascal VOC XML (labelImg), YOLO txt or COCO JSON.")
@click.option("--project", default="runs/label", type=click.Path(path_type=Path),
              help="Parent folder of the dataset folder.")
@click.option("--name", default=None, show_default="the (first) source's stem",
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
@click.option("--ray", "ray_address", default=None, is_flag=False, flag_value="auto", metavar="[ADDRESS]",
              show_default="off", help="Label the sources on a Ray cluster (the [ray] extra): 'auto' (a running "
              "cluster, else a local one), 'local', or HOST:PORT / ray://HOST:PORT; one dataset as without --ray. "
              "Write it after the sources or as --ray=ADDRESS.", callback=ray_address_option)
@click.option("--ray-workers", default=None, type=click.IntRange(1), show_default="one per source, at most the CPUs",
              help="--ray: worker actors (each builds the teacher once).")
@click.option("--ray-threads", default=None, type=click.IntRange(1),
              show_default="the most that fit: workers x threads <= each node's CPUs",
              help="--ray: CPUs per worker (its ONNX Runtime and OpenCV threads).")
def main(sources: tuple[str, ...], teacher: str, fmt: str, project: Path, name: str | None, out: Path | None,
         every: int, start: int, end: int | None,
         val_fraction: float, conf: float, classes: str | None, imgsz: int | None, device: str,
         hog_score: float, hog_upscale: float, hog_stride: int, quality: int, ray_address: str | None,
         ray_workers: int | None, ray_threads: int | None) -> None:
    """Auto-annotate frames of SOURCE (a video file, a folder of images, a quoted glob, a list file)
    with a teacher and write a dataset (JPG frames, labels, train/val lists, data.yaml) ready to
    review in labelImg or CVAT and to train on with det-train. Several SOURCEs make one dataset
    (frames in the order given); one that fails is reported and the others are labelled (exit
    status 1). With --ray the sources are shared out to Ray workers.

    \b
    det-label ../shared/videos/vtest.avi --teacher hog --end 500 --every 3 --name people
    det-label photos/ --teacher best.onnx --format coco --conf 0.6 --classes person
    det-label cams/*.mp4 --teacher best.onnx --every 10 --ray
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
    if ray_address is None and (ray_workers or ray_threads):
        raise click.UsageError("--ray-workers and --ray-threads apply to --ray only")
    spec = TeacherSpec(teacher, device, conf, classes, imgsz, hog_score, hog_upscale, hog_stride)
    created = None
    try:
        check_writable(out or project, "--out" if out else "--project")  # before the teacher loads
        t = spec.build() if ray_address is None else None  # --ray: label_on_ray builds it (and checks it first)
        if out is None:  # after the teacher loaded: a bad teacher leaves no folder behind
            out = created = increment_path(project / (name or Path(sources[0]).stem or "source"))
        if ray_address is None:
            summary = label_sources(sources, t, out, fmt, every, start, end, val_fraction, quality)
        else:
            summary = label_on_ray(sources, spec, out, fmt, every, start, end, val_fraction, quality, ray_address,
                                   ray_workers, ray_threads, echo=click.echo)
    except ClassSpecError as e:
        raise click.BadParameter(str(e), param_hint="--classes") from e
    except (FileNotFoundError, ValueError, OSError, MissingExtraError) as e:
        if created is not None and created.exists() and not any(created.iterdir()):
            created.rmdir()  # e.g. a missing source: leave no empty run folder behind
        raise click.ClickException(str(e)) from e
    click.echo(summary.table())
    if summary.interrupted:
        click.echo("interrupted (Ctrl-C): the dataset holds the frames labelled so far", err=True)
    click.echo(f"Dataset ({fmt}) saved to {out}; train with: det-train --data {summary.data}")
    if summary.failed:
        raise click.ClickException(f"{len(summary.failed)} of {len(sources)} sources failed (listed above and in "
                                   f"{out / 'label_summary.json'}); the dataset holds the others")


if __name__ == "__main__":
    main()
