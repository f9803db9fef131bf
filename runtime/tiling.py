"""SAHI tiled inference: slice a frame with ``sahi``, detect all tiles in one batch, merge with ``sahi``.

Slicing is :func:`sahi.slicing.get_slice_bboxes` and merging is ``sahi``'s own postprocess classes
(:class:`~sahi.postprocess.combine.GreedyNMMPostprocess`, ``NMMPostprocess``, ``NMSPostprocess``) on
:class:`~sahi.prediction.ObjectPrediction` lists, in the same order and with the same box
arithmetic as :func:`sahi.predict.get_sliced_prediction`; only the detector calls differ: every tile
(and the full frame) of a frame goes to the backend in one :meth:`Predictor.predict_batch` call
instead of one call per tile. :class:`SahiDetectionModel` wraps any of our backends as a ``sahi``
``DetectionModel`` so ``get_sliced_prediction`` itself can be run as the reference.

Importing this module pins ``sahi``'s postprocess backend to NumPy: its ``auto`` choice imports
torch whenever torchvision is installed, and the runtime must stay torch-free.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from sahi.models.base import DetectionModel
from sahi.postprocess.backends import set_postprocess_backend
from sahi.postprocess.combine import (
    GreedyNMMPostprocess,
    NMMPostprocess,
    NMSPostprocess,
    PostprocessPredictions,
)
from sahi.prediction import ObjectPrediction
from sahi.slicing import get_slice_bboxes

from det_toolkit.runtime.predictor import STAGES, Detections, Predictor

set_postprocess_backend("numpy")

#: ``--sahi-merge`` choices -> sahi postprocess classes (sahi's ``GREEDYNMM``, ``NMM``, ``NMS``).
MERGERS: dict[str, type[PostprocessPredictions]] = {
    "greedynmm": GreedyNMMPostprocess, "nmm": NMMPostprocess, "nms": NMSPostprocess}


@dataclass(frozen=True)
class SliceConfig:
    """SAHI settings; defaults are :func:`sahi.predict.get_sliced_prediction`'s.

    Attributes:
        slice_height: tile height in frame pixels; ``None`` with ``slice_width`` ``None``: sahi's
            automatic size for the frame resolution (``auto_slice_resolution``).
        slice_width: tile width in frame pixels (see ``slice_height``).
        overlap_height: vertical overlap of neighbouring tiles, fraction of ``slice_height`` in ``[0, 1)``.
        overlap_width: horizontal overlap, fraction of ``slice_width`` in ``[0, 1)``.
        full_frame: also detect on the whole frame (sahi's ``perform_standard_pred``; only when
            there is more than one tile, as in sahi).
        merge: ``"greedynmm"``, ``"nmm"`` or ``"nms"``.
        match_metric: ``"ios"`` (intersection over smaller area) or ``"iou"``.
        match_threshold: overlap above which two predictions are merged/suppressed.
        class_agnostic: merge across classes.
        max_tiles: most tiles one frame may be cut into (every tile is one detector input, so a
            tiny slice size would multiply the work and the batch memory without bound).

    Raises:
        ValueError: an unknown ``merge``/``match_metric``, an overlap outside ``[0, 1)``, only one
            of the slice sizes, or a non-positive slice size or ``max_tiles``.
    """

    slice_height: int | None = None
    slice_width: int | None = None
    overlap_height: float = 0.2
    overlap_width: float = 0.2
    full_frame: bool = True
    merge: str = "greedynmm"
    match_metric: str = "ios"
    match_threshold: float = 0.5
    class_agnostic: bool = False
    max_tiles: int = 64

    def __post_init__(self) -> None:
        if self.merge not in MERGERS:
            raise ValueError(f"unknown SAHI merge '{self.merge}'; use one of {', '.join(MERGERS)}")
        if self.match_metric not in ("ios", "iou"):
            raise ValueError(f"unknown SAHI match metric '{self.match_metric}'; use ios or iou")
        if not (0 <= self.overlap_height < 1 and 0 <= self.overlap_width < 1):
            raise ValueError(f"SAHI overlap must be in [0, 1), got {self.overlap_height}, {self.overlap_width}")
        if (self.slice_height is None) != (self.slice_width is None):
            raise ValueError("give both slice height and width, or neither (automatic size)")
        if self.slice_height is not None and min(self.slice_height, self.slice_width) < 1:
            raise ValueError(f"slice size must be positive, got {self.slice_height}x{self.slice_width}")
        if self.max_tiles < 1:
            raise ValueError(f"max_tiles must be positive, got {self.max_tiles}")

    def tile_count(self, height: int, width: int) -> int | None:
        """Tiles :meth:`windows` cuts a ``height x width`` frame into, computed without cutting
        (sahi's stepping: ``step = slice - int(overlap * slice)``); ``None`` for sahi's automatic
        size (a handful of tiles by construction)."""
        if self.slice_height is None:
            return None

        def along(size: int, slice_: int, overlap: float) -> int:
            step = max(1, slice_ - int(overlap * slice_))
            return 1 if size <= slice_ else math.ceil((size - slice_) / step) + 1

        return (along(height, self.slice_height, self.overlap_height)
                * along(width, self.slice_width, self.overlap_width))

    def check_tiles(self, height: int, width: int) -> None:
        """Raise ``ValueError`` when a ``height x width`` frame would need more than ``max_tiles``
        tiles (the message gives the count, the limit and the slice size that fits)."""
        n = self.tile_count(height, width)
        if n is not None and n > self.max_tiles:
            raise ValueError(
                f"--slice {self.slice_height}x{self.slice_width} with overlap {self.overlap_height:g}/"
                f"{self.overlap_width:g} cuts a {width}x{height} frame into {n} tiles, more than the limit of "
                f"{self.max_tiles} (--max-tiles): use a larger slice size")

    def postprocess(self) -> PostprocessPredictions:
        """A fresh sahi postprocess object for these settings."""
        return MERGERS[self.merge](match_threshold=self.match_threshold,
                                   match_metric=self.match_metric.upper(),
                                   class_agnostic=self.class_agnostic)

    def windows(self, height: int, width: int) -> np.ndarray:
        """Tile windows of a ``height x width`` frame from :func:`sahi.slicing.get_slice_bboxes`.

        Returns:
            int64 ``[T, 4]`` ``xyxy`` frame pixels (border tiles are shifted inwards to keep the
            full slice size, exactly as sahi cuts them).

        Raises:
            ValueError: more than ``max_tiles`` tiles (:meth:`check_tiles`).
        """
        self.check_tiles(height, width)
        return np.asarray(get_slice_bboxes(height, width, self.slice_height, self.slice_width,
                                           self.slice_height is None, self.overlap_height,
                                           self.overlap_width), np.int64).reshape(-1, 4)

    def sahi_kwargs(self) -> dict[str, Any]:
        """The same settings as keyword arguments of :func:`sahi.predict.get_sliced_prediction`."""
        return {"slice_height": self.slice_height, "slice_width": self.slice_width,
                "overlap_height_ratio": self.overlap_height, "overlap_width_ratio": self.overlap_width,
                "perform_standard_pred": self.full_frame, "postprocess_type": self.merge.upper(),
                "postprocess_match_metric": self.match_metric.upper(),
                "postprocess_match_threshold": self.match_threshold,
                "postprocess_class_agnostic": self.class_agnostic,
                "auto_slice_resolution": self.slice_height is None, "force_postprocess_type": True}


def to_object_predictions(dets: Detections, names: list[str], shift: tuple[int, int] = (0, 0),
                          out: list[ObjectPrediction] | None = None) -> list[ObjectPrediction]:
    """Shifted sahi predictions of one tile, as ``get_sliced_prediction`` builds them.

    Boxes with zero width or height are dropped (sahi's box type rejects nothing, but its models
    skip them). The shift is added in float64, as sahi adds a Python ``int`` to a Python ``float``.

    Args:
        dets: the tile's detections, ``xyxy`` tile pixels (clipped to the tile, so non-negative).
        names: class names indexed by ``dets.labels``.
        shift: ``(x, y)`` frame pixels of the tile's top-left corner.
        out: list to append to (returned); a new one if ``None``.
    """
    out = [] if out is None else out
    boxes = dets.boxes.astype(np.float64)
    boxes[:, 0::2] += shift[0]
    boxes[:, 1::2] += shift[1]
    for box, score, label in zip(boxes.tolist(), dets.scores.tolist(), dets.labels.tolist()):
        if box[2] > box[0] and box[3] > box[1]:
            out.append(ObjectPrediction(bbox=box, category_id=label, category_name=names[label],
                                        score=score, shift_amount=[0, 0], full_shape=None))
    return out


def from_object_predictions(preds: list[ObjectPrediction]) -> Detections:
    """sahi predictions -> :class:`Detections` (float32 ``xyxy`` frame px, float32 scores, int64 labels)."""
    if not preds:
        return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    return Detections(np.array([p.bbox.to_xyxy() for p in preds], np.float32),
                      np.array([p.score.value for p in preds], np.float32),
                      np.array([p.category.id for p in preds], np.int64))


class TiledPredictor:
    """SAHI sliced detection with one batched backend call per frame; a drop-in for :class:`Predictor`.

    Args:
        predictor: letterbox size, ``conf`` and ``classes`` of each tile's detection; square
            letterboxing (``rect=False``), so tiles and the full frame share one batch shape and
            ``get_sliced_prediction`` on the same predictor sees the same inputs.
        config: slicing and merging settings.

    Raises:
        ValueError: ``predictor.rect`` is on.

    Attributes:
        times_ms: last frame's stage times in ms, keys :data:`det_toolkit.runtime.predictor.STAGES`
            (``preprocess``: slicing + letterboxing; ``postprocess``: mapping + sahi merge).
        tiles: number of detector inputs of the last frame (tiles, plus the full frame).
    """

    def __init__(self, predictor: Predictor, config: SliceConfig = SliceConfig()) -> None:
        if predictor.rect:
            raise ValueError("SAHI tiling needs square letterboxing: Predictor(..., rect=False)")
        self.predictor = predictor
        self.config = config
        self.imgsz = predictor.imgsz
        self._names = predictor.backend.meta.class_names
        self._merge = config.postprocess()
        self._windows: dict[tuple[int, int], np.ndarray] = {}
        self.times_ms = dict.fromkeys(STAGES, 0.0)
        self.tiles = 0

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        """Detect objects in ``frame_bgr`` (uint8 ``[H, W, 3]`` BGR) tile by tile.

        Returns:
            Merged :class:`Detections`, ``xyxy`` in full-frame pixels.
        """
        t0 = time.perf_counter()
        h, w = frame_bgr.shape[:2]
        windows = self._windows.get((h, w))
        if windows is None:
            windows = self._windows[(h, w)] = self.config.windows(h, w)
        images = [frame_bgr[y0:y1, x0:x1] for x0, y0, x1, y1 in windows.tolist()]
        full = self.config.full_frame and len(windows) > 1
        if full:
            images.append(frame_bgr)
        self.tiles = len(images)
        per_image = self.predictor.predict_batch(images)
        preds: list[ObjectPrediction] = []
        for dets, (x0, y0) in zip(per_image, windows[:, :2].tolist()):
            to_object_predictions(dets, self._names, (x0, y0), preds)
        if full:  # sahi clips full-frame boxes to the frame: ours already are
            to_object_predictions(per_image[-1], self._names, (0, 0), preds)
        if len(preds) > 1:
            preds = self._merge(preds)
        dets = from_object_predictions(preds)
        t2 = time.perf_counter()
        inner = self.predictor.times_ms
        self.times_ms["preprocess"] = inner["preprocess"]
        self.times_ms["inference"] = inner["inference"]
        self.times_ms["postprocess"] = (t2 - t0) * 1e3 - inner["preprocess"] - inner["inference"]
        return dets


class SahiDetectionModel(DetectionModel):
    """Any det-toolkit backend as a ``sahi`` ``DetectionModel`` (for ``sahi.predict`` functions).

    sahi hands it RGB numpy images; each runs through ``predictor`` (letterbox, ``conf``,
    ``classes``) on its own. The device is whatever the predictor's backend uses; sahi's torch
    device selection is bypassed so no torch is imported.

    Args:
        predictor: the detector and its settings.
    """

    def __init__(self, predictor: Predictor) -> None:
        names = predictor.backend.meta.class_names
        super().__init__(model=predictor, confidence_threshold=predictor.conf, device="cpu",
                         category_mapping={str(i): n for i, n in enumerate(names)})

    def set_device(self, device: str | None = None) -> None:
        self.device = "cpu"

    def set_model(self, model: Any, **kwargs: Any) -> None:
        self.model = model

    def load_model(self) -> None:
        raise NotImplementedError("pass a Predictor: SahiDetectionModel(predictor)")

    def perform_inference(self, image: np.ndarray) -> None:
        """Detect on ``image`` (uint8 ``[H, W, 3]`` RGB); stores :class:`Detections`."""
        self._original_predictions = self.model(image[:, :, ::-1])

    def _create_object_prediction_list_from_original_predictions(
            self, shift_amount_list: list[list[int | float]] | None = [[0, 0]],  # noqa: B006 - sahi's
            full_shape_list: list[list[int | float]] | None = None) -> None:
        dets: Detections = self._original_predictions
        shift = shift_amount_list[0] if shift_amount_list and isinstance(shift_amount_list[0], list) \
            else (shift_amount_list or [0, 0])
        full = full_shape_list[0] if full_shape_list and isinstance(full_shape_list[0], list) \
            else full_shape_list
        names = self.model.backend.meta.class_names
        preds = [ObjectPrediction(bbox=box, category_id=label, category_name=names[label], score=score,
                                  shift_amount=list(shift), full_shape=full)
                 for box, score, label in zip(dets.boxes.tolist(), dets.scores.tolist(), dets.labels.tolist())
                 if box[2] > box[0] and box[3] > box[1]]
        self._object_prediction_list_per_image = [preds]
