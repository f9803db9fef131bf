"""Helpers shared by the benchmarks and their tests (NumPy/OpenCV only)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

VTEST = Path(__file__).resolve().parents[2] / "shared/videos/vtest.avi"


def read_frames(path: str | Path = VTEST, n: int = 20, every: int = 1) -> list[np.ndarray]:
    """The first ``n`` frames of a video taken every ``every`` frames (uint8 BGR ``[H, W, 3]``).

    Raises:
        FileNotFoundError: the video cannot be opened.
    """
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
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), -1)
    area_a, area_b = np.prod(a[:, 2:] - a[:, :2], -1), np.prod(b[:, 2:] - b[:, :2], -1)
    iou = inter / (area_a[:, None] + area_b[None] - inter + 1e-9)
    iou[la[:, None] != lb[None]] = 0
    matched = 0
    while iou.size and iou.max() >= iou_thr:
        i, j = np.unravel_index(iou.argmax(), iou.shape)
        matched += 1
        iou[i, :] = 0
        iou[:, j] = 0
    return matched, max(len(a), len(b))
