"""Letterbox pre-processing and its inverse, shared by training, export and every backend.

Pure NumPy/OpenCV: no torch. The same :func:`resize_longest` is used by the training data cache, so a
frame seen by ``det-run`` is scaled exactly like the images the model was validated on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from det_toolkit.runtime.meta import PAD_VALUE


@dataclass(frozen=True)
class LetterboxInfo:
    """How a frame was mapped into the letterboxed input.

    Attributes:
        scale: resize factor applied to the frame (input px per frame px).
        orig_hw: ``(H, W)`` of the original frame in pixels.
        resized_hw: ``(H, W)`` of the resized frame inside the padded input.
    """

    scale: float
    orig_hw: tuple[int, int]
    resized_hw: tuple[int, int]


#: Largest input side (px) any command accepts: a 8192 px square float32 batch of one is 768 MiB;
#: a typo such as --imgsz 100000 would otherwise try to allocate ~110 GiB.
MAX_IMGSZ = 8192

def resize_longest(img: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so the longest side equals ``size``, keeping aspect ratio.

    Uses ``INTER_AREA`` when shrinking (anti-aliased) and ``INTER_LINEAR`` when enlarging.

    Args:
        img: ``uint8 [H, W, 3]`` image (any channel order).
        size: target longest side in pixels.

    Returns:
        ``(resized, scale)`` where ``scale = new / old``.
    """
    h, w = img.shape[:2]
    scale = size / max(h, w)
    if scale == 1.0:
        return img, 1.0
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
    return cv2.resize(img, (nw, nh), interpolation=interp), scale


def letterbox(
    img: np.ndarray,
    imgsz: tuple[int, int],
    pad_value: tuple[int, int, int] = PAD_VALUE,
    out: np.ndarray | None = None,
    rect: bool = False,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Fit ``img`` into ``imgsz`` keeping aspect ratio, padding right/bottom.

    Args:
        img: ``uint8 [H, W, 3]`` frame, same channel order as ``pad_value``.
        imgsz: ``(H, W)`` of the model input in pixels.
        pad_value: padding colour.
        out: optional preallocated buffer reused across frames (used when its shape is the
            output's; the returned array is always a buffer of this function's, never ``img``).
        rect: no padding: return the resized image itself (``resized_hw``), for graphs with
            dynamic H/W, which pad to their stride with the mean colour themselves, exactly as in
            training (``GeneralizedRCNNTransform``); a landscape 4:3 frame at 320 is 320x240
            instead of 320x320.

    Returns:
        ``(padded uint8 [imgsz[0], imgsz[1], 3], LetterboxInfo)``; with ``rect``, uint8
        ``[*resized_hw, 3]``.

    Raises:
        ValueError: ``img`` is not a non-empty 3-channel image.
    """
    if img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
        raise ValueError(f"expected a non-empty HxWx3 image, got shape {img.shape}")
    th, tw = imgsz
    h, w = img.shape[:2]
    scale = min(th / h, tw / w)
    nh, nw = min(th, max(1, round(h * scale))), min(tw, max(1, round(w * scale)))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if scale < 1.0 else cv2.INTER_LINEAR
        resized = cv2.resize(img, (nw, nh), interpolation=interp)
    else:
        resized = img
    if rect:
        th, tw = nh, nw
    if out is None or out.shape != (th, tw, 3):
        out = np.empty((th, tw, 3), dtype=np.uint8)
    out[:nh, :nw] = resized
    if nw < tw:
        out[:nh, nw:] = pad_value
    if nh < th:
        out[nh:] = pad_value
    return out, LetterboxInfo(scale=scale, orig_hw=(h, w), resized_hw=(nh, nw))


def to_input(img_rgb: np.ndarray) -> np.ndarray:
    """``uint8 [H, W, 3]`` RGB -> ``float32 [1, 3, H, W]`` in ``[0, 1]`` (contiguous)."""
    x = np.ascontiguousarray(img_rgb.transpose(2, 0, 1)[None], dtype=np.float32)
    x *= 1.0 / 255.0
    return x


def unletterbox_boxes(boxes: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map ``xyxy`` boxes from letterboxed-input pixels back to original-frame pixels.

    Args:
        boxes: ``float32 [K, 4]`` ``xyxy`` in model-input pixels.
        info: the :class:`LetterboxInfo` returned by :func:`letterbox` for this frame.

    Returns:
        ``float32 [K, 4]`` ``xyxy`` in original-frame pixels, clipped to the frame.
    """
    out = boxes.astype(np.float32, copy=True)
    if len(out):
        out /= info.scale
        h, w = info.orig_hw
        np.clip(out[:, 0::2], 0, w, out=out[:, 0::2])
        np.clip(out[:, 1::2], 0, h, out=out[:, 1::2])
    return out
