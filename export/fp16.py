"""FP16 variant of an exported graph: the dense layers in float16, everything fragile in float32.

Made with onnxconverter-common's ``float16.convert_float_to_float16`` (``keep_io_types=True``, an
explicit node block list). NVIDIA ModelOpt AutoCast would choose the blocked nodes from measured
ranges; it needs the ``nvidia-modelopt`` package (large, CUDA-oriented), so the selection here is
structural and conservative:

* float16 ("dense"): the ImageNet normalisation, backbone, FPN, RPN head convolutions and the
  RoI box head / predictor (``Conv``, ``Gemm``, activations, pooling, residual ``Add``...),
  found by propagating from the graph input and from every ``RoiAlign`` output through dense ops;
* float32: everything else, i.e. anchor/box decoding (``Exp`` of the size deltas, offsets of up to
  several thousand pixels, areas and ``Sqrt``/``Log`` of the FPN level mapping: values past
  float16's 65504 or its 1-2 px spacing above 1024), softmax/sigmoid scores, ``TopK``,
  ``NonMaxSuppression`` and ``RoiAlign`` inputs, and all index arithmetic.

Graph inputs and outputs stay float32, so the runtime contract (:mod:`runtime.meta`) is unchanged.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from runtime.meta import META_KEY, ModelMeta

if TYPE_CHECKING:
    from export.parity import ParityReport

#: Ops computed in float16 when all their float inputs come from the dense region.
DENSE_OPS = frozenset({
    "Conv", "ConvTranspose", "Gemm", "MatMul", "Relu", "Clip", "LeakyRelu", "HardSwish", "HardSigmoid",
    "Sigmoid", "Mul", "Add", "Sub", "Div", "MaxPool", "AveragePool", "GlobalAveragePool", "ReduceMean",
    "Resize", "Flatten", "Concat", "Pad", "BatchNormalization", "Silu",
})
#: Input positions that carry data (others are sizes, pads, scales...).
DATA_INPUTS = {"Resize": (0,), "Pad": (0,), "Clip": (0,), "Conv": (0,), "ConvTranspose": (0,),
               "Gemm": (0,), "BatchNormalization": (0,), "ReduceMean": (0,)}
#: Ops whose outputs seed the dense region (feature maps pooled per RoI).
SEED_OPS = frozenset({"RoiAlign"})


def dense_nodes(model: onnx.ModelProto) -> set[str]:
    """Names of the nodes :func:`to_fp16` converts (see the module docstring).

    Raises:
        ValueError: a node has no name (run ``onnxslim``/the exporter, which name every node).
    """
    g = model.graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    dense_tensors = {i.name for i in g.input}
    chosen: set[str] = set()
    for n in g.node:  # ONNX graphs are topologically sorted
        if not n.name:
            raise ValueError(f"unnamed {n.op_type} node; name every node before converting")
        if n.op_type in SEED_OPS:
            dense_tensors.update(n.output)
            continue
        if n.op_type not in DENSE_OPS:
            continue
        pos = DATA_INPUTS.get(n.op_type, range(len(n.input)))
        data = [n.input[i] for i in pos if i < len(n.input) and n.input[i] and n.input[i] not in consts]
        if data and all(t in dense_tensors for t in data):
            chosen.add(n.name)
            dense_tensors.update(n.output)
    return chosen


def _all_node_names(graph: onnx.GraphProto) -> list[str]:
    """Names of the nodes of ``graph`` and of every subgraph (``If``/``Loop`` bodies) in it."""
    names = []
    for n in graph.node:
        names.append(n.name)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                names += _all_node_names(sub)
    return names


def _unshare_initializers(graph: onnx.GraphProto, dense: set[str]) -> None:
    """Give dense nodes their own copy of initializers that float32 nodes also read.

    onnxslim merges equal constants (e.g. the ``0.0`` of a ReLU6 ``Clip`` and of a score test);
    converting a shared one to float16 would break its float32 consumers.
    """
    inits = {i.name: i for i in graph.initializer}
    fp32_users = {t for n in graph.node if n.name not in dense for t in n.input if t in inits}
    for n in graph.node:
        if n.name not in dense:
            continue
        for j, t in enumerate(n.input):
            if t in fp32_users:
                copy = onnx.TensorProto()
                copy.CopyFrom(inits[t])
                copy.name = f"{t}__fp16__{n.name}"
                graph.initializer.append(copy)
                n.input[j] = copy.name


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert the dense region of ``model`` to float16; inputs/outputs stay float32.

    Returns a new model (``model`` is not modified); ``metadata_props`` are kept.

    Raises:
        ValueError: the graph has ``If``/``Loop``/``Scan`` subgraphs (the dynamic torchvision graph):
            onnxconverter-common 1.16 mistypes their outputs; convert the static graph
            (``det-export --batch N``), which has none.
        ImportError: ``onnxconverter-common`` is not installed (``pip install onnxconverter-common``).
    """
    try:
        from onnxconverter_common import float16
    except ImportError as e:
        raise ImportError("--fp16 needs onnxconverter-common: pip install onnxconverter-common") from e
    if len(_all_node_names(model.graph)) != len(model.graph.node):
        raise ValueError("FP16 conversion needs the static graph (no If/Loop subgraphs): export with "
                         "det-export --batch N (or --static) --fp16")
    keep = dense_nodes(model)
    block = [name for name in _all_node_names(model.graph) if name not in keep] + [""]  # "" = unnamed
    src = onnx.ModelProto()
    src.CopyFrom(model)
    del src.graph.value_info[:]  # stale float32 annotations confuse the converter
    _unshare_initializers(src.graph, keep)
    # onnxconverter-common 1.16's Cast-pair clean-up raises "The downstream node of the second cast
    # node should be graph output" on graphs whose outputs are computed in float32 (ours): skip it,
    # onnxslim/ORT fold the redundant Cast pairs anyway.
    cleanup = float16.remove_unnecessary_cast_node
    float16.remove_unnecessary_cast_node = lambda graph: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one "truncated to 1e-07" warning per tiny weight
            out = float16.convert_float_to_float16(src, keep_io_types=True, node_block_list=block)
    finally:
        float16.remove_unnecessary_cast_node = cleanup
    _restore_float_outputs(out, model)
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


def _restore_float_outputs(model: onnx.ModelProto, original: onnx.ModelProto) -> None:
    """Make graph outputs that were float32 float32 again.

    With the Cast clean-up skipped, onnxconverter-common 1.16 leaves a ``Cast(to=float16)`` on
    float32 outputs produced by blocked nodes; turn it into ``Cast(to=float)``, or append one.
    """
    fp32 = {o.name for o in original.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT}
    producers = {o: n for n in model.graph.node for o in n.output}
    for out in model.graph.output:
        if out.name not in fp32 or out.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            continue
        node = producers[out.name]
        if node.op_type == "Cast":
            next(a for a in node.attribute if a.name == "to").i = onnx.TensorProto.FLOAT
        else:
            tmp = f"{out.name}__fp16"
            node.output[list(node.output).index(out.name)] = tmp
            model.graph.node.append(onnx.helper.make_node("Cast", [tmp], [out.name], name=f"{out.name}_to_fp32",
                                                          to=onnx.TensorProto.FLOAT))
        out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT


def export_fp16(onnx_path: str | Path, out_path: str | Path | None = None, *,
                images: list[np.ndarray], min_match: float = 0.98, iou_thr: float = 0.9,
                score_tol: float = 0.01, echo: Callable[[str], None] = print) -> tuple[Path, ParityReport]:
    """Write the FP16 variant of a det-toolkit ONNX graph after checking it against the FP32 one.

    Parity runs both graphs in onnxruntime CPU on ``images`` (BGR ``uint8``, letterboxed as the
    runtime does); the metadata gains ``extra.precision = "fp16"`` and ``extra.fp16_parity``.

    Args:
        onnx_path: the FP32 graph (dynamic or static).
        out_path: default ``<stem>_fp16.onnx`` beside ``onnx_path``.
        images: parity images.
        min_match: minimum share of FP32 boxes matched (IoU >= ``iou_thr``, score within ``score_tol``).

    Returns:
        ``(path written, parity report)``.

    Raises:
        ImportError: onnxconverter-common missing.
        ParityError: below ``min_match`` (nothing is written).
    """
    from export.onnx_export import finalize, save_onnx_atomic
    from export.parity import ParityError, check_onnx_parity

    src = Path(onnx_path)
    out = Path(out_path) if out_path else src.with_name(f"{src.stem}_fp16.onnx")
    model = onnx.load(str(src))
    fp16 = to_fp16(model)
    report = check_onnx_parity(model, fp16, images, iou_thr=iou_thr, score_tol=score_tol,
                               min_match=min_match)
    echo("FP16 vs FP32 graph, onnxruntime CPU: " + report.summary().replace("torch boxes", "fp32 boxes"))
    if not report.passed:
        raise ParityError(f"FP16 graph: {report.summary()}; {out} was not written")
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMeta.from_json(props[META_KEY], str(src))
    meta.extra.update(precision="fp16", fp32_source=src.name,
                      fp16_parity={"match_rate": round(report.match_rate, 5), "n_images": report.n_images,
                                   "n_ref_boxes": report.n_ref_boxes, "mean_iou": round(report.mean_iou, 5)})
    return save_onnx_atomic(finalize(fp16, meta.onnx_props()), out), report
