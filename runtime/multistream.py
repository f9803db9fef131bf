"""Several sources as streams of one model in one process: ``det-run SRC1 SRC2 ...`` (or a
``*.streams`` list), as DeepStream and Ultralytics' stream loader use one model for many cameras.

::

    a reader thread per source --q_in--> calling thread --q_out--> a writer thread per source
    (decode, letterbox)                  (collects steps; hands each detected step, in order,
                                          through each stream's tracker to its writer)
                                              | submit / result
                                          LANES detection threads (+ QUEUED_STEPS waiting)

Each step takes the next frame of every stream that has one ready (files: the next frame, never
dropped; live sources: the newest, as a single-source run keeps it) and detects them all in one
call: :meth:`det_toolkit.runtime.predictor.Predictor.predict_prepared` on the frames each reader
thread already letterboxed and normalized (:meth:`~det_toolkit.runtime.predictor.Predictor.prepare`,
overlapping with inference, as OpenCV's resize and NumPy's ufuncs release the GIL), which leaves the
calling thread only their stacking into the batch. How much of that is a true batch is the
graph's: a static batch-``N`` graph (``det-export --batch N``) runs ``N`` frames per forward pass,
a partial step padded with blank images; the dynamic single-image graph (batch axis fixed at 1)
runs them one forward pass each inside the call. SAHI (``--sahi``) and ``--rect`` detect frame by
frame inside the step's call (SAHI batches the tiles of a frame). Every frame is letterboxed
and filtered exactly as in a single-source run, so each stream's boxes, tracks and files are what
``det-run`` on that source alone writes. On ONNX Runtime's CPU provider with two or more physical
cores, :data:`LANES` steps are detected at once (each call on its share of the cores' intra-op
threads, one session) and :data:`QUEUED_STEPS` more wait for the next free call: while they are
detected, the calling thread tracks and hands on the steps before; steps are handed on in the order
they were collected, so each stream's frames reach its tracker and writer in order. Each video file
decodes on one thread (:data:`DECODE_THREADS`): the streams' reader threads are the parallelism.

A source that cannot be opened, fails while decoding, detecting, tracking or writing, or yields
no decodable frame is reported (stderr and the run summary) and the others go on. Ctrl-C,
SIGTERM and SIGHUP stop reading and finish every stream's outputs
(:func:`det_toolkit.runtime.pipeline.run_until_stopped`).
"""

from __future__ import annotations

import json
import queue
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard

import cv2
import numpy as np
from tqdm import tqdm

from det_toolkit.runtime.backends import Backend, load_backend
from det_toolkit.runtime.backends.onnx_backend import CPU_EP, OnnxBackend, physical_cores, providers_for
from det_toolkit.runtime.files import atomic_write, check_writable, increment_path
from det_toolkit.runtime.pipeline import (
    END,
    QUEUE_SIZE,
    WARMUP_FRAMES,
    FramePredictor,
    FrameReader,
    FrameWriter,
    run_summary,
    run_until_stopped,
)
from det_toolkit.runtime.predictor import STAGES, Detections, Predictor, PreparedFrame
from det_toolkit.runtime.run import RunSettings, make_predictor, make_tracker, stream_names
from det_toolkit.runtime.source_types import Source, SourceError
from det_toolkit.runtime.sources import open_source
from det_toolkit.runtime.tracking import Tracker
from det_toolkit.runtime.writers import RunOutputs

#: ``echo(message)`` prints a line, ``echo(message, err=True)`` to stderr (``click.echo``'s signature).
Echo = Callable[..., Any]


def print_echo(message: str, err: bool = False) -> None:
    """The default :data:`Echo`: ``print`` to stdout, or stderr with ``err``."""
    print(message, file=sys.stderr if err else sys.stdout)


class _ReadyQueue(queue.Queue):
    """A queue that sets ``ready`` whenever an item is put, so one thread can wait on many queues."""

    def __init__(self, maxsize: int, ready: threading.Event) -> None:
        super().__init__(maxsize)
        self.ready = ready

    def _put(self, item: object) -> None:
        super()._put(item)
        self.ready.set()


@dataclass
class _Stream:
    """One source's state while the streams run (its threads, queues, tracker and outcome)."""

    name: str
    spec: str
    source: Source
    tracker: Tracker | None
    folder: Path
    reader: FrameReader
    writer: FrameWriter
    q_in: queue.Queue
    q_out: queue.Queue
    stop: threading.Event
    taken: int = 0
    status: str | None = None  # None while running, then "done", "failed" or "interrupted"
    reason: str | None = None
    end_sent: bool = False
    draining: bool = False  # its last frame is taken: no more polling; it ends once its frames are handed on
    summary: dict[str, Any] = field(default_factory=dict)


def _end(s: _Stream, status: str, reason: str | None = None, echo: Echo | None = None) -> None:
    """Stop ``s`` (its reader stops, its writer finishes the frames already detected)."""
    if s.status is None:
        s.status, s.reason = status, reason
        if status == "failed" and echo is not None:
            echo(f"{s.name} ({s.spec}) failed: {reason}; the other streams go on", err=True)
    s.stop.set()
    if not s.end_sent:
        s.q_out.put(END)
        s.end_sent = True


def _describe(e: BaseException) -> str:
    return str(e) if isinstance(e, (OSError, ValueError)) and str(e) else f"{type(e).__name__}: {e}"


class _Prepared(NamedTuple):
    """A reader thread's :meth:`Predictor.prepare` result and how long it took (ms)."""

    frame: PreparedFrame
    ms: float


def _batches(predictor: FramePredictor) -> TypeGuard[Predictor]:
    """Whether :func:`detect_frames` detects ``predictor``'s frames in one batched call: a plain
    square :class:`Predictor` (not SAHI, not ``--rect``), which can also :meth:`Predictor.prepare`
    frames in the reader threads."""
    return isinstance(predictor, Predictor) and not predictor.rect


def _timed_prepare(predictor: Predictor) -> Callable[[np.ndarray], _Prepared]:
    """A :class:`FrameReader` ``prepare`` hook: :meth:`Predictor.prepare` (thread-safe), timed."""
    def prepare(frame_bgr: np.ndarray) -> _Prepared:
        t0 = time.perf_counter()
        prepared = predictor.prepare(frame_bgr)
        return _Prepared(prepared, (time.perf_counter() - t0) * 1e3)
    return prepare


def detect_frames(predictor: FramePredictor, frames: Sequence[np.ndarray],
                  prepared: Sequence[PreparedFrame] | None = None) -> tuple[list[Detections | Exception],
                                                                            dict[str, float]]:
    """Detect objects in ``frames`` (uint8 ``[H, W, 3]`` BGR, one per stream) with one backend call
    where the predictor allows it.

    A plain square :class:`Predictor` (:func:`_batches`) runs :meth:`Predictor.predict_batch`, or
    :meth:`Predictor.predict_prepared` when ``prepared`` holds each frame's :meth:`Predictor.prepare`
    (same boxes; only the stacking is left to do); its backend runs ``max_batch`` frames per forward
    pass. A SAHI or ``--rect`` predictor runs frame by frame (``predict_batch`` would pad ``--rect``
    frames of different sizes to a common shape and so change their boxes) and ignores ``prepared``.
    If the batched call raises, every frame is retried alone so that only the frames at fault fail.

    Returns:
        Per frame, its :class:`Detections` (``xyxy`` frame pixels) or the exception detecting it
        raised; and the stage times ``{stage: ms}`` (keys :data:`STAGES`) of all frames together
        (with ``prepared``, ``preprocess`` is the stacking only).

    Raises:
        ValueError: ``prepared`` is not one per frame.
    """
    if prepared is not None and len(prepared) != len(frames):
        raise ValueError(f"{len(prepared)} prepared frames for {len(frames)} frames")
    if _batches(predictor):
        try:
            if prepared is None:
                return list(predictor.predict_batch(frames)), dict(predictor.times_ms)
            return predictor.predict_prepared(prepared), dict(predictor.times_ms)
        except Exception:  # retried frame by frame below, where each error is kept
            pass
    out: list[Detections | Exception] = []
    totals = dict.fromkeys(STAGES, 0.0)
    for i, frame in enumerate(frames):
        try:
            out.append(_detect_one(predictor, frame, None if prepared is None else prepared[i]))
        except Exception as e:  # reported as that stream's failure
            out.append(e)
            continue
        for k in STAGES:
            totals[k] += predictor.times_ms[k]
    return out, totals


def _detect_one(predictor: FramePredictor, frame: np.ndarray, prepared: PreparedFrame | None) -> Detections:
    """Detect ``frame`` alone: from ``prepared`` (its :meth:`Predictor.prepare`) when the predictor
    :func:`_batches`, else with ``predictor(frame)``; the boxes are the same either way."""
    if prepared is not None and _batches(predictor):
        return predictor.predict_prepared([prepared])[0]
    return predictor(frame)


def _failed_row(name: str, spec: str, reason: str, echo: Echo) -> dict[str, Any]:
    """Report a source that never started; its row of the run summary."""
    echo(f"{name} ({spec}) failed: {reason}; the other streams go on", err=True)
    return {"stream": name, "source": spec, "status": "failed", "reason": reason, "frames": 0, "fps": 0.0,
            "folder": None}


def _open_streams(specs: Sequence[str], settings: RunSettings, predictor: FramePredictor, echo: Echo,
                  stack: ExitStack) -> tuple[list[tuple[str, str, Source, Tracker | None]], list[dict[str, Any]]]:
    """Trackers, then sources (a camera starts delivering once opened); unopenable ones are reported."""
    trackers = [make_tracker(settings, note=(lambda m: echo(m, err=True)) if i == 0 else (lambda m: None))
                for i in range(len(specs))]
    opened, failed = [], []
    for name, spec, tracker in zip(stream_names(specs), specs, trackers):
        try:
            src = open_source(spec, decode_threads=DECODE_THREADS)
        except (FileNotFoundError, SourceError, OSError) as e:
            failed.append(_failed_row(name, spec, _describe(e), echo))
            continue
        stack.callback(src.close)
        if settings.sahi is not None and src.info.height and src.info.width:
            try:
                predictor.config.check_tiles(src.info.height, src.info.width)
            except ValueError as e:
                failed.append(_failed_row(name, spec, str(e), echo))
                continue
        opened.append((name, spec, src, tracker))
    return opened, failed


def _start(name: str, spec: str, src: Source, tracker: Tracker | None, run_dir: Path, settings: RunSettings,
           backend: Backend, prepare: Callable[[np.ndarray], _Prepared] | None, ready: threading.Event,
           position: int, progress: bool, stack: ExitStack) -> _Stream:
    """The stream's folder, outputs, progress bar and reader/writer threads (started); ``prepare``:
    the reader's hook (:func:`_timed_prepare`), or ``None``.

    Raises:
        OSError: an output file cannot be opened (no thread started then).
    """
    folder = run_dir / name
    folder.mkdir()
    outputs = stack.enter_context(RunOutputs(folder, src.info, backend.meta.class_names, track=tracker is not None,
                                             save=settings.save, save_txt=settings.save_txt,
                                             save_json=settings.save_json))
    live = src.info.live if settings.live is None else settings.live
    total = src.info.frames or None
    if total is not None and settings.max_frames is not None:
        total = min(total, settings.max_frames)
    bar = stack.enter_context(tqdm(total=total, unit="frame", desc=name, position=position, dynamic_ncols=True,
                                   disable=not progress))
    stop = threading.Event()
    q_in, q_out = _ReadyQueue(1 if live else QUEUE_SIZE, ready), queue.Queue(maxsize=QUEUE_SIZE)
    s = _Stream(name, spec, src, tracker, folder, FrameReader(src, q_in, stop, live, prepare),
                FrameWriter(q_out, outputs, bar, stop, None), q_in, q_out, stop)
    s.reader.start()
    s.writer.start()
    return s


@dataclass
class _Clock:
    """Steps (backend calls), frames, and the aggregate FPS after :data:`WARMUP_FRAMES` steps."""

    steps: int = 0
    frames: int = 0
    t_start: float = field(default_factory=time.perf_counter)
    t_warm: float | None = None
    frames_warm: int = 0
    t_end: float = 0.0

    def step(self, n: int) -> None:
        self.steps += 1
        self.frames += n
        if self.steps == WARMUP_FRAMES:
            self.t_warm, self.frames_warm = time.perf_counter(), self.frames

    def fps(self) -> float:
        """Frames/s from the end of the warm-up steps (from the start if the run was not longer) to ``t_end``."""
        t0, n = self.t_start, self.frames
        if self.t_warm is not None and self.frames > self.frames_warm:
            t0, n = self.t_warm, self.frames - self.frames_warm
        return round(n / (self.t_end - t0), 3) if n and self.t_end > t0 else 0.0


def _detect_step(predictor: FramePredictor, items: Sequence[tuple[int, str, np.ndarray, float, _Prepared | None]]
                 ) -> list[tuple[Detections | Exception, dict[str, float]]]:
    """Detect one step's frames (:class:`FrameReader` items, one per stream) in one
    :func:`detect_frames` call.

    Returns:
        Per frame, its :class:`Detections` or exception, and its stage ms: ``decode`` its own,
        ``inference`` and ``postprocess`` the call's shared equally among the frames, ``preprocess``
        the call's shared likewise plus the frame's own :meth:`Predictor.prepare` in its reader thread.
    """
    preps = [item[4] for item in items]
    prepared = None if any(p is None for p in preps) else [p.frame for p in preps if p is not None]
    results, times = detect_frames(predictor, [item[2] for item in items], prepared)
    share = {k: v / len(items) for k, v in times.items()}
    out: list[tuple[Detections | Exception, dict[str, float]]] = []
    for item, dets in zip(items, results):
        stage_ms = {"decode": item[3], **share}
        if item[4] is not None:
            stage_ms["preprocess"] += item[4].ms
        out.append((dets, stage_ms))
    return out


#: Decoder threads per video file, and OpenCV's threads (resize) while the streams run: the sources'
#: reader threads are the parallelism; frame-threaded decoding and a split resize only added CPU time
#: per frame (docs/runtime.md, "Many streams").
DECODE_THREADS = 1

#: Detection calls in flight at once on ONNX Runtime's CPU provider with at least this many physical
#: cores, each on ``cores // LANES`` intra-op threads: while one call runs, the calling thread tracks
#: and hands on the previous step's frames and the next call already runs (docs/runtime.md, "Many streams").
LANES = 2
#: Steps collected beyond the running calls (a frame of each stream per step), waiting for the next
#: free detection thread, when no source is live (measured +2.5% aggregate FPS on files,
#: docs/runtime.md "Many streams").
QUEUED_STEPS = 1


@dataclass
class _Step:
    """One step's frames (``(stream, reader item)``) in detection, or only streams that ended then.

    ``ends`` are applied after the step's frames are handed on, so that a stream's END reaches its
    writer after every frame taken before it."""

    frames: list[tuple[_Stream, tuple]]
    ends: list[tuple[_Stream, str, str | None]]
    future: Future | None


def _collect(active: list[_Stream], max_frames: int | None, echo: Echo
             ) -> tuple[list[tuple[_Stream, tuple]], list[tuple[_Stream, str, str | None]]]:
    """Take the next frame of every active stream that has one ready. A stream whose reader ended
    (or failed), or that reached ``max_frames``, is marked ``draining`` and listed in the ends."""
    frames, ends = [], []
    for s in active:
        if s.writer.error is not None:
            _end(s, "failed", _describe(s.writer.error), echo)
            continue
        try:
            item = s.q_in.get_nowait()
        except queue.Empty:
            continue
        if item is END:
            ends.append((s, "done", None))
        elif isinstance(item, BaseException):
            ends.append((s, "failed", _describe(item)))
        else:
            frames.append((s, item))
            s.taken += 1
            if max_frames is not None and s.taken >= max_frames:
                ends.append((s, "done", None))
    for s, _, _ in ends:
        s.draining = True
    return frames, ends


def _hand_on(step: _Step, clock: _Clock, echo: Echo) -> None:
    """Track the step's detected frames, stream by stream in order, and give them to the writers;
    then end the streams that ended at this step."""
    if step.future is not None:
        detected = step.future.result()
        clock.step(len(step.frames))
        for (s, (index, name, frame, _, _)), (dets, stage_ms) in zip(step.frames, detected):
            if s.status is not None:  # failed at an earlier step: its later frames are dropped
                continue
            if isinstance(dets, Exception):
                _end(s, "failed", _describe(dets), echo)
                continue
            tracks = None
            if s.tracker is not None:
                t0 = time.perf_counter()
                try:
                    tracks = s.tracker.update(frame, dets)
                except Exception as e:  # that stream fails, the others go on
                    _end(s, "failed", _describe(e), echo)
                    continue
                stage_ms["tracking"] = (time.perf_counter() - t0) * 1e3
            s.q_out.put((index, name, frame, dets, tracks, stage_ms))
    for s, status, reason in step.ends:
        _end(s, status, reason, echo)


def _depth(streams: Sequence[_Stream], lanes: int) -> int:
    """Steps :func:`_run_loop` keeps in flight: ``lanes`` running, plus :data:`QUEUED_STEPS` unless a
    stream is live."""
    return lanes + (0 if any(s.reader.live for s in streams) else QUEUED_STEPS)


def _run_loop(streams: list[_Stream], predictors: Sequence[FramePredictor], max_frames: int | None,
              ready: threading.Event, clock: _Clock, echo: Echo) -> None:
    """Step until every stream has ended: collect one frame per stream, detect them together on
    ``len(predictors)`` detection threads (each call takes a free predictor), then, in step order,
    track each frame with its stream's tracker and hand it to its writer.

    Up to ``len(predictors)`` + :data:`QUEUED_STEPS` steps are in flight, so that a detection
    thread that finishes takes the next step at once instead of waiting for this thread; with a
    live source among the streams none is queued (a queued live frame would wait while a newer one
    arrives: latency, not throughput, counts there). While
    fewer are in flight, the loop waits for whichever comes first, a frame or the oldest step's
    result (both set ``ready``); with all in flight, it waits for the oldest step."""
    lanes = len(predictors)
    depth = _depth(streams, lanes)
    free: queue.SimpleQueue[FramePredictor] = queue.SimpleQueue()
    for p in predictors:
        free.put(p)

    def detect(items: list[tuple]) -> list[tuple[Detections | Exception, dict[str, float]]]:
        predictor = free.get()  # never waits: as many predictors as detection threads
        try:
            return _detect_step(predictor, items)
        finally:
            free.put(predictor)

    pending: deque[_Step] = deque()
    with ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="det-run-detect") as pool:
        while True:
            ready.clear()  # before polling: a frame put or a step finished after this wakes the wait below
            active = [s for s in streams if s.status is None and not s.draining]
            while len(pending) < depth and active:
                frames, ends = _collect(active, max_frames, echo)
                if not frames and not ends:
                    break
                future = None
                if frames:
                    future = pool.submit(detect, [it for _, it in frames])
                    future.add_done_callback(lambda _: ready.set())
                pending.append(_Step(frames, ends, future))
                active = [s for s in active if s.status is None and not s.draining]
            oldest = pending[0].future if pending else None
            if pending and (len(pending) == depth or not active or oldest is None or oldest.done()):
                _hand_on(pending.popleft(), clock, echo)
            elif active:
                ready.wait(0.1)
            else:
                return


def _load_detector(settings: RunSettings) -> tuple[Backend, int]:
    """The detector and how many detection calls run at once: :data:`LANES` for an ONNX graph on ONNX
    Runtime's CPU provider with at least :data:`LANES` physical cores (each call on ``cores //
    LANES`` intra-op threads: one session, whose ``run`` is thread-safe and releases the GIL), else 1.

    Raises:
        see :func:`det_toolkit.runtime.backends.load_backend`.
    """
    cores, path = physical_cores(), Path(settings.weights)
    if (path.suffix.lower() == ".onnx" and path.is_file() and cores >= LANES
            and providers_for(settings.device) == [CPU_EP]):
        return OnnxBackend(path, [CPU_EP], threads=cores // LANES), LANES
    return load_backend(path, settings.device), 1  # its checks and messages for everything else


def run_streams(specs: Sequence[str], settings: RunSettings, project: Path, name: str, echo: Echo = print_echo,
                progress: bool = True) -> dict[str, Any]:
    """Run the sources ``specs`` (as ``det-run`` takes them) as streams of one model into the new
    run folder ``project/name`` (incremented: ``name2``, ...).

    Writes ``<run>/<stream>/`` per opened source (folder names: :func:`det_toolkit.runtime.run.stream_names`)
    with what ``det-run`` on that source alone writes (annotated video or images, ``predictions.jsonl``,
    ``<stem>_mot.txt`` when tracking, labels/COCO JSON when asked, and its ``summary.json``, which
    adds ``error`` when the stream failed), and ``<run>/summary.json``: ``streams`` (per source:
    ``stream``, ``source``, ``status`` ``done``/``failed``/``interrupted``, ``reason`` (why it
    failed), ``frames``, ``fps`` (that stream's frames/s), ``folder``), ``frames`` (all streams),
    ``fps`` (aggregate frames/s after :data:`WARMUP_FRAMES` steps, until every output is written),
    ``steps`` (batched detection calls), ``mean_batch`` (frames per call), ``batch`` (the graph's
    frames per forward pass), ``weights``, ``backend``, ``imgsz``, ``interrupted`` and ``signal``.
    A stream that yields no decodable frame fails and its folder is removed, as a single-source
    run leaves none. Progress and failures go to ``echo`` (``echo(msg, err=True)`` for stderr).

    Returns:
        The run summary (what ``<run>/summary.json`` holds) plus ``run_dir`` (the folder, a ``Path``).

    Raises:
        FileNotFoundError, ValueError, OSError: before any output is written: the weights, an
            option, the tracker settings or the output folder is unusable, or no source can be
            opened (the message lists why for each).
        det_toolkit.runtime.classes.ClassSpecError: ``settings.classes`` names an unknown class.
    """
    check_writable(project / name, "--project/--name")
    settings.check()
    backend, lanes = _load_detector(settings)
    predictors = [make_predictor(settings, backend) for _ in range(lanes)]
    predictor = predictors[0]
    ready = threading.Event()
    clock = _Clock()
    with ExitStack() as stack:
        stack.callback(cv2.setNumThreads, cv2.getNumThreads())
        cv2.setNumThreads(DECODE_THREADS)
        opened, failed = _open_streams(specs, settings, predictor, echo, stack)
        if not opened:
            raise SourceError("no source could be opened: " + "; ".join(f"{f['source']}: {f['reason']}"
                                                                         for f in failed))
        run_dir = increment_path(project / name)
        prepare = _timed_prepare(predictor) if _batches(predictor) else None  # letterbox in the reader threads
        streams = []
        for n, spec, src, trk in opened:
            try:
                streams.append(_start(n, spec, src, trk, run_dir, settings, backend, prepare, ready,
                                      len(streams), progress, stack))
            except OSError as e:  # its outputs cannot be opened (e.g. no mp4 encoder for that frame size)
                shutil.rmtree(run_dir / n, ignore_errors=True)
                failed.append(_failed_row(n, spec, _describe(e), echo))

        def finish() -> None:
            for s in streams:
                _end(s, "interrupted")  # streams still running when a signal stopped the loop
            for s in streams:
                s.writer.join()
                s.reader.join(timeout=5)
            clock.t_end = time.perf_counter()

        clock.t_start = time.perf_counter()
        stopped_by = run_until_stopped(lambda: _run_loop(streams, predictors, settings.max_frames, ready, clock, echo),
                                       finish)
    rows = {f["stream"]: f for f in failed}
    for s in streams:
        rows[s.name] = _stream_row(s, settings, backend, predictor, stopped_by)
    summary = {"streams": [rows[n] for n in stream_names(specs)],
               "frames": sum(r["frames"] for r in rows.values()), "fps": clock.fps(), "steps": clock.steps,
               "mean_batch": round(clock.frames / clock.steps, 3) if clock.steps else 0.0,
               "batch": backend.max_batch, "weights": str(settings.weights), "backend": backend.name,
               "imgsz": list(predictor.imgsz), "interrupted": stopped_by is not None, "signal": stopped_by}
    atomic_write(run_dir / "summary.json", json.dumps(summary, indent=2).encode() + b"\n")
    _print(summary, run_dir, echo)
    return {**summary, "run_dir": run_dir}


def _stream_row(s: _Stream, settings: RunSettings, backend: Backend, predictor: FramePredictor,
                stopped_by: str | None) -> dict[str, Any]:
    """Write the stream's ``summary.json`` (or remove its folder if no frame was decoded); its run-summary row."""
    signal_name = stopped_by if s.status == "interrupted" else None
    summary = {"source": s.spec, "weights": str(settings.weights), "backend": backend.name,
               "imgsz": list(predictor.imgsz), **run_summary(s.source, s.reader, s.writer, s.tracker, signal_name)}
    if settings.sahi is not None:
        summary["sahi"] = {**asdict(predictor.config), "tiles": predictor.tiles}
    folder: str | None = s.name
    if summary["frames"] == 0 and s.status == "done":  # a single-source run leaves no folder either
        s.status, s.reason = "failed", f"no frame could be decoded ({summary['skipped']} unreadable)"
        shutil.rmtree(s.folder)
        folder = None
    else:
        if s.status == "failed":
            summary["error"] = s.reason
        atomic_write(s.folder / "summary.json", json.dumps(summary, indent=2).encode() + b"\n")
    return {"stream": s.name, "source": s.spec, "status": s.status, "reason": s.reason,
            "frames": summary["frames"], "fps": summary["fps"], "folder": folder}


def _print(summary: dict[str, Any], run_dir: Path, echo: Echo) -> None:
    """One line per stream, then the aggregate."""
    for r in summary["streams"]:
        if r["status"] == "failed":
            echo(f"{r['stream']}: failed ({r['frames']} frames): {r['reason']}", err=True)
        else:
            echo(f"{r['stream']}: {r['frames']} frames, {r['fps']:.2f} FPS, {r['status']}")
    counts = {k: sum(r["status"] == k for r in summary["streams"]) for k in ("done", "interrupted", "failed")}
    states = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    echo(f"{len(summary['streams'])} streams ({states}): {summary['frames']} frames in {summary['steps']} "
         f"detection calls ({summary['mean_batch']:.2f} frames per call, graph batch {summary['batch']}) "
         f"with {summary['backend']}; aggregate {summary['fps']:.2f} FPS")
    echo(f"Results saved to {run_dir}")
