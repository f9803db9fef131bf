"""Video frame sources: a video file (:class:`VideoSource`, :func:`open_video`) and a camera index
or network stream that reconnects when it drops (:class:`StreamSource`, :func:`open_stream`).
:func:`det_toolkit.runtime.sources.open_source` picks them from a source spec."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from det_toolkit.runtime.source_types import Source, SourceError, SourceInfo

log = logging.getLogger(__name__)

#: Consecutive failed video reads tolerated before the video counts as ended.
MAX_BAD_FRAMES = 10
#: Seconds waited before each reconnection attempt of a dropped stream (the last one repeats).
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Reconnection attempts in a row before a stream counts as ended.
MAX_RECONNECTS = 10
#: URL schemes :func:`det_toolkit.runtime.sources.open_source` opens as network streams (:func:`open_stream`).
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class VideoSource(Source):
    """Frames of a video decoded by ``cv2.VideoCapture`` (a new array per frame, so frames can be
    queued). A failed read before the container's frame count is a corrupt frame: counted in
    ``skipped`` and passed over, up to :data:`MAX_BAD_FRAMES` in a row, so a truncated tail ends
    the video cleanly."""

    def __init__(self, info: SourceInfo, cap: cv2.VideoCapture, name: str) -> None:
        super().__init__(info)
        self._cap = cap
        self._name = name

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        i, bad = 0, 0
        while True:
            ok, frame = self._cap.read()
            if ok:
                bad = 0
                yield i, self._name, frame
            elif i < self.info.frames and bad < MAX_BAD_FRAMES:
                bad += 1
                self.skipped += 1
            else:
                break
            i += 1
        if i < self.info.frames:
            log.warning("%s: decoding stopped at frame %d of %d (%d unreadable in a row: truncated or "
                        "corrupt tail)", self._name, i - bad, self.info.frames, bad)

    def close(self) -> None:
        self._cap.release()


class StreamSource(Source):
    """A camera (``cv2.VideoCapture(index)``) or network stream (RTSP/HTTP/... URL) that reconnects.

    When a read fails the stream is reopened after :data:`RECONNECT_BACKOFF_S` waits (logged as a
    warning each time, "reconnected" once back), up to :data:`MAX_RECONNECTS` attempts in a row;
    then it ends. Each reconnection counts in ``reconnects``. :meth:`close` (from any thread) ends
    the iteration, also during a wait.

    Args:
        info: what the stream is (``live=True``).
        cap: the opened capture.
        target: camera index or URL, for reopening.
    """

    def __init__(self, info: SourceInfo, cap: cv2.VideoCapture, target: int | str) -> None:
        super().__init__(info)
        self._cap, self._target = cap, target
        self._closed = threading.Event()
        self.reconnects = 0

    def _reconnect(self) -> bool:
        for attempt in range(MAX_RECONNECTS):
            wait = RECONNECT_BACKOFF_S[min(attempt, len(RECONNECT_BACKOFF_S) - 1)]
            log.warning("%s: stream dropped; reconnecting in %.1f s (attempt %d/%d)", self.info.stem,
                        wait, attempt + 1, MAX_RECONNECTS)
            self._cap.release()
            if self._closed.wait(wait):
                return False
            self._cap = cv2.VideoCapture(self._target)
            if self._cap.isOpened():
                self.reconnects += 1
                log.warning("%s: reconnected", self.info.stem)
                return True
        log.error("%s: stream lost after %d reconnection attempts", self.info.stem, MAX_RECONNECTS)
        return False

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        i = 0
        while not self._closed.is_set():
            ok, frame = self._cap.read()
            if ok:
                yield i, self.info.stem, frame
                i += 1
            elif self._closed.is_set() or not self._reconnect():
                break

    def close(self) -> None:
        self._closed.set()
        self._cap.release()


def open_video(path: Path, decode_threads: int | None = None) -> VideoSource:
    """Open the video file ``path`` with ``cv2.VideoCapture``; its :class:`SourceInfo` carries the
    container's frame count (may be approximate), frame rate and frame size.

    Args:
        path: the video file.
        decode_threads: threads the decoder may use (``CAP_PROP_N_THREADS``; FFmpeg's default,
            ``None``, is one per core). ``1`` when many sources decode at once, one thread each
            (``det-run SRC1 SRC2 ...``): the sources are the parallelism, and a frame-threaded
            decoder then only adds hand-offs (docs/runtime.md, "Many streams"). A backend that
            refuses the setting opens the file with its default instead.

    Raises:
        SourceError: OpenCV cannot open it as a video (unsupported or corrupt file).
    """
    cap = cv2.VideoCapture()
    if decode_threads is not None:
        cap.open(str(path), cv2.CAP_ANY, [cv2.CAP_PROP_N_THREADS, decode_threads])
    if not cap.isOpened():
        cap.open(str(path))
    if not cap.isOpened():
        raise SourceError(f"cannot open {path} as a video (unsupported or corrupt file)")
    info = SourceInfo(stem=path.stem, is_video=True,
                      frames=max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))),
                      fps=cap.get(cv2.CAP_PROP_FPS) or None,
                      width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                      height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return VideoSource(info, cap, path.name)


def open_stream(target: int | str) -> StreamSource:
    """Open a camera index or stream URL.

    Raises:
        SourceError: it cannot be opened.
    """
    cap = cv2.VideoCapture(target)
    if not cap.isOpened():
        kind = "camera" if isinstance(target, int) else "stream"
        raise SourceError(f"cannot open {kind} {target}")
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if not (w and h):  # some backends report no size before the first frame (a live frame is lost)
        ok, frame = cap.read()
        h, w = frame.shape[:2] if ok else (0, 0)
    stem = f"camera{target}" if isinstance(target, int) else (
        re.sub(r"[^A-Za-z0-9_.-]+", "_", str(target).split("://", 1)[-1]).strip("_")[:60] or "stream")
    fps = cap.get(cv2.CAP_PROP_FPS)
    info = SourceInfo(stem, True, 0, fps if 0 < fps < 1000 else 30.0, w or None, h or None, live=True)
    return StreamSource(info, cap, target)
