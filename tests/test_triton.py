"""det-export --triton: the Triton model repository (config.pbtxt checked with tritonclient's ModelConfig
protobuf against the ONNX graph), the batchable wrapper of the static graph, refused requests.

No Triton server runs here: the configs are validated with the protobuf and the graphs with ONNX Runtime.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from google.protobuf import text_format
from tritonclient.grpc.model_config_pb2 import DataType, ModelConfig

from det_toolkit.benchmarks.artifacts import cached_detector
from det_toolkit.export import triton as tr
from det_toolkit.export.cli import main
from det_toolkit.export.parity import parity_inputs
from det_toolkit.runtime.backends.onnx_backend import OnnxBackend
from det_toolkit.runtime.deps import Extra, MissingExtraError
from det_toolkit.runtime.meta import META_KEY, ModelMeta
from det_toolkit.runtime.predictor import Predictor
from det_toolkit.runtime.preprocess import letterbox, to_input, unletterbox_boxes
from tests.conftest import RACCOON, raccoon_photos

GLOB = str(RACCOON / "images" / "raccoon-1[0-3].jpg")  # 4 real photos
IMGSZ, MAX_DET, N = 256, 8, 4
DTYPES = {onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.INT64: "TYPE_INT64"}


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return raccoon_photos("raccoon-1[0-3].jpg")[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-class ('person') random-head detector in a det-train run layout: its model name is the run's."""
    pt, _ = cached_detector(IMGSZ, MAX_DET)  # score threshold 0: every image has MAX_DET boxes
    dst = tmp_path_factory.mktemp("runs") / "demo run" / "weights" / "best.pt"
    dst.parent.mkdir(parents=True)
    return Path(shutil.copy(pt, dst))


def export(ckpt: Path, out: Path, *args: str) -> Result:
    return CliRunner().invoke(main, [str(ckpt), "-o", str(out), "--no-embedder", "--parity-images", GLOB, *args])


@pytest.fixture(scope="module")
def dynamic(ckpt: Path, images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``det-export best.pt --triton REPO`` (the dynamic graph): ``(repo, exported .onnx)``."""
    tmp = tmp_path_factory.mktemp("dyn")
    result = export(ckpt, tmp / "det.onnx", "--no-simplify", "--triton", str(tmp / "repo"))
    assert result.exit_code == 0, result.output
    assert "parsed back with ModelConfig" in result.output
    return tmp / "repo", tmp / "det.onnx"


@pytest.fixture(scope="module")
def static(ckpt: Path, images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``det-export best.pt --imgsz 256 256 --batch 4 --triton REPO --triton-name det_b4``."""
    tmp = tmp_path_factory.mktemp("static")
    result = export(ckpt, tmp / "det_b4.onnx", "--imgsz", str(IMGSZ), str(IMGSZ), "--batch", str(N),
                    "--triton", str(tmp / "repo"), "--triton-name", "det_b4")
    assert result.exit_code == 0, result.output
    assert f"batch axis 1..{N}" in result.output
    return tmp / "repo", tmp / "det_b4.onnx"


def parse(path: Path) -> ModelConfig:
    return text_format.Parse(path.read_text(), ModelConfig())


def graph_shapes(graph: onnx.ModelProto) -> dict[str, tuple[str, list[int | str]]]:
    """name -> (Triton dtype name, dims with symbolic ones as their names), read with onnx directly."""
    return {v.name: (DTYPES[v.type.tensor_type.elem_type],
                     [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in [*graph.graph.input, *graph.graph.output]}


@pytest.mark.slow
def test_dynamic_graph_repository(dynamic: tuple[Path, Path]) -> None:
    repo, exported = dynamic
    model_dir = repo / "demo_run"  # "demo run" sanitized
    assert sorted(p.name for p in model_dir.iterdir()) == ["1", "config.pbtxt", "labels.txt"]
    assert (model_dir / "1" / "model.onnx").read_bytes() == exported.read_bytes()
    cfg = parse(model_dir / "config.pbtxt")
    assert (cfg.name, cfg.platform, cfg.max_batch_size) == ("demo_run", "onnxruntime_onnx", 0)
    assert not cfg.HasField("dynamic_batching")
    shapes = graph_shapes(onnx.load(str(exported)))
    assert shapes["images"][1][:2] == [1, 3] and all(isinstance(d, str) for d in shapes["images"][1][2:])
    for t in [*cfg.input, *cfg.output]:  # full dims, symbolic ones -1
        dtype, dims = shapes[t.name]
        assert DataType.Name(t.data_type) == dtype
        assert list(t.dims) == [d if isinstance(d, int) else -1 for d in dims]
    assert [t.name for t in cfg.output] == ["boxes", "scores", "labels"]
    assert [t.label_filename for t in cfg.output] == ["", "", "labels.txt"]
    assert (model_dir / "labels.txt").read_text() == "person\n"
    meta = ModelMeta.from_json(cfg.parameters[META_KEY].string_value)
    assert meta.class_names == ["person"] and meta.imgsz == (IMGSZ, IMGSZ)
    assert json.loads(cfg.parameters["det_toolkit.pad_value"].string_value) == list(meta.pad_value)
    assert float(cfg.parameters["det_toolkit.score_thresh"].string_value) == meta.score_thresh
    assert tr.validate_repository(model_dir, 1) == cfg


@pytest.mark.slow
def test_static_batch_graph_repository(static: tuple[Path, Path], images: list[np.ndarray]) -> None:
    repo, exported = static
    model_dir = repo / "det_b4"
    cfg = parse(model_dir / "config.pbtxt")
    assert (cfg.platform, cfg.max_batch_size) == ("onnxruntime_onnx", N)
    assert cfg.HasField("dynamic_batching")
    served = onnx.load(str(model_dir / "1" / "model.onnx"))
    fixed_shapes, served_shapes = graph_shapes(onnx.load(str(exported))), graph_shapes(served)
    assert fixed_shapes["images"][1] == [N, 3, IMGSZ, IMGSZ]
    for t in [*cfg.input, *cfg.output]:  # Triton dims omit the batch axis, which the served graph makes variable
        dtype, dims = served_shapes[t.name]
        assert DataType.Name(t.data_type) == dtype == fixed_shapes[t.name][0]
        assert dims[0] == "batch" and fixed_shapes[t.name][1][0] == N
        model_dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        assert model_dims == dims[1:] == fixed_shapes[t.name][1][1:]
    num_dets = next(t for t in cfg.output if t.name == "num_dets")
    assert list(num_dets.dims) == [1] and num_dets.HasField("reshape") and list(num_dets.reshape.shape) == []
    assert (model_dir / "labels.txt").read_text().splitlines() == ["person"]
    tr.validate_repository(model_dir, 1)

    # every batch 1..N gives each image the fixed batch-N graph's outputs; N + 1 images are refused
    meta = tr.graph_meta(served)
    x = np.concatenate(parity_inputs(images[:N], meta))
    names = list(meta.output_names)
    ref = ort.InferenceSession(str(exported), providers=["CPUExecutionProvider"]).run(names, {"images": x})
    assert (ref[3] > 0).all()  # real detections are compared, not padding
    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    for b in range(1, N + 1):
        got = sess.run(names, {"images": x[:b]})
        for name, g, r in zip(names, got, ref):
            assert g.shape == r[:b].shape, (name, b)
            np.testing.assert_allclose(g, r[:b], rtol=0, atol=1e-5, err_msg=f"{name} at batch {b}")
    with pytest.raises(Exception, match="at_most_4_images"):
        sess.run(names, {"images": np.concatenate([x, x[:1]])})


@pytest.mark.slow
def test_client_mapping_reproduces_det_run(static: tuple[Path, Path], images: list[np.ndarray]) -> None:
    """docs/export.md's client recipe, from the repository's files only (config parameters, served graph,
    a request of 3 images), gives det-run's detections (Predictor on the exported fixed graph)."""
    model_dir = static[0] / "det_b4"
    predictor = Predictor(OnnxBackend(static[1], providers=["CPUExecutionProvider"]), conf=0.0)
    want = [predictor(im) for im in images[:3]]
    params = {k: v.string_value for k, v in parse(model_dir / "config.pbtxt").parameters.items()}
    imgsz, pad = json.loads(params["det_toolkit.imgsz"]), tuple(json.loads(params["det_toolkit.pad_value"]))
    boxed = [letterbox(cv2.cvtColor(im, cv2.COLOR_BGR2RGB), imgsz, pad) for im in images[:3]]
    x = np.concatenate([to_input(img) for img, _ in boxed])  # float32 [3, 3, H, W], RGB 0-1
    sess = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    boxes, scores, labels, num_dets = sess.run(["boxes", "scores", "labels", "num_dets"], {"images": x})
    for i, ((_, info), ref) in enumerate(zip(boxed, want)):
        k = int(num_dets[i])
        assert k == len(ref) > 0
        np.testing.assert_allclose(unletterbox_boxes(boxes[i, :k], info), ref.boxes, atol=1e-3)
        np.testing.assert_allclose(scores[i, :k], ref.scores, atol=1e-6)
        assert labels[i, :k].tolist() == ref.labels.tolist()
        assert not boxes[i, k:].any()  # rows past num_dets are zero padding


@pytest.mark.slow
def test_validation_catches_disagreements(static: tuple[Path, Path], dynamic: tuple[Path, Path],
                                          tmp_path: Path) -> None:
    model_dir = static[0] / "det_b4"
    graph = onnx.load(str(model_dir / "1" / "model.onnx"))
    good = parse(model_dir / "config.pbtxt")
    tr.validate_config(good, graph, model_dir)

    def broken(edit: Callable[[ModelConfig], object]) -> str:
        cfg = ModelConfig()
        cfg.CopyFrom(good)
        edit(cfg)
        with pytest.raises(tr.TritonError) as e:
            tr.validate_config(cfg, graph, model_dir)
        return str(e.value)

    assert [t.name for t in good.output] == ["boxes", "scores", "labels", "num_dets"]
    assert "data_type TYPE_FP16, the graph's is TYPE_FP32" in broken(
        lambda c: setattr(c.input[0], "data_type", DataType.Value("TYPE_FP16")))
    assert "dims [3, 256, 128]" in broken(lambda c: c.input[0].dims.__setitem__(2, 128))
    assert "max_batch_size 8 exceeds the graph's batch 4" in broken(lambda c: setattr(c, "max_batch_size", 8))
    assert "outputs ['boxes', 'scores', 'labels'] differ" in broken(lambda c: c.output.pop())
    assert "not a valid model name equal to its folder" in broken(lambda c: setattr(c, "name", "other"))
    assert "num_dets: dims [1], the graph's shape past the batch axis is []" in broken(
        lambda c: c.output[3].ClearField("reshape"))
    assert "dynamic_batching needs max_batch_size > 0" in broken(lambda c: setattr(c, "max_batch_size", 0))
    # the fixed graph cannot be batched by Triton: its first dimension is not variable
    fixed = onnx.load(str(static[1]))
    with pytest.raises(tr.TritonError, match="no variable first dimension"):
        tr.validate_config(good, fixed)
    (tmp_path / "det_b4").mkdir()
    (tmp_path / "det_b4" / "labels.txt").write_text("raccoon\n")
    with pytest.raises(tr.TritonError, match="labels.txt lists"):
        tr.validate_config(good, graph, tmp_path / "det_b4")
    with pytest.raises(tr.TritonError, match="not a valid Triton ModelConfig"):
        tr.parse_config("name: 'x'\nmax_batch_sizes: 3\n")


def test_reshape_of_a_batch_only_output_is_required() -> None:
    """A [batch] output with max_batch_size > 0 must be declared dims [1] + reshape {shape: []}."""
    g = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["images"], ["scores"]),
         onnx.helper.make_node("ReduceMax", ["images"], ["num_dets"], axes=[1], keepdims=0)], "g",
        [onnx.helper.make_tensor_value_info("images", onnx.TensorProto.FLOAT, ["batch", 2])],
        [onnx.helper.make_tensor_value_info("scores", onnx.TensorProto.FLOAT, ["batch", 2]),
         onnx.helper.make_tensor_value_info("num_dets", onnx.TensorProto.FLOAT, ["batch"])])
    model = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 13)])
    meta = ModelMeta("m", ["a", "b"], (2, 2), batch=2, output_names=("scores", "num_dets"))
    onnx.helper.set_model_props(model, meta.onnx_props())
    cfg = tr.model_config(model, "m", tr.ONNX_PLATFORM, 2)
    out = {t.name: t for t in cfg.output}
    assert list(out["num_dets"].dims) == [1] and out["num_dets"].HasField("reshape")
    tr.validate_config(tr.parse_config(tr.config_text(cfg)), model)
    out["num_dets"].ClearField("reshape")
    with pytest.raises(tr.TritonError, match=r"num_dets: dims \[1\], the graph's shape past the batch axis is \[\]"):
        tr.validate_config(cfg, model)


@pytest.mark.slow
def test_versions_plans_and_conflicts(ckpt: Path, dynamic: tuple[Path, Path], static: tuple[Path, Path],
                                      tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(dynamic[0], repo)
    graph = onnx.load(str(dynamic[1]))
    # a new version of the same graph: added beside version 1, the config stays the same
    target = tr.plan_repository(repo, ckpt, name=None, version=2, static=False, batch=1, trt=False, max_batch=None)
    before = (repo / "demo_run" / "config.pbtxt").read_text()
    tr.write_repository(target, graph)
    assert tr.model_versions(repo / "demo_run") == [1, 2]
    assert (repo / "demo_run" / "config.pbtxt").read_text() == before
    assert not [p for p in (repo / "demo_run").iterdir() if p.name.startswith(".")]  # no staging left
    # another graph under the same name is refused, nothing written
    target3 = tr.TritonTarget(repo, "demo_run", 3, tr.ONNX_PLATFORM, 0)
    with pytest.raises(tr.TritonError, match="describes other inputs/outputs"):
        tr.write_repository(target3, onnx.load(str(static[1])))
    assert tr.model_versions(repo / "demo_run") == [1, 2]
    with pytest.raises(tr.TritonError, match="max_batch_size 0; this export is onnxruntime_onnx with max_batch_size 4"):
        tr.plan_repository(repo, ckpt, name=None, version=3, static=True, batch=4, trt=False, max_batch=None)

    # a TensorRT plan (no TensorRT here: a stand-in engine file) of the fixed batch-4 graph
    engine = tmp_path / "det_b4.engine"
    engine.write_bytes(b"stand-in for a serialized TensorRT engine")
    plan = tr.plan_repository(repo, ckpt, name="det_b4_trt", version=None, static=True, batch=N, trt=True,
                              max_batch=None)
    cfg = tr.write_repository(plan, onnx.load(str(static[1])), engine)
    assert (repo / "det_b4_trt" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert (cfg.platform, cfg.max_batch_size, list(cfg.input[0].dims)) == ("tensorrt_plan", 0, [N, 3, IMGSZ, IMGSZ])
    assert not cfg.HasField("dynamic_batching")
    assert list(next(t for t in cfg.output if t.name == "num_dets").dims) == [N]
    with pytest.raises(tr.TritonError, match="validated against the ONNX graph it was built from"):
        tr.validate_repository(repo / "det_b4_trt", 1)


def test_default_model_name(tmp_path: Path) -> None:
    assert tr.default_model_name(Path("runs/train/exp/weights/best.pt")) == "exp"
    assert tr.default_model_name(Path("runs/train/exp/weights/last.pt")) == "exp_last"
    assert tr.default_model_name(Path("models/my det+v2.pt")) == "my_det_v2"
    assert tr.default_model_name(Path(".hidden.pt")) == "hidden"
    for bad in ("a/b", "../x", ".x", "-x", "a b", "", "x" * 201):
        with pytest.raises(tr.TritonError, match="Triton model name"):
            tr.check_model_name(bad)
    assert tr.check_model_name("yolo_v2.1-int8") == "yolo_v2.1-int8"


def refused(args: list[str], ckpt: Path, out: Path) -> str:
    """Run det-export with ``args``; it must fail at once with a message and no traceback, writing nothing."""
    result = CliRunner().invoke(main, [str(ckpt), "-o", str(out), "--no-embedder", *args])
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output and not out.exists()
    return result.output


def test_malformed_requests_refused_before_work(ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out, repo = tmp_path / "x.onnx", tmp_path / "repo"
    msg = refused(["--triton", str(repo), "--triton-max-batch", "4"], ckpt, out)
    assert "the dynamic graph takes one image per call" in msg
    msg = refused(["--batch", "4", "--triton", str(repo), "--triton-max-batch", "8"], ckpt, out)
    assert "--triton-max-batch 8 exceeds the graph's batch 4" in msg
    msg = refused(["--trt", "--triton", str(repo), "--triton-max-batch", "2"], ckpt, out)
    assert "max_batch_size 0" in msg
    msg = refused(["--triton", str(repo), "--triton-name", "my/model"], ckpt, out)
    assert "Triton model name" in msg
    (tmp_path / "afile").write_text("")
    msg = refused(["--triton", str(tmp_path / "afile")], ckpt, out)
    assert "is a file" in msg
    (repo / "demo_run" / "1").mkdir(parents=True)
    msg = refused(["--triton", str(repo)], ckpt, out)
    assert "demo_run/1 exists; add a version with --triton-version 2" in msg
    (repo / "demo_run" / "config.pbtxt").write_text("platform: 'onnxruntime_onnx'\nbogus_field: 1\n")
    msg = refused(["--triton", str(repo), "--triton-version", "2"], ckpt, out)
    assert "not a valid Triton ModelConfig" in msg
    msg = refused(["--triton-name", "x"], ckpt, out)
    assert "need --triton REPO_DIR" in msg
    monkeypatch.setattr(tr, "TRITON", Extra("triton", "tritonclient's ModelConfig protobuf", ("no_such_module_",)))
    msg = refused(["--triton", str(tmp_path / "r2")], ckpt, out)
    assert 'pip install "det-toolkit[triton]"' in msg
    with pytest.raises(MissingExtraError):
        tr.plan_repository(tmp_path / "r2", ckpt, name=None, version=None, static=False, batch=1, trt=False,
                           max_batch=None)
