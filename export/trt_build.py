"""ONNX -> TensorRT engine (``det-export --trt``), through the TensorRT Python API.

Written against the TensorRT 10.x Python API (``tensorrt`` 10.0-10.15: ``trt.Builder``,
``IBuilderConfig.set_memory_pool_limit``, ``BuilderFlag.FP16``, ``ITimingCache``, ``OnnxParser``,
``IParserError``; NVIDIA's ``samples/python/common_runtime.py`` for cuda-python buffers) with a
switch for TensorRT >= 11, where networks are strongly typed only: precision then comes from the
graph (build ``--fp16`` from the FP16 ONNX) and no precision flags are set.

INT8 engines use explicit quantization on every version: the network is parsed from the Q/DQ
ONNX of :func:`det_toolkit.export.int8.export_int8` (``target="tensorrt"``: symmetric INT8,
zero point 0) as a strongly typed network (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``), and
no precision flag or calibrator is set: TensorRT's explicit-quantization guide ("Use explicit
quantization with Strong Typing. Precision-control build flags are not required and should not be
specified"). The implicit INT8 calibrators are deprecated since TensorRT 10.1 and removed in 11
(``IBuilderConfig.int8_calibrator``, ``BuilderFlag.INT8``).

``tensorrt`` and ``cuda-python`` are imported lazily; without them (or without a CUDA device)
:func:`require_tensorrt` fails at once saying what to install. The engine's metadata is written as
a sidecar JSON (``best.engine.json``): the :class:`det_toolkit.runtime.meta.ModelMeta` of the ONNX plus the
TensorRT version, GPU name and compute capability it was built for (see
:func:`det_toolkit.runtime.backends.trt_backend.engine_meta_path`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from det_toolkit.runtime.backends.trt_backend import (
    engine_meta_path,
    gpu_info,
    import_cuda,
    import_tensorrt,
)
from det_toolkit.runtime.files import atomic_write
from det_toolkit.runtime.meta import META_KEY, ModelMeta

INSTALL_HINT = ("install TensorRT and cuda-python on a machine with an NVIDIA GPU and driver: "
                "pip install 'det-toolkit[gpu]' (tensorrt>=10 from NVIDIA's index "
                "https://pypi.nvidia.com, cuda-python>=12)")


class TrtBuildError(RuntimeError):
    """TensorRT is missing, or the engine could not be parsed/built (message has the details)."""


def require_tensorrt() -> tuple[Any, Any]:
    """``(tensorrt module, cuda runtime bindings)``, checked to see a CUDA device.

    Raises:
        TrtBuildError: a package is missing or no CUDA device is visible (message: what to install).
    """
    try:
        trt = import_tensorrt()
        cudart = import_cuda()
    except ImportError as e:
        raise TrtBuildError(f"--trt: TensorRT is not available here: {e}") from e
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or count < 1:
        raise TrtBuildError(f"--trt: TensorRT is not available here: no CUDA GPU is visible ({err}); {INSTALL_HINT}")
    return trt, cudart


def trt_major(trt: Any) -> int:
    """Major version of the imported ``tensorrt`` module."""
    return int(str(trt.__version__).split(".")[0])


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path | None = None,
    *,
    fp16: bool = False,
    int8: bool = False,
    workspace_gib: float = 4.0,
    echo: Callable[[str], None] = print,
) -> Path:
    """Build a TensorRT engine from a det-toolkit ONNX graph and write it with its sidecar JSON.

    Args:
        onnx_path: the static graph (``det-export --imgsz H W --batch N``); with TensorRT >= 11 and
            ``fp16``, pass the FP16 ONNX (strongly typed networks take precision from the graph);
            with ``int8``, the Q/DQ graph (``det-export --trt --int8`` writes ``<name>_int8.onnx``).
        engine_path: output ``.engine``; default ``onnx_path`` with suffix ``.engine``. The timing
            cache is kept beside it (``<engine>.timing.cache``) and reused by later builds.
        fp16: allow FP16 kernels (TensorRT 10.x: ``BuilderFlag.FP16``).
        int8: INT8 by explicit quantization: ``onnx_path`` must hold ``QuantizeLinear`` /
            ``DequantizeLinear`` nodes; built strongly typed (the layers outside Q/DQ run in the
            graph's float32).
        workspace_gib: ``MemoryPoolType.WORKSPACE`` limit in GiB.
        echo: progress output.

    Returns:
        The engine path.

    Raises:
        TrtBuildError: TensorRT/CUDA missing, parser errors (all printed: node, op, description),
            unsupported option for this TensorRT version, ``int8`` without Q/DQ nodes in the graph,
            ``fp16`` with ``int8``, or a failed build.
        det_toolkit.runtime.meta.MetadataError: the ONNX has no det-toolkit metadata.
    """
    import onnx

    trt, cudart = require_tensorrt()
    onnx_path = Path(onnx_path)
    out = Path(engine_path) if engine_path else onnx_path.with_suffix(".engine")
    model = onnx.load(str(onnx_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMeta.from_json(props.get(META_KEY, "{}"), str(onnx_path))
    strongly_typed = trt_major(trt) >= 11 or int8  # explicit quantization: strongly typed everywhere
    _check_precision(trt, strongly_typed, fp16=fp16, int8=int8, fp16_graph=_is_fp16_graph(model),
                     qdq_graph=_is_qdq_graph(model))
    logger = trt.Logger(trt.Logger.WARNING)
    trt.init_libnvinfer_plugins(logger, "")  # RoiAlign/NMS plugins must be registered before parsing
    builder = trt.Builder(logger)
    # the parser owns the network's weights: it stays referenced until the engine is built
    network, _parser = parse_network(trt, builder, logger, onnx_path, strongly_typed)
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * 2**30))
    if fp16 and not strongly_typed:  # strongly typed networks take every precision from the graph
        config.set_flag(trt.BuilderFlag.FP16)
    _add_batch_profile(builder, network, config, meta.batch)
    cache_path = out.with_name(out.name + ".timing.cache")
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    echo(f"building TensorRT {trt.__version__} engine from {onnx_path.name} "
         f"({'int8, Q/DQ, ' if int8 else ''}{'strongly typed' if strongly_typed else 'fp16' if fp16 else 'fp32'}, "
         f"workspace {workspace_gib:g} GiB)")
    t0 = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TrtBuildError(f"TensorRT {trt.__version__} failed to build {out} (see the log above)")
    atomic_write(out, bytes(serialized))
    atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    gpu = gpu_info(cudart)
    meta.extra.update(tensorrt=str(trt.__version__), gpu=gpu["name"], compute_capability=gpu["cc"],
                      precision="fp16" if fp16 else "int8" if int8 else "fp32", onnx=str(onnx_path.name))
    atomic_write(engine_meta_path(out), json.dumps(json.loads(meta.to_json()), indent=2).encode())
    echo(f"engine: {out} ({out.stat().st_size / 2**20:.1f} MiB, {time.perf_counter() - t0:.0f} s, "
         f"{gpu['name']})")
    return out


def _check_precision(trt: Any, strongly_typed: bool, *, fp16: bool, int8: bool, fp16_graph: bool,
                     qdq_graph: bool) -> None:
    """Reject a precision request this TensorRT cannot honour, before any work is done.

    Raises:
        TrtBuildError: ``int8`` from a graph without Q/DQ nodes, ``int8`` with ``fp16``, or
            ``fp16`` from an FP32 graph on a strongly typed TensorRT (>= 11).
    """
    if int8 and not qdq_graph:
        raise TrtBuildError("INT8 engines are built from a Q/DQ-quantized ONNX (explicit quantization; TensorRT "
                            "11 has no calibrator): det-export --trt --int8 writes <name>_int8.onnx and builds it")
    if int8 and fp16:
        raise TrtBuildError("choose one engine precision: --int8 (from the Q/DQ graph) or --fp16")
    if strongly_typed and fp16 and not fp16_graph:
        raise TrtBuildError(f"TensorRT {trt.__version__} builds strongly typed networks only: build "
                            "--fp16 engines from the FP16 ONNX (det-export --fp16 writes it)")


def parse_network(trt: Any, builder: Any, logger: Any, onnx_path: Path, strongly_typed: bool) -> tuple[Any, Any]:
    """``(INetworkDefinition, OnnxParser)`` of ``onnx_path``, strongly typed on TensorRT >= 11
    (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``). Keep the parser alive until the engine is
    built: it owns the network's weights.

    Raises:
        TrtBuildError: the parser rejects the graph (every ``IParserError``: node, op, description).
    """
    st_flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = 1 << int(st_flag) if strongly_typed and st_flag is not None else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TrtBuildError(f"TensorRT {trt.__version__} cannot parse {onnx_path}:\n" + "\n".join(errors))
    return network, parser


def _add_batch_profile(builder: Any, network: Any, config: Any, batch: int) -> None:
    """A graph with a dynamic batch axis gets one optimization profile from 1 to ``batch`` images
    (optimum at ``batch``); the det-toolkit static graphs are fully static and need none."""
    inp = network.get_input(0)
    if any(d < 0 for d in inp.shape):
        profile = builder.create_optimization_profile()
        fixed = list(inp.shape[1:])
        profile.set_shape(inp.name, (1, *fixed), (batch, *fixed), (batch, *fixed))
        config.add_optimization_profile(profile)


def _is_fp16_graph(model: Any) -> bool:
    """Whether an ONNX model carries float16 initializers (the ``--fp16`` ONNX variant)."""
    import onnx

    return any(i.data_type == onnx.TensorProto.FLOAT16 for i in model.graph.initializer)


def _is_qdq_graph(model: Any) -> bool:
    """Whether an ONNX model is explicitly quantized (has ``QuantizeLinear`` and ``DequantizeLinear`` nodes)."""
    ops = {n.op_type for n in model.graph.node}
    return {"QuantizeLinear", "DequantizeLinear"} <= ops


def _parser_error(err: Any) -> str:
    """One ``IParserError`` as text: node index/name, op, code and description (TensorRT 10.x)."""
    parts = [f"node {err.node()}"]
    for attr in ("node_name", "node_operator"):
        if hasattr(err, attr):
            parts.append(f"{attr.split('_')[1]} {getattr(err, attr)()!r}")
    return f"  - {', '.join(parts)}: [{err.code()}] {err.desc()} ({err.file()}:{err.line()} {err.func()})"
