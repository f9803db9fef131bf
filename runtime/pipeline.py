"""The ``det-run`` frame pipeline: decode, detect + track, and write overlap in three threads.

::

    reader thread --q_in--> calling thread (detect, track) --q_out--> writer thread (draw, encode)

Both queues are bounded (:data:`QUEUE_SIZE`), so memory and latency stay bounded. Files are never
dropped from: the reader blocks while ``q_in`` is full. Live sources (``live=True``) keep only the
newest frame: ``q_in`` holds one frame, and a new one replaces an unprocessed one (counted in
``dropped``). ``KeyboardInterrupt`` (Ctrl-C) in the calling thread, and SIGTERM or SIGHUP
(``timeout``, ``docker stop``, systemd, a closed terminal) when the pipeline runs in the main
thread, stop reading, let the writer finish every frame already detected, and return normally with
``interrupted: true`` and the signal's name, so the output video is closed and playable.

:func:`run_pipeline` runs one source. Its parts (:class:`FrameReader`, :class:`FrameWriter`,
:class:`Profile`, :func:`run_until_stopped`, :func:`run_summary`) are what
:mod:`det_toolkit.runtime.multistream` reuses to run several sources through one model.
"""

from __future__ import annotations

import queue
import signal
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from tqdm import tqdm

from det_toolkit.runtime.predictor import STAGES, Detections
from det_toolkit.runtime.source_types import Source
from det_toolkit.runtime.tracking import Track, Tracker
from det_toolkit.runtime.writers import RunOutputs

#: Frames excluded from the FPS and per-stage means (graph optimisation, caches, allocations).
WARMUP_FRAMES = 5
ALL_STAGES = ("decode", *STAGES, "tracking", "encode")
#: Capacity of each inter-thread queue (frames) for non-live sources.
QUEUE_SIZE = 4
#: Queue item that ends a stream (reader -> detector, detector -> writer).
END = object()
#: Signals handled like Ctrl-C while the pipeline runs in the main thread.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StopSignal(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM/SIGHUP while :func:`run_pipeline` runs."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stop(signum: int, frame: object) -> None:
    raise StopSignal(signum)


def _set_handlers(handlers: dict[int, Any]) -> dict[int, Any]:
    """Install ``{signum: handler}``; returns the handlers they replace."""
    return {sig: signal.signal(sig, h) for sig, h in handlers.items()}


def run_until_stopped(loop: Callable[[], None], finish: Callable[[], None]) -> str | None:
    """Run ``loop`` until it returns or Ctrl-C, SIGTERM or SIGHUP stops it, then ``finish``.

    While ``loop`` runs in the main thread, SIGTERM and SIGHUP raise :class:`StopSignal` in it, as
    Ctrl-C raises ``KeyboardInterrupt``; either ends ``loop`` early. ``finish`` (stop the readers,
    let the writers write every frame already detected) always runs, with the three signals
    ignored so that a second one cannot cut the outputs short; the previous handlers are restored
    afterwards. Off the main thread no handler is touched (Python allows none there).

    Returns:
        The name of the signal that stopped ``loop`` (``"SIGINT"``, ``"SIGTERM"``, ``"SIGHUP"``),
        or ``None`` if it returned by itself.

    Raises:
        Whatever ``loop`` (other than the interruption) or ``finish`` raised, after ``finish``.
    """
    main = threading.current_thread() is threading.main_thread()  # signal handlers: main thread only
    stopped_by = None
    saved = _set_handlers({signal.SIGTERM: _raise_stop, signal.SIGHUP: _raise_stop}) if main else {}
    try:
        loop()
    except KeyboardInterrupt as e:
        stopped_by = signal.Signals(e.signum).name if isinstance(e, StopSignal) else "SIGINT"
    finally:
        ignored = _set_handlers(dict.fromkeys(STOP_SIGNALS, signal.SIG_IGN)) if main else {}
        try:  # finish the files first: a second signal must not cut the video short
            finish()
        finally:
            _set_handlers({**ignored, **saved})
    return stopped_by


class FramePredictor(Protocol):
    """:class:`det_toolkit.runtime.predictor.Predictor` or :class:`det_toolkit.runtime.tiling.TiledPredictor`."""

    imgsz: tuple[int, int]
    times_ms: dict[str, float]

    def __call__(self, frame_bgr: np.ndarray) -> Detections: ...


class Profile:
    """Per-stage wall-time totals in ms, reported over the frames after a warm-up.

    Stage times are each thread's own work per frame; with the threads overlapping, the FPS is
    the end-to-end throughput (frames leaving the writer per second).

    Args:
        warmup: frames left out of :meth:`summary` (all are used if the run is not longer).
    """

    def __init__(self, warmup: int = WARMUP_FRAMES) -> None:
        self.warmup = warmup
        self.frames = 0
        self.totals = dict.fromkeys(ALL_STAGES, 0.0)
        self._base = dict(self.totals)
        self._t_start = self._t_warm = self.t_last = time.perf_counter()

    def frame_done(self, stage_ms: dict[str, float], t: float) -> None:
        """Add one frame's ``{stage: ms}`` (keys of :data:`ALL_STAGES`); ``t`` is its ``perf_counter()`` end."""
        for k, v in stage_ms.items():
            self.totals[k] += v
        self.frames += 1
        self.t_last = t
        if self.frames == self.warmup:
            self._base, self._t_warm = dict(self.totals), self.t_last

    def summary(self) -> dict[str, Any]:
        """``{"warmup_frames", "fps" (frames/s), "mean_ms": {stage: ms per frame}}``."""
        warm = self.frames > self.warmup
        n = self.frames - self.warmup if warm else self.frames
        base = self._base if warm else dict.fromkeys(ALL_STAGES, 0.0)
        elapsed = self.t_last - (self._t_warm if warm else self._t_start)
        return {"warmup_frames": self.warmup if warm else 0,
                "fps": round(n / elapsed, 3) if n and elapsed > 0 else 0.0,
                "mean_ms": {s: round((self.totals[s] - base[s]) / max(n, 1), 3) for s in ALL_STAGES}}


def _put_latest(q: queue.Queue, item: object) -> int:
    """Put ``item`` into ``q``, discarding queued items while it is full; returns how many were dropped."""
    dropped = 0
    while True:
        try:
            q.put_nowait(item)
            return dropped
        except queue.Full:
            try:
                q.get_nowait()
                dropped += 1
            except queue.Empty:
                pass


class FrameReader(threading.Thread):
    """Decodes ``source`` into ``q`` until the source ends or ``stop`` is set.

    Puts ``(index, name, frame_bgr, decode_ms, prepared)`` per frame, then :data:`END`; an
    exception raised while decoding or preparing is put instead of :data:`END` (and the reader
    stops). ``decode_ms`` is the decode time alone. ``prepared`` is ``prepare(frame_bgr)``, run in
    this thread (e.g. :meth:`det_toolkit.runtime.predictor.Predictor.prepare`, so that preprocessing
    overlaps with the consumer's inference), or ``None`` without ``prepare``; ``prepare`` must be
    safe to call from this thread. ``live``: keep only the newest frame (``q`` should hold one),
    counting replaced ones in ``dropped``; otherwise block while ``q`` is full.
    """

    def __init__(self, source: Source, q: queue.Queue, stop: threading.Event, live: bool,
                 prepare: Callable[[np.ndarray], object] | None = None) -> None:
        super().__init__(name="det-run-reader", daemon=True)
        self.source, self.q, self.stop, self.live, self.prepare = source, q, stop, live, prepare
        self.dropped = 0

    def _put(self, item: object) -> bool:
        if self.live:
            self.dropped += _put_latest(self.q, item)
            return True
        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run(self) -> None:
        try:
            it = iter(self.source)
            while not self.stop.is_set():
                t0 = time.perf_counter()
                item = next(it, None)
                if item is None:
                    break
                decode_ms = (time.perf_counter() - t0) * 1e3
                prepared = None if self.prepare is None else self.prepare(item[2])
                if not self._put((*item, decode_ms, prepared)):
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the calling thread
            self._put(e)
            return
        self._put(END)


class FrameWriter(threading.Thread):
    """Writes detected frames from ``q`` to ``outputs`` and keeps the :class:`Profile`.

    Takes ``(index, name, frame_bgr, dets, tracks, stage_ms)`` items until :data:`END`. An
    exception while writing (or ``on_frame`` returning ``False``) sets ``stop``; the exception is
    kept in ``error`` and later items are drained unwritten.
    """

    def __init__(self, q: queue.Queue, outputs: RunOutputs, bar: tqdm, stop: threading.Event,
                 on_frame: Callable[[np.ndarray], bool] | None) -> None:
        super().__init__(name="det-run-writer", daemon=True)
        self.q, self.outputs, self.bar, self.stop, self.on_frame = q, outputs, bar, stop, on_frame
        self.profile = Profile()
        self.error: BaseException | None = None
        self.seen_ids: set[int] = set()

    def run(self) -> None:
        fps, prof = 0.0, self.profile
        while True:
            item = self.q.get()
            if item is END:
                return
            if self.error is not None:
                continue  # keep draining so the detector thread never blocks
            index, name, frame, dets, tracks, stage_ms = item
            try:
                t0 = time.perf_counter()
                self.outputs.write(index, name, frame, dets, tracks, fps)
                t1 = time.perf_counter()
                if self.on_frame is not None and not self.on_frame(frame):
                    self.stop.set()
            except BaseException as e:  # noqa: BLE001 - re-raised by the calling thread
                self.error = e
                self.stop.set()
                continue
            if tracks is not None:
                self.seen_ids.update(t.track_id for t in tracks)
            stage_ms["encode"] = (t1 - t0) * 1e3
            fps = 0.9 * fps + 0.1 / (t1 - prof.t_last) if fps else 1.0 / max(t1 - prof.t_last, 1e-9)
            prof.frame_done(stage_ms, t1)
            if prof.frames % 10 == 0:
                self.bar.set_postfix_str(f"{fps:.1f} FPS", refresh=False)
            self.bar.update()


def run_pipeline(source: Source, predictor: FramePredictor, tracker: Tracker | None,
                 outputs: RunOutputs, max_frames: int | None = None, live: bool | None = None,
                 on_frame: Callable[[np.ndarray], bool] | None = None, progress: bool = True) -> dict[str, Any]:
    """Detect (and track) the frames of ``source`` and hand the results to ``outputs``.

    Args:
        source: frames to process (left open; the caller closes it).
        predictor: frame -> :class:`Detections` (``xyxy`` frame px).
        tracker: a :class:`det_toolkit.runtime.tracking.Tracker` (Deep SORT, ByteTrack, ...), or ``None``.
        outputs: where results go (written from the writer thread, in frame order).
        max_frames: stop after this many frames (``None``: all).
        live: keep only the newest frame; default ``source.info.live``.
        on_frame: called by the writer with each annotated frame (e.g. a display); returning
            ``False`` stops the run.
        progress: show a tqdm progress bar (stderr).

    Returns:
        The summary: ``frames`` (written), ``skipped`` (unreadable), ``truncated`` (file names of
        truncated JPEGs decoded with grey bottom rows), ``dropped`` (live frames
        replaced before detection), ``interrupted`` (Ctrl-C, SIGTERM or SIGHUP), ``signal`` (its name,
        or ``None``), ``track_ids`` (distinct ids),
        :meth:`Profile.summary` and, when tracking, the tracker's ``summary()`` (``tracker``: its
        name; Deep SORT adds ``embedder``: ``name``, ``input_size`` px, ``crops``, ``ms_per_crop``).

    Raises:
        Whatever the reader or writer thread raised (e.g. an ``OSError`` writing the video).
    """
    live = source.info.live if live is None else live
    stop = threading.Event()
    q_in: queue.Queue = queue.Queue(maxsize=1 if live else QUEUE_SIZE)
    q_out: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
    total = source.info.frames or None
    if total is not None and max_frames is not None:
        total = min(total, max_frames)
    with tqdm(total=total, unit="frame", desc=source.info.stem, dynamic_ncols=True, disable=not progress) as bar:
        reader = FrameReader(source, q_in, stop, live)
        writer = FrameWriter(q_out, outputs, bar, stop, on_frame)
        reader.start()
        writer.start()

        def loop() -> None:
            taken = 0
            while (max_frames is None or taken < max_frames) and not stop.is_set():
                try:
                    item = q_in.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is END:
                    break
                if isinstance(item, BaseException):
                    raise item
                index, name, frame, decode_ms, _ = item  # no prepare hook: the predictor letterboxes
                dets = predictor(frame)
                stage_ms = {"decode": decode_ms, **predictor.times_ms}
                tracks: list[Track] | None = None
                if tracker is not None:
                    t0 = time.perf_counter()
                    tracks = tracker.update(frame, dets)
                    stage_ms["tracking"] = (time.perf_counter() - t0) * 1e3
                q_out.put((index, name, frame, dets, tracks, stage_ms))
                taken += 1

        def finish() -> None:
            stop.set()
            q_out.put(END)
            writer.join()
            reader.join(timeout=5)

        stopped_by = run_until_stopped(loop, finish)
    if writer.error is not None:
        raise writer.error
    return run_summary(source, reader, writer, tracker, stopped_by)


def run_summary(source: Source, reader: FrameReader, writer: FrameWriter, tracker: Tracker | None,
                stopped_by: str | None) -> dict[str, Any]:
    """The summary of one finished source (keys: see :func:`run_pipeline`'s Returns);
    ``stopped_by``: the signal's name that interrupted the run, or ``None``."""
    summary: dict[str, Any] = {"frames": writer.profile.frames, "skipped": source.skipped,
                               "truncated": list(source.truncated), "dropped": reader.dropped,
                               "interrupted": stopped_by is not None, "signal": stopped_by,
                               **writer.profile.summary(), "track_ids": len(writer.seen_ids)}
    if tracker is not None:
        summary.update(tracker.summary())
    return summary
