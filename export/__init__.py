"""det-toolkit export: checkpoints -> self-describing ONNX graphs, verified against PyTorch.

:func:`export_onnx` writes the detector graph of the :mod:`det_toolkit.runtime.meta` contract,
:func:`export_embedder` the Deep SORT appearance embedder, :func:`check_parity` compares a graph
with its PyTorch model, :func:`check_trt_readiness` checks a graph against TensorRT's parser limits;
:mod:`det_toolkit.export.static_graph` (fixed-size graph), :mod:`det_toolkit.export.fp16` (FP16 variant) and
:mod:`det_toolkit.export.trt_build` (TensorRT engines) back ``det-export --batch/--fp16/--trt``
(:mod:`det_toolkit.export.cli`).
"""

from det_toolkit.export.embedder import export_embedder
from det_toolkit.export.onnx_export import export_onnx
from det_toolkit.export.parity import ParityError, ParityReport, check_onnx_parity, check_parity
from det_toolkit.export.trt_check import ReadinessReport, check_trt_readiness

__all__ = ["ParityError", "ParityReport", "ReadinessReport", "check_onnx_parity", "check_parity",
           "check_trt_readiness", "export_embedder", "export_onnx"]
