"""Inference backends behind one interface, chosen by the weights file's suffix.

``.onnx`` -> :class:`~det_toolkit.runtime.backends.onnx_backend.OnnxBackend` (onnxruntime only);
``.pt``/``.pth`` -> :class:`~det_toolkit.runtime.backends.torch_backend.TorchBackend` (imports torch, lazily);
``.engine`` -> :class:`~det_toolkit.runtime.backends.trt_backend.TrtBackend` (TensorRT + cuda-python, lazily).
"""

from __future__ import annotations

from pathlib import Path

from det_toolkit.runtime.backends.base import Backend, BackendError, RawDetections
from det_toolkit.runtime.deps import TORCH, MissingExtraError, require_extra

__all__ = ["Backend", "BackendError", "RawDetections", "load_backend"]


def load_backend(weights: str | Path, device: str = "auto") -> Backend:
    """Open a detector artifact with the backend its suffix names.

    Args:
        weights: ``.onnx`` (ONNX Runtime), ``.pt``/``.pth`` (PyTorch checkpoint) or ``.engine``
            (TensorRT, with its ``.engine.json`` sidecar; CUDA only).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``
            (:func:`det_toolkit.runtime.device.parse_device`).

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        BackendError: unknown suffix, unreadable file, unavailable device, a ``.pt`` without PyTorch
            installed (the message names the ``[train]`` extra), or an engine that needs
            TensorRT/cuda-python, another TensorRT version or another GPU (the message says which).
        det_toolkit.runtime.meta.MetadataError: the artifact's metadata is missing or corrupt.
    """
    path = Path(weights)
    suffix = path.suffix.lower()
    if suffix not in (".onnx", ".pt", ".pth", ".engine"):
        raise BackendError(f"{path}: unknown weights type '{suffix}'; expected .onnx, .pt, .pth or .engine")
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    if suffix == ".engine":
        if device == "cpu":
            raise BackendError(f"{path}: TensorRT engines run on CUDA only; use the .onnx on --device cpu")
        from det_toolkit.runtime.backends.trt_backend import TrtBackend

        return TrtBackend(path)
    if suffix == ".onnx":
        from det_toolkit.runtime.backends.onnx_backend import OnnxBackend, providers_for

        return OnnxBackend(path, providers_for(device))
    try:  # before torch_backend imports torch: one line naming the extra instead of a traceback
        require_extra(TORCH, f"{path.name} (a PyTorch checkpoint)")
    except MissingExtraError as e:
        raise BackendError(f"{e}; or give its .onnx export") from e
    from det_toolkit.runtime.backends.torch_backend import TorchBackend

    return TorchBackend(path, device)
