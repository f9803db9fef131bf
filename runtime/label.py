"""``det-label``: auto-annotate video frames or images with a teacher detector and write a dataset.

A *teacher* proposes boxes; ``det-label`` keeps every ``--every``-th frame of ``--start:--end``,
saves it as JPG with the teacher's boxes as Pascal VOC XML, YOLO txt or COCO JSON, splits the
frames into train/val and writes a data YAML that ``det-train`` reads. The labels are only as good
as the teacher: review them (labelImg, CVAT) before trusting a model trained on them.

Teachers:

* :class:`HogTeacher`: OpenCV's HOG + linear SVM people detector (Dalal & Triggs 2005, trained on
  INRIA Person; ``cv2.HOGDescriptor_getDefaultPeopleDetector``), class ``person``, no download.
* :class:`ArtifactTeacher`: any det-toolkit artifact (``.onnx``, ``.pt``, ``.engine``) through
  :func:`det_toolkit.runtime.backends.load_backend` and :class:`det_toolkit.runtime.predictor.Predictor`.

Dataset layout under ``--out`` (frames are ``images/<stem>.jpg``; video frames are named
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

torch-free: torch is imported only when an artifact teacher is a ``.pt`` checkpoint.
"""

from __future__ import annotations

import json
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import click
import cv2
import numpy as np
import yaml
from tqdm import tqdm

from det_toolkit.runtime.backends import Backend, load_backend
from det_toolkit.runtime.predictor import Detections, Predictor
from det_toolkit.runtime.sources import Source, open_source
from det_toolkit.runtime.writers import YoloTxtWriter

FORMATS = ("voc", "yolo", "coco")
ARTIFACT_SUFFIXES = (".onnx", ".pt", ".pth", ".engine")
#: boxes narrower or shorter than this (pixels, after clipping to the frame) are dropped
MIN_BOX_PX = 2.0


class LabelError(ValueError):
    """Labelling cannot start or finish (bad teacher spec, empty frame range, output not empty)."""


@runtime_checkable
class Teacher(Protocol):
    """Anything that maps a frame to detections.

    Attributes:
        name: human-readable description (recorded in the dataset's summary).
        class_names: the classes the teacher's labels index, in order.
    """

    name: str
    class_names: list[str]

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        """Detect in ``frame_bgr`` (uint8 ``[H, W, 3]`` BGR).

        Returns:
            :class:`~det_toolkit.runtime.predictor.Detections`: boxes float32 ``[K, 4]`` ``xyxy`` absolute
            frame pixels (clipped to the frame), scores float32 ``[K]``, labels int64 ``[K]``
            (0-based indices into ``class_names``).
        """
        ...


class HogTeacher:
    """OpenCV's HOG people detector (64x128 window, default INRIA linear SVM) as a teacher.

    ``detectMultiScale`` scans an image pyramid; overlapping windows are then suppressed with
    ``cv2.dnn.NMSBoxes`` (greedy NMS on the SVM decision values), and windows are shrunk by
    ``shrink`` (fractions of width and height per side, as OpenCV's ``peopledetect.py`` sample
    draws them) because the 64x128 window holds a margin of context around the person. The window
    cannot see people shorter than ~128 px (~100 px after shrinking); ``upscale`` > 1 enlarges the
    frame first to find smaller people, at ~``upscale**2`` the cost.

    Args:
        score_thresh: minimum SVM decision value (a margin, not a probability; typical hits 0.3-3).
        nms_iou: IoU above which the lower-scoring of two windows is suppressed.
        win_stride: window step ``(x, y)`` in pixels of the (upscaled) image.
        padding: padding ``(x, y)`` in pixels added around the image before scanning.
        scale: pyramid scale step (> 1).
        upscale: factor the frame is resized by before detection (>= 1; boxes come back in
            original-frame pixels).
        shrink: ``(fx, fy)`` fraction of the window's width/height removed from each side.

    Attributes:
        class_names: ``["person"]``.

    Raises:
        ValueError: a parameter out of range.
    """

    class_names: list[str]

    def __init__(self, score_thresh: float = 0.5, nms_iou: float = 0.3,
                 win_stride: tuple[int, int] = (8, 8), padding: tuple[int, int] = (8, 8),
                 scale: float = 1.05, upscale: float = 1.0, shrink: tuple[float, float] = (0.15, 0.05)) -> None:
        if scale <= 1.0:
            raise ValueError(f"HOG pyramid scale must be > 1, got {scale}")
        if upscale < 1.0:
            raise ValueError(f"HOG upscale must be >= 1, got {upscale}")
        if not (0 <= shrink[0] < 0.5 and 0 <= shrink[1] < 0.5):
            raise ValueError(f"HOG shrink fractions must be in [0, 0.5), got {shrink}")
        if not 0 < nms_iou <= 1:
            raise ValueError(f"HOG NMS IoU must be in (0, 1], got {nms_iou}")
        self.hog = cv2.HOGDescriptor()
        self.hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        self.score_thresh, self.nms_iou = float(score_thresh), float(nms_iou)
        self.win_stride, self.padding = tuple(win_stride), tuple(padding)
        self.scale, self.upscale, self.shrink = float(scale), float(upscale), tuple(shrink)
        self.class_names = ["person"]
        self.name = (f"OpenCV HOG people detector (cv2 {cv2.__version__}, default SVM; "
                     f"score>={score_thresh:g}, NMS IoU {nms_iou:g}, stride {win_stride[0]}, "
                     f"scale {scale:g}, upscale {upscale:g})")

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        """Detect people; see :meth:`Teacher.__call__` (scores are SVM decision values, not in [0, 1])."""
        h, w = frame_bgr.shape[:2]
        img = frame_bgr if self.upscale == 1.0 else cv2.resize(
            frame_bgr, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        rects, weights = self.hog.detectMultiScale(img, winStride=self.win_stride, padding=self.padding,
                                                   scale=self.scale)
        rects = np.asarray(rects, np.float32).reshape(-1, 4)
        scores = np.asarray(weights, np.float32).reshape(-1)
        keep = np.asarray(cv2.dnn.NMSBoxes(rects.tolist(), scores.tolist(), self.score_thresh,
                                           self.nms_iou), np.int64).reshape(-1) if len(rects) else \
            np.zeros(0, np.int64)
        rects, scores = rects[keep] / self.upscale, scores[keep]
        x, y, bw, bh = rects.T
        fx, fy = self.shrink
        boxes = np.stack([x + fx * bw, y + fy * bh, x + (1 - fx) * bw, y + (1 - fy) * bh], 1)
        return clip_detections(Detections(boxes.reshape(-1, 4).astype(np.float32), scores,
                                          np.zeros(len(scores), np.int64)), w, h)


class ArtifactTeacher:
    """One of our detector artifacts as a teacher.

    Args:
        backend: a loaded artifact (:func:`det_toolkit.runtime.backends.load_backend`).
        conf: minimum score kept, in ``[0, 1]``.
        classes: 0-based class ids of the artifact to keep (``None``: all); the dataset's classes
            are these, in this order.
        imgsz: letterbox size override in pixels (see :class:`~det_toolkit.runtime.predictor.Predictor`).

    Attributes:
        class_names: the kept class names (from the artifact's metadata).

    Raises:
        ValueError: class id out of range, or ``imgsz`` on a fixed-size graph.
    """

    def __init__(self, backend: Backend, conf: float = 0.5, classes: Sequence[int] | None = None,
                 imgsz: int | None = None) -> None:
        names = backend.meta.class_names
        self.predictor = Predictor(backend, conf, classes, imgsz)
        self.keep_ids = list(range(len(names))) if classes is None else list(dict.fromkeys(classes))
        self.class_names = [names[i] for i in self.keep_ids]
        self._remap = np.full(len(names), -1, np.int64)
        self._remap[self.keep_ids] = np.arange(len(self.keep_ids))
        self.name = f"{backend.meta.model} artifact via {backend.name} (conf>={conf:g})"

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        """Detect; see :meth:`Teacher.__call__` (labels re-indexed into the kept classes)."""
        d = self.predictor(frame_bgr)
        return Detections(d.boxes, d.scores, self._remap[d.labels])


def clip_detections(dets: Detections, width: int, height: int) -> Detections:
    """Clip ``xyxy`` boxes to ``[0, width] x [0, height]`` pixels and drop those under
    :data:`MIN_BOX_PX` on a side (or non-finite)."""
    b = dets.boxes.astype(np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = b[:, 0::2].clip(0, width)
    b[:, 1::2] = b[:, 1::2].clip(0, height)
    keep = np.isfinite(b).all(1) & (b[:, 2] - b[:, 0] >= MIN_BOX_PX) & (b[:, 3] - b[:, 1] >= MIN_BOX_PX)
    return Detections(b[keep], dets.scores[keep].astype(np.float32), dets.labels[keep].astype(np.int64))


def is_artifact_spec(spec: str) -> bool:
    """Whether a ``--teacher`` value names an artifact file (by suffix) rather than a built-in."""
    return Path(spec).suffix.lower() in ARTIFACT_SUFFIXES


# --- writers --------------------------------------------------------------------------------------


@dataclass
class LabelledFrame:
    """One saved frame and the teacher's boxes on it.

    Attributes:
        stem: file stem (``images/<stem>.jpg``).
        index: 0-based frame index in the source (image position for folders).
        width / height: frame size in pixels.
        dets: boxes float32 ``[K, 4]`` ``xyxy`` absolute pixels, scores ``[K]``, labels int64 ``[K]``.
    """

    stem: str
    index: int
    width: int
    height: int
    dets: Detections

    @property
    def file_name(self) -> str:
        """The image's file name under ``images/``."""
        return f"{self.stem}.jpg"


def voc_xml(frame: LabelledFrame, class_names: Sequence[str], folder: str = "images",
            path: Path | None = None) -> str:
    """A labelImg-style Pascal VOC XML annotation of ``frame``.

    Continuous ``xyxy`` boxes become 1-based inclusive integer pixels
    ``xmin = round(x1) + 1, ymin = round(y1) + 1, xmax = round(x2), ymax = round(y2)`` (the inverse of
    the ``[xmin - 1, ymin - 1, xmax, ymax]`` reading in ``det_toolkit.train.data.formats``); ``truncated`` is 1
    for boxes touching the frame border, ``difficult`` 0.
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = frame.file_name
    if path is not None:
        ET.SubElement(root, "path").text = str(path)
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "det-label"
    size = ET.SubElement(root, "size")
    for k, v in (("width", frame.width), ("height", frame.height), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for (x1, y1, x2, y2), c in zip(frame.dets.boxes.tolist(), frame.dets.labels.tolist()):
        xmin, ymin = min(max(round(x1) + 1, 1), frame.width), min(max(round(y1) + 1, 1), frame.height)
        xmax, ymax = max(min(round(x2), frame.width), xmin), max(min(round(y2), frame.height), ymin)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[c]
        ET.SubElement(obj, "pose").text = "Unspecified"
        edge = xmin <= 1 or ymin <= 1 or xmax >= frame.width or ymax >= frame.height
        ET.SubElement(obj, "truncated").text = "1" if edge else "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for k, v in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(bb, k).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def coco_dataset(frames: Sequence[LabelledFrame], class_names: Sequence[str]) -> dict:
    """A COCO detection ground-truth dict for ``frames``.

    Image ids are ``1..N`` in order, annotation ids ``1..M``, category ids ``1..C`` (label ``i`` is
    category ``i + 1``); ``bbox`` is ``[x, y, w, h]`` in pixels (2 decimals), ``area = w * h``,
    ``iscrowd`` 0; ``file_name`` is relative to ``images/``.
    """
    images, anns = [], []
    for image_id, f in enumerate(frames, 1):
        images.append({"id": image_id, "file_name": f.file_name, "width": f.width, "height": f.height,
                       "frame_index": f.index})
        for (x1, y1, x2, y2), c in zip(f.dets.boxes.tolist(), f.dets.labels.tolist()):
            bw, bh = round(x2 - x1, 2), round(y2 - y1, 2)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c + 1,
                         "bbox": [round(x1, 2), round(y1, 2), bw, bh], "area": round(bw * bh, 2),
                         "iscrowd": 0})
    return {"info": {"description": "auto-labelled by det-label"}, "images": images,
            "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(class_names)]}


def write_dataset(out: Path, fmt: str, frames: Sequence[LabelledFrame], n_val: int,
                  class_names: Sequence[str], header: str = "") -> Path:
    """Write the labels, split lists and ``data.yaml`` for frames already saved under ``out/images``.

    Args:
        out: dataset root.
        fmt: ``voc``, ``yolo`` or ``coco``.
        frames: the labelled frames in source order.
        n_val: how many of the last ``frames`` form the val split.
        class_names: the dataset's classes (label ``i`` is ``class_names[i]``).
        header: comment lines written at the top of ``data.yaml`` (without ``#``).

    Returns:
        The ``data.yaml`` path.

    Raises:
        ValueError: unknown ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    splits = {"train": list(frames[:len(frames) - n_val]), "val": list(frames[len(frames) - n_val:])}
    data: dict = {"path": ".", "format": fmt}
    if fmt == "voc":
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        for f in frames:
            (out / "annotations" / f"{f.stem}.xml").write_text(
                voc_xml(f, class_names, "images", (out / "images" / f.file_name).resolve()), encoding="utf-8")
        for split, fs in splits.items():
            (out / f"{split}.txt").write_text("".join(f"{f.stem}\n" for f in fs), encoding="utf-8")
        data.update(train="train.txt", val="val.txt", images="images", labels="annotations")
    elif fmt == "yolo":
        writer = YoloTxtWriter(out / "labels", is_video=False, stem="")
        for f in frames:
            writer.write(f.index, f.file_name, (f.height, f.width), f.dets)
        (out / "labels" / "classes.txt").write_text("".join(f"{n}\n" for n in class_names), encoding="utf-8")
        for split, fs in splits.items():  # "./" paths: Ultralytics resolves them against the list file
            (out / f"{split}.txt").write_text("".join(f"./images/{f.file_name}\n" for f in fs),
                                              encoding="utf-8")
        data.update(train="train.txt", val="val.txt", images="images", labels="labels")
    else:
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        for split, fs in splits.items():
            (out / "annotations" / f"{split}.json").write_text(
                json.dumps(coco_dataset(fs, class_names)) + "\n", encoding="utf-8")
        data.update(train="annotations/train.json", val="annotations/val.json", images="images")
    data["names"] = list(class_names)
    path = out / "data.yaml"
    comments = "".join(f"# {ln}\n" for ln in header.splitlines())
    path.write_text(comments + yaml.safe_dump(data, sort_keys=False, default_flow_style=None),
                    encoding="utf-8")
    return path


# --- labelling ------------------------------------------------------------------------------------


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
    interrupted: bool = False

    def table(self) -> str:
        """A human-readable summary (several lines)."""
        mean, lo, hi = self.boxes_per_frame
        per_class = ", ".join(f"{n} {k}" for n, k in self.boxes_per_class.items())
        return (f"{self.frames} frames labelled (source frames {self.first_frame}-{self.last_frame}, "
                f"every {self.every}): {self.train} train, {self.val} val\n"
                f"{self.boxes} boxes ({per_class}); boxes per frame: mean {mean:.2f}, min {lo}, max {hi}; "
                f"{self.negatives} frames without boxes kept as negative images\n"
                f"teacher: {self.teacher}\n"
                f"teacher ms per frame: mean {self.teacher_ms[0]:.1f}, median {self.teacher_ms[1]:.1f}")


def select_frames(source: Source, every: int = 1, start: int = 0,
                  end: int | None = None) -> Iterator[tuple[int, str, np.ndarray]]:
    """The frames of ``source`` with index in ``[start, end)`` and ``(index - start) % every == 0``.

    Yields ``(index, name, frame_bgr)`` as :class:`~det_toolkit.runtime.sources.Source` does; stops reading at
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

    Raises:
        FileNotFoundError / det_toolkit.runtime.sources.SourceError: ``source`` cannot be opened.
        LabelError: bad arguments, ``out`` not empty, no frame in the range, a frame that cannot be
            saved, or a live source without ``end``.
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
    src = open_source(source)
    if src.info.live and end is None:
        src.close()
        raise LabelError(f"{source} is a live source: give --end to say when to stop")
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
            dets = teacher(frame)
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
        first_frame=frames[0].index, last_frame=frames[-1].index, interrupted=interrupted)
    header = (f"Auto-labelled by det-label: {summary.frames} frames of {source} "
              f"(frames {summary.first_frame}-{summary.last_frame}, every {every}); val = the last "
              f"{n_val} frames.\nTeacher: {teacher.name}.\n"
              "Machine labels, not human annotation: review them (labelImg, CVAT) before trusting them.")
    write_dataset(out, fmt, frames, n_val, names, header)
    (out / "label_summary.json").write_text(json.dumps(asdict(summary), indent=2) + "\n", encoding="utf-8")
    return summary


# --- CLI ------------------------------------------------------------------------------------------


def make_teacher(spec: str, device: str = "auto", conf: float = 0.5, classes: str | None = None,
                 imgsz: int | None = None, hog_score: float = 0.5, hog_upscale: float = 1.0,
                 hog_stride: int = 8) -> Teacher:
    """The teacher named by a ``--teacher`` value: ``hog`` or an artifact path.

    Args:
        spec: ``"hog"`` or a ``.onnx``/``.pt``/``.pth``/``.engine`` file.
        device / conf / classes / imgsz: artifact teachers only (``classes``: names or 0-based
            ids, comma separated).
        hog_score / hog_upscale / hog_stride: :class:`HogTeacher` ``score_thresh``, ``upscale`` and
            ``win_stride`` (both axes, pixels).

    Raises:
        LabelError: ``spec`` is neither ``hog`` nor an artifact path.
        FileNotFoundError, det_toolkit.runtime.backends.BackendError, det_toolkit.runtime.meta.MetadataError: the artifact
            cannot be loaded (see :func:`det_toolkit.runtime.backends.load_backend`).
        click.BadParameter: an unknown class in ``classes``.
    """
    if spec.lower() == "hog":
        return HogTeacher(score_thresh=hog_score, win_stride=(hog_stride, hog_stride), upscale=hog_upscale)
    if not is_artifact_spec(spec):
        raise LabelError(f"teacher '{spec}' is neither 'hog' nor a detector artifact "
                         f"({', '.join(ARTIFACT_SUFFIXES)})")
    from det_toolkit.runtime.cli import parse_classes

    backend = load_backend(spec, device)
    ids = parse_classes(classes, backend.meta.class_names) if classes else None
    teacher = ArtifactTeacher(backend, conf, ids, imgsz)
    teacher.name = f"{Path(spec).name}: {teacher.name}"
    return teacher


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("source")
@click.option("--teacher", default="hog", help="'hog' (OpenCV's HOG people detector, class 'person') "
              "or a detector artifact: .onnx, .pt, .engine.")
@click.option("--format", "fmt", default="voc", type=click.Choice(FORMATS),
              help="Label format: Pascal VOC XML (labelImg), YOLO txt or COCO JSON.")
@click.option("--out", default=None, type=click.Path(path_type=Path), show_default="runs/label/<source stem>",
              help="Dataset folder (created; must be empty or absent).")
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
@click.option("--imgsz", default=None, type=click.IntRange(32), show_default="the model's",
              help="Artifact teacher: letterbox size in pixels.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]),
              help="Artifact teacher: inference device.")
@click.option("--hog-score", default=0.5, type=float, help="HOG: minimum SVM decision value kept.")
@click.option("--hog-upscale", default=1.0, type=click.FloatRange(1, 4),
              help="HOG: enlarge frames by this factor first, to find people under ~128 px tall "
              "(cost ~ factor squared).")
@click.option("--hog-stride", default=8, type=click.IntRange(1), help="HOG: window stride in pixels.")
@click.option("--quality", default=95, type=click.IntRange(1, 100), help="JPEG quality of the saved frames.")
def main(source: str, teacher: str, fmt: str, out: Path | None, every: int, start: int, end: int | None,
         val_fraction: float, conf: float, classes: str | None, imgsz: int | None, device: str,
         hog_score: float, hog_upscale: float, hog_stride: int, quality: int) -> None:
    """Auto-annotate frames of SOURCE (a video file, a folder of images, a quoted glob, a list file)
    with a teacher and write a dataset (JPG frames, labels, train/val lists, data.yaml) ready to
    review in labelImg or CVAT and to train on with det-train.

    \b
    det-label ../shared/videos/vtest.avi --teacher hog --end 500 --every 3 --out people
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
    if out is None:
        out = Path("runs/label") / (Path(source).stem or "source")
    try:
        t = make_teacher(teacher, device, conf, classes, imgsz, hog_score, hog_upscale, hog_stride)
        summary = label_source(source, t, out, fmt, every, start, end, val_fraction, quality)
    except (FileNotFoundError, ValueError, OSError) as e:
        raise click.ClickException(str(e)) from e
    click.echo(summary.table())
    if summary.interrupted:
        click.echo("interrupted (Ctrl-C): the dataset holds the frames labelled so far", err=True)
    click.echo(f"Dataset ({fmt}) saved to {out}; train with: det-train --data {summary.data}")


if __name__ == "__main__":
    main()
