"""TensorRT backend: runs a ``.engine`` written by ``det-export --trt`` (no torch, no onnxruntime).

Written against the TensorRT 10.x Python API (``trt.Runtime.deserialize_cuda_engine``,
``ICudaEngine.num_io_tensors/get_tensor_name/get_tensor_mode/get_tensor_shape/get_tensor_dtype``,
``IExecutionContext.set_input_shape/set_tensor_address/execute_async_v3``; unchanged in 11.x) and
cuda-python's runtime bindings (``cuda.bindings.runtime``, cuda-python >= 12.6; ``cuda.cudart`` in
older releases): ``cudaMalloc``, ``cudaMallocHost``, ``cudaMemcpyAsync``, ``cudaStreamCreate``,
``cudaStreamSynchronize``, as in NVIDIA's ``samples/python/common_runtime.py``.

Device buffers and pinned host buffers are allocated once per engine and reused for every frame;
each call copies the letterboxed batch into the pinned input, runs ``execute_async_v3`` on the
backend's stream, copies the fixed-size outputs back and synchronises the stream once.

The engine's sidecar JSON (:func:`engine_meta_path`) carries the :class:`det_toolkit.runtime.meta.ModelMeta`
plus ``extra.tensorrt`` (version) and ``extra.gpu`` (device name) it was built for; an engine is
refused with a clear message on another TensorRT version or GPU (serialized engines are neither
portable across TensorRT versions nor, by default, across GPU models).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import numpy as np

from det_toolkit.runtime.backends.base import Backend, BackendError, RawDetections
from det_toolkit.runtime.backends.outputs import pad_batch, split_batched
from det_toolkit.runtime.meta import ModelMeta

TRT_INSTALL = ("TensorRT >= 10 and cuda-python on a machine with an NVIDIA GPU: "
               "pip install 'det-toolkit[gpu]' (tensorrt from https://pypi.nvidia.com)")


def import_tensorrt() -> Any:
    """The ``tensorrt`` module. Raises ``ImportError`` naming what to install."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise ImportError(f"the 'tensorrt' Python package is not installed ({e}); install {TRT_INSTALL}") from e
    return trt


def import_cuda() -> Any:
    """cuda-python's CUDA runtime bindings. Raises ``ImportError`` naming what to install."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise ImportError(f"the 'cuda-python' package is not installed ({e}); install {TRT_INSTALL}") from e
    return cudart


def engine_meta_path(engine: str | Path) -> Path:
    """Sidecar metadata file of an engine: ``best.engine`` -> ``best.engine.json``."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def _check(result: Any) -> Any:
    """Unwrap a cuda-python ``(err, *values)`` tuple, raising ``BackendError`` on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise BackendError(f"CUDA error {err}")
    return values[0] if len(values) == 1 else values


def gpu_info(cudart: Any, device: int = 0) -> dict[str, str]:
    """``{"name": ..., "cc": "major.minor"}`` of CUDA device ``device``."""
    prop = _check(cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace") if isinstance(prop.name, bytes) else str(prop.name)
    return {"name": name.rstrip("\x00").strip(), "cc": f"{prop.major}.{prop.minor}"}


class _Buffer:
    """A pinned host array and its device twin, allocated once (freed by :meth:`free`)."""

    def __init__(self, cudart: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.nbytes = int(np.prod(shape)) * dtype.itemsize
        self.host_ptr = _check(cudart.cudaMallocHost(self.nbytes))
        ctype = np.ctypeslib.as_ctypes_type(dtype)
        flat = np.ctypeslib.as_array(ctypes.cast(self.host_ptr, ctypes.POINTER(ctype)), (int(np.prod(shape)),))
        self.host = flat.reshape(shape)
        self.device = _check(cudart.cudaMalloc(self.nbytes))

    def free(self, cudart: Any) -> None:
        cudart.cudaFree(self.device)
        cudart.cudaFreeHost(self.host_ptr)


class TrtBackend(Backend):
    """A det-toolkit TensorRT engine (static batched graph) run with cuda-python buffers.

    Args:
        path: ``.engine`` file with its sidecar ``.engine.json``.
        device: CUDA device index.

    Raises:
        FileNotFoundError: the engine or its sidecar is missing.
        BackendError: TensorRT/cuda-python missing (says what to install), an engine built for
            another TensorRT version or GPU, an engine that fails to deserialize, or I/O tensors
            that differ from the metadata.
        det_toolkit.runtime.meta.MetadataError: the sidecar is unreadable.
    """

    def __init__(self, path: str | Path, device: int = 0) -> None:
        self.path = Path(path)
        side = engine_meta_path(self.path)
        for p in (self.path, side):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found (det-export --trt writes the engine and {side.name})")
        self.meta = ModelMeta.from_json(side.read_text(), str(side))
        try:
            trt, cudart = import_tensorrt(), import_cuda()
        except ImportError as e:
            raise BackendError(f"{self.path}: {e}") from e
        self._trt, self._cudart = trt, cudart
        built_trt, built_gpu = self.meta.extra.get("tensorrt"), self.meta.extra.get("gpu")
        _check(cudart.cudaSetDevice(device))
        gpu = gpu_info(cudart, device)
        if built_trt != str(trt.__version__):
            raise BackendError(f"{self.path} was built with TensorRT {built_trt}, this machine has "
                               f"{trt.__version__}: rebuild it here with det-export --trt")
        if built_gpu != gpu["name"]:
            raise BackendError(f"{self.path} was built for GPU '{built_gpu}', this is '{gpu['name']}': "
                               "rebuild it here with det-export --trt")
        self._logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(self._logger, "")
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BackendError(f"{self.path}: TensorRT {trt.__version__} could not deserialize the engine")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if inputs != [self.meta.input_name] or not set(self.meta.output_names) <= set(names):
            raise BackendError(f"{self.path}: engine tensors {names} do not match its metadata")
        self.batch = int(self.meta.batch)
        in_shape = (self.batch, 3, *self.meta.imgsz)
        self._context.set_input_shape(self.meta.input_name, in_shape)
        self._stream = _check(cudart.cudaStreamCreate())
        self._buffers: dict[str, _Buffer] = {}
        for n in names:
            shape = in_shape if n in inputs else tuple(self._context.get_tensor_shape(n))
            dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(n)))
            self._buffers[n] = buf = _Buffer(cudart, shape, dtype)
            self._context.set_tensor_address(n, int(buf.device))
        self.name = f"tensorrt[{trt.__version__}, {gpu['name']}, {self.meta.extra.get('precision', '?')}]"

    def _run(self, x: np.ndarray) -> tuple[np.ndarray, ...]:
        """One engine call on float32 ``[batch, 3, H, W]``; returns copies of the outputs in
        ``meta.output_names`` order."""
        cudart, kind = self._cudart, self._cudart.cudaMemcpyKind
        inp = self._buffers[self.meta.input_name]
        np.copyto(inp.host, x, casting="same_kind")
        _check(cudart.cudaMemcpyAsync(inp.device, inp.host_ptr, inp.nbytes,
                                      kind.cudaMemcpyHostToDevice, self._stream))
        if not self._context.execute_async_v3(self._stream):
            raise BackendError(f"{self.path}: execute_async_v3 failed")
        outs = [self._buffers[n] for n in self.meta.output_names]
        for b in outs:
            _check(cudart.cudaMemcpyAsync(b.host_ptr, b.device, b.nbytes,
                                          kind.cudaMemcpyDeviceToHost, self._stream))
        _check(cudart.cudaStreamSynchronize(self._stream))
        return tuple(b.host.copy() for b in outs)

    def infer(self, x: np.ndarray) -> list[RawDetections]:
        """See :meth:`Backend.infer`; images run in chunks of the engine's batch (zero-padded)."""
        out: list[RawDetections] = []
        for i in range(0, len(x), self.batch):
            chunk = x[i:i + self.batch]
            boxes, scores, labels, num_dets = self._run(pad_batch(chunk, self.batch))[:4]
            out += split_batched(boxes, scores, labels, num_dets, n=len(chunk))
        return out

    def close(self) -> None:
        """Free the CUDA buffers and stream (also done at garbage collection)."""
        for b in getattr(self, "_buffers", {}).values():
            b.free(self._cudart)
        self._buffers = {}
        if getattr(self, "_stream", None) is not None:
            self._cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001, S110 - CUDA may already be torn down at interpreter exit
            pass
