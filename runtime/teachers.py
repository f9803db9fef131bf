"""Teachers for ``det-label``: detectors that propose the boxes of an auto-labelled dataset.

* :class:`HogTeacher`: OpenCV's HOG + linear SVM people detector (Dalal & Triggs 2005, trained on
  INRIA Person; ``cv2.HOGDescriptor_getDefaultPeopleDetector``), class ``person``, no download.
* :class:`ArtifactTeacher`: any det-toolkit artifact (``.onnx``, ``.pt``, ``.engine``) through
  :func:`det_toolkit.runtime.backends.load_backend` and :class:`det_toolkit.runtime.predictor.Predictor`.

:func:`make_teacher` builds one from a ``--teacher`` value. The labelling loop and the dataset
writers are :mod:`det_toolkit.train.label` and :mod:`det_toolkit.train.data.writers`.

torch-free: torch is imported only when an artifact teacher is a ``.pt`` checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np

from det_toolkit.runtime.backends import Backend, load_backend
from det_toolkit.runtime.classes import parse_classes
from det_toolkit.runtime.predictor import Detections, Predictor

#: ``--teacher`` values naming an artifact file (by suffix) rather than a built-in teacher
ARTIFACT_SUFFIXES = (".onnx", ".pt", ".pth", ".engine")
#: boxes narrower or shorter than this (pixels, after clipping to the frame) are dropped
MIN_BOX_PX = 2.0


class TeacherError(ValueError):
    """A ``--teacher`` value names no teacher (neither ``hog`` nor an artifact file)."""


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


#: OpenCV's default people detector window, ``(height, width)`` pixels.
HOG_WINDOW = (128, 64)


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
        if img.shape[0] < HOG_WINDOW[0] or img.shape[1] < HOG_WINDOW[1]:
            # smaller than one detection window: nothing to find (and OpenCV's detectMultiScale crashes)
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
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
        TeacherError: ``spec`` is neither ``hog`` nor an artifact path.
        FileNotFoundError, det_toolkit.runtime.backends.BackendError, det_toolkit.runtime.meta.MetadataError:
            the artifact cannot be loaded (see :func:`det_toolkit.runtime.backends.load_backend`).
        det_toolkit.runtime.classes.ClassSpecError: an unknown class in ``classes``.
        ValueError: a HOG parameter out of range (:class:`HogTeacher`).
    """
    if spec.lower() == "hog":
        return HogTeacher(score_thresh=hog_score, win_stride=(hog_stride, hog_stride), upscale=hog_upscale)
    if not is_artifact_spec(spec):
        raise TeacherError(f"teacher '{spec}' is neither 'hog' nor a detector artifact "
                           f"({', '.join(ARTIFACT_SUFFIXES)})")
    backend = load_backend(spec, device)
    ids = parse_classes(classes, backend.meta.class_names) if classes else None
    teacher = ArtifactTeacher(backend, conf, ids, imgsz)
    teacher.name = f"{Path(spec).name}: {teacher.name}"
    return teacher
