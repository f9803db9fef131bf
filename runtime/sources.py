"""Frame sources: an image, a folder of images, a glob pattern, a list file, or a video file."""

from __future__ import annotations

import glob
import logging
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
#: Consecutive failed video reads tolerated before the video counts as ended.
MAX_BAD_FRAMES = 10


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
    """

    stem: str
    is_video: bool
    frames: int
    fps: float | None = None
    width: int | None = None
    height: int | None = None


class Source(ABC):
    """Iterate ``(index, name, frame_bgr)`` over a source; open one with :func:`open_source`.

    ``index`` is the 0-based position in the source (skipped items keep their number), ``name``
    the image file name or the video file name, ``frame_bgr`` uint8 ``[H, W, 3]``.

    Attributes:
        info: :class:`SourceInfo`.
        skipped: unreadable images or corrupt video frames met so far.
    """

    def __init__(self, info: SourceInfo) -> None:
        self.info = info
        self.skipped = 0

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]: ...

    def close(self) -> None:
        """Release what the source holds open."""


class ImageSource(Source):
    """Image files read with ``cv2.imread`` (grayscale becomes 3-channel); unreadable ones are
    counted in ``skipped``, logged and skipped."""

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
            yield i, f.name, img


class VideoSource(Source):
    """Frames of a video decoded by ``cv2.VideoCapture`` into one reused array (copy a frame to
    keep it past the next iteration). A failed read before the container's frame count is a
    corrupt frame: counted in ``skipped`` and passed over, up to :data:`MAX_BAD_FRAMES` in a row,
    so a truncated tail ends the video cleanly."""

    def __init__(self, info: SourceInfo, cap: cv2.VideoCapture, name: str) -> None:
        super().__init__(info)
        self._cap = cap
        self._name = name

    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]:
        frame, i, bad = None, 0, 0
        while True:
            ok, out = self._cap.read(frame)
            if ok:
                frame, bad = out, 0
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


def open_source(spec: str | Path) -> Source:
    """Open ``spec``: an image file, a folder of images, a glob pattern, a ``.txt`` list of image
    paths, or a video file.

    Folder and glob images are sorted by path; non-image files in a folder are ignored.

    Raises:
        FileNotFoundError: ``spec`` does not exist (and is not a glob pattern).
        SourceError: empty folder, glob without images, or a file OpenCV cannot open as video.
    """
    s = str(spec)
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
