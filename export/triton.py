"""Triton Inference Server model repositories from det-toolkit graphs (``det-export --triton REPO``).

Layout written (Triton's model repository, ``docs/user_guide/model_repository.md``)::

    REPO/<name>/config.pbtxt      ModelConfig (tritonclient's ``model_config_pb2``) in protobuf text
    REPO/<name>/labels.txt        class names, one a line (``label_filename`` of output ``labels``)
    REPO/<name>/<version>/model.onnx   (platform onnxruntime_onnx) or model.plan (tensorrt_plan)

Inputs, outputs, data types and dims are read from the ONNX graph; the written file is parsed back
with ``ModelConfig`` and checked against that graph (:func:`validate_config`). The
:class:`det_toolkit.runtime.meta.ModelMeta` goes into ``parameters`` (key :data:`META_KEY` holds
its JSON, ``det_toolkit.*`` keys the fields a client needs for det-run's pre/post-processing).

Batching follows Triton's rule that it batches only along a variable first dimension, present on
every input and output (``max_batch_size > 0``; dims then omit it):

* the dynamic single-image graph (input ``[1, 3, H, W]``, outputs ``[K, ...]``): no batch axis,
  ``max_batch_size 0``, full dims (``-1`` for dynamic ones);
* the static batch-``N`` ONNX graph: its tracing bakes ``N`` into every reshape, so
  :func:`batchable_graph` wraps it instead: input ``[b, 3, H, W]`` with ``1 <= b <= N`` is zero-padded
  to ``N`` in the graph (as the runtime's :func:`det_toolkit.runtime.backends.outputs.pad_batch`
  does), the fixed graph runs, every output is sliced back to ``b`` rows. ``max_batch_size N`` and
  ``dynamic_batching``; ``num_dets [b]`` is declared ``dims [1]`` with ``reshape { shape: [] }``
  (Triton's documented form for a batch-only output). :func:`check_batchable` verifies with ONNX
  Runtime that each image's outputs at batch ``b`` equal the fixed graph's;
* a TensorRT plan built from the static graph has a fixed ``[N, 3, H, W]`` input: ``max_batch_size 0``,
  full dims, no dynamic batching (a client sends exactly ``N`` images).

``tritonclient[grpc]`` (the ``[triton]`` extra) is imported lazily; :func:`plan_repository` checks it.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from det_toolkit.export.onnx_export import finalize
from det_toolkit.export.parity import parity_inputs
from det_toolkit.runtime.deps import TRITON, require_extra
from det_toolkit.runtime.files import atomic_write, check_writable
from det_toolkit.runtime.meta import META_KEY, ModelMeta

if TYPE_CHECKING:
    from tritonclient.grpc.model_config_pb2 import ModelConfig

ONNX_PLATFORM = "onnxruntime_onnx"
TRT_PLATFORM = "tensorrt_plan"
#: Triton's default model file name per platform.
MODEL_FILES = {ONNX_PLATFORM: "model.onnx", TRT_PLATFORM: "model.plan"}
CONFIG_FILE = "config.pbtxt"
LABELS_FILE = "labels.txt"
#: The output that carries class indices; it gets ``label_filename``.
LABELS_OUTPUT = "labels"
#: Model names accepted: letters, digits, ``_ . -``, not starting with ``.`` or ``-`` (the name is a
#: folder of the repository and a path segment of ``/v2/models/<name>``).
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
#: Symbolic name of the batch axis :func:`batchable_graph` adds.
BATCH_DIM = "batch"
#: ``ModelMeta.extra`` key recording that a graph is the padded batch wrapper (value: ``N``).
BATCHABLE_KEY = "triton_batch_padded_to"
_PREFIX = "triton_batch/"


class TritonError(ValueError):
    """A ``--triton`` request cannot be honoured, or a written config disagrees with its graph."""


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as Triton sees it.

    Attributes:
        name: tensor name.
        dtype: numpy dtype.
        dims: shape; ``-1`` for a dynamic (symbolic or unknown) dimension.
    """

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonTarget:
    """Where and how :func:`write_repository` writes (decided by :func:`plan_repository`).

    Attributes:
        repo: the model repository folder.
        name: model name (= its folder).
        version: version folder number (``>= 1``).
        platform: :data:`ONNX_PLATFORM` or :data:`TRT_PLATFORM`.
        max_batch_size: ``0`` (no Triton batching) or the largest batch Triton may form.
    """

    repo: Path
    name: str
    version: int
    platform: str
    max_batch_size: int

    @property
    def model_dir(self) -> Path:
        """``repo / name``."""
        return self.repo / self.name


def default_model_name(weights: Path) -> str:
    """The model name for checkpoint ``weights`` when ``--triton-name`` is not given.

    A det-train checkpoint ``<run>/weights/best.pt`` is named after its run (``<run>``; other
    checkpoints there ``<run>_<stem>``); any other file after its stem. Characters outside
    :data:`NAME_RE` become ``_``; leading ``.``/``-`` are dropped; an empty result is ``detector``.
    """
    weights = Path(os.path.abspath(weights))  # not resolve(): a linked best.pt keeps its run name
    stem = weights.stem
    if weights.parent.name == "weights" and weights.parent.parent.name:
        run = weights.parent.parent.name
        stem = run if stem == "best" else f"{run}_{stem}"
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", stem).lstrip(".-")[:200]
    return name or "detector"


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a valid model name (:data:`NAME_RE`), else raise :class:`TritonError`."""
    if not NAME_RE.fullmatch(name):
        raise TritonError(f"--triton-name {name!r}: a Triton model name here is 1-200 letters, digits, '_', "
                          "'.' or '-', not starting with '.' or '-' (it is the model's folder and part of "
                          "the URL /v2/models/<name>)")
    return name


def model_versions(model_dir: Path) -> list[int]:
    """The version folders Triton would load from ``model_dir``: names of positive integers without
    a leading zero (others are ignored by Triton), sorted."""
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir()
                  if p.is_dir() and p.name.isdigit() and not p.name.startswith("0"))


def plan_repository(repo: Path, weights: Path, *, name: str | None, version: int | None, static: bool,
                    batch: int, trt: bool, max_batch: int | None) -> TritonTarget:
    """Check a ``--triton`` request before any export work and decide the target.

    Args:
        repo: ``--triton`` folder (created if missing).
        weights: the checkpoint (for the default name, :func:`default_model_name`).
        name: ``--triton-name`` or ``None``.
        version: ``--triton-version`` or ``None`` (version 1).
        static: the static graph is exported (``--batch``/``--static``/``--trt``/``--fp16``).
        batch: its batch ``N``.
        trt: a TensorRT plan is built (``--trt``).
        max_batch: ``--triton-max-batch`` or ``None`` (``N`` for the static ONNX graph).

    Raises:
        det_toolkit.runtime.deps.MissingExtraError: tritonclient is not installed.
        TritonError: ``repo`` or a parent is a file or not writable; a bad name; the version folder
            exists; ``max_batch`` with a graph Triton cannot batch or above ``N``; an existing
            ``config.pbtxt`` that is unreadable or serves another platform or batch size.
    """
    require_extra(TRITON, "det-export --triton")
    try:
        check_writable(repo, "--triton")
    except OSError as e:
        raise TritonError(str(e)) from e
    name = check_model_name(name) if name is not None else default_model_name(weights)
    model_dir = repo / name
    if model_dir.exists() and not model_dir.is_dir():
        raise TritonError(f"--triton {repo}: {model_dir} is a file, not a model folder")
    platform = TRT_PLATFORM if trt else ONNX_PLATFORM
    if trt:
        if max_batch is not None:
            raise TritonError(f"--triton-max-batch: the TensorRT plan is built from the static graph with a fixed "
                              f"batch of {batch} images; Triton serves it with max_batch_size 0 (every request "
                              f"sends exactly {batch} images), so it cannot batch requests")
        max_batch_size = 0
    elif static:
        max_batch_size = batch if max_batch is None else max_batch
        if max_batch_size > batch:
            raise TritonError(f"--triton-max-batch {max_batch_size} exceeds the graph's batch {batch}: the static "
                              f"graph takes at most {batch} images per call; export it with --batch "
                              f"{max_batch_size}")
    else:
        if max_batch is not None:
            raise TritonError("--triton-max-batch: the dynamic graph takes one image per call (input [1, 3, H, W], "
                              "outputs of a variable detection count), so Triton cannot batch it "
                              "(max_batch_size 0); export the static graph with --batch N for batching")
        max_batch_size = 0
    existing = model_versions(model_dir)
    version = 1 if version is None else version
    if (model_dir / str(version)).exists():
        nxt = max(existing, default=version) + 1
        raise TritonError(f"--triton {repo}: {model_dir / str(version)} exists; add a version with "
                          f"--triton-version {nxt} or choose another --triton-name")
    config_path = model_dir / CONFIG_FILE
    if config_path.exists():
        old = read_config(config_path)
        if (old.platform, old.max_batch_size) != (platform, max_batch_size):
            raise TritonError(f"{config_path} serves platform {old.platform} with max_batch_size "
                              f"{old.max_batch_size}; this export is {platform} with max_batch_size "
                              f"{max_batch_size}: choose another --triton-name")
    return TritonTarget(Path(repo), name, version, platform, max_batch_size)


def graph_meta(model: onnx.ModelProto, source: str = "<graph>") -> ModelMeta:
    """The :class:`ModelMeta` in ``model``'s ``metadata_props``.

    Raises:
        det_toolkit.runtime.meta.MetadataError: missing or invalid.
    """
    props = {p.key: p.value for p in model.metadata_props}
    return ModelMeta.from_json(props.get(META_KEY, "{}"), source)


def graph_io(model: onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """``(inputs, outputs)`` of ``model``'s graph (initializers listed as inputs are left out);
    dims with a symbolic name or no value are ``-1``.

    Raises:
        TritonError: a tensor that is not a tensor or has no shape.
    """
    inits = {t.name for t in model.graph.initializer}

    def spec(v: onnx.ValueInfoProto) -> TensorSpec:
        t = v.type.tensor_type
        if not v.type.HasField("tensor_type") or not t.HasField("shape"):
            raise TritonError(f"graph tensor {v.name!r} has no tensor type with a shape")
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim)
        return TensorSpec(v.name, np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)), dims)

    return ([spec(v) for v in model.graph.input if v.name not in inits], [spec(v) for v in model.graph.output])


def triton_dtype(dtype: np.dtype) -> str:
    """ModelConfig ``DataType`` name of a numpy dtype (``float32`` -> ``TYPE_FP32``), by
    ``tritonclient.utils.np_to_triton_dtype``; ``BYTES`` is ``TYPE_STRING``.

    Raises:
        TritonError: no Triton type.
    """
    from tritonclient.utils import np_to_triton_dtype

    name = np_to_triton_dtype(np.dtype(dtype))
    if name is None:
        raise TritonError(f"numpy dtype {dtype} has no Triton data type")
    return "TYPE_STRING" if name == "BYTES" else f"TYPE_{name}"


def batchable_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Wrap a static batch-``N`` det-toolkit graph so it takes ``1..N`` images (see the module docstring).

    Input ``images`` float32 ``[batch, 3, H, W]`` (``batch <= N``; more fails in the graph's guard
    ``Reshape`` to ``[N, 3, H, W]``) is zero-padded to ``N`` images; each output of the fixed graph
    (``boxes [N, K, 4]``, ``scores [N, K]``, ``labels [N, K]``, ``num_dets [N]``) is sliced to its
    first ``batch`` rows and declared ``[batch, ...]``. The metadata is kept, with
    ``extra[BATCHABLE_KEY] = N``; ``onnx.checker`` passes.

    Raises:
        TritonError: not a static single-input graph whose inputs and outputs all lead with ``N``, or
            a node with a subgraph (``If``/``Loop``: the static graphs have none).
    """
    meta = graph_meta(model)
    inputs, outputs = graph_io(model)
    n = meta.batch
    if len(inputs) != 1 or any(s.dims[:1] != (n,) or -1 in s.dims for s in inputs):
        raise TritonError(f"batchable_graph needs one static input [{n}, 3, H, W]; the graph has "
                          f"{[(s.name, s.dims) for s in inputs]}")
    if any(s.dims[:1] != (n,) for s in outputs):
        raise TritonError(f"batchable_graph needs outputs leading with the batch {n}; the graph has "
                          f"{[(s.name, s.dims) for s in outputs]}")
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
           for node in model.graph.node for a in node.attribute):
        raise TritonError("batchable_graph: the graph has a node with a subgraph (If/Loop)")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inp = inputs[0]
    renames = {inp.name: f"{_PREFIX}{inp.name}_fixed", **{s.name: f"{_PREFIX}{s.name}_fixed" for s in outputs}}
    for node in g.node:
        node.input[:] = [renames.get(x, x) for x in node.input]
        node.output[:] = [renames.get(x, x) for x in node.output]
    for vi in g.value_info:
        vi.name = renames.get(vi.name, vi.name)
    produced = {x for node in g.node for x in node.output}
    if any(renames[s.name] not in produced for s in outputs):
        raise TritonError("batchable_graph: an output is not produced by a node")

    def const(name: str, values: list[int]) -> str:
        g.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), _PREFIX + name))
        return _PREFIX + name

    p = _PREFIX
    head = [
        helper.make_node("Shape", [inp.name], [p + "shape"], name=p + "shape"),
        helper.make_node("Gather", [p + "shape", const("axis0", [0])], [p + "b"], name=p + "b", axis=0),
        helper.make_node("Sub", [const("n", [n]), p + "b"], [p + "short"], name=p + "short"),
        helper.make_node("Max", [p + "short", const("zero", [0])], [p + "pad_n"], name=p + "pad_n"),
        helper.make_node("Concat", [const("zeros4", [0, 0, 0, 0]), p + "pad_n", const("zeros3", [0, 0, 0])],
                         [p + "pads"], name=p + "pads", axis=0),
        helper.make_node("Pad", [inp.name, p + "pads"], [p + "padded"], name=p + "pad_to_N", mode="constant"),
        helper.make_node("Reshape", [p + "padded", const("fixed_shape", list(inp.dims))], [renames[inp.name]],
                         name=f"{p}at_most_{n}_images"),
    ]
    start = const("start", [0])
    tail = [helper.make_node("Slice", [renames[s.name], start, p + "b", p + "axis0"], [s.name],
                             name=f"{p}slice_{s.name}") for s in outputs]
    nodes = [*head, *g.node, *tail]
    del g.node[:]
    g.node.extend(nodes)
    for v in [*(x for x in g.input if x.name == inp.name), *g.output]:
        d = v.type.tensor_type.shape.dim[0]
        d.Clear()
        d.dim_param = BATCH_DIM
    meta.extra[BATCHABLE_KEY] = n
    return finalize(out, meta.onnx_props())


def check_batchable(fixed: onnx.ModelProto, batchable: onnx.ModelProto, images: list[np.ndarray],
                    batches: Iterable[int] | None = None) -> None:
    """Check with ONNX Runtime (CPU) that :func:`batchable_graph` ``batchable`` gives each image
    the outputs of the ``fixed`` graph.

    The ``fixed`` graph runs once on ``N`` letterboxed ``images`` (cycled to ``N``); the batchable
    one on the first ``b`` of them for each ``b`` in ``batches`` (default ``1`` and ``N``). Every
    output must have ``b`` rows equal to the fixed graph's first ``b`` rows: integer outputs
    exactly, float outputs within ``1e-5`` absolute.

    Raises:
        TritonError: a shape or value differs (the message names the output, ``b`` and the difference).
        ValueError: ``images`` is empty.
    """
    meta = graph_meta(fixed)
    n = meta.batch
    xs = parity_inputs(images[:n], meta)
    x = np.concatenate([xs[i % len(xs)] for i in range(n)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    ref = ort.InferenceSession(fixed.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sess = ort.InferenceSession(batchable.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in ref.get_outputs()]
    want = dict(zip(names, ref.run(names, {meta.input_name: x})))
    for b in sorted(set(batches if batches is not None else (1, n))):
        got = dict(zip(names, sess.run(names, {meta.input_name: x[:b]})))
        for name in names:
            a, r = got[name], want[name][:b]
            if a.shape != r.shape or a.dtype != r.dtype:
                raise TritonError(f"batch {b}: output {name} is {a.dtype} {list(a.shape)}, expected "
                                  f"{r.dtype} {list(r.shape)}")
            same = (np.allclose(a, r, rtol=0, atol=1e-5) if np.issubdtype(a.dtype, np.floating)
                    else np.array_equal(a, r))
            if not same:
                diff = float(np.abs(a.astype(np.float64) - r.astype(np.float64)).max())
                raise TritonError(f"batch {b}: output {name} differs from the fixed batch-{n} graph's "
                                  f"(max abs difference {diff:g})")


def model_config(graph: onnx.ModelProto, name: str, platform: str, max_batch_size: int) -> ModelConfig:
    """The ``ModelConfig`` of ``graph`` served as model ``name`` (see the module docstring).

    Inputs/outputs, data types and dims come from :func:`graph_io`; with ``max_batch_size > 0``
    dims omit the leading batch axis (a batch-only tensor gets ``dims [1]`` and
    ``reshape { shape: [] }``) and ``dynamic_batching`` is enabled when ``max_batch_size > 1``. Output
    :data:`LABELS_OUTPUT` gets ``label_filename`` :data:`LABELS_FILE`. ``parameters``: the metadata
    JSON under :data:`META_KEY`, and ``det_toolkit.imgsz`` ``[H, W]``, ``det_toolkit.pad_value`` (RGB),
    ``det_toolkit.score_thresh``, ``det_toolkit.max_det``, ``det_toolkit.class_names`` (JSON),
    ``det_toolkit.preprocess`` and ``det_toolkit.boxes`` (text).

    Raises:
        TritonError: a data type without a Triton type.
        det_toolkit.runtime.meta.MetadataError: ``graph`` has no det-toolkit metadata.
    """
    from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig

    meta = graph_meta(graph, name)
    inputs, outputs = graph_io(graph)
    cfg = ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    for specs, field in ((inputs, cfg.input), (outputs, cfg.output)):
        for s in specs:
            t = field.add(name=s.name, data_type=DataType.Value(triton_dtype(s.dtype)))
            dims = s.dims[1:] if max_batch_size > 0 else s.dims
            if dims:
                t.dims.extend(dims)
            else:  # a batch-only tensor, e.g. num_dets [batch]
                t.dims.append(1)
                t.reshape.SetInParent()
            if s.name == LABELS_OUTPUT and field is cfg.output:
                t.label_filename = LABELS_FILE
    if max_batch_size > 1:
        cfg.dynamic_batching.SetInParent()
    params = {
        META_KEY: meta.to_json(),
        "det_toolkit.imgsz": json.dumps(list(meta.imgsz)),
        "det_toolkit.pad_value": json.dumps(list(meta.pad_value)),
        "det_toolkit.score_thresh": repr(meta.score_thresh),
        "det_toolkit.max_det": str(meta.max_det),
        "det_toolkit.class_names": json.dumps(meta.class_names),
        "det_toolkit.preprocess": meta.onnx_props()["preprocess"],
        "det_toolkit.boxes": ("xyxy in letterboxed input pixels: divide by the letterbox scale, clip to the "
                              "frame" + ("; image i owns rows [:num_dets[i]], the rest are zero"
                                         if "num_dets" in meta.output_names else "")),
    }
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    return cfg


def config_text(cfg: ModelConfig) -> str:
    """``cfg`` in protobuf text format, as ``config.pbtxt`` (``google.protobuf.text_format``)."""
    from google.protobuf import text_format

    return text_format.MessageToString(cfg, use_short_repeated_primitives=True)


def parse_config(text: str, source: str = CONFIG_FILE) -> ModelConfig:
    """Parse ``config.pbtxt`` text into tritonclient's ``ModelConfig``.

    Raises:
        TritonError: not a valid ModelConfig text (the message names ``source``).
    """
    from google.protobuf import text_format
    from tritonclient.grpc.model_config_pb2 import ModelConfig

    try:
        return text_format.Parse(text, ModelConfig())
    except text_format.ParseError as e:
        raise TritonError(f"{source}: not a valid Triton ModelConfig ({e})") from e


def read_config(path: Path) -> ModelConfig:
    """:func:`parse_config` of the file ``path``. Raises :class:`TritonError` if unreadable."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise TritonError(f"{path}: cannot read it ({e})") from e
    return parse_config(text, str(path))


def validate_config(cfg: ModelConfig, graph: onnx.ModelProto, model_dir: Path | None = None) -> None:
    """Check a parsed ``ModelConfig`` against the ONNX ``graph`` it serves (or its plan was built from).

    Checked: name (a valid model name, equal to ``model_dir.name``), platform, the input and output
    names (same sets, no duplicates), data types, dims (``> 0`` or ``-1``): with ``max_batch_size 0``
    equal to the graph's; with ``max_batch_size > 0`` every graph tensor must lead with a variable
    batch axis (Triton: "the first dimension must be -1"), the rest equal to ``dims`` (or to
    ``reshape.shape`` where given, with as many elements), and ``max_batch_size`` at most the graph's
    padded batch ``N``; ``dynamic_batching`` only with ``max_batch_size > 0``. With ``model_dir``: the
    labels file holds the graph's class names, one a line.

    Raises:
        TritonError: the first disagreement found, named.
    """
    from tritonclient.grpc.model_config_pb2 import DataType

    where = f"{model_dir / CONFIG_FILE}" if model_dir is not None else CONFIG_FILE
    meta = graph_meta(graph, where)

    def fail(msg: str) -> TritonError:
        return TritonError(f"{where}: {msg}")

    if not NAME_RE.fullmatch(cfg.name) or (model_dir is not None and cfg.name != model_dir.name):
        raise fail(f"name {cfg.name!r} is not a valid model name equal to its folder"
                   + (f" {model_dir.name!r}" if model_dir is not None else ""))
    if cfg.platform not in MODEL_FILES:
        raise fail(f"platform {cfg.platform!r} is not one of {sorted(MODEL_FILES)}")
    mbs = cfg.max_batch_size
    if mbs < 0:
        raise fail(f"max_batch_size {mbs} < 0")
    if cfg.HasField("dynamic_batching") and mbs == 0:
        raise fail("dynamic_batching needs max_batch_size > 0")
    inputs, outputs = graph_io(graph)
    if mbs > 0:
        limit = int(meta.extra.get(BATCHABLE_KEY, meta.batch))
        if mbs > limit:
            raise fail(f"max_batch_size {mbs} exceeds the graph's batch {limit}")
    for kind, specs, tensors in (("input", inputs, cfg.input), ("output", outputs, cfg.output)):
        names = [t.name for t in tensors]
        if len(set(names)) != len(names) or set(names) != {s.name for s in specs}:
            raise fail(f"{kind}s {names} differ from the graph's {[s.name for s in specs]}")
        by_name = {t.name: t for t in tensors}
        for s in specs:
            t = by_name[s.name]
            want = triton_dtype(s.dtype)
            if DataType.Name(t.data_type) != want:
                raise fail(f"{kind} {s.name}: data_type {DataType.Name(t.data_type)}, the graph's is {want}")
            dims = tuple(t.dims)
            if not dims or any(d == 0 or d < -1 for d in dims):
                raise fail(f"{kind} {s.name}: dims {list(dims)} must be non-empty, each > 0 or -1")
            if mbs == 0:
                if t.HasField("reshape") or dims != s.dims:
                    raise fail(f"{kind} {s.name}: dims {list(dims)}, the graph's shape is {list(s.dims)}")
                continue
            if not s.dims or s.dims[0] != -1:
                raise fail(f"{kind} {s.name}: graph shape {list(s.dims)} has no variable first dimension, "
                           "which Triton needs to batch (max_batch_size > 0)")
            model_dims = tuple(t.reshape.shape) if t.HasField("reshape") else dims
            if model_dims != s.dims[1:]:
                raise fail(f"{kind} {s.name}: dims {list(dims)}"
                           + (f" reshaped to {list(model_dims)}" if t.HasField("reshape") else "")
                           + f", the graph's shape past the batch axis is {list(s.dims[1:])}")
            if t.HasField("reshape") and -1 not in dims + model_dims and math.prod(dims) != math.prod(model_dims):
                raise fail(f"{kind} {s.name}: reshape {list(model_dims)} of dims {list(dims)} changes the size")
        if kind == "output" and model_dir is not None:
            for t in tensors:
                if t.label_filename:
                    _check_labels(model_dir / t.label_filename, meta.class_names, fail)


def _check_labels(path: Path, names: list[str], fail: Callable[[str], TritonError]) -> None:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"label_filename {path.name}: cannot read it ({e})") from e
    if lines != names:
        raise fail(f"label_filename {path.name} lists {lines[:5]}..., the graph's classes are {names[:5]}...")


def validate_repository(model_dir: Path, version: int, graph: onnx.ModelProto | None = None) -> ModelConfig:
    """Parse ``model_dir/config.pbtxt`` back and check it (:func:`validate_config`) against the
    graph: ``graph`` if given (required for a TensorRT plan: the ONNX it was built from), else
    ``model_dir/<version>/model.onnx``. The version's model file must exist.

    Returns:
        The parsed ``ModelConfig``.

    Raises:
        TritonError: a missing file, an unparsable config or a disagreement.
    """
    cfg = read_config(model_dir / CONFIG_FILE)
    model_file = model_dir / str(version) / MODEL_FILES.get(cfg.platform, "model.onnx")
    if not model_file.is_file():
        raise TritonError(f"{model_file} is missing")
    if graph is None:
        if cfg.platform != ONNX_PLATFORM:
            raise TritonError(f"{model_dir}: a {cfg.platform} model is validated against the ONNX graph it "
                              "was built from; pass it")
        graph = onnx.load(str(model_file), load_external_data=False)
    validate_config(cfg, graph, model_dir)
    return cfg


def write_repository(target: TritonTarget, graph: onnx.ModelProto, engine: Path | None = None) -> ModelConfig:
    """Write the model ``target.name`` version ``target.version`` into ``target.repo``.

    ``graph`` is the ONNX model to serve (:data:`ONNX_PLATFORM`; already :func:`batchable_graph`
    where ``target.max_batch_size > 0``), or the ONNX ``engine`` was built from
    (:data:`TRT_PLATFORM`). The config is validated before anything is written; the version folder
    is assembled under a hidden temporary name (which Triton ignores) and renamed into place, then
    ``labels.txt`` and ``config.pbtxt`` are written atomically (:func:`atomic_write`) and parsed
    back (:func:`validate_repository`). Other versions already in the model folder are kept; an
    existing ``config.pbtxt``/``labels.txt`` is replaced only when it describes the same inputs,
    outputs and classes (Triton serves the newest version by default).

    Returns:
        The written ``ModelConfig``.

    Raises:
        TritonError: the config disagrees with the graph, an existing config or labels file
            describes another graph, or the version folder appeared meanwhile.
        FileNotFoundError: ``engine`` is missing for a plan.
    """
    cfg = model_config(graph, target.name, target.platform, target.max_batch_size)
    text = config_text(cfg)
    validate_config(parse_config(text), graph)
    model_dir = target.model_dir
    labels = "\n".join(graph_meta(graph).class_names) + "\n"
    _check_compatible(model_dir, cfg, labels)
    if target.platform == TRT_PLATFORM and (engine is None or not Path(engine).is_file()):
        raise FileNotFoundError(f"TensorRT engine {engine} not found")
    model_dir.mkdir(parents=True, exist_ok=True)
    final = model_dir / str(target.version)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.version}.", suffix=".tmp", dir=model_dir))
    try:
        dst = staging / MODEL_FILES[target.platform]
        if target.platform == TRT_PLATFORM:
            with open(engine, "rb") as src:  # type: ignore[arg-type]
                atomic_write(dst, lambda f: shutil.copyfileobj(src, f))
        else:
            atomic_write(dst, graph.SerializeToString())
        os.chmod(staging, 0o755)
        if final.exists():
            raise TritonError(f"{final} appeared while exporting; nothing was replaced")
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    atomic_write(model_dir / LABELS_FILE, labels.encode())
    atomic_write(model_dir / CONFIG_FILE, text.encode())
    return validate_repository(model_dir, target.version, graph)


def _check_compatible(model_dir: Path, cfg: ModelConfig, labels: str) -> None:
    """An existing config/labels file of ``model_dir`` must describe the same tensors and classes
    (the other versions stay loadable with the rewritten config)."""
    path = model_dir / CONFIG_FILE
    if path.exists():
        old = read_config(path)
        fields = ("platform", "max_batch_size", "input", "output")
        if [getattr(old, f) for f in fields] != [getattr(cfg, f) for f in fields]:
            raise TritonError(f"{path} describes other inputs/outputs than this export (platform, batch, "
                              "tensors, dims); choose another --triton-name")
    lpath = model_dir / LABELS_FILE
    if lpath.exists() and lpath.read_text() != labels:
        raise TritonError(f"{lpath} lists other classes than this export; choose another --triton-name")


def export_repository(target: TritonTarget, onnx_path: Path, engine: Path | None,
                      images: list[np.ndarray] | None, echo: Callable[[str], None] = print) -> ModelConfig:
    """``det-export --triton``: the repository for the exported graph ``onnx_path`` (and ``engine``).

    The static ONNX graph is wrapped by :func:`batchable_graph` and checked by :func:`check_batchable`
    on ``images`` (BGR ``uint8``; required then) at batch 1 and ``N``; the dynamic graph and a plan's
    graph are used as they are. Then :func:`write_repository`.

    Raises:
        TritonError: see :func:`write_repository` and :func:`check_batchable`.
        ValueError: ``images`` missing or empty for a batchable graph.
    """
    graph = onnx.load(str(onnx_path), load_external_data=False)
    if target.platform == ONNX_PLATFORM and target.max_batch_size > 0:
        if not images:
            raise ValueError("the batchable Triton graph is checked on images; none given")
        wrapped = batchable_graph(graph)
        check_batchable(graph, wrapped, images)
        n = graph_meta(graph).batch
        echo(f"triton: batch axis 1..{n} (padded to {n} in the graph) checked with ONNX Runtime at batch "
             f"{'1' if n == 1 else f'1 and {n}'}: outputs equal the fixed graph's per image")
        graph = wrapped
    cfg = write_repository(target, graph, engine)
    batching = (f"max_batch_size {cfg.max_batch_size}" + (", dynamic batching" if cfg.HasField("dynamic_batching")
                                                         else "")) if cfg.max_batch_size else "max_batch_size 0"
    echo(f"triton: {target.model_dir} version {target.version} ({cfg.platform}, {batching}); "
         f"{CONFIG_FILE} parsed back with ModelConfig and checked against the graph")
    return cfg

