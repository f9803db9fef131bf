"""TensorRT readiness of an ONNX graph, checked without a GPU or TensorRT.

Rules (TensorRT 10.x; ``export/data/trt_ops_<version>.txt`` holds the onnx-tensorrt parser's
supported-operator list with its source):

* every node's op (main graph and subgraphs, default ONNX domain) is in the supported list;
* no ``NonMaxSuppression`` inside an ``If``/``Loop``/``Scan`` body (TensorRT rejects it there);
* every graph input and output has a fully static shape, and ONNX shape inference finds no
  unknown dimension on the way to a ``TopK`` or ``NonMaxSuppression``;
* every ``TopK`` K is a constant and ``< 3840`` (docs/operators.md: "K input must be less than 3840");
* every ``NonMaxSuppression`` sees at most 5000 boxes per image and has constant
  ``max_output_boxes_per_class``/``iou_threshold``/``score_threshold`` inputs.

Findings name the node, its op and the reason, so a failure says what to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_TRT_VERSION = "10.15"
TOPK_LIMIT = 3840
NMS_BOX_LIMIT = 5000
CONTROL_FLOW = ("If", "Loop", "Scan")


@dataclass
class Finding:
    """One failed rule: ``node`` name (or tensor name), ``op`` type and ``reason``."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op} '{self.node}': {self.reason}"


@dataclass
class ReadinessReport:
    """Result of :func:`check_trt_readiness`: ``findings`` empty means ready."""

    trt_version: str
    n_nodes: int
    op_counts: dict[str, int]
    findings: list[Finding] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        """One line verdict plus one line per finding."""
        head = (f"TensorRT {self.trt_version} readiness: "
                f"{'PASS' if self.ready else f'FAIL ({len(self.findings)} problems)'} "
                f"({self.n_nodes} nodes, {len(self.op_counts)} op types)")
        return "\n".join([head, *(f"  - {f}" for f in self.findings)])


def supported_ops(trt_version: str = DEFAULT_TRT_VERSION) -> set[str]:
    """Op names of ``export/data/trt_ops_<trt_version>.txt``.

    Raises:
        FileNotFoundError: no list for that version (the message lists the available ones).
    """
    path = DATA_DIR / f"trt_ops_{trt_version}.txt"
    if not path.is_file():
        have = sorted(p.stem.removeprefix("trt_ops_") for p in DATA_DIR.glob("trt_ops_*.txt"))
        raise FileNotFoundError(f"no supported-operator list for TensorRT {trt_version} (have {have})")
    return {line.split()[0] for line in path.read_text().splitlines()
            if line.strip() and not line.startswith("#")}


def _const_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers and ``Constant`` node outputs of ``graph`` as arrays."""
    vals = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    vals[n.output[0]] = numpy_helper.to_array(a.t)
    return vals


def _dims(vi: onnx.ValueInfoProto) -> list[int | None]:
    """Static dims of a value (``None`` for an unknown/symbolic dim)."""
    return [d.dim_value if d.HasField("dim_value") else None for d in vi.type.tensor_type.shape.dim]


def _walk(graph: onnx.GraphProto, in_control_flow: bool = False):  # type: ignore[no-untyped-def]
    """Yield ``(node, inside_if_loop_scan)`` for every node, subgraphs included."""
    for n in graph.node:
        yield n, in_control_flow
        for a in n.attribute:
            subs = [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)
            for sub in subs:
                yield from _walk(sub, True)


def check_trt_readiness(model: onnx.ModelProto | str | Path,
                        trt_version: str = DEFAULT_TRT_VERSION) -> ReadinessReport:
    """Check ``model`` against the rules of the module docstring.

    Args:
        model: an ONNX model or its path.
        trt_version: which ``trt_ops_<version>.txt`` list to use.

    Returns:
        A :class:`ReadinessReport` (shape inference runs on a copy; ``model`` is not modified).

    Raises:
        FileNotFoundError: no list for ``trt_version`` or no such model file.
    """
    ops = supported_ops(trt_version)
    m = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; rules below then see fewer shapes
        inferred = m
    g = inferred.graph
    shapes = {vi.name: _dims(vi) for vi in [*g.input, *g.output, *g.value_info]}
    consts = _const_values(g)
    counts: dict[str, int] = {}
    findings: list[Finding] = []
    for vi in [*g.input, *g.output]:
        if vi.name in {i.name for i in g.initializer}:
            continue
        if None in _dims(vi) or not _dims(vi):
            findings.append(Finding(vi.name, "graph input" if vi in g.input else "graph output",
                                    f"shape {_dims(vi)} is not static"))
    for node, nested in _walk(g):
        op = node.op_type
        counts[op] = counts.get(op, 0) + 1
        name = node.name or (node.output[0] if node.output else "?")
        if node.domain not in ("", "ai.onnx"):
            findings.append(Finding(name, op, f"custom domain '{node.domain}' needs a TensorRT plugin"))
        elif op not in ops:
            findings.append(Finding(name, op, f"not supported by the onnx-tensorrt parser of TensorRT {trt_version}"))
        if op == "TopK":
            k = consts.get(node.input[1]) if len(node.input) > 1 else None
            if k is None:
                findings.append(Finding(name, op, "K is not a constant (fold the graph at a fixed size)"))
            elif int(np.asarray(k).reshape(-1)[0]) >= TOPK_LIMIT:
                findings.append(Finding(name, op, f"K={int(np.asarray(k).reshape(-1)[0])} >= {TOPK_LIMIT}"))
            if None in shapes.get(node.input[0], [None]):
                findings.append(Finding(name, op, f"input shape {shapes.get(node.input[0])} not static"))
        if op == "NonMaxSuppression":
            if nested:
                findings.append(Finding(name, op, "inside an If/Loop/Scan body (export a branch-free NMS)"))
            for i, what in ((2, "max_output_boxes_per_class"), (3, "iou_threshold"), (4, "score_threshold")):
                if len(node.input) > i and node.input[i] and node.input[i] not in consts:
                    findings.append(Finding(name, op, f"{what} is not a constant"))
            dims = shapes.get(node.input[0], [None])
            if len(dims) != 3 or dims[1] is None:
                findings.append(Finding(name, op, f"boxes shape {dims} not static"))
            elif dims[1] > NMS_BOX_LIMIT:
                findings.append(Finding(name, op, f"{dims[1]} boxes per image > {NMS_BOX_LIMIT}"))
    return ReadinessReport(trt_version, sum(counts.values()), counts, findings)
