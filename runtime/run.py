"""One det-run on one source, as a function: the settings of ``det-run``'s options
(:class:`RunSettings`), the predictor and tracker they describe, and :func:`run_source`, which runs
the threaded pipeline into a run folder and returns its summary.

``det-run SOURCE`` calls it once; ``det-run SOURCES... --ray`` calls it once per source inside Ray
actors that hold one backend each, so every per-source folder is what a plain ``det-run`` on that
source writes. Everything here is torch-free for ``.onnx`` weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from det_toolkit.runtime.api import open_embedder
from det_toolkit.runtime.backends import Backend
from det_toolkit.runtime.classes import parse_classes
from det_toolkit.runtime.pipeline import FramePredictor, run_pipeline
from det_toolkit.runtime.predictor import Predictor
from det_toolkit.runtime.source_types import Source
from det_toolkit.runtime.trackers import build_tracker, load_tracker_config
from det_toolkit.runtime.tracking import Tracker, TrackerConfig
from det_toolkit.runtime.writers import RunOutputs

if TYPE_CHECKING:  # tiling imports sahi (~0.25 s): only --sahi runs load it
    from det_toolkit.runtime.tiling import SliceConfig

#: Suffix of a text file listing sources, one per line (``det-run cams.streams``).
STREAMS_SUFFIX = ".streams"


@dataclass(frozen=True)
class RunSettings:
    """What ``det-run``'s options ask of one source's run (picklable: Ray ships it to workers).

    Args:
        weights: detector ``.onnx`` (or ``.pt``) path.
        conf: minimum score kept, ``[0, 1]``.
        classes: ``--classes`` text (names or ids), ``None`` for all.
        imgsz: letterbox side in pixels, ``None`` for the model's.
        rect: rectangular inputs (dynamic H/W graphs only).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        tracker: tracker name or settings YAML path; ``None``: no tracking.
        embedder: Deep SORT embedder ONNX; ``None``: the one beside ``weights`` (FP32, or INT8 with the
            tracker setting ``embedder_precision: int8``).
        save, save_txt, save_json: which outputs :class:`RunOutputs` writes.
        live: keep only the newest frame (``None``: the source decides).
        max_frames: stop after this many frames (``None``: all).
        sahi: tiled inference settings (:class:`det_toolkit.runtime.tiling.SliceConfig`, built by the
            caller only for ``--sahi``: that module imports sahi), ``None``: off.
    """

    weights: Path
    conf: float = 0.25
    classes: str | None = None
    imgsz: int | None = None
    rect: bool = False
    device: str = "cpu"
    tracker: str | None = None
    embedder: Path | None = None
    save: bool = True
    save_txt: bool = False
    save_json: bool = False
    live: bool | None = None
    max_frames: int | None = None
    sahi: SliceConfig | None = None

    def check(self) -> None:
        """The checks that need no model: ``--rect`` with ``--sahi``, the tracker settings.

        Raises:
            ValueError: a conflicting or invalid option (message names it).
        """
        if self.sahi is not None and self.rect:
            raise ValueError("--rect does not apply to --sahi: tiles and the full frame are letterboxed square")
        if self.tracker is not None:
            load_tracker_config(self.tracker)


def make_predictor(settings: RunSettings, backend: Backend) -> FramePredictor:
    """The frame predictor ``settings`` describe on ``backend``: a :class:`Predictor`, wrapped in a
    :class:`~det_toolkit.runtime.tiling.TiledPredictor` for SAHI.

    Raises:
        ClassSpecError: ``settings.classes`` names an unknown class.
        ValueError: an option the graph cannot honour (e.g. ``imgsz`` on a static graph).
    """
    names = backend.meta.class_names
    predictor = Predictor(backend, settings.conf, parse_classes(settings.classes, names) if settings.classes else None,
                          settings.imgsz, rect=settings.rect)
    if settings.sahi is None:
        return predictor
    # deferred: sahi takes ~0.25 s to import and only --sahi needs it
    from det_toolkit.runtime.tiling import TiledPredictor

    return TiledPredictor(predictor, settings.sahi)


def make_tracker(settings: RunSettings, note: Callable[[str], None] = print) -> Tracker | None:
    """A fresh tracker for one source (``None`` without tracking): Deep SORT gets its appearance
    embedder (:func:`det_toolkit.runtime.api.open_embedder`: ``settings.embedder``, else the one of
    the tracker setting ``embedder_precision`` beside the weights); motion trackers ignore
    ``settings.embedder`` with a ``note``.

    Raises:
        FileNotFoundError: Deep SORT's embedder ONNX is missing (message says what to do: for
            ``embedder_precision: int8``, ``det-export WEIGHTS --int8``).
        ValueError: invalid tracker settings.
    """
    if settings.tracker is None:
        return None
    config = load_tracker_config(settings.tracker)
    if isinstance(config, TrackerConfig):  # Deep SORT: with its appearance embedder
        return build_tracker(config, open_embedder(settings.weights, settings.embedder, settings.device,
                                                   config.embedder_input_size, precision=config.embedder_precision))
    tracker = build_tracker(config)
    if settings.embedder is not None:
        note(f"note: --embedder ignored: {tracker.name} tracks by motion alone")
    return tracker


def run_source(settings: RunSettings, backend: Backend, spec: str, source: Source, run_dir: Path,
               predictor: FramePredictor | None = None, tracker: Tracker | None = None,
               on_frame: Callable[[np.ndarray], bool] | None = None, progress: bool = True) -> dict[str, Any]:
    """Run ``source`` through detection (and tracking) into the existing folder ``run_dir``.

    Writes what :class:`RunOutputs` writes; the returned summary (also what ``summary.json`` holds,
    written by the caller) is :func:`run_pipeline`'s plus ``source``, ``weights``, ``backend``,
    ``imgsz`` ``[H, W]`` and, with SAHI, ``sahi``. ``source`` is left open.

    Args:
        spec: the text ``source`` was opened from (the summary's ``source``).
        predictor, tracker: prebuilt ones (the CLI builds them before opening the source); default:
            :func:`make_predictor` / :func:`make_tracker` of ``settings``.

    Raises:
        ValueError: a frame breaks a limit (e.g. ``--sahi --max-tiles``); outputs so far are kept.
        OSError: an output file cannot be written.
    """
    predictor = predictor if predictor is not None else make_predictor(settings, backend)
    if tracker is None and settings.tracker is not None:
        tracker = make_tracker(settings)
    with RunOutputs(run_dir, source.info, backend.meta.class_names, track=tracker is not None, save=settings.save,
                    save_txt=settings.save_txt, save_json=settings.save_json) as outputs:
        summary = run_pipeline(source, predictor, tracker, outputs, settings.max_frames, settings.live, on_frame,
                               progress=progress)
    summary = {"source": spec, "weights": str(settings.weights),
               "backend": backend.name, "imgsz": list(predictor.imgsz), **summary}
    if settings.sahi is not None:
        summary["sahi"] = {**asdict(predictor.config), "tiles": predictor.tiles}
    return summary


def read_streams_file(path: Path) -> list[str]:
    """The sources listed in a ``*.streams`` file: one per line; blank lines and lines starting with
    ``#`` are ignored (URLs may hold a ``#``); relative file paths resolve against the list's folder
    (URLs and camera indices as written).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: it lists no source.
    """
    if not path.is_file():
        raise FileNotFoundError(f"streams file not found: {path}")
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if not (s.isdigit() or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", s) or Path(s).is_absolute()):
            s = str(path.parent / s)
        out.append(s)
    if not out:
        raise ValueError(f"{path} lists no source (one per line; '#' starts a comment)")
    return out


def expand_sources(specs: Sequence[str]) -> list[str]:
    """``det-run``'s SOURCE arguments with every ``*.streams`` file replaced by the sources it lists.

    Raises:
        FileNotFoundError, ValueError: see :func:`read_streams_file`.
    """
    out: list[str] = []
    for s in specs:
        out.extend(read_streams_file(Path(s)) if s.lower().endswith(STREAMS_SUFFIX) else [s])
    return out


def stream_names(sources: Sequence[str]) -> list[str]:
    """One folder name per source, unique within a run: the source's stem (file name without
    suffix, URL host/path, ``camN`` for camera N), ``-2``, ``-3``, ... appended to repeats."""
    names: list[str] = []
    seen: dict[str, int] = {}
    for s in sources:
        if s.isdigit():
            stem = f"cam{s}"
        elif "://" in s:
            stem = re.sub(r"[^A-Za-z0-9._-]+", "_", s.split("://", 1)[1]).strip("_") or "stream"
        else:
            p = Path(s.rstrip("/"))
            stem = (p.stem if p.suffix else p.name) or "source"
            stem = re.sub(r"[*?\[\]]", "", stem) or "images"
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names
