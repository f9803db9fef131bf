"""Helpers shared by the benchmarks and their tests (NumPy/OpenCV only)."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from det_toolkit.runtime.boxes import box_iou

#: The street video of the benchmarks: ``$DET_VIDEO``, else ``../shared/videos/vtest.avi`` relative to
#: the current directory (the repository root of a checkout beside ``shared/``). Never resolved
#: relative to this file: installed, it lives in site-packages.
VTEST = Path(os.environ.get("DET_VIDEO") or "../shared/videos/vtest.avi")


def read_frames(path: str | Path = VTEST, n: int = 20, every: int = 1) -> list[np.ndarray]:
    """The first ``n`` frames of a video taken every ``every`` frames (uint8 BGR ``[H, W, 3]``).

    Raises:
        FileNotFoundError: the video is missing or cannot be opened (for the default :data:`VTEST`,
            the message says how to point at it).
    """
    if not Path(path).is_file():
        hint = (" (set DET_VIDEO to the video, or run from a checkout beside shared/; the default is "
                "../shared/videos/vtest.avi relative to the current directory)") if Path(path) == VTEST else ""
        raise FileNotFoundError(f"video not found: {Path(path).resolve()}{hint}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    frames, i = [], 0
    while len(frames) < n:
        ok, f = cap.read()
        if not ok:
            break
        if i % every == 0:
            frames.append(f.copy())
        i += 1
    cap.release()
    return frames


def match_count(a: np.ndarray, b: np.ndarray, la: np.ndarray, lb: np.ndarray,
                iou_thr: float = 0.95) -> tuple[int, int]:
    """Greedy one-to-one matching of two box sets (same label and IoU >= ``iou_thr``).

    Args:
        a, b: float ``[Ka, 4]``, ``[Kb, 4]`` ``xyxy`` boxes (pixels).
        la, lb: int ``[Ka]``, ``[Kb]`` labels.

    Returns:
        ``(matched pairs, max(Ka, Kb))``: their ratio is the matched fraction.
    """
    if not len(a) or not len(b):
        return 0, max(len(a), len(b))
    iou = box_iou(a, b)
    iou[la[:, None] != lb[None]] = 0
    matched = 0
    while iou.size and iou.max() >= iou_thr:
        i, j = np.unravel_index(iou.argmax(), iou.shape)
        matched += 1
        iou[i, :] = 0
        iou[:, j] = 0
    return matched, max(len(a), len(b))
