"""INT8 variant of an exported detector graph: QDQ static quantization of the layers that keep accuracy.

:func:`export_int8` quantizes a det-toolkit graph (the dynamic single-image graph or the static
batch-N graph) with :func:`det_toolkit.export.quantize.quantize_qdq` (ONNX Runtime static
quantization, QDQ format, per-channel symmetric INT8 weights, ``uint8`` activations calibrated on
training images of the checkpoint's dataset) and writes ``<stem>_int8.onnx`` only if its
detections match the FP32 graph's in ONNX Runtime CPU under the INT8 parity criterion: boxes
scoring ``>= INT8_CONF`` on their side, same class, IoU ``>= INT8_IOU`` (or an NMS swap,
:func:`det_toolkit.export.parity.match_detections`), ``|score diff| <= INT8_SCORE_TOL``, at least
``INT8_MIN_MATCH`` of ``max(fp32 boxes, int8 boxes)``. A scope whose weighted layers ONNX Runtime
left float32 (their inputs got no range from the calibration images) is refused too.

Which layers are quantized is a *scope* (:data:`SCOPES`), a set of torchvision Faster R-CNN module
paths that the node names of both graphs carry:

* ``box_head``: the RoI box head (``box_head``: ``fc6``/``fc7`` and their activations);
* ``heads``: ``box_head`` plus the FPN (``backbone/fpn``) and the RPN's shared conv (``head/conv``;
  in TOOD's static graph, the head's shared tower ``head/inter_convs``);
* ``dense``: ``heads`` plus the whole backbone, except its first layer (the input stem);
* ``dense_pool``: ``dense`` plus the RoI pooling's matrix products (``MatMul`` in ``box_roi_pool``,
  :mod:`det_toolkit.export.roi_separable` / :mod:`det_toolkit.export.roi_fold`; the box
  coordinates and interpolation weights that feed them stay float32).

Always float32: the graph input and normalisation, the prediction layers (RPN objectness and box
deltas, class logits, box regression), box decoding, scores, ``TopK``, NMS and RoI pooling (their
module paths are in no scope; ``dense_pool`` takes the pooling's products only).
``scope="auto"`` tries :data:`AUTO_SCOPES` in order and keeps the first that passes the gate.
Graph inputs and outputs stay float32: the runtime contract (:mod:`det_toolkit.runtime.meta`) is
unchanged and the runtime loads the file as any ``.onnx``.
The metadata gains ``quantization`` (:attr:`det_toolkit.runtime.meta.ModelMeta.quantization`).

Design, the scopes' measurements and the criterion: ``docs/design/int8.md``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort

from det_toolkit.export.fp16 import DENSE_OPS, LAYER_OPS, final_nms_iou
from det_toolkit.export.quantize import CALIB_METHODS, quantize_qdq
from det_toolkit.runtime.meta import META_KEY, ModelMeta

if TYPE_CHECKING:
    from det_toolkit.export.parity import ParityReport

#: Quantization scopes: node-name fragments (torchvision Faster R-CNN module paths, in both the
#: dynamic graph, ``/detector/model/roi_heads/box_head/...``, and the static one, ``/box_head/...``).
SCOPES: dict[str, tuple[str, ...]] = {
    "box_head": ("/box_head/",),
    "heads": ("/box_head/", "/backbone/fpn/", "/head/conv/", "/head/inter_convs/"),
    "dense": ("/box_head/", "/head/conv/", "/head/inter_convs/", "/backbone/"),
    "dense_pool": ("/box_head/", "/head/conv/", "/head/inter_convs/", "/backbone/", "/box_roi_pool/"),
}
#: Said when a scope matches nothing: TOOD's dynamic graph (dynamo exporter) names nodes by op.
NO_SCOPE_HINT = (" (scopes are module paths in the node names; graphs without them, e.g. TOOD's dynamic graph, "
                 "are quantized from their static graph: det-export --batch N --int8)")
#: Scope fragment whose nodes are quantized only if they are matrix products (:data:`POOL_OPS`).
POOL_SCOPE = "/box_roi_pool/"
POOL_OPS = frozenset({"MatMul"})
#: ``scope="auto"``: tried in this order (fastest first), the first passing the gate is kept
#: (``docs/design/int8.md``: on the default model ``dense`` and ``heads`` fail the gate and cost
#: ~0.02 mAP@[.5:.95], ``box_head`` passes at no accuracy cost; ``heads`` is no faster than ``box_head``).
AUTO_SCOPES = ("dense", "box_head")
#: ``activations`` of :func:`export_int8` -> how the metadata describes them.
ACTIVATIONS = {"uint8": "uint8 asymmetric, per tensor", "int8": "int8 symmetric (zero point 0), per tensor"}
#: ``target`` of :func:`export_int8` -> (activation type, ``quantize_static`` extra options).
#: TensorRT takes symmetric INT8 only (zero point 0), no INT32 bias ``DequantizeLinear`` and no
#: Q/DQ pair shared between consumers (ONNX Runtime's ``DedicatedQDQPair`` note).
TARGETS: dict[str, tuple[str, dict[str, Any]]] = {
    "cpu": ("uint8", {}),
    "tensorrt": ("int8", {"ActivationSymmetric": True, "QuantizeBias": False, "DedicatedQDQPair": True}),
}
#: Op types quantized inside a scope (the dense ops of :mod:`det_toolkit.export.fp16`).
QUANT_OPS = DENSE_OPS

#: The INT8 parity criterion (module docstring; derivation in ``docs/design/int8.md``).
INT8_CONF = 0.25
INT8_IOU = 0.9
INT8_SCORE_TOL = 0.05
INT8_MIN_MATCH = 0.96
#: Training images calibrating activation ranges by default (``det-export --calib-images``).
INT8_CALIB_IMAGES = 64
#: ``method="auto"``: percentile ranges for the ``box_head`` scope of a static graph (its RoI
#: features' long tail clipped: on nano, AP50 -0.001 instead of MinMax's -0.018, docs/design/int8.md),
#: MinMax elsewhere (ONNX Runtime's histogram calibration holds every image's tensors in memory at
#: once and needs fixed shapes: the backbone scopes and the dynamic graph cannot take it).
AUTO_PERCENTILE_SCOPES = frozenset({"box_head"})


def scope_method(method: str, scope: str, static: bool) -> str:
    """The calibration method used for ``scope``: ``method`` itself, or for ``"auto"`` percentile on
    the scopes of :data:`AUTO_PERCENTILE_SCOPES` of a ``static`` graph and MinMax otherwise."""
    if method != "auto":
        return method
    return "percentile" if static and scope in AUTO_PERCENTILE_SCOPES else "minmax"


def scope_nodes(model: onnx.ModelProto, scope: str) -> set[str]:
    """Names of the top-level nodes of ``model`` that ``scope`` quantizes (see the module docstring).

    Nodes inside ``If``/``Loop`` subgraphs are never chosen. In ``dense``, the first weighted layer
    of the backbone (the input stem) and everything before it stay float32.

    Raises:
        ValueError: unknown ``scope``.
    """
    if scope not in SCOPES:
        raise ValueError(f"unknown INT8 scope {scope!r}; choose one of {sorted(SCOPES)} or 'auto'")
    frags = SCOPES[scope]
    chosen: set[str] = set()
    stem_seen = False
    for n in model.graph.node:
        if n.op_type in LAYER_OPS and "/backbone/" in n.name and not stem_seen:
            stem_seen = True  # the stem and everything before it stay float32
            continue
        if n.op_type in QUANT_OPS and any(f in n.name for f in frags):
            if ("/backbone/" in n.name and not stem_seen) or (POOL_SCOPE in n.name and n.op_type not in POOL_OPS):
                continue
            chosen.add(n.name)
    return chosen


def float_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the weighted layers (``Conv``, ``Gemm``, ``MatMul``, ``ConvTranspose``) of a QDQ
    graph that run in float32: those whose weight (input 1) is not produced by a
    ``DequantizeLinear`` node; in graph order (the ``float_nodes`` of the artifact's metadata)."""
    dq = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in LAYER_OPS and not (len(n.input) > 1 and n.input[1] in dq)]


def calibration_image_paths(data: dict[str, Any], n: int = INT8_CALIB_IMAGES) -> list[Path]:
    """Up to ``n`` training images of a checkpoint's dataset, evenly spaced over the train split.

    ``data`` is ``ckpt["data"]`` (a :class:`det_toolkit.train.config.DataConfig` as a dict); the split is
    resolved as training resolves it (list file, folder or COCO JSON). Returns ``[]`` when it cannot be.
    """
    from det_toolkit.train.config import ConfigError, DataConfig, from_dict
    from det_toolkit.train.data.formats import list_split_images, read_split
    from det_toolkit.train.data.samples import DatasetError

    try:
        cfg = from_dict(DataConfig, data, "checkpoint data config")
        if str(cfg.split("train")).endswith(".json"):
            paths = [s.image for s in read_split(cfg, "train")[0]]
        else:
            paths = [p for p in list_split_images(cfg, cfg.train) if p.is_file()]
    except (ConfigError, DatasetError):
        return []
    if len(paths) <= n:
        return paths
    return [paths[int(i * len(paths) / n)] for i in range(n)]


def calibration_feeds(images: Sequence[np.ndarray], meta: ModelMeta) -> Iterator[dict[str, np.ndarray]]:
    """Graph feeds of BGR ``uint8`` calibration frames, pre-processed as the runtime does
    (:func:`det_toolkit.export.parity.parity_inputs`: letterbox to ``meta.imgsz``, RGB float32 0-1):
    ``{meta.input_name: float32 [meta.batch, 3, H, W]}``, the last batch completed by repeating
    its first frames (repeated frames do not widen any range).

    Raises:
        ValueError: ``images`` is empty.
    """
    from det_toolkit.export.parity import parity_inputs

    xs = parity_inputs(list(images), meta)
    b = max(1, meta.batch)
    for i in range(0, len(xs), b):
        chunk = xs[i:i + b]
        chunk += [chunk[j % len(chunk)] for j in range(b - len(chunk))]
        yield {meta.input_name: np.concatenate(chunk)}


def _subgraphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """``graph`` and every ``If``/``Loop`` body in it, depth first, in node order."""
    yield graph
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                yield from _subgraphs(sub)


def nms_iou(model: onnx.ModelProto) -> float | None:
    """IoU threshold of the detections' ``NonMaxSuppression``: :func:`det_toolkit.export.fp16.final_nms_iou`
    for graphs with NMS at the top level (the static graph), else the last ``NonMaxSuppression``
    inside the ``If`` branches of the dynamic torchvision graph; ``None`` if none has a constant
    threshold."""
    top = final_nms_iou(model)
    if top is not None:
        return top
    from onnx import numpy_helper

    graphs = list(_subgraphs(model.graph))
    nms = [n for g in graphs for n in g.node if n.op_type == "NonMaxSuppression"]
    if not nms or len(nms[-1].input) < 4 or not nms[-1].input[3]:
        return None
    values = {i.name: i for g in graphs for i in g.initializer}
    values.update({n.output[0]: a.t for g in graphs for n in g.node if n.op_type == "Constant"
                   for a in n.attribute if a.name == "value"})
    name = nms[-1].input[3]
    return float(numpy_helper.to_array(values[name]).reshape(-1)[0]) if name in values else None


def _cpu_session(model: onnx.ModelProto) -> ort.InferenceSession:
    """An ONNX Runtime CPU session of an in-memory model (default options, as the parity checks)."""
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def export_int8(onnx_path: str | Path, out_path: str | Path | None = None, *,
                calib_images: Sequence[np.ndarray], parity_images: Sequence[np.ndarray],
                scope: str = "auto", method: str = "auto", target: str = "cpu",
                min_match: float = INT8_MIN_MATCH,
                iou_thr: float = INT8_IOU, score_tol: float = INT8_SCORE_TOL, conf: float = INT8_CONF,
                calib_source: str = "", echo: Callable[[str], None] = print) -> tuple[Path, ParityReport]:
    """Write the INT8 (QDQ) variant of a det-toolkit ONNX graph after checking it against the FP32 one.

    Both graphs run in ONNX Runtime CPU on ``parity_images`` (letterboxed as the runtime does);
    the gate is the INT8 criterion of the module docstring. The strict comparison (every box,
    IoU >= 0.9, ``|score diff| <= 0.01``) is computed and reported too. The metadata gains
    ``quantization`` = ``{"format": "QDQ", "method", "calib_images", "calib_source", "scope",
    "activations", "weights", "quantized_nodes", "float_nodes", "parity"}`` and
    ``extra.precision = "int8"``.

    Args:
        onnx_path: the FP32 graph (dynamic or static, ``det-export [--batch N]``).
        out_path: default ``<stem>_int8.onnx`` beside ``onnx_path``.
        calib_images: calibration frames (BGR ``uint8 [H, W, 3]``), e.g. :func:`calibration_image_paths`.
        parity_images: val frames (BGR ``uint8``) for the parity gate.
        scope: a key of :data:`SCOPES`, or ``auto`` (:data:`AUTO_SCOPES`, first passing).
        method: calibration method (:data:`det_toolkit.export.quantize.CALIB_METHODS`), or ``auto``
            (per scope, :func:`scope_method`); the metadata records the one used.
        target: ``cpu``: ``uint8`` asymmetric activations (ONNX Runtime's fastest x86 kernels);
            ``tensorrt``: TensorRT's explicit-quantization rules: ``int8`` symmetric activations
            (zero point 0), float32 biases, one Q/DQ pair per consumer (:data:`TARGETS`). Both
            graphs run in ONNX Runtime.
        min_match: minimum match rate under the INT8 criterion (0 disables the gate).
        iou_thr: minimum IoU of a matched pair.
        score_tol: maximum ``|score diff|`` of a matched pair.
        conf: only boxes scoring at least this are compared (0: every box the graphs return).
        calib_source: where the calibration images came from, for the metadata.
        echo: where progress and the parity lines are written.

    Returns:
        ``(path written, parity report under the INT8 criterion)``.

    Raises:
        ValueError: unknown ``scope``/``method``/``target``, no calibration or parity images, or a
            scope (with ``auto``: every scope) that quantizes no node of this graph.
        det_toolkit.export.parity.ParityError: below ``min_match`` in every scope tried (nothing is written).
        det_toolkit.runtime.meta.MetadataError: the graph has no det-toolkit metadata.
    """
    from det_toolkit.export.onnx_export import finalize, save_onnx_atomic
    from det_toolkit.export.parity import ParityError, compare_detections, onnx_detections, parity_inputs

    if method != "auto" and method not in CALIB_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(CALIB_METHODS)} or 'auto'")
    if target not in TARGETS:
        raise ValueError(f"unknown INT8 target {target!r}; choose one of {sorted(TARGETS)}")
    activations, options = TARGETS[target]
    if scope != "auto" and scope not in SCOPES:
        raise ValueError(f"unknown INT8 scope {scope!r}; choose one of {sorted(SCOPES)} or 'auto'")
    scopes = AUTO_SCOPES if scope == "auto" else (scope,)
    if not calib_images:
        raise ValueError("INT8 export needs calibration images")
    if not parity_images:
        raise ValueError("INT8 export needs parity images")
    src = Path(onnx_path)
    out = Path(out_path) if out_path else src.with_name(f"{src.stem}_int8.onnx")
    model = onnx.load(str(src))
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMeta.from_json(props.get(META_KEY, "{}"), str(src))
    static = "num_dets" in meta.output_names
    if method not in ("auto", "minmax") and not static:
        raise ValueError(f"--calib-method {method} needs fixed tensor shapes (ONNX Runtime's histogram "
                         "calibration stacks them): quantize the static graph (det-export --batch N --int8)")
    names = ("fp32", "int8")
    xs = parity_inputs(list(parity_images), meta)
    ref = onnx_detections(_cpu_session(model), meta, xs)  # once for every scope tried
    swap = nms_iou(model)
    failures: list[str] = []
    tried = 0
    for sc in scopes:
        quant = scope_nodes(model, sc)
        if not quant:
            if scope == "auto":  # e.g. box_head in a TOOD graph
                echo(f"INT8 ({sc}): no node of this graph in the scope, skipped")
                continue
            raise ValueError(f"{src}: INT8 scope '{sc}' matches no node of this graph{NO_SCOPE_HINT}")
        tried += 1
        used = scope_method(method, sc, static)
        echo(f"INT8 ({sc}): calibrating {len(quant)} nodes on {len(calib_images)} images ({used})")
        with tempfile.TemporaryDirectory(prefix="det_toolkit_int8_") as tmp:
            # op_types: ONNX Runtime calibrates every tensor of these op types; the scope's alone keep
            # the histogram methods' memory bounded (they hold every image's tensors at once)
            q_path = quantize_qdq(model, Path(tmp) / "int8.onnx", calibration_feeds(calib_images, meta),
                                  method=used, nodes_to_exclude=[n.name for n in model.graph.node
                                                                   if n.name not in quant],
                                  op_types=sorted({n.op_type for n in model.graph.node if n.name in quant}),
                                  activation_type=activations, extra_options=options)
            q_model = onnx.load(str(q_path))
        floats = float_layers(q_model)
        missed = [n.name for n in model.graph.node if n.name in quant and n.name in floats]
        echo(f"INT8 graph ({sc}): {len(quant)} of {len(model.graph.node)} nodes quantized, "
             f"{len(floats)} weighted layers float32")
        if missed:  # ONNX Runtime leaves a layer float32 when calibration gave its input no range
            failures.append(f"scope '{sc}': {len(missed)} of its weighted layers were left float32 ({missed[0]}"
                            f"{', ...' if len(missed) > 1 else ''}): the calibration images gave their inputs "
                            "no usable range")
            echo("  refused: " + failures[-1])
            continue
        test = onnx_detections(_cpu_session(q_model), meta, xs)
        report = compare_detections(ref, test, meta, iou_thr, score_tol, min_match, conf, names, swap_iou=swap)
        strict = compare_detections(ref, test, meta, 0.9, 0.01, 0.0, 0.0, names)
        echo("INT8 vs FP32 graph, onnxruntime CPU: " + report.summary())
        echo(f"  for information, strict: {strict.n_matched} matched of {strict.n_ref_boxes} fp32 / "
             f"{strict.n_onnx_boxes} int8 boxes ({strict.match_rate:.2%}) [{strict.criterion()}]")
        if report.passed:
            break
        failures.append(f"scope '{sc}': {report.summary()}")
    else:
        if not tried:
            raise ValueError(f"{src}: no INT8 scope ({', '.join(scopes)}) matches a node of this graph"
                             + NO_SCOPE_HINT)
        raise ParityError("INT8 graph: " + "; ".join(failures) + f"; {out} was not written")
    meta.extra.update(precision="int8", fp32_source=src.name)
    meta.quantization = {
        "format": "QDQ", "method": used, "calib_images": len(calib_images), "calib_source": calib_source,
        "scope": sc, "target": target, "activations": ACTIVATIONS[activations],
        "weights": "int8 symmetric, per channel",
        "quantized_nodes": len(quant), "float_nodes": floats,
        "parity": {"match_rate": round(report.match_rate, 5), "n_images": report.n_images,
                   "n_ref_boxes": report.n_ref_boxes, "n_matched": report.n_matched, "n_swaps": report.n_swaps,
                   "mean_iou": round(report.mean_iou, 5), "max_score_diff": round(report.max_score_diff, 5),
                   "criterion": report.criterion(), "min_match": min_match,
                   "strict_match_rate": round(strict.match_rate, 5), "strict_criterion": strict.criterion()},
    }
    return save_onnx_atomic(finalize(q_model, meta.onnx_props()), out), report


def calibration_images(ckpt: dict[str, Any], n: int = INT8_CALIB_IMAGES, folder: str | Path | None = None,
                       echo: Callable[[str], None] = print) -> tuple[list[np.ndarray], str]:
    """``(calibration frames BGR uint8, where they came from)``: every image of ``folder`` (the
    explicit ``det-export --calib DIR``) if given, else up to ``n`` training images of the
    checkpoint's dataset (:func:`calibration_image_paths`).

    Raises:
        FileNotFoundError: ``folder`` holds no image.
        ValueError: an unreadable image, or no ``folder`` and the checkpoint's train split cannot be
            resolved (``ckpt["data"]``; the message says to pass ``--calib DIR``).
    """
    from det_toolkit.export.parity import load_images, read_image

    if folder is not None:
        images = load_images(folder)
        echo(f"calibration images: {len(images)} from {folder}")
        return images, str(folder)
    paths = calibration_image_paths(ckpt.get("data") or {}, n)
    if not paths:
        raise ValueError("--int8: the checkpoint's training images (ckpt['data'] 'path'/'train') could not be "
                         "found for calibration; pass --calib DIR (a folder of representative images)")
    echo(f"calibration images: {len(paths)} train images from {paths[0].parent}")
    return [read_image(p) for p in paths], f"{len(paths)} of the train split ({paths[0].parent})"
