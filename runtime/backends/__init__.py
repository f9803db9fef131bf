"""Inference backends behind one interface, chosen by the weights file's suffix.

``.onnx`` -> :class:`~runtime.backends.onnx_backend.OnnxBackend` (onnxruntime only);
``.pt``/``.pth`` -> :class:`~runtime.backends.torch_backend.TorchBackend` (imports torch, lazily).
"""

from __future__ import annotations

from pathlib import Path

from runtime.backends.base import Backend, BackendError, RawDetections

__all__ = ["Backend", "BackendError", "RawDetections", "load_backend"]


def load_backend(weights: str | Path, device: str = "auto") -> Backend:
    """Open a detector artifact with the backend its suffix names.

    Args:
        weights: ``.onnx`` (ONNX Runtime) or ``.pt``/``.pth`` (PyTorch checkpoint).
        device: ``"auto"`` (CUDA when available, else CPU), ``"cpu"`` or ``"cuda"``.

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        NotImplementedError: a TensorRT ``.engine`` (no TensorRT backend in this build yet).
        BackendError: unknown suffix, unreadable file or unavailable device.
        runtime.meta.MetadataError: the artifact's metadata is missing or corrupt.
    """
    path = Path(weights)
    suffix = path.suffix.lower()
    if suffix == ".engine":
        raise NotImplementedError(f"{path}: the TensorRT backend is not in this build yet; "
                                  "run the .onnx export instead (det-run SOURCE --weights MODEL.onnx)")
    if suffix not in (".onnx", ".pt", ".pth"):
        raise BackendError(f"{path}: unknown weights type '{suffix}'; expected .onnx, .pt or .pth")
    if not path.is_file():
        raise FileNotFoundError(f"weights not found: {path}")
    if suffix == ".onnx":
        from runtime.backends.onnx_backend import OnnxBackend, providers_for

        return OnnxBackend(path, providers_for(device))
    from runtime.backends.torch_backend import TorchBackend

    return TorchBackend(path, device)
