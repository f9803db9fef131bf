"""TensorRT: clear failures without a GPU (always run) and real engine tests (``pytest -m gpu``).

The GPU tests build engines from the exported static ONNX with the TensorRT Python API, run them
through :class:`det_toolkit.runtime.backends.trt_backend.TrtBackend` on real raccoon photos and compare with
ONNX Runtime; on a machine without TensorRT/CUDA they skip with the reason (shown by ``-ra``).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from det_toolkit.export.cli import main
from det_toolkit.export.onnx_export import export_onnx
from det_toolkit.export.parity import compare_detections, load_images, onnx_detections, parity_inputs
from det_toolkit.runtime.backends import BackendError, load_backend
from det_toolkit.runtime.backends.trt_backend import engine_meta_path
from det_toolkit.runtime.meta import ModelMeta
from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
from det_toolkit.train.models import build_model

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
GLOB = str(RACCOON / "images" / "raccoon-2[0-4].jpg")


def _trt_or_skip() -> None:
    """Skip unless tensorrt, cuda-python and a CUDA device are present (reason printed by -ra)."""
    from det_toolkit.export.trt_build import TrtBuildError, require_tensorrt

    try:
        require_tensorrt()
    except TrtBuildError as e:
        pytest.skip(f"needs an NVIDIA GPU with TensorRT and cuda-python: {str(e)[:160]}")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights="auto", box_score_thresh=0.05)
    return save_atomic(make_checkpoint(model, ["raccoon"], imgsz=320), tmp_path_factory.mktemp("trt") / "best.pt")


def test_trt_export_fails_at_once_without_tensorrt(ckpt: Path) -> None:
    from det_toolkit.export.trt_build import TrtBuildError, require_tensorrt

    try:
        require_tensorrt()
    except TrtBuildError:
        result = CliRunner().invoke(main, [str(ckpt), "--trt"])
        assert result.exit_code == 1 and "TensorRT is not available" in result.output
        assert "pip install" in result.output and "tracing" not in result.output  # no work done first
        assert not ckpt.with_suffix(".onnx").exists()
    else:
        pytest.skip("TensorRT is installed here: covered by the gpu tests")


def test_engine_needs_sidecar_and_tensorrt(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(FileNotFoundError, match="m.engine.json"):
        load_backend(engine, device="cuda")
    with pytest.raises(BackendError, match="CUDA only"):
        load_backend(engine, device="cpu")
    meta = ModelMeta(model="x", class_names=["raccoon"], imgsz=(256, 256), dynamic_hw=False, batch=2,
                     output_names=("boxes", "scores", "labels", "num_dets"),
                     extra={"tensorrt": "0.0.0", "gpu": "None"})
    engine_meta_path(engine).write_text(meta.to_json())
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="tensorrt.*not installed.*pip install"):
            load_backend(engine, device="cuda")
    else:
        with pytest.raises(BackendError, match="built with TensorRT 0.0.0|CUDA error"):
            load_backend(engine, device="cuda")


@pytest.fixture(scope="module")
def static_onnx(ckpt: Path) -> Path:
    _trt_or_skip()
    images = load_images(GLOB)
    return export_onnx(ckpt, ckpt.with_name("static.onnx"), imgsz=(320, 320), static=True, batch=2,
                       parity_images=images)


def _compare_with_ort(engine: Path, onnx_path: Path, min_match: float) -> None:
    import onnxruntime as ort

    images = load_images(GLOB)
    backend = load_backend(engine, device="cuda")
    meta = backend.meta
    xs = parity_inputs(images, meta)
    got = backend.infer(np.concatenate(xs))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = onnx_detections(sess, meta, xs)
    report = compare_detections(ref, got, meta, 0.9, 0.02, min_match)
    assert report.n_ref_boxes > 0 and report.passed, report.table()
    again = backend.infer(np.concatenate(xs[:1]))  # reused pinned buffers, padded batch
    np.testing.assert_allclose(again[0][0], got[0][0], atol=1e-3)


@pytest.mark.gpu
def test_fp32_engine_matches_onnxruntime(static_onnx: Path) -> None:
    from det_toolkit.export.trt_build import build_engine

    engine = build_engine(static_onnx, static_onnx.with_name("fp32.engine"), workspace_gib=2)
    side = json.loads(engine_meta_path(engine).read_text())
    assert side["extra"]["tensorrt"] and side["extra"]["gpu"] and side["batch"] == 2
    assert engine.with_name(engine.name + ".timing.cache").is_file()
    _compare_with_ort(engine, static_onnx, 0.99)


@pytest.mark.gpu
def test_fp16_engine_matches_onnxruntime(static_onnx: Path) -> None:
    from det_toolkit.export.fp16 import export_fp16
    from det_toolkit.export.trt_build import build_engine, import_tensorrt, trt_major

    src = static_onnx
    if trt_major(import_tensorrt()) >= 11:  # strongly typed: precision comes from the FP16 ONNX
        src, _ = export_fp16(static_onnx, images=load_images(GLOB), min_match=0.9)
    engine = build_engine(src, static_onnx.with_name("fp16.engine"), fp16=True, workspace_gib=2)
    _compare_with_ort(engine, static_onnx, 0.9)


@pytest.mark.gpu
def test_int8_engine_from_the_qdq_graph_matches_onnxruntime(static_onnx: Path) -> None:
    """Explicit quantization: the TensorRT-target Q/DQ graph (symmetric INT8) is built strongly
    typed and reproduces ONNX Runtime's run of the same Q/DQ graph on real photos."""
    import onnxruntime as ort

    from det_toolkit.export.int8 import export_int8
    from det_toolkit.export.trt_build import build_engine

    images = load_images(GLOB)
    calib = load_images(str(RACCOON / "images" / "raccoon-1[0-9].jpg"))
    int8_path, _ = export_int8(static_onnx, calib_images=calib, parity_images=images, target="tensorrt",
                               min_match=0.0, echo=lambda _: None)
    engine = build_engine(int8_path, static_onnx.with_name("int8.engine"), int8=True, workspace_gib=2)
    assert json.loads(engine_meta_path(engine).read_text())["extra"]["precision"] == "int8"
    backend = load_backend(engine, device="cuda")
    xs = parity_inputs(images, backend.meta)
    got = backend.infer(np.concatenate(xs))
    sess = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"])
    report = compare_detections(onnx_detections(sess, backend.meta, xs), got, backend.meta, 0.5, 0.1, 0.8)
    assert report.n_ref_boxes > 0 and report.passed, report.table()


class _FakeTrt:
    """Records the TensorRT 10.x/11 Python API calls :func:`build_engine` makes (no GPU needed).

    Only the calls the module documents are provided: an unexpected call fails with AttributeError.
    """

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            self.level = level

    class NetworkDefinitionCreationFlag:
        STRONGLY_TYPED = 5

    class MemoryPoolType:
        WORKSPACE = "workspace"

    class BuilderFlag:
        FP16 = "fp16"

    def __init__(self, version: str, input_shape: tuple[int, ...] = (2, 3, 64, 64), parse_ok: bool = True,
                 engine: bytes | None = b"ENGINE") -> None:
        self.__version__, self.log = version, []
        outer = self

        class Error:
            def node(self) -> int: return 7
            def node_name(self) -> str: return "/roi/RoiAlign"
            def node_operator(self) -> str: return "RoiAlign"
            def code(self) -> int: return 3
            def desc(self) -> str: return "unsupported attribute"
            def file(self) -> str: return "importer.cpp"
            def line(self) -> int: return 42
            def func(self) -> str: return "parse"

        class Network:
            def get_input(self, i: int) -> SimpleNamespace:
                return SimpleNamespace(shape=input_shape, name="images")

        class Profile:
            def set_shape(self, *args: object) -> None:
                outer.log.append(("set_shape", args))

        class Cache:
            def serialize(self) -> bytes:
                return b"CACHE"

        class Config:
            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                outer.log.append(("pool", pool, size))

            def set_flag(self, flag: str) -> None:
                outer.log.append(("flag", flag))

            def add_optimization_profile(self, profile: Profile) -> None:
                outer.log.append(("profile",))

            def create_timing_cache(self, data: bytes) -> Cache:
                outer.log.append(("timing_cache_in", data))
                return Cache()

            def set_timing_cache(self, cache: Cache, ignore_mismatch: bool) -> None:
                outer.log.append(("set_timing_cache", ignore_mismatch))

            def get_timing_cache(self) -> Cache:
                return Cache()

        class Builder:
            def __init__(self, logger: object) -> None:
                outer.log.append(("builder",))

            def create_network(self, flags: int) -> Network:
                outer.log.append(("network", flags))
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
                outer.log.append(("build",))
                return engine

        class OnnxParser:
            def __init__(self, network: Network, logger: object) -> None:
                self.num_errors = 0 if parse_ok else 1

            def parse_from_file(self, path: str) -> bool:
                outer.log.append(("parse", Path(path).name))
                return parse_ok

            def get_error(self, i: int) -> Error:
                return Error()

        self.Builder, self.OnnxParser = Builder, OnnxParser

    def init_libnvinfer_plugins(self, logger: object, namespace: str) -> None:
        self.log.append(("plugins",))


class _FakeCudart:
    def cudaGetDeviceCount(self) -> tuple[int, int]:  # noqa: N802 - cuda-python's name
        return 0, 1

    def cudaGetDeviceProperties(self, device: int) -> tuple[int, SimpleNamespace]:  # noqa: N802
        return 0, SimpleNamespace(name=b"Fake GPU\x00", major=9, minor=0)


def _static_onnx(path: Path, batch: int = 2, fp16: bool = False, qdq: bool = False) -> Path:
    """A one-node graph carrying det-toolkit metadata (what ``build_engine`` reads before parsing);
    ``qdq``: a ``QuantizeLinear -> DequantizeLinear`` pair instead (an explicitly quantized graph)."""
    dtype = onnx.TensorProto.FLOAT16 if fp16 else onnx.TensorProto.FLOAT
    nodes = ([onnx.helper.make_node("QuantizeLinear", ["images", "s"], ["q"]),
              onnx.helper.make_node("DequantizeLinear", ["q", "s"], ["boxes"])] if qdq
             else [onnx.helper.make_node("Identity", ["images"], ["boxes"])])
    graph = onnx.helper.make_graph(
        nodes, "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [batch, 3, 64, 64])],
        [onnx.helper.make_tensor_value_info("boxes", onnx.TensorProto.FLOAT, [batch, 3, 64, 64])],
        [onnx.helper.make_tensor("w", dtype, [1], [1.0]), onnx.helper.make_tensor("s", onnx.TensorProto.FLOAT, [],
                                                                                  [0.05])])
    model = onnx.helper.make_model(graph)
    meta = ModelMeta(model="x", class_names=["raccoon"], imgsz=(64, 64), dynamic_hw=False, batch=batch,
                     output_names=("boxes", "scores", "labels", "num_dets"))
    onnx.helper.set_model_props(model, meta.onnx_props())
    onnx.save(model, str(path))
    return path


def _fake_build(monkeypatch: pytest.MonkeyPatch, trt: _FakeTrt, onnx_path: Path, **kwargs: object) -> Path:
    from det_toolkit.export import trt_build

    monkeypatch.setattr(trt_build, "import_tensorrt", lambda: trt)
    monkeypatch.setattr(trt_build, "import_cuda", lambda: _FakeCudart())
    return trt_build.build_engine(onnx_path, echo=lambda _: None, **kwargs)


def test_build_engine_api_sequence_and_atomic_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """TensorRT 10.x, FP32 then FP16, with a fake ``tensorrt``: plugins before parsing, parsing
    before building, the workspace limit, no profile for a static input, the timing cache read back
    on the second build; engine, timing cache and sidecar written, no temporary file left."""
    src = _static_onnx(tmp_path / "m.onnx")
    trt = _FakeTrt("10.15.1")
    engine = _fake_build(monkeypatch, trt, src, workspace_gib=1.0)
    names = [e[0] for e in trt.log]
    assert names.index("plugins") < names.index("parse") < names.index("build")
    assert ("network", 0) in trt.log and ("pool", "workspace", 2**30) in trt.log
    assert "profile" not in names and not any(e[0] == "flag" for e in trt.log)
    assert ("timing_cache_in", b"") in trt.log
    assert engine == tmp_path / "m.engine" and engine.read_bytes() == b"ENGINE"
    assert (tmp_path / "m.engine.timing.cache").read_bytes() == b"CACHE"
    side = json.loads(engine_meta_path(engine).read_text())
    assert side["batch"] == 2 and side["extra"] == {**side["extra"], "tensorrt": "10.15.1", "gpu": "Fake GPU",
                                                    "compute_capability": "9.0", "precision": "fp32",
                                                    "onnx": "m.onnx"}
    trt = _FakeTrt("10.15.1")
    _fake_build(monkeypatch, trt, src, fp16=True)
    assert ("flag", "fp16") in trt.log and ("timing_cache_in", b"CACHE") in trt.log
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "m.engine.timing.cache",
                                                          "m.onnx"]


def test_build_engine_dynamic_batch_profile_and_int8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dynamic batch axis gets one profile 1..batch; INT8 is explicit quantization on TensorRT
    10.x and 11 alike: the Q/DQ graph parsed as a strongly typed network, no precision flag."""
    src = _static_onnx(tmp_path / "m_int8.onnx", batch=4, qdq=True)
    for version in ("10.15.1", "11.0.0"):
        trt = _FakeTrt(version, input_shape=(-1, 3, 64, 64))
        engine = _fake_build(monkeypatch, trt, src, int8=True)
        assert ("set_shape", ("images", (1, 3, 64, 64), (4, 3, 64, 64), (4, 3, 64, 64))) in trt.log
        assert ("profile",) in trt.log and ("network", 1 << 5) in trt.log and ("build",) in trt.log
        assert not any(e[0] == "flag" for e in trt.log), trt.log
        assert json.loads(engine_meta_path(engine).read_text())["extra"]["precision"] == "int8"


def test_build_engine_refuses_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Precision requests this TensorRT cannot honour fail before parsing; parser errors name the
    node, op and description; a failed build leaves the previous engine in place."""
    from det_toolkit.export.trt_build import TrtBuildError

    src = _static_onnx(tmp_path / "m.onnx")
    for version, kwargs, message in (
            ("10.15.1", {"int8": True}, "built from a Q/DQ-quantized ONNX"),
            ("11.0.0", {"int8": True}, "built from a Q/DQ-quantized ONNX"),
            ("11.0.0", {"fp16": True}, "build --fp16 engines from the FP16 ONNX")):
        trt = _FakeTrt(version)
        with pytest.raises(TrtBuildError, match=message):
            _fake_build(monkeypatch, trt, src, **kwargs)
        assert not any(e[0] == "parse" for e in trt.log), trt.log
    with pytest.raises(TrtBuildError, match="choose one engine precision"):
        _fake_build(monkeypatch, _FakeTrt("10.15.1"), _static_onnx(tmp_path / "q.onnx", qdq=True), int8=True,
                    fp16=True)
    trt = _FakeTrt("11.0.0")  # strongly typed: the network flag, precision from the FP16 graph
    _fake_build(monkeypatch, trt, _static_onnx(tmp_path / "h.onnx", fp16=True), fp16=True)
    assert ("network", 1 << 5) in trt.log and not any(e[0] == "flag" for e in trt.log)
    with pytest.raises(TrtBuildError, match=r"cannot parse .*m.onnx:\n  - node 7, name '/roi/RoiAlign', "
                                            r"operator 'RoiAlign': \[3\] unsupported attribute"):
        _fake_build(monkeypatch, _FakeTrt("10.15.1", parse_ok=False), src)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"OLD")
    with pytest.raises(TrtBuildError, match="failed to build"):
        _fake_build(monkeypatch, _FakeTrt("10.15.1", engine=None), src)
    assert engine.read_bytes() == b"OLD"
