"""The byte structure of encoded images: whether a JPEG/PNG/BMP/WebP file is truncated
(:func:`truncated_image`, the policy training, evaluation, det-label and det-run share) and the
images of a stream of concatenated JPEG/PNG files (:func:`split_images`, det-run's ``-`` source).
Pure Python on bytes: no decoding, no OpenCV or PIL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


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
