"""The interface every inference backend implements (no torch, no onnxruntime here)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from det_toolkit.runtime.meta import ModelMeta

#: One image's raw detections: ``boxes`` float32 ``[K, 4]`` ``xyxy`` in model-input pixels,
#: ``scores`` float32 ``[K]``, ``labels`` int64 ``[K]`` (0-based class indices).
RawDetections = tuple[np.ndarray, np.ndarray, np.ndarray]


class BackendError(ValueError):
    """A weights file cannot be loaded by its backend (unreadable, wrong graph, missing device)."""


class Backend(ABC):
    """A loaded detector that maps letterboxed input batches to raw detections.

    Attributes:
        meta: the artifact's :class:`ModelMeta` (class names, input size, graph names).
        name: human-readable engine and device, e.g. ``"onnxruntime[CPUExecutionProvider]"``.
        max_batch: images one forward pass takes (``0``: any number, e.g. PyTorch); :meth:`infer`
            accepts any ``N`` and splits it as needed.
    """

    meta: ModelMeta
    name: str
    max_batch: int = 1

    @abstractmethod
    def infer(self, x: np.ndarray) -> list[RawDetections]:
        """Run the detector.

        Args:
            x: float32 ``[N, 3, H, W]``, RGB in ``[0, 1]``, letterboxed as
                :func:`det_toolkit.runtime.preprocess.letterbox` does (C-contiguous).

        Returns:
            ``N`` tuples ``(boxes float32 [K, 4] xyxy input px, scores float32 [K],
            labels int64 [K])``, one per image, ``K`` varying per image.
        """

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, model={self.meta.model}, imgsz={self.meta.imgsz})"
