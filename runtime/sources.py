"""Frame sources: an image, a folder of images, a glob pattern, a list file, a video file, a camera
index, a stream URL, or ``-`` (concatenated JPEG/PNG images on stdin)."""

from __future__ import annotations

import glob
import logging
import re
import sys
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from det_toolkit.runtime.files import IMAGE_SUFFIXES

log = logging.getLogger(__name__)

#: Consecutive failed video reads tolerated before the video counts as ended.
MAX_BAD_FRAMES = 10
#: Seconds waited before each reconnection attempt of a dropped stream (the last one repeats).
RECONNECT_BACKOFF_S = (0.5, 1.0, 2.0, 4.0, 8.0)
#: Reconnection attempts in a row before a stream counts as ended.
MAX_RECONNECTS = 10
STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")


class SourceError(ValueError):
    """A source cannot be opened (nothing matches, not an image, unopenable video)."""


@dataclass(frozen=True)
class SourceInfo:
    """What a source is.

    Attributes:
        stem: name for output files (video/image stem, folder name).
        is_video: frames come from a video file.
        frames: number of frames (video: container's count, may be approximate) or images.
        fps: video frame rate (frames/s); ``None`` for images.
        width: video frame width in pixels; ``None`` for images (sizes may differ).
        height: video frame height in pixels; ``None`` for images.
        live: a camera or network stream (frames arrive in real time; unknown length).
    """

    stem: str
    is_video: bool
    frames: int
    fps: float | None = None
    width: int | None = None
    height: int | None = None
    live: bool = False


class Source(ABC):
    """Iterate ``(index, name, frame_bgr)`` over a source; open one with :func:`open_source`.

    ``index`` is the 0-based position in the source (skipped items keep their number), ``name``
    the image file name or the video file name, ``frame_bgr`` uint8 ``[H, W, 3]``.

    Attributes:
        info: :class:`SourceInfo`.
        skipped: unreadable images or corrupt video frames met so far.
        truncated: file names of truncated JPEG images decoded so far (their missing bottom rows
            are grey, see :func:`truncated_image`).
    """

    def __init__(self, info: SourceInfo) -> None:
        self.info = info
        self.skipped = 0
        self.truncated: list[str] = []

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]: ...

    def close(self) -> None:  # noqa: B027 - an optional hook: sources holding nothing open keep it
        """Release what the source holds open (nothing, unless a subclass overrides it)."""


class ImageSource(Source):
    """Image files read with ``cv2.imread`` (grayscale becomes 3-channel); unreadable ones are
    counted in ``skipped``, logged and skipped. A truncated JPEG is decoded (libjpeg fills the
    missing bottom rows with grey, as PIL and the training readers do) and named in ``truncated``;
    truncated PNG/BMP/WebP/TIFF files do not decode and count as unreadable."""

    def __init__(self, info: SourceInfo, files: list[Path]) -> None:
        super().__init__(info)
        self.files = files

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        for i, f in enumerate(self.files):
            img = cv2.imread(str(f), cv2.IMREAD_COLOR)
            if img is None:
                self.skipped += 1
                log.warning("skipping unreadable image %s", f)
                continue
            if truncated_image(f) == "JPEG":
                self.truncated.append(f.name)
            yield i, f.name, img


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


def _jpeg_end(buf: bytearray | bytes, start: int) -> int:
    """End offset (exclusive) of the JPEG at ``buf[start]`` (``FFD8``), -1 if incomplete, -2 if the
    marker structure is broken.

    Walks the marker segments (lengths skip over any embedded ``FFD9``) and scans entropy-coded
    data after each SOS for a marker that is not byte stuffing (``FF00``) or a restart (``FFD0-7``).
    """
    i, n = start + 2, len(buf)
    while i + 2 <= n:
        if buf[i] != 0xFF:
            return -2
        marker = buf[i + 1]
        if marker == 0xD9:
            return i + 2
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:
            i += 2
            continue
        if i + 4 > n:
            return -1
        seg_end = i + 2 + (buf[i + 2] << 8 | buf[i + 3])
        if marker != 0xDA:
            i = seg_end
            continue
        j = seg_end  # entropy-coded data: find the next real marker
        while True:
            j = buf.find(b"\xff", j)
            if j < 0 or j + 1 >= n:
                return -1
            if buf[j + 1] == 0x00 or 0xD0 <= buf[j + 1] <= 0xD7:
                j += 2
                continue
            break
        i = j
    return -1


def _png_end(buf: bytearray | bytes, start: int) -> int:
    """End offset (exclusive) of the PNG at ``buf[start]`` (walking its chunks to ``IEND``), or -1."""
    i, n = start + 8, len(buf)
    while i + 8 <= n:
        length = int.from_bytes(buf[i:i + 4], "big")
        kind = bytes(buf[i + 4:i + 8])
        i += 12 + length
        if kind == b"IEND":
            return i if i <= n else -1
    return -1


#: the end-of-image marker of a JPEG
JPEG_EOI = b"\xff\xd9"


def truncated_image(path: str | Path) -> str | None:
    """The format of an image file that ends before its data does, else ``None``.

    Reads only the file's first and last bytes, except for a JPEG or PNG that does not end with its
    end marker (bytes after it, or truncation): that one is walked marker by marker or chunk by
    chunk (:func:`_jpeg_end`, :func:`_png_end`). Checked: JPEG (no end-of-image marker), PNG (no
    ``IEND`` chunk), BMP (shorter than its header's file size) and WebP (shorter than its RIFF
    size); other formats (TIFF, ...) and unreadable files give ``None``.

    Policy shared by training, evaluation, det-label and det-run: a truncated JPEG is decoded (its
    missing bottom rows grey: libjpeg's fill, what OpenCV's ``imread`` and PIL with
    ``ImageFile.LOAD_TRUNCATED_IMAGES`` give) and counted; the other formats do not decode when
    truncated (OpenCV refuses them) and count as unreadable.

    Returns:
        ``"JPEG"``, ``"PNG"``, ``"BMP"``, ``"WebP"`` or ``None``.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = f.seek(0, 2)
            f.seek(max(0, size - 12))
            tail = f.read()
            if head.startswith(b"\xff\xd8\xff"):
                if tail.endswith(JPEG_EOI):
                    return None
                f.seek(0)
                return "JPEG" if _jpeg_end(f.read(), 0) == -1 else None
            if head.startswith(b"\x89PNG\r\n\x1a\n"):
                if tail[-12:-4] == b"\x00\x00\x00\x00IEND":
                    return None
                f.seek(0)
                return "PNG" if _png_end(f.read(), 0) == -1 else None
    except OSError:
        return None
    if head.startswith(b"BM") and len(head) >= 6:
        return "BMP" if size < int.from_bytes(head[2:6], "little") else None
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
        return "WebP" if size < int.from_bytes(head[4:8], "little") + 8 else None
    return None


def split_images(stream: BinaryIO, chunk: int = 1 << 16) -> Iterator[bytes]:
    """Yield the encoded images of a byte stream of concatenated JPEG and/or PNG files.

    This is the ``-`` (stdin) format: e.g. ``ffmpeg -i IN -f image2pipe -c:v mjpeg -`` or
    ``cat *.jpg``. Bytes between images that start neither a JPEG (``FFD8FF``) nor a PNG are
    skipped, a JPEG with a broken marker structure is skipped up to the next image start (the
    bytes of a corrupt scan are passed on: decoding them fails or yields a damaged frame), and a
    truncated last image is dropped.
    """
    buf, pos = bytearray(), 0
    while True:
        data = stream.read(chunk)
        buf += data
        while True:
            jpg, png = buf.find(b"\xff\xd8\xff", pos), buf.find(b"\x89PNG\r\n\x1a\n", pos)
            starts = [s for s in (jpg, png) if s >= 0]
            if not starts:
                pos = max(pos, len(buf) - 8)
                break
            start = min(starts)
            end = _jpeg_end(buf, start) if start == jpg else _png_end(buf, start)
            if end == -2:
                log.warning("stdin: broken JPEG at byte offset %d skipped", start)
                pos = start + 2
                continue
            if end < 0:
                pos = start
                break
            yield bytes(buf[start:end])
            pos = end
        if pos > chunk:
            del buf[:pos]
            pos = 0
        if not data:
            return


class PipeSource(Source):
    """Images read from a binary stream (stdin for ``-``): concatenated JPEG/PNG files, see
    :func:`split_images`. Images OpenCV cannot decode are counted in ``skipped`` and passed over.

    Args:
        info: what the stream is (``frames`` 0: unknown).
        images: the encoded images, the first one already decoded as ``first``.
        first: the first decoded frame (its size sized the output video).
    """

    def __init__(self, info: SourceInfo, images: Iterator[bytes], first: np.ndarray) -> None:
        super().__init__(info)
        self._images, self._first = images, first

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        yield 0, self.info.stem, self._first
        for i, data in enumerate(self._images, 1):
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                self.skipped += 1
                log.warning("stdin: skipping undecodable image %d", i)
                continue
            yield i, self.info.stem, img


def open_pipe(stream: BinaryIO, fps: float = 30.0) -> PipeSource:
    """A :class:`PipeSource` on ``stream``; blocks until its first decodable image arrives.

    Raises:
        SourceError: the stream ends before any decodable image.
    """
    images = split_images(stream)
    skipped = 0
    for data in images:
        first = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        if first is not None:
            h, w = first.shape[:2]
            src = PipeSource(SourceInfo("stdin", True, 0, fps, w, h), images, first)
            src.skipped = skipped
            return src
        skipped += 1
    raise SourceError("stdin: no decodable JPEG/PNG image in the input (expected concatenated "
                      "JPEG or PNG files, e.g. `ffmpeg -i IN -f image2pipe -c:v mjpeg - | det-run - ...`)")


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


def open_source(spec: str | Path) -> Source:
    """Open ``spec``: an image file, a folder of images, a glob pattern, a ``.txt`` list of image
    paths, a video file, a camera index (``0``), a stream URL (``rtsp://``, ``http(s)://``, ...),
    or ``-`` for concatenated JPEG/PNG images on stdin (:func:`split_images`).

    Folder and glob images are sorted by path; non-image files in a folder are ignored.

    Raises:
        FileNotFoundError: ``spec`` does not exist (and is not a glob pattern).
        SourceError: empty folder, glob without images, a file OpenCV cannot open as video, or a
            camera/stream that cannot be opened.
    """
    s = str(spec)
    if s == "-":
        return open_pipe(sys.stdin.buffer)
    if s.isdigit() and not Path(s).exists():
        return open_stream(int(s))
    if s.lower().startswith(STREAM_PREFIXES):
        return open_stream(s)
    p = Path(s)
    if any(ch in s for ch in "*?[") and not p.exists():
        files = sorted(Path(f) for f in glob.glob(s, recursive=True)
                       if Path(f).suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"no images match the pattern {s}")
        info = SourceInfo(stem=p.parent.name or "images", is_video=False, frames=len(files))
        return ImageSource(info, files)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise SourceError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {p}")
        return ImageSource(SourceInfo(stem=p.resolve().name, is_video=False, frames=len(files)), files)
    if not p.is_file():
        raise FileNotFoundError(f"source not found: {p}")
    if p.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSource(SourceInfo(stem=p.stem, is_video=False, frames=1), [p])
    if p.suffix.lower() == ".txt":  # a list of image paths, one per line (relative to the list)
        lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines()]
        files = [q if q.is_absolute() else p.parent / q
                 for q in (Path(ln) for ln in lines if ln and not ln.startswith("#"))]
        if not files:
            raise SourceError(f"image list {p} is empty")
        return ImageSource(SourceInfo(stem=p.stem, is_video=False, frames=len(files)), files)
    cap = cv2.VideoCapture(str(p))
    if not cap.isOpened():
        raise SourceError(f"cannot open {p} as a video (unsupported or corrupt file)")
    info = SourceInfo(stem=p.stem, is_video=True,
                      frames=max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT))),
                      fps=cap.get(cv2.CAP_PROP_FPS) or None,
                      width=int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)),
                      height=int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    return VideoSource(info, cap, p.name)
