"""INT8 post-training static quantization of any ONNX graph into the QDQ format.

One primitive, :func:`quantize_qdq`, over ONNX Runtime's ``onnxruntime.quantization.quantize_static``
(``QuantFormat.QDQ``: ``QuantizeLinear``/``DequantizeLinear`` pairs around the quantized tensors,
which ONNX Runtime's CPU kernels fuse into integer ops and TensorRT >= 10 builds as an explicitly
quantized INT8 network). Model-specific choices (which nodes stay float, which images calibrate)
belong to the callers: :mod:`det_toolkit.export.int8` for detectors, the Deep SORT embedder's INT8
export for the embedder.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from det_toolkit.runtime.files import atomic_write

#: ``method`` names of :func:`quantize_qdq` -> ONNX Runtime calibration methods.
CALIB_METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
#: ``activation_type`` / ``weight_type`` names of :func:`quantize_qdq` -> ONNX Runtime types.
QUANT_TYPES: dict[str, QuantType] = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}


class _IterableReader(CalibrationDataReader):
    """A :class:`CalibrationDataReader` over an iterable of ``{input name: array}`` feeds (consumed once)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(feeds)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        feed = next(self._it, None)
        if feed is None:
            return None
        self.count += 1
        return dict(feed)


def quantize_qdq(
    src: str | Path | onnx.ModelProto,
    dst: str | Path,
    inputs: Iterable[Mapping[str, np.ndarray]] | CalibrationDataReader,
    *,
    per_channel: bool = True,
    method: str = "minmax",
    nodes_to_exclude: Iterable[str] = (),
    op_types: Iterable[str] | None = None,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    preprocess: bool = False,
    extra_options: Mapping[str, Any] | None = None,
) -> Path:
    """Quantize an FP32 ONNX graph to INT8 (QDQ format, static ranges) and write it atomically.

    Activation ranges are calibrated by running ``src`` in ONNX Runtime CPU on ``inputs``; weights
    are quantized symmetrically (``WeightSymmetric``), per output channel when ``per_channel``.
    The result keeps ``src``'s inputs, outputs (types and names) and ``metadata_props``.

    Args:
        src: the FP32 model (path or in-memory ``ModelProto``; not modified).
        dst: the ``.onnx`` file to write (parent folders are created; written only on success).
        inputs: calibration feeds, each ``{graph input name: array}`` with the graph's dtypes and
            shapes (e.g. float32 ``[N, 3, H, W]`` images), or an ONNX Runtime
            ``CalibrationDataReader``. Consumed once.
        per_channel: per-output-channel weight scales (``Conv``, ``Gemm``, ``MatMul``).
        method: calibration method: ``minmax`` (observed min/max), ``entropy`` (KL-divergence
            threshold, TensorRT's classic method) or ``percentile`` (99.999th percentile of ``|x|``).
        nodes_to_exclude: names of nodes left in float32.
        op_types: op types to quantize (e.g. ``("Conv", "Gemm", "MatMul")``); ``None``: every op
            type ONNX Runtime's QDQ quantizer supports.
        activation_type: ``uint8`` (asymmetric; ONNX Runtime's fastest x86 kernels) or ``int8``.
        weight_type: ``int8`` or ``uint8``.
        preprocess: run ``onnxruntime.quantization.shape_inference.quant_pre_process`` first
            (symbolic shape inference and ONNX Runtime graph optimisation, e.g. folding
            ``BatchNormalization`` into ``Conv``).
        extra_options: ``quantize_static`` ``extra_options`` (e.g. ``{"ActivationSymmetric": True}``
            for TensorRT's symmetric INT8); merged over ``{"WeightSymmetric": True}``.

    Returns:
        ``dst`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: unknown ``method``, ``activation_type`` or ``weight_type``, or ``inputs`` gave
            no feed.
        FileNotFoundError: ``src`` is a path that does not exist.
    """
    if method not in CALIB_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(CALIB_METHODS)}")
    for what, name in (("activation_type", activation_type), ("weight_type", weight_type)):
        if name not in QUANT_TYPES:
            raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(QUANT_TYPES)}")
    if not isinstance(src, onnx.ModelProto) and not Path(src).is_file():
        raise FileNotFoundError(f"model file not found: {src}")
    reader = inputs if isinstance(inputs, CalibrationDataReader) else _IterableReader(inputs)
    model = src if isinstance(src, onnx.ModelProto) else onnx.load(str(src))
    options = {"WeightSymmetric": True, **(extra_options or {})}
    dst = Path(dst)
    # the calibration session logs one warning per unused initializer of an unsimplified graph
    ort.set_default_logger_severity(3)
    try:
        return _quantize(model, dst, reader, per_channel=per_channel, method=method,
                         nodes_to_exclude=list(nodes_to_exclude),
                         op_types=list(op_types) if op_types is not None else None,
                         activation_type=activation_type, weight_type=weight_type, preprocess=preprocess,
                         options=options)
    finally:
        ort.set_default_logger_severity(2)  # ONNX Runtime's default: warnings


def _quantize(model: onnx.ModelProto, dst: Path, reader: CalibrationDataReader, *, per_channel: bool,
              method: str, nodes_to_exclude: list[str], op_types: list[str] | None, activation_type: str,
              weight_type: str, preprocess: bool, options: dict[str, Any]) -> Path:
    """:func:`quantize_qdq` after its argument checks: quantize in a temporary folder, then write ``dst``."""
    with tempfile.TemporaryDirectory(prefix="det_toolkit_qdq_") as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        onnx.save(model, str(fp32))
        if preprocess:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32), str(pre))
            fp32 = pre
        out = Path(tmp) / "int8.onnx"
        quantize_static(str(fp32), str(out), reader, quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=op_types,
                        per_channel=per_channel, activation_type=QUANT_TYPES[activation_type],
                        weight_type=QUANT_TYPES[weight_type], nodes_to_exclude=nodes_to_exclude,
                        calibrate_method=CALIB_METHODS[method], extra_options=options)
        if isinstance(reader, _IterableReader) and reader.count == 0:
            raise ValueError("quantize_qdq: no calibration inputs")
        q = onnx.load(str(out))
        if len(q.metadata_props) != len(model.metadata_props):  # keep the artifact self-describing
            del q.metadata_props[:]
            q.metadata_props.extend(model.metadata_props)
        return atomic_write(dst, q.SerializeToString())
