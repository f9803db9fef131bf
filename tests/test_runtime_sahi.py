"""SAHI tiled inference (det_toolkit.runtime.tiling): coordinates, equality with sahi's get_sliced_prediction,
batched fixed-batch ONNX graphs, and ``det-run --sahi`` without torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import no_torch_script

from det_toolkit.benchmarks.common import match_count, read_frames
from det_toolkit.runtime.backends import Backend, load_backend
from det_toolkit.runtime.meta import PAD_VALUE, ModelMeta
from det_toolkit.runtime.predictor import Predictor
from det_toolkit.runtime.preprocess import letterbox, to_input
from det_toolkit.runtime.tiling import SahiDetectionModel, SliceConfig, TiledPredictor

REPO = Path(__file__).resolve().parents[1]
VIDEO = Path(__file__).resolve().parents[2] / "shared/videos/vtest.avi"
IMGSZ, MAX_DET, BATCH = 256, 20, 4


class OracleBackend(Backend):
    """'Detects' the pure-red pixels of each letterboxed input: one box per image (input px)."""

    def __init__(self, imgsz: int) -> None:
        self.meta = ModelMeta("oracle", ["red"], (imgsz, imgsz))
        self.name, self.max_batch, self.calls = "oracle", 0, 0

    def infer(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        self.calls += 1
        out = []
        for img in x:
            ys, xs = np.nonzero((img[0] > 0.9) & (img[1] < 0.1) & (img[2] < 0.1))
            box = [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]] if len(xs) else np.zeros((0, 4))
            out.append((np.asarray(box, np.float32), np.full(len(box), 0.9, np.float32),
                        np.zeros(len(box), np.int64)))
        return out


@pytest.mark.parametrize("hw", [(900, 500), (500, 900)], ids=["portrait", "landscape"])
@pytest.mark.parametrize("imgsz", [192, 320])
def test_boxes_land_in_frame_coordinates(hw: tuple[int, int], imgsz: int) -> None:
    """A red square at the bottom-right border is found where it is, for any --imgsz and orientation."""
    h, w = hw
    frame = np.full((h, w, 3), 40, np.uint8)
    truth = np.array([w - 70, h - 60, w - 10, h], np.float32)  # touches the bottom edge
    frame[h - 60:h, w - 70:w - 10] = (0, 0, 255)  # BGR red
    backend = OracleBackend(imgsz)
    tp = TiledPredictor(Predictor(backend, conf=0.5, imgsz=imgsz), SliceConfig(256, 256, 0.2, 0.2))
    dets = tp(frame)
    assert backend.calls == 1 and tp.tiles == len(SliceConfig(256, 256).windows(h, w)) + 1
    assert len(dets) == 1 and dets.labels.tolist() == [0]
    np.testing.assert_allclose(dets.boxes[0], truth, atol=256 / imgsz + 1)  # one input px of a tile
    assert tp.times_ms["inference"] >= 0 and set(tp.times_ms) == {"preprocess", "inference", "postprocess"}
    # without the full-frame pass and with one tile covering the frame, no merge is needed
    one = TiledPredictor(Predictor(backend, conf=0.5, imgsz=imgsz), SliceConfig(max(hw), max(hw)))
    np.testing.assert_allclose(one(frame).boxes[0], truth, atol=max(hw) / imgsz + 1)
    assert one.tiles == 1


def test_slice_config_validation() -> None:
    assert SliceConfig().sahi_kwargs()["postprocess_type"] == "GREEDYNMM"
    assert SliceConfig(100, 50, 0.5, 0.0).windows(100, 120).tolist() == [[0, 0, 50, 100], [50, 0, 100, 100],
                                                                          [70, 0, 120, 100]]
    for bad in ({"merge": "wbf"}, {"match_metric": "giou"}, {"overlap_width": 1.0}, {"slice_height": 64}):
        with pytest.raises(ValueError):
            SliceConfig(**bad)


def test_predict_batch_equals_single_calls() -> None:
    """Square: every image's input is __call__'s. Rect: each image's own resized input, padded with
    the mean colour to the batch's largest height and width; alone it is exactly __call__'s."""
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, s, np.uint8) for s in ((300, 500, 3), (256, 256, 3), (90, 40, 3))]

    class Echo(OracleBackend):
        def infer(self, x: np.ndarray) -> list:
            self.seen = x.copy()
            return super().infer(x)

    p = Predictor(Echo(IMGSZ), conf=0.0, rect=False)
    p.predict_batch(imgs)
    for i, img in enumerate(imgs):  # the exact input __call__ builds
        np.testing.assert_array_equal(p.backend.seen[i], to_input(letterbox(img[:, :, ::-1], (IMGSZ, IMGSZ))[0])[0])

    assert not Predictor(Echo(IMGSZ)).rect  # square by default
    p = Predictor(Echo(IMGSZ), conf=0.0, rect=True)
    p.predict_batch(imgs)
    assert p.backend.seen.shape == (3, 3, IMGSZ, IMGSZ)  # 300x500 -> 154x256, 256x256, 90x40 -> 256x114
    first = to_input(letterbox(imgs[0][:, :, ::-1], (IMGSZ, IMGSZ), rect=True)[0])[0]
    assert first.shape == (3, 154, 256)
    np.testing.assert_array_equal(p.backend.seen[0, :, :154], first)
    np.testing.assert_array_equal(p.backend.seen[0, :, 154:], np.broadcast_to(
        (np.array(PAD_VALUE, np.float32) * np.float32(1 / 255))[:, None, None], (3, IMGSZ - 154, IMGSZ)))
    p(imgs[0])
    np.testing.assert_array_equal(p.backend.seen, first[None])
    p.predict_batch(imgs[:1])
    np.testing.assert_array_equal(p.backend.seen, first[None])
    with pytest.raises(ValueError, match="square"):
        TiledPredictor(p)


@pytest.fixture(scope="module")
def artifacts() -> Path:
    """``det.pt``, its batch-1 ``det.onnx`` and a fixed-batch ``det_b4.onnx`` (random head, 256 px)."""
    pytest.importorskip("torch")
    from det_toolkit.benchmarks.artifacts import cached_detector, export_batched

    if not VIDEO.is_file():
        pytest.skip(f"{VIDEO} absent")
    pt, _ = cached_detector(IMGSZ, MAX_DET)
    if not (pt.parent / "det_b4.onnx").is_file():
        export_batched(pt, BATCH, pt.parent / "det_b4.onnx")
    return pt.parent


def test_batched_graph_and_sahi_reference(artifacts: Path) -> None:
    """Batched tiles (fixed-batch graph, chunks padded) and looped tiles both equal sahi's own
    get_sliced_prediction on real frames (>= 99% of boxes matched)."""
    from sahi.predict import get_sliced_prediction

    single, batched = (load_backend(artifacts / n, "cpu") for n in ("det.onnx", "det_b4.onnx"))
    assert (single.max_batch, batched.max_batch, batched.meta.max_det) == (1, BATCH, MAX_DET)
    cfg = SliceConfig(512, 512, 0.2, 0.2)
    ref_model = SahiDetectionModel(Predictor(single, conf=0.3))
    ours = {name: TiledPredictor(Predictor(b, conf=0.3), cfg) for name, b in (("loop", single), ("batch", batched))}
    counts = {name: [0, 0] for name in ours}
    for frame in read_frames(VIDEO, 2, every=40):
        ref = get_sliced_prediction(np.ascontiguousarray(frame[:, :, ::-1]), ref_model, verbose=0,
                                    **cfg.sahi_kwargs()).object_prediction_list
        rb = np.array([p.bbox.to_xyxy() for p in ref], np.float32).reshape(-1, 4)
        rl = np.array([p.category.id for p in ref], np.int64)
        assert len(ref) > 3
        for name, tp in ours.items():
            dets = tp(frame)
            assert tp.tiles == 5  # 2x2 tiles of 768x576 + the full frame (2 passes of the batch-4 graph)
            m, n = match_count(dets.boxes, rb, dets.labels, rl)
            counts[name][0] += m
            counts[name][1] += n
    for name, (m, n) in counts.items():
        assert m >= 0.99 * n, f"{name}: {m}/{n} merged boxes match sahi's get_sliced_prediction"


NO_TORCH = no_torch_script("det_toolkit.runtime.cli")


def test_cli_sahi_without_torch(artifacts: Path, tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(VIDEO), "--weights", str(artifacts / "det_b4.onnx"),
                           "--sahi", "--slice", "512", "--sahi-merge", "nms", "--sahi-match", "iou",
                           "--max-frames", "2", "--project", str(tmp_path), "--name", "s", "--no-save"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "s/predictions.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    boxes = np.array([d["box"] for r in lines for d in r["detections"]])
    assert len(boxes) and (boxes >= 0).all() and (boxes[:, 2] <= 768).all() and (boxes[:, 3] <= 576).all()
    summary = json.loads((tmp_path / "s/summary.json").read_text())
    assert summary["sahi"]["tiles"] == 5 and summary["sahi"]["merge"] == "nms"


def test_tile_count_is_bounded(artifacts: Path, tmp_path: Path) -> None:
    """--slice 1 would cut a 768x576 frame into 442,368 tiles (tens of GiB of input): refused before
    any output with the computed count and the limit; the count equals sahi's own slicing."""
    from sahi.slicing import get_slice_bboxes

    from det_toolkit.runtime.cli import main

    cfg = SliceConfig(16, 16, 0.2, 0.2, max_tiles=10**6)
    assert cfg.tile_count(576, 768) == len(get_slice_bboxes(576, 768, 16, 16, False, 0.2, 0.2)) == 2655
    with pytest.raises(ValueError, match="into 2655 tiles, more than the limit of 64"):
        SliceConfig(16, 16, 0.2, 0.2).windows(576, 768)
    for size, count in (("1", "442368"), ("16", "2655")):
        res = CliRunner().invoke(main, [str(VIDEO), "--weights", str(artifacts / "det.onnx"), "--sahi",
                                        "--slice", size, "--project", str(tmp_path / "runs")])
        assert res.exit_code == 1 and f"into {count} tiles, more than the limit of 64 (--max-tiles)" in res.output
        assert not (tmp_path / "runs").exists()
