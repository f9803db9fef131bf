"""Frame sources: :func:`open_source` opens an image, a folder of images, a glob pattern, a list
file, a video file, a camera index, a stream URL, or ``-`` (concatenated JPEG/PNG images on stdin).

The image sources (files, folders, globs, lists: :class:`ImageSource`; stdin: :class:`PipeSource`)
are here; video files, cameras and streams are :mod:`det_toolkit.runtime.video_sources`; the
interface they share (:class:`~det_toolkit.runtime.source_types.Source`,
:class:`~det_toolkit.runtime.source_types.SourceInfo`,
:class:`~det_toolkit.runtime.source_types.SourceError`) is :mod:`det_toolkit.runtime.source_types`.
"""

from __future__ import annotations

import glob
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np

from det_toolkit.runtime.files import IMAGE_SUFFIXES
from det_toolkit.runtime.image_bytes import split_images, truncated_image
from det_toolkit.runtime.source_types import Source, SourceError, SourceInfo
from det_toolkit.runtime.video_sources import STREAM_PREFIXES, open_stream, open_video

log = logging.getLogger(__name__)


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


def open_source(spec: str | Path, decode_threads: int | None = None) -> Source:
    """Open ``spec``: an image file, a folder of images, a glob pattern, a ``.txt`` list of image
    paths, a video file, a camera index (``0``), a stream URL (``rtsp://``, ``http(s)://``, ...),
    or ``-`` for concatenated JPEG/PNG images on stdin (:func:`split_images`).
    ``decode_threads``: a video file's decoder threads (:func:`open_video`); ignored otherwise.

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
    return open_video(p, decode_threads)
