"""det-toolkit export: checkpoints -> self-describing ONNX graphs, verified against PyTorch.

:func:`export_onnx` writes the detector graph of the :mod:`runtime.meta` contract,
:func:`export_embedder` the Deep SORT appearance embedder, :func:`check_parity` compares a graph
with its PyTorch model; ``det-export`` (:mod:`export.cli`) drives them.
"""

from export.embedder import export_embedder
from export.onnx_export import export_onnx
from export.parity import ParityError, ParityReport, check_parity

__all__ = ["ParityError", "ParityReport", "check_parity", "export_embedder", "export_onnx"]
