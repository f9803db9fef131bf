"""The Python API (``det_toolkit.Detector``, ``det_toolkit.track``) against det-run on real images and
video: same boxes, same track ids; clear errors; torch-free for ``.onnx``.

The detector is the shared randomly initialised Faster R-CNN head exported at 256 px with at most 8
detections per image (:func:`det_toolkit.benchmarks.artifacts.cached_detector`): its boxes are
arbitrary but deterministic, which is all a comparison with det-run needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from det_toolkit import Detector, track
from det_toolkit.runtime.api import DetectionResult, TrackedFrame
from det_toolkit.runtime.backends import BackendError
from det_toolkit.runtime.boxes import box_iou
from det_toolkit.runtime.cli import main as det_run
from det_toolkit.runtime.embedder import EMBEDDER_FILENAME
from det_toolkit.runtime.source_types import SourceError

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
IMAGES = SHARED / "datasets/raccoon/images"
VIDEO = SHARED / "videos/vtest.avi"
PHOTOS = ["raccoon-1.jpg", "raccoon-2.jpg", "raccoon-12.jpg", "raccoon-105.jpg"]
pytestmark = pytest.mark.skipif(not (IMAGES.is_dir() and VIDEO.is_file()), reason=f"{SHARED} data absent")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``det.onnx`` (the shared cached export) and ``deepsort_embedder.onnx`` beside it."""
    pytest.importorskip("torch")  # only to make the artifacts; the API under test does not need it
    from det_toolkit.benchmarks.artifacts import cached_detector
    from det_toolkit.export.embedder import export_embedder

    out = tmp_path_factory.mktemp("models")
    (out / "det.onnx").symlink_to(cached_detector(256, 8)[1])
    export_embedder(out / EMBEDDER_FILENAME, echo=lambda _: None)
    return out


def run_det_run(args: list[str], project: Path) -> list[dict]:
    """det-run ``args`` (no saved frames) into ``project/exp``; its predictions.jsonl lines."""
    res = CliRunner().invoke(det_run, [*args, "--no-save", "--project", str(project)])
    assert res.exit_code == 0, res.output
    return [json.loads(x) for x in (project / "exp/predictions.jsonl").read_text().splitlines()]


def assert_same(result: DetectionResult, line: dict) -> None:
    """``result`` holds exactly the detections of a predictions.jsonl line (which rounds boxes to
    2 decimals and scores to 4)."""
    want = line["detections"]
    assert len(result) == len(want) > 0
    np.testing.assert_allclose(result.boxes, [d["box"] for d in want], atol=0.0051)
    np.testing.assert_allclose(result.scores, [d["score"] for d in want], atol=5.1e-5)
    assert result.class_ids.tolist() == [d["class_id"] for d in want]
    dicts = result.to_dicts()
    assert [{k: d[k] for k in ("class_id", "class_name")} for d in dicts] == \
        [{k: d[k] for k in ("class_id", "class_name")} for d in want]
    assert json.loads(result.to_json()) == dicts


@pytest.mark.parametrize("rect", [False, True], ids=["square", "rect"])
def test_detector_equals_det_run(models: Path, tmp_path: Path, rect: bool) -> None:
    listing = tmp_path / "photos.txt"
    listing.write_text("\n".join(str(IMAGES / p) for p in PHOTOS) + "\n")
    lines = run_det_run([str(listing), "--weights", str(models / "det.onnx"), "--conf", "0.3", "--device", "cpu",
                         *(["--rect"] if rect else [])], tmp_path / "runs")
    assert [x["source"] for x in lines] == PHOTOS

    det = Detector(models / "det.onnx", conf=0.3, device="cpu", rect=rect)
    assert det.names == ["person"] and det.predictor.rect is rect
    single = [det(IMAGES / p) for p in PHOTOS]  # paths
    arrays = [det(cv2.imread(str(IMAGES / p))) for p in PHOTOS]  # BGR arrays
    batch = det([cv2.imread(str(IMAGES / p)) for p in PHOTOS])  # one batched call: a list back
    assert isinstance(batch, list) and len(batch) == len(PHOTOS)
    for line, a, b, c in zip(lines, single, arrays, batch):
        for r in (a, b, c):
            assert isinstance(r, DetectionResult) and r.names == ("person",)
            assert r.boxes.dtype == np.float32 and r.boxes.shape == (len(r), 4)
            assert r.scores.dtype == np.float32 and r.class_ids.dtype == np.int64
            assert r.scores.min() >= 0.3
            assert_same(r, line)
    assert det([]) == []


def test_track_equals_det_run_and_ids_persist(models: Path, tmp_path: Path) -> None:
    n = 24
    lines = run_det_run([str(VIDEO), "--weights", str(models / "det.onnx"), "--device", "cpu", "--track",
                         "--max-frames", str(n)], tmp_path / "runs")
    det = Detector(models / "det.onnx", device="cpu")
    with track(VIDEO, det, max_frames=n) as frames:  # the embedder is found beside det.onnx
        assert frames.info.is_video and (frames.info.width, frames.info.height) == (768, 576)
        got = list(frames)
    assert [f.index for f in got] == list(range(n)) and {f.source for f in got} == {"vtest.avi"}
    for f, line in zip(got, lines):
        assert isinstance(f, TrackedFrame) and f.image.shape == (576, 768, 3)
        assert_same(f.detections, line)
        want = {i: d["track_id"] for i, d in enumerate(line["detections"]) if "track_id" in d}
        assert {t.det_index: t.track_id for t in f.tracks} == want  # the same ids on the same boxes
        for t in f.tracks:
            np.testing.assert_allclose(t.box, f.detections.boxes[t.det_index], atol=1e-3)
            assert t.class_id == 0 and det.names[t.class_id] == "person"

    # ids persist: some track is matched in 10+ consecutive frames, its box moving smoothly
    boxes: dict[int, dict[int, np.ndarray]] = {}
    for f in got:
        for t in f.tracks:
            boxes.setdefault(t.track_id, {})[f.index] = t.box
    runs = []
    for tid, seen in boxes.items():
        frames_seen = sorted(seen)
        start = frames_seen[0]
        for a, b in zip(frames_seen, frames_seen[1:] + [None]):
            if b != a + 1:
                runs.append((a - start + 1, tid, start))
                start = b
    length, tid, start = max(runs)
    assert length >= 10, runs
    seq = np.stack([boxes[tid][i] for i in range(start, start + length)])
    step_iou = np.diag(box_iou(seq[:-1], seq[1:]))  # the id never jumps to a disjoint box
    assert step_iou.min() > 0 and np.median(step_iou) > 0.5, step_iou

    cap = cv2.VideoCapture(str(VIDEO))
    for _ in range(6):
        ok, frame = cap.read()
    cap.release()
    np.testing.assert_array_equal(got[5].image, frame)  # the frame itself, not annotated
    drawn = got[5].draw()
    assert drawn.shape == frame.shape and (drawn != frame).any()
    np.testing.assert_array_equal(got[5].image, frame)  # draw() annotates a copy


def test_frame_stream_closes_and_detection_only(models: Path) -> None:
    det = Detector(models / "det.onnx", device="cpu")
    with track(IMAGES / "raccoon-1*.jpg", det, tracker=None) as frames:
        first = next(frames)
        assert first.source == "raccoon-1.jpg" and first.tracks == [] and len(first.detections) > 0
        np.testing.assert_array_equal(first.image, cv2.imread(str(IMAGES / "raccoon-1.jpg")))
    assert list(frames) == []  # closed on leaving the block: nothing more is read
    frames = track(IMAGES / "raccoon-1*.jpg", det, tracker=None, max_frames=3)
    assert [f.source for f in frames] == sorted(p.name for p in IMAGES.glob("raccoon-1*.jpg"))[:3]
    frames.close()


def test_clear_errors(models: Path, tmp_path: Path) -> None:
    onnx = models / "det.onnx"
    with pytest.raises(FileNotFoundError, match="weights not found"):
        Detector(tmp_path / "nope.onnx")
    with pytest.raises(BackendError, match="unknown weights type '.tflite'"):
        Detector(tmp_path / "m.tflite")
    with pytest.raises(BackendError, match="unknown device 'tpu'"):
        Detector(onnx, device="tpu")
    with pytest.raises(ValueError, match="did you mean 'person'"):
        Detector(onnx, classes=["persn"])
    with pytest.raises(ValueError, match="out of range"):
        Detector(onnx, classes=[3])
    with pytest.raises(ValueError, match=r"conf must be in \[0, 1\]"):
        Detector(onnx, conf=25)
    assert Detector(onnx, classes="0").predictor.classes.tolist() == [0]  # det-run's --classes form
    assert Detector(onnx, classes=[]).predictor.classes is None  # empty keeps all, as det-run
    det = Detector(onnx, device="cpu", classes=["person"])
    assert det.predictor.classes.tolist() == [0]
    with pytest.raises(FileNotFoundError, match="image not found"):
        det(tmp_path / "missing.jpg")
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="not an image OpenCV can read"):
        det([IMAGES / PHOTOS[0], junk])
    with pytest.raises(ValueError, match=r"uint8 BGR image \[H, W, 3\], got float32"):
        det(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match=r"got uint8 \[64, 64\]"):
        det(np.zeros((64, 64), np.uint8))
    with pytest.raises(TypeError, match="got int"):
        det(7)
    with pytest.raises(FileNotFoundError, match="source not found"):
        track(tmp_path / "missing.mp4", det, tracker=None)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\0" * 1000)
    with pytest.raises(SourceError, match="cannot open"):
        track(broken, det, tracker=None)
    with pytest.raises(ValueError, match="unknown tracker 'sort'"):
        track(VIDEO, det, tracker="sort")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "det.onnx").symlink_to(onnx)
    with pytest.raises(FileNotFoundError, match="det-export WEIGHTS"):
        track(VIDEO, Detector(lone / "det.onnx", device="cpu"))
    with pytest.raises(FileNotFoundError, match="embedder not found"):
        track(VIDEO, det, embedder=tmp_path / "emb.onnx")


NO_TORCH_API = """
import json, sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "torchvision"}:
            raise ImportError(f"{name} is blocked: edge box without torch")
sys.meta_path.insert(0, NoTorch())
from det_toolkit import Detector, track
weights, image, video = sys.argv[1:]
det = Detector(weights, device="cpu")
out = {"image": det(image).to_dicts(), "tracks": []}
with track(video, det, max_frames=4) as frames:
    for f in frames:
        out["tracks"].append([[t.track_id, t.det_index] for t in f.tracks])
assert not {m.partition(".")[0] for m in sys.modules} & {"torch", "torchvision"}
print(json.dumps(out))
"""


def test_api_without_torch(models: Path) -> None:
    """The API on .onnx runs in a Python that cannot import torch, with the same results."""
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_API, str(models / "det.onnx"), str(IMAGES / PHOTOS[0]),
                           str(VIDEO)], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    det = Detector(models / "det.onnx", device="cpu")
    assert out["image"] == det(IMAGES / PHOTOS[0]).to_dicts()
    with track(VIDEO, det, max_frames=4) as frames:
        assert out["tracks"] == [[[t.track_id, t.det_index] for t in f.tracks] for f in frames]
    assert any(out["tracks"])
