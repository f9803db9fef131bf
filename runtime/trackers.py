"""The trackers of ``det-run --tracker NAME|PATH.yaml``: Deep SORT (appearance + motion) and the
motion-only ByteTrack, OC-SORT and BoT-SORT of the ``trackers`` package (Roboflow, Apache-2.0,
torch-free), all behind :class:`det_toolkit.runtime.tracking.Tracker`.

Each tracker has one settings dataclass, filled from ``configs/tracker/<name>.yaml`` (or a user's
YAML) by :func:`det_toolkit.runtime.config_utils.from_dict`; :data:`TRACKERS` maps the names to them.
:func:`load_tracker_config` picks and checks the settings (cheap, before any model is loaded) and
:func:`build_tracker` makes the tracker (Deep SORT alone needs an appearance embedder).

Motion-only settings keep the ``trackers`` package's argument names and defaults (its docs
describe them). Papers: ByteTrack (Zhang et al., ECCV 2022), OC-SORT (Cao et al., CVPR 2023),
BoT-SORT (Aharon et al., 2022). The ``trackers`` BoT-SORT has no re-identification features: it is
ByteTrack's two-stage association with IoU fused with detection scores, a Kalman state in
``(cx, cy, w, h)``, and camera-motion compensation (a global affine transform between frames from
OpenCV sparse optical flow, ORB, SIFT or ECC, applied to the predicted tracks before matching).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from det_toolkit.configs import config_path
from det_toolkit.runtime.config_utils import ConfigError, FieldError, from_dict, load_yaml_mapping, nearest, show
from det_toolkit.runtime.embedder import Embedder
from det_toolkit.runtime.predictor import Detections
from det_toolkit.runtime.tracking import (
    ClassVotes,
    DeepSortTracker,
    Track,
    Tracker,
    TrackerConfig,
    read_tracker_yaml,
)

if TYPE_CHECKING:  # pragma: no cover
    from trackers.core.base import BaseTracker


def _check_common(cfg: Any) -> None:
    """Range checks shared by the motion trackers' settings (raise :class:`FieldError`)."""
    if cfg.lost_track_buffer < 0:
        raise FieldError("lost_track_buffer", f"must be >= 0, got {cfg.lost_track_buffer}")
    if not cfg.frame_rate > 0:
        raise FieldError("frame_rate", f"must be > 0, got {cfg.frame_rate}")
    if cfg.minimum_consecutive_frames < 1:
        raise FieldError("minimum_consecutive_frames", f"must be >= 1, got {cfg.minimum_consecutive_frames}")
    for key in ("high_conf_det_threshold", *(f.name for f in dataclasses.fields(cfg)
                                            if f.name.startswith(("minimum_iou", "track_activation")))):
        if not 0 <= getattr(cfg, key) <= 1:
            raise FieldError(key, f"must be in [0, 1], got {getattr(cfg, key)}")


@dataclass(frozen=True)
class ByteTrackConfig:
    """ByteTrack settings (``configs/tracker/bytetrack.yaml``; ``trackers.ByteTrackTracker``).

    Attributes:
        lost_track_buffer: frames at 30 FPS a lost track is kept (scaled by ``frame_rate``).
        frame_rate: the video's frame rate the buffer is scaled to.
        track_activation_threshold: minimum score of a detection that starts a track.
        minimum_consecutive_frames: matched frames before a track gets an id (is reported).
        minimum_iou_threshold: IoU below which a detection never matches a track.
        high_conf_det_threshold: scores at or above go to the first association, below to the
            second (low-score boxes only extend existing tracks).

    Raises:
        FieldError: a value out of range (thresholds outside [0, 1], ``frame_rate <= 0``, ...).
    """

    name: ClassVar[str] = "bytetrack"
    lost_track_buffer: int = 30
    frame_rate: float = 30.0
    track_activation_threshold: float = 0.7
    minimum_consecutive_frames: int = 2
    minimum_iou_threshold: float = 0.1
    high_conf_det_threshold: float = 0.6

    def __post_init__(self) -> None:
        _check_common(self)

    def make(self) -> BaseTracker:
        """A new ``trackers.ByteTrackTracker`` with these settings."""
        from trackers import ByteTrackTracker

        return ByteTrackTracker(**dataclasses.asdict(self))


@dataclass(frozen=True)
class OCSortConfig:
    """OC-SORT settings (``configs/tracker/ocsort.yaml``; ``trackers.OCSORTTracker``).

    Attributes:
        lost_track_buffer: frames at 30 FPS a lost track is kept (scaled by ``frame_rate``).
        frame_rate: the video's frame rate the buffer is scaled to.
        minimum_consecutive_frames: matched frames before a track gets an id (is reported).
        minimum_iou_threshold: IoU below which a detection never matches a track.
        direction_consistency_weight: weight of the motion-direction term (observation-centric
            momentum) added to IoU in the association cost.
        high_conf_det_threshold: detections scoring below are not tracked at all.
        delta_t: past frames used to estimate a track's direction.

    Raises:
        FieldError: a value out of range.
    """

    name: ClassVar[str] = "ocsort"
    lost_track_buffer: int = 30
    frame_rate: float = 30.0
    minimum_consecutive_frames: int = 3
    minimum_iou_threshold: float = 0.3
    direction_consistency_weight: float = 0.2
    high_conf_det_threshold: float = 0.6
    delta_t: int = 3

    def __post_init__(self) -> None:
        _check_common(self)
        if self.direction_consistency_weight < 0:
            raise FieldError("direction_consistency_weight", f"must be >= 0, got {self.direction_consistency_weight}")
        if self.delta_t < 1:
            raise FieldError("delta_t", f"must be >= 1, got {self.delta_t}")

    def make(self) -> BaseTracker:
        """A new ``trackers.OCSORTTracker`` with these settings."""
        from trackers import OCSORTTracker

        return OCSORTTracker(**dataclasses.asdict(self))


CMC_METHODS = ("sparseOptFlow", "orb", "sift", "ecc")


@dataclass(frozen=True)
class BoTSortConfig:
    """BoT-SORT settings (``configs/tracker/botsort.yaml``; ``trackers.BoTSORTTracker``).

    Attributes:
        lost_track_buffer: frames at 30 FPS a lost track is kept (scaled by ``frame_rate``).
        frame_rate: the video's frame rate the buffer is scaled to.
        track_activation_threshold: minimum score of a detection that starts a track.
        minimum_consecutive_frames: matched frames before a track gets an id (is reported).
        minimum_iou_threshold_first_assoc: minimum IoU x score for high-score detections.
        minimum_iou_threshold_second_assoc: minimum IoU for low-score detections.
        minimum_iou_threshold_unconfirmed_assoc: minimum IoU x score for unconfirmed tracks.
        high_conf_det_threshold: first/second association split by score (scores <= 0.1 are
            dropped).
        enable_cmc: camera-motion compensation (costs a few ms per frame; useless for a fixed
            camera).
        cmc_method: one of :data:`CMC_METHODS`.
        cmc_downscale: the frame is shrunk by this factor for CMC.

    Raises:
        FieldError: a value out of range or an unknown ``cmc_method``.
    """

    name: ClassVar[str] = "botsort"
    lost_track_buffer: int = 30
    frame_rate: float = 30.0
    track_activation_threshold: float = 0.7
    minimum_consecutive_frames: int = 2
    minimum_iou_threshold_first_assoc: float = 0.2
    minimum_iou_threshold_second_assoc: float = 0.5
    minimum_iou_threshold_unconfirmed_assoc: float = 0.3
    high_conf_det_threshold: float = 0.6
    enable_cmc: bool = True
    cmc_method: str = "sparseOptFlow"
    cmc_downscale: int = 2

    def __post_init__(self) -> None:
        _check_common(self)
        if self.cmc_method not in CMC_METHODS:
            raise FieldError("cmc_method", f"expected one of {', '.join(CMC_METHODS)}, got {show(self.cmc_method)}")
        if self.cmc_downscale < 1:
            raise FieldError("cmc_downscale", f"must be >= 1, got {self.cmc_downscale}")

    def make(self) -> BaseTracker:
        """A new ``trackers.BoTSORTTracker`` with these settings."""
        from trackers import BoTSORTTracker

        return BoTSORTTracker(**dataclasses.asdict(self))


MotionConfig = ByteTrackConfig | OCSortConfig | BoTSortConfig
AnyTrackerConfig = TrackerConfig | MotionConfig

#: Tracker name -> its settings class; the shipped settings are ``configs/tracker/<name>.yaml``.
TRACKERS: dict[str, type[AnyTrackerConfig]] = {
    "deepsort": TrackerConfig,
    "bytetrack": ByteTrackConfig,
    "ocsort": OCSortConfig,
    "botsort": BoTSortConfig,
}


class MotionTracker:
    """A ``trackers`` package tracker (ByteTrack, OC-SORT, BoT-SORT) as a
    :class:`det_toolkit.runtime.tracking.Tracker`.

    Detections go in as ``supervision.Detections`` (``xyxy`` px, scores, labels, and their index
    in ``data["det_index"]``); the detections it returns with a ``tracker_id >= 0`` become
    :class:`Track` objects (id + 1, so ids start at 1 as Deep SORT's do; the detection's own box;
    the class by :class:`ClassVotes`, counted from the frame the track gets its id). Association
    is class-agnostic, as in Deep SORT.

    Args:
        config: the tracker's settings.

    Attributes:
        name: the tracker's name (``config.name``).
        times_ms: last :meth:`update`'s ``{"associate": ms}``.
    """

    def __init__(self, config: MotionConfig) -> None:
        import supervision as sv  # deferred with `trackers` (~0.5 s import), unneeded by Deep SORT runs

        self._sv = sv
        self.config = config
        self.name = config.name
        self._tracker = config.make()
        self._wants_frame = isinstance(config, BoTSortConfig) and config.enable_cmc  # others warn if given one
        self._votes = ClassVotes()
        self.times_ms = {"associate": 0.0}

    def update(self, frame_bgr: np.ndarray, detections: Detections) -> list[Track]:
        """Advance by one frame (see :meth:`det_toolkit.runtime.tracking.Tracker.update`); the
        frame is used only by BoT-SORT's camera-motion compensation."""
        t0 = time.perf_counter()
        n = len(detections.scores)
        sv_dets = self._sv.Detections(xyxy=detections.boxes.reshape(n, 4).astype(np.float32),
                                      confidence=detections.scores.astype(np.float32),
                                      class_id=detections.labels.astype(np.int64),
                                      data={"det_index": np.arange(n)})
        res = self._tracker.update(sv_dets, frame_bgr if self._wants_frame else None)
        out = []
        ids = res.tracker_id if res.tracker_id is not None else np.empty(0, np.int64)
        for tid, i in zip(ids.tolist(), res.data.get("det_index", np.empty(0, np.int64)).tolist()):
            if tid < 0:
                continue
            class_id = self._votes.vote(tid + 1, int(detections.labels[i]))
            out.append(Track(tid + 1, detections.boxes[i].astype(np.float32), class_id,
                             float(detections.scores[i]), int(i)))
        self._votes.keep_only({t.tracker_id + 1 for t in self._tracker.tracks if t.tracker_id >= 0})
        out.sort(key=lambda t: t.det_index)
        self.times_ms["associate"] = (time.perf_counter() - t0) * 1e3
        return out

    def summary(self) -> dict[str, Any]:
        """``{"tracker": name}``."""
        return {"tracker": self.name}


def tracker_yaml(name: str) -> Path:
    """The shipped settings file of tracker ``name``: ``configs/tracker/<name>.yaml``."""
    return config_path(f"tracker/{name}.yaml")


def load_tracker_config(spec: str | Path) -> AnyTrackerConfig:
    """The settings ``det-run --tracker SPEC`` / ``track(..., tracker=SPEC)`` mean.

    ``SPEC`` is a tracker name (a key of :data:`TRACKERS`: its shipped YAML) or a ``.yaml``/``.yml``
    path. A path's tracker is its ``tracker:`` key, else its file name when that is a tracker
    name (``bytetrack.yaml``), else Deep SORT (a settings file of today's ``--track``).

    Raises:
        FileNotFoundError: the YAML file does not exist.
        ConfigError (a ValueError): an unknown tracker name (the nearest is suggested), a YAML
            error, an unknown key or a bad value (``t.yaml: minimum_iou_threshold: must be in
            [0, 1], got 2.0``).
    """
    text = str(spec)
    if text in TRACKERS:
        return _from_yaml(text, tracker_yaml(text))
    path = Path(spec)
    if path.suffix.lower() not in (".yaml", ".yml"):
        near = nearest(text, list(TRACKERS))
        raise ConfigError(f"unknown tracker '{text}'" + (f" (did you mean '{near}'?)" if near else "") +
                          f": use one of {', '.join(TRACKERS)} or a settings .yaml file")
    if not path.is_file():
        raise FileNotFoundError(f"tracker config not found: {path}")
    said = load_yaml_mapping(path).get("tracker")
    if said is not None and not (isinstance(said, str) and said in TRACKERS):
        near = nearest(str(said), list(TRACKERS))
        raise ConfigError(f"{path}: tracker: unknown tracker {show(said)}" +
                          (f" (did you mean '{near}'?)" if near else f" (one of {', '.join(TRACKERS)})"))
    name = said or (path.stem if path.stem in TRACKERS else "deepsort")
    try:
        return _from_yaml(name, path)
    except ConfigError as e:
        if said is None and path.stem != name:  # the name was a guess: say so
            raise ConfigError(f"{e} (read as Deep SORT settings: the file has no 'tracker:' key; "
                              "add one, e.g. 'tracker: bytetrack')") from e
        raise


def _from_yaml(name: str, path: Path) -> AnyTrackerConfig:
    return from_dict(TRACKERS[name], read_tracker_yaml(path, name), str(path))


def build_tracker(config: AnyTrackerConfig, embedder: Embedder | None = None) -> Tracker:
    """A new tracker for ``config``.

    Args:
        config: from :func:`load_tracker_config` (or built directly).
        embedder: Deep SORT's appearance embedder (see
            :func:`det_toolkit.runtime.api.open_embedder`); ignored by the motion-only trackers.

    Raises:
        ValueError: Deep SORT without an embedder, or with one of another crop size.
    """
    if isinstance(config, TrackerConfig):
        if embedder is None:
            raise ValueError("Deep SORT needs an appearance embedder")
        return DeepSortTracker(embedder, config)
    return MotionTracker(config)
