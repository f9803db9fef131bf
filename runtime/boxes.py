"""Box geometry in NumPy for the torch-free layers (torch code uses ``torchvision.ops``)."""

from __future__ import annotations

import numpy as np


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union of two sets of ``xyxy`` boxes (NumPy ``torchvision.ops.box_iou``).

    Args:
        a: float ``[N, 4]`` boxes ``(x1, y1, x2, y2)``, any unit (pixels), ``x2 >= x1``, ``y2 >= y1``.
        b: float ``[M, 4]`` boxes in the same unit.

    Returns:
        ``[N, M]`` IoU in ``[0, 1]`` (float32 for float32 boxes, NumPy's promotion otherwise); ``0``
        for pairs whose union is empty (two degenerate boxes). ``N`` or ``M`` may be 0.
    """
    a = np.asarray(a).reshape(-1, 4)
    b = np.asarray(b).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    iou = inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)  # 0 / 1e-9 for empty unions
    return iou.astype(np.result_type(a, b, np.float32), copy=False)
