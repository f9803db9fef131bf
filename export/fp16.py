"""FP16 variant of a static exported graph: the dense layers in float16, everything fragile in float32.

:func:`export_fp16` converts a static det-toolkit graph with onnxconverter-common 1.16's
``float16.convert_float_to_float16`` (``keep_io_types=True``; the nodes it may convert are
:func:`dense_nodes`: backbone, FPN, RPN head and RoI box head, minus the input stem and the
prediction layers), removes the lossy ``Cast`` pairs the converter leaves between float32 nodes
(:func:`remove_roundtrip_casts`) and writes the result only if its detections match the FP32
graph's in ONNX Runtime CPU under the FP16 parity criterion: boxes scoring ``>= FP16_CONF`` on
their side, same class, IoU ``>= FP16_IOU`` (or an NMS swap at the graph's NMS IoU threshold,
:func:`det_toolkit.export.parity.match_detections`), ``|score diff| <= FP16_SCORE_TOL``, at least
``FP16_MIN_MATCH`` of ``max(fp32 boxes, fp16 boxes)``. Box decoding, scores, ``TopK``, NMS, RoI
pooling and index arithmetic stay float32; graph inputs and outputs stay float32, so the runtime
contract (:mod:`det_toolkit.runtime.meta`) is unchanged.

Design, the criterion's derivation and its measurements: ``docs/design/fp16.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from det_toolkit.runtime.meta import META_KEY, ModelMeta

if TYPE_CHECKING:
    from det_toolkit.export.parity import ParityReport

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
#: Node-name scope of RoI pooling built from other ops (:func:`det_toolkit.export.roi_separable.separable_roi_align`
#: in ``roi_heads.box_roi_pool`` or the static graph's ``box_roi_pool``): kept float32 as a whole,
#: like ``RoiAlign``, its outputs seed the dense region.
POOL_SCOPE = "/box_roi_pool/"
#: Weighted layers: the first one is the stem, those whose output leaves the region predict.
LAYER_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _is_pooling(node: onnx.NodeProto) -> bool:
    """A RoI pooling node: ``RoiAlign`` or any node in the :data:`POOL_SCOPE` scope."""
    return node.op_type in SEED_OPS or POOL_SCOPE in node.name

#: The FP16 parity criterion (module docstring; derivation in ``docs/design/fp16.md``).
FP16_CONF = 0.25
FP16_SCORE_TOL = 0.03
FP16_IOU = 0.9
FP16_MIN_MATCH = 0.98

def dense_nodes(model: onnx.ModelProto, *, fp32_stem: bool = True, fp32_predictions: bool = True) -> set[str]:
    """Names of the nodes :func:`to_fp16` converts (see the module docstring).

    Args:
        model: an ONNX graph whose nodes are topologically sorted and named (as the exporter and
            onnxslim write them).
        fp32_stem: keep the normalisation and the first weighted layer reached from the graph
            input in float32.
        fp32_predictions: keep in float32 every weighted layer whose output is read outside the
            dense region (other than by RoI pooling, :func:`_is_pooling`) or is a graph output.

    Raises:
        ValueError: a node has no name.
    """
    g = model.graph
    consts = {i.name for i in g.initializer} | {o for n in g.node if n.op_type == "Constant" for o in n.output}
    dense_tensors = {i.name for i in g.input}
    chosen: dict[str, onnx.NodeProto] = {}
    for n in g.node:  # ONNX graphs are topologically sorted
        if not n.name:
            raise ValueError(f"unnamed {n.op_type} node; name every node before converting")
        if _is_pooling(n):
            dense_tensors.update(n.output)
            continue
        if n.op_type not in DENSE_OPS:
            continue
        pos = DATA_INPUTS.get(n.op_type, range(len(n.input)))
        data = [n.input[i] for i in pos if i < len(n.input) and n.input[i] and n.input[i] not in consts]
        if data and all(t in dense_tensors for t in data):
            chosen[n.name] = n
            dense_tensors.update(n.output)
    drop: set[str] = set()
    if fp32_stem:  # every dense node up to and including the first weighted layer
        for name, n in chosen.items():
            drop.add(name)
            if n.op_type in LAYER_OPS:
                break
    if fp32_predictions:
        outside = {o.name for o in g.output}
        for n in g.node:
            if n.name not in chosen and not _is_pooling(n):
                outside.update(n.input)
        drop.update(name for name, n in chosen.items()
                    if n.op_type in LAYER_OPS and any(o in outside for o in n.output))
    return set(chosen) - drop


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


def to_fp16(model: onnx.ModelProto, dense: set[str] | None = None) -> onnx.ModelProto:
    """Convert the dense region of ``model`` to float16; inputs/outputs stay float32.

    Args:
        model: a static det-toolkit graph (not modified).
        dense: names of the nodes to convert; default :func:`dense_nodes` ``(model)``.

    Returns a new model; ``metadata_props`` are kept.

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
    keep = dense_nodes(model) if dense is None else set(dense)
    block = [name for name in _all_node_names(model.graph) if name not in keep] + [""]  # "" = unnamed
    src = onnx.ModelProto()
    src.CopyFrom(model)
    del src.graph.value_info[:]  # stale float32 annotations confuse the converter
    _unshare_initializers(src.graph, keep)
    # onnxconverter-common 1.16's own Cast-pair clean-up fails on graphs with float32 outputs (ours)
    # and mistakes the Cast targets; remove_roundtrip_casts below replaces it (docs/design/fp16.md)
    cleanup = float16.remove_unnecessary_cast_node
    float16.remove_unnecessary_cast_node = lambda graph: None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one "truncated to 1e-07" warning per tiny weight
            out = float16.convert_float_to_float16(src, keep_io_types=True, node_block_list=block)
    finally:
        float16.remove_unnecessary_cast_node = cleanup
    remove_roundtrip_casts(out)
    _restore_float_outputs(out, model)
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


def _cast_to(node: onnx.NodeProto) -> int:
    """The ``to`` attribute (``TensorProto`` data type) of a ``Cast`` node."""
    return next(a.i for a in node.attribute if a.name == "to")


def remove_roundtrip_casts(model: onnx.ModelProto) -> int:
    """Remove the lossy ``Cast(to=float16) -> Cast(to=float)`` pairs on float32 tensors, in place.

    onnxconverter-common 1.16 (``float16.convert_float_to_float16`` with a ``node_block_list``)
    treats every float tensor as float16 and wraps each blocked node in input ``Cast(to=float)`` and
    output ``Cast(to=float16)`` nodes; between two blocked nodes this leaves a pair that rounds a
    float32 value to float16 and back. Each consumer of such a pair is rewired to the float32
    tensor itself; a first ``Cast`` left without consumers is removed. Only pairs whose source is
    known to be float32 (ONNX shape inference, graph inputs, initializers) are touched, and a pair
    whose second ``Cast`` is a graph output is kept.

    Returns:
        Number of ``Cast(to=float)`` nodes bypassed.
    """
    g = model.graph
    FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    inferred = onnx.shape_inference.infer_shapes(model)
    dtype = {v.name: v.type.tensor_type.elem_type
             for v in [*inferred.graph.value_info, *g.input, *g.output]}
    dtype.update({i.name: i.data_type for i in g.initializer})
    producer = {o: n for n in g.node for o in n.output}
    outputs = {o.name for o in g.output}
    rename: dict[str, str] = {}
    dead: set[int] = set()
    for n in g.node:
        if n.op_type != "Cast" or _cast_to(n) != FLOAT or n.output[0] in outputs:
            continue
        first = producer.get(n.input[0])
        if first is None or first.op_type != "Cast" or _cast_to(first) != HALF or dtype.get(first.input[0]) != FLOAT:
            continue
        rename[n.output[0]] = first.input[0]
        dead.add(id(n))
    for n in g.node:
        for j, t in enumerate(n.input):
            if t in rename:
                n.input[j] = rename[t]
    used = {t for n in g.node if id(n) not in dead for t in n.input} | outputs
    keep = [n for n in g.node if id(n) not in dead and not (
        n.op_type == "Cast" and _cast_to(n) == HALF and n.output[0] not in used)]
    del g.node[:]
    g.node.extend(keep)
    return len(dead)


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


def final_nms_iou(model: onnx.ModelProto) -> float | None:
    """IoU threshold of the graph's last ``NonMaxSuppression`` (the detections' NMS; the static graph
    of :mod:`det_toolkit.export.static_graph` has the RPN's first), or ``None`` if it has none or the threshold
    is not a constant (initializer or ``Constant`` node)."""
    from onnx import numpy_helper

    g = model.graph
    nms = [n for n in g.node if n.op_type == "NonMaxSuppression"]
    if not nms or len(nms[-1].input) < 4 or not nms[-1].input[3]:
        return None
    name = nms[-1].input[3]
    values = {i.name: i for i in g.initializer}
    values.update({n.output[0]: a.t for n in g.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    if name not in values:
        return None
    return float(numpy_helper.to_array(values[name]).reshape(-1)[0])


def export_fp16(onnx_path: str | Path, out_path: str | Path | None = None, *,
                images: list[np.ndarray], min_match: float = FP16_MIN_MATCH, iou_thr: float = FP16_IOU,
                score_tol: float = FP16_SCORE_TOL, conf: float = FP16_CONF,
                echo: Callable[[str], None] = print) -> tuple[Path, ParityReport]:
    """Write the FP16 variant of a static det-toolkit ONNX graph after checking it against the FP32 one.

    Both graphs run in onnxruntime CPU on ``images`` (BGR ``uint8``, letterboxed as the runtime
    does). The gate is the FP16 criterion of the module docstring: boxes scoring ``>= conf``,
    same class, IoU ``>= iou_thr`` (or an NMS swap at the graph's NMS IoU threshold,
    :func:`det_toolkit.export.parity.match_detections`), ``|score diff| <= score_tol``, match rate ``>= min_match``.
    The strict comparison (every box, ``|score diff| <= 0.01``) is computed and reported too.
    The metadata gains ``extra.precision = "fp16"``, ``extra.fp32_nodes``/``fp16_nodes`` counts and
    ``extra.fp16_parity`` (both figures with their criteria).

    Args:
        onnx_path: the FP32 static graph (``det-export --batch N``).
        out_path: default ``<stem>_fp16.onnx`` beside ``onnx_path``.
        images: parity images (BGR ``uint8 [H, W, 3]``).
        min_match: minimum match rate under the FP16 criterion (0 disables the gate).
        iou_thr: minimum IoU of a matched pair.
        score_tol: maximum ``|score diff|`` of a matched pair.
        conf: only boxes scoring at least this are compared (0: every box the graphs return).
        echo: where the two parity lines are written.

    Returns:
        ``(path written, parity report under the FP16 criterion)``.

    Raises:
        ImportError: onnxconverter-common missing.
        ValueError: a dynamic graph (``If`` subgraphs), or no images.
        ParityError: below ``min_match`` (nothing is written).
    """
    from det_toolkit.export.onnx_export import finalize, save_onnx_atomic
    from det_toolkit.export.parity import ParityError, compare_detections, onnx_pair_detections

    src = Path(onnx_path)
    out = Path(out_path) if out_path else src.with_name(f"{src.stem}_fp16.onnx")
    model = onnx.load(str(src))
    dense = dense_nodes(model)
    fp16 = to_fp16(model, dense)
    ref, test, meta = onnx_pair_detections(model, fp16, images)
    names = ("fp32", "fp16")
    report = compare_detections(ref, test, meta, iou_thr, score_tol, min_match, conf, names,
                                swap_iou=final_nms_iou(model))
    strict = compare_detections(ref, test, meta, iou_thr, 0.01, 0.0, 0.0, names)
    echo(f"FP16 graph: {len(dense)} of {len(model.graph.node)} nodes in float16")
    echo("FP16 vs FP32 graph, onnxruntime CPU: " + report.summary())
    echo(f"  for information, strict: {strict.n_matched} matched of {strict.n_ref_boxes} fp32 / "
         f"{strict.n_onnx_boxes} fp16 boxes ({strict.match_rate:.2%}) [{strict.criterion()}]")
    if not report.passed:
        raise ParityError(f"FP16 graph: {report.summary()}; {out} was not written")
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMeta.from_json(props[META_KEY], str(src))
    meta.extra.update(precision="fp16", fp32_source=src.name, fp16_nodes=len(dense),
                      fp32_nodes=len(model.graph.node) - len(dense),
                      fp16_parity={"match_rate": round(report.match_rate, 5), "n_images": report.n_images,
                                   "n_ref_boxes": report.n_ref_boxes, "n_matched": report.n_matched,
                                   "n_swaps": report.n_swaps,
                                   "mean_iou": round(report.mean_iou, 5),
                                   "max_score_diff": round(report.max_score_diff, 5),
                                   "criterion": report.criterion(), "min_match": min_match,
                                   "strict_match_rate": round(strict.match_rate, 5),
                                   "strict_n_ref_boxes": strict.n_ref_boxes,
                                   "strict_criterion": strict.criterion()})
    return save_onnx_atomic(finalize(fp16, meta.onnx_props()), out), report
