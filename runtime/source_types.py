"""The frame-source interface of det-run and det-label: :class:`Source` (iterate ``(index, name,
frame_bgr)``), :class:`SourceInfo` (what a source is) and :class:`SourceError`. The sources
themselves: :mod:`det_toolkit.runtime.sources` (images, folders, lists, stdin; :func:`open_source`
opens any spec) and :mod:`det_toolkit.runtime.video_sources` (video files, cameras, streams)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


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
    """Iterate ``(index, name, frame_bgr)`` over a source; open one with
    :func:`det_toolkit.runtime.sources.open_source`.

    ``index`` is the 0-based position in the source (skipped items keep their number), ``name``
    the image file name or the video file name, ``frame_bgr`` uint8 ``[H, W, 3]``.

    Attributes:
        info: :class:`SourceInfo`.
        skipped: unreadable images or corrupt video frames met so far.
        truncated: file names of truncated JPEG images decoded so far (their missing bottom rows
            are grey, see :func:`det_toolkit.runtime.image_bytes.truncated_image`).
    """

    def __init__(self, info: SourceInfo) -> None:
        self.info = info
        self.skipped = 0
        self.truncated: list[str] = []

    @abstractmethod
    def __iter__(self) -> Iterator[tuple[int, str, np.ndarray]]: ...

    def close(self) -> None:  # noqa: B027 - an optional hook: sources holding nothing open keep it
        """Release what the source holds open (nothing, unless a subclass overrides it)."""
