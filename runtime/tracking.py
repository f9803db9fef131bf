"""Deep SORT multi-object tracking on top of :class:`det_toolkit.runtime.predictor.Detections`.

Wraps ``deep_sort_realtime``'s ``DeepSort`` with its own embedder switched off: appearance vectors
come from an :class:`det_toolkit.runtime.embedder.Embedder` (ONNX on the edge), computed for all boxes of a
frame in one batch.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# Deep SORT's Kalman gating makes many tiny scipy.linalg.solve_triangular calls; a multi-threaded
# OpenBLAS turns each into milliseconds once the cores are busy with inference (measured on 2 busy
# cores: 45 us single-threaded vs 5.7 ms with 2 threads, 7 ms vs 98 ms per tracked frame). OpenBLAS
# reads this when scipy first loads it, i.e. on the import below; an explicit user value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
from deep_sort_realtime.deepsort_tracker import DeepSort

from det_toolkit.configs import config_path
from det_toolkit.runtime.config_utils import FieldError, from_dict, load_yaml_mapping
from det_toolkit.runtime.embedder import Embedder, croppable
from det_toolkit.runtime.predictor import Detections

DEFAULT_TRACKER_CONFIG = config_path("tracker/deepsort.yaml")


@dataclass(frozen=True)
class TrackerConfig:
    """Deep SORT settings (see ``configs/tracker/deepsort.yaml``).

    Attributes:
        max_age: frames a track survives without a matched detection.
        n_init: consecutive matched frames before a track is confirmed.
        max_iou_distance: IoU gate (``1 - IoU``) for the IoU association stage.
        max_cosine_distance: cosine-distance gate for appearance matching.
        nn_budget: appearance vectors kept per track (``None``: unbounded).
        embedder_input_size: crop side in pixels the embedder expects.

    Raises:
        FieldError: a value out of range (counts < 1, ``max_iou_distance`` outside [0, 1],
            ``max_cosine_distance`` outside [0, 2]).
    """

    max_age: int = 30
    n_init: int = 3
    max_iou_distance: float = 0.7
    max_cosine_distance: float = 0.2
    nn_budget: int | None = 100
    embedder_input_size: int = 224

    def __post_init__(self) -> None:
        for key in ("max_age", "n_init", "embedder_input_size"):
            if getattr(self, key) < 1:
                raise FieldError(key, f"must be >= 1, got {getattr(self, key)}")
        if self.nn_budget is not None and self.nn_budget < 1:
            raise FieldError("nn_budget", f"must be >= 1 or null (unbounded), got {self.nn_budget}")
        if not 0 <= self.max_iou_distance <= 1:
            raise FieldError("max_iou_distance", f"must be in [0, 1], got {self.max_iou_distance}")
        if not 0 <= self.max_cosine_distance <= 2:
            raise FieldError("max_cosine_distance", f"must be in [0, 2], got {self.max_cosine_distance}")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrackerConfig:
        """Load a YAML mapping of these fields (missing ones keep their defaults), values checked and
        coerced by type (:func:`det_toolkit.runtime.config_utils.from_dict`).

        Raises:
            FileNotFoundError: no such file.
            ConfigError (a ValueError): YAML syntax error (file:line), not a mapping, an unknown key
                (the message suggests the nearest one), a bad value (``t.yaml: n_init: expected an
                integer, got 'abc'``).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tracker config not found: {path}")
        return from_dict(cls, load_yaml_mapping(path), str(path))


@dataclass(frozen=True)
class Track:
    """A confirmed track matched to a detection in the current frame.

    Attributes:
        track_id: stable integer id (1, 2, ...), unique for the tracker's lifetime.
        box: float32 ``[4]`` ``xyxy`` frame pixels of the matched detection.
        class_id: 0-based class index by majority vote over every detection matched to the track
            so far (ties: the class seen first), so one misclassified frame does not flip it.
        score: confidence of the matched detection.
        det_index: index of the matched detection in the :class:`Detections` passed to ``update``.
    """

    track_id: int
    box: np.ndarray
    class_id: int
    score: float
    det_index: int


class Tracker:
    """Deep SORT with an external appearance embedder.

    Args:
        embedder: appearance model; its ``input_size`` must equal ``config.embedder_input_size``.
        config: tracker settings.

    Attributes:
        times_ms: last :meth:`update`'s stage times in ms: ``embed`` (crops + embedder) and
            ``associate`` (Deep SORT's Kalman filter and matching).
        embed_ms: total embedder time in ms (crops + network), over ``embed_crops`` crops.
        embed_crops: crops embedded so far.

    Raises:
        ValueError: the embedder's crop size differs from the config's.
    """

    def __init__(self, embedder: Embedder, config: TrackerConfig = TrackerConfig()) -> None:
        if embedder.input_size != config.embedder_input_size:
            raise ValueError(f"embedder crops are {embedder.input_size}px but the tracker config says "
                             f"embedder_input_size: {config.embedder_input_size}")
        self.embedder = embedder
        self.config = config
        self._ds = DeepSort(max_iou_distance=config.max_iou_distance, max_age=config.max_age,
                            n_init=config.n_init, max_cosine_distance=config.max_cosine_distance,
                            nn_budget=config.nn_budget, embedder=None)
        self._votes: dict[int, Counter[int]] = {}
        self.times_ms = {"embed": 0.0, "associate": 0.0}
        self.embed_ms, self.embed_crops = 0.0, 0

    @property
    def ms_per_crop(self) -> float:
        """Mean embedder cost per crop in ms (batched crops of each frame), 0 before any crop."""
        return self.embed_ms / self.embed_crops if self.embed_crops else 0.0

    def update(self, frame_bgr: np.ndarray, detections: Detections) -> list[Track]:
        """Advance the tracker by one frame.

        Boxes whose integer crop window would be empty (:func:`det_toolkit.runtime.embedder.croppable`) are
        left out before embedding, so embeddings stay aligned with the detections Deep SORT keeps.

        Args:
            frame_bgr: uint8 ``[H, W, 3]`` BGR frame the detections come from.
            detections: this frame's detections (``xyxy`` frame pixels).

        Returns:
            Confirmed tracks matched to a detection in this frame.
        """
        t0 = time.perf_counter()
        idx = np.flatnonzero(croppable(detections.boxes, frame_bgr.shape[:2]))
        boxes = detections.boxes[idx]
        embeds = self.embedder(frame_bgr, boxes)
        t1 = time.perf_counter()
        ltwh = boxes.copy()
        ltwh[:, 2:] -= ltwh[:, :2]
        raw = list(zip(ltwh.tolist(), detections.scores[idx].tolist(), detections.labels[idx].tolist()))
        tracks = self._ds.update_tracks(raw, embeds=embeds, others=idx.tolist())
        out = []
        for t in tracks:
            if t.time_since_update:
                continue
            votes = self._votes.setdefault(int(t.track_id), Counter())
            votes[int(t.det_class)] += 1
            if t.is_confirmed():
                out.append(Track(int(t.track_id), t.to_ltrb(orig=True).astype(np.float32),
                                 votes.most_common(1)[0][0], float(t.det_conf),
                                 int(t.get_det_supplementary())))
        if len(self._votes) > len(tracks):  # forget the votes of deleted tracks
            alive = {int(t.track_id) for t in tracks}
            self._votes = {k: v for k, v in self._votes.items() if k in alive}
        t2 = time.perf_counter()
        self.times_ms["embed"], self.times_ms["associate"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        if len(boxes):
            self.embed_ms += (t1 - t0) * 1e3
            self.embed_crops += len(boxes)
        return out
