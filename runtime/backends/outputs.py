"""Decoding of graph outputs shared by the backends (numpy only: no torch, no onnxruntime).

A static (TensorRT-ready) graph returns fixed-size padded outputs for a fixed batch ``N``
(see :mod:`det_toolkit.runtime.meta`): ``boxes`` float32 ``[N, K, 4]``, ``scores`` float32 ``[N, K]``,
``labels`` int64 ``[N, K]``, ``num_dets`` int64 ``[N]`` with ``K = max_det``; image ``i`` owns
rows ``[:num_dets[i]]``. The backends turn them into the per-image ``RawDetections`` of
:meth:`det_toolkit.runtime.backends.base.Backend.infer` with :func:`split_batched`, and feed fewer than ``N``
images with :func:`pad_batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from det_toolkit.runtime.backends.base import RawDetections


def split_batched(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                  num_dets: np.ndarray, n: int | None = None) -> list[RawDetections]:
    """Split padded batched outputs into per-image detections.

    Args:
        boxes: float ``[N, K, 4]`` ``xyxy`` input pixels.
        scores: float ``[N, K]``.
        labels: integer ``[N, K]`` 0-based class indices (int32 from TensorRT is accepted).
        num_dets: integer ``[N]``, valid rows per image (clipped to ``[0, K]``).
        n: return only the first ``n`` images (the rest were padding); default all ``N``.

    Returns:
        ``n`` tuples ``(boxes float32 [k, 4], scores float32 [k], labels int64 [k])`` (copies).

    Raises:
        ValueError: inconsistent shapes.
    """
    N, K = scores.shape if scores.ndim == 2 else (-1, -1)
    if boxes.shape != (N, K, 4) or labels.shape != (N, K) or num_dets.reshape(-1).shape != (N,):
        raise ValueError(f"batched outputs of inconsistent shapes: boxes {boxes.shape}, scores "
                         f"{scores.shape}, labels {labels.shape}, num_dets {num_dets.shape}")
    counts = np.clip(num_dets.reshape(-1).astype(np.int64), 0, K)
    return [(boxes[i, :k].astype(np.float32), scores[i, :k].astype(np.float32),
             labels[i, :k].astype(np.int64)) for i, k in enumerate(counts[: N if n is None else n])]


def pad_batch(x: np.ndarray, batch: int) -> np.ndarray:
    """Pad ``x`` float32 ``[n, 3, H, W]`` (``n <= batch``) to ``[batch, 3, H, W]`` with zeros.

    Returns ``x`` itself when ``n == batch`` (C-contiguous). Raises ``ValueError`` if ``n > batch``.
    """
    n = len(x)
    if n > batch:
        raise ValueError(f"{n} images for a graph of batch {batch}; call it in chunks")
    if n == batch:
        return np.ascontiguousarray(x)
    out = np.zeros((batch, *x.shape[1:]), dtype=x.dtype)
    out[:n] = x
    return out


def run_chunks(run: Callable[[np.ndarray], Sequence[np.ndarray]], x: np.ndarray,
               batch: int) -> list[RawDetections]:
    """Run a fixed-batch graph over any number of images.

    Args:
        run: callable ``(x float32 [batch, 3, H, W]) -> (boxes, scores, labels, num_dets)``.
        x: float32 ``[n, 3, H, W]``.
        batch: the graph's batch ``N``.

    Returns:
        ``n`` per-image detections (see :func:`split_batched`).
    """
    out: list[RawDetections] = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        boxes, scores, labels, num_dets = run(pad_batch(chunk, batch))[:4]
        out += split_batched(boxes, scores, labels, num_dets, n=len(chunk))
    return out
