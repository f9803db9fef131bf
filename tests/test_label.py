"""det-label: the HOG and artifact teachers, the VOC/YOLO/COCO writers read back by the training
readers, frame selection, the contiguous val split, and argument/source/artifact errors."""

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
from conftest import no_torch_script

from det_toolkit.runtime.boxes import box_iou
from det_toolkit.runtime.predictor import Detections
from det_toolkit.runtime.sources import open_source
from det_toolkit.runtime.teachers import HogTeacher
from det_toolkit.train.config import load_data_config
from det_toolkit.train.data.formats import read_split
from det_toolkit.train.label import LabelError, label_source, label_sources, main

REPO = Path(__file__).resolve().parents[1]
VIDEO = REPO.parent / "shared/videos/vtest.avi"
need_video = pytest.mark.skipif(not VIDEO.is_file(), reason=f"{VIDEO} absent")

W, H = 96, 64
#: per image: the teacher's boxes (xyxy, label); image 2 is a negative, image 3 has a box past the
#: right/bottom border (clipped to the frame) and one under 2 px wide (dropped)
TEACHER_OUT = [
    [((10.3, 5.7, 40.2, 50.1), 0)],
    [((0.0, 0.0, 20.0, 30.0), 1), ((50.5, 10.4, 90.6, 60.2), 0)],
    [],
    [((80.0, 30.0, 120.0, 70.0), 1), ((5.0, 5.0, 6.0, 30.0), 0)],
    [((30.0, 20.0, 60.0, 44.0), 0)],
]
EXPECTED = [  # what must be read back (continuous xyxy) per image
    [(10.3, 5.7, 40.2, 50.1)], [(0, 0, 20, 30), (50.5, 10.4, 90.6, 60.2)], [],
    [(80, 30, 96, 64)], [(30, 20, 60, 44)],
]


class ScriptedTeacher:
    """A teacher that returns :data:`TEACHER_OUT` in order (two classes)."""

    name = "scripted"

    def __init__(self) -> None:
        self.class_names = ["person", "bike"]
        self.calls = 0

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        assert frame_bgr.shape == (H, W, 3)
        out = TEACHER_OUT[self.calls]
        self.calls += 1
        return Detections(np.array([b for b, _ in out], np.float32).reshape(-1, 4),
                          np.ones(len(out), np.float32), np.array([c for _, c in out], np.int64))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Five noise images img0..img4.png (96x64)."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(len(TEACHER_OUT)):
        cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 255, (H, W, 3), np.uint8))
    return folder


@pytest.mark.parametrize("fmt, atol", [("voc", 0.5), ("yolo", 1e-3), ("coco", 0.01)])
def test_formats_read_back(photos: Path, tmp_path: Path, fmt: str, atol: float) -> None:
    """Each format, read by det_toolkit.train.data.formats.read_split, gives the teacher's boxes back (within the
    format's rounding: VOC integer pixels), the negative image as background, val = last frame."""
    out = tmp_path / fmt
    summary = label_source(photos, ScriptedTeacher(), out, fmt, val_fraction=0.2, progress=False)
    assert (summary.frames, summary.train, summary.val, summary.negatives) == (5, 4, 1, 1)
    assert summary.boxes == 5 and summary.boxes_per_class == {"person": 3, "bike": 2}
    assert summary.boxes_per_frame == (1.0, 0, 2)
    cfg = load_data_config(out / "data.yaml")
    assert cfg.format == fmt and cfg.root == out.resolve()
    got = {}
    for split, n in (("train", 4), ("val", 1)):
        samples, names, cat_ids, report = read_split(cfg, split)
        assert names == ["person", "bike"] and len(samples) == n
        assert cat_ids == ([1, 2] if fmt in ("voc", "coco") else [0, 1])
        assert not [i for i in report.issues if i[2] != "image kept as background"], report.table()
        got.update({Path(s.image).stem: s for s in samples})
        if split == "val":
            assert [Path(s.image).stem for s in samples] == ["img4"]  # the tail block
    assert sorted(got) == [f"img{i}" for i in range(5)]
    for i, expected in enumerate(EXPECTED):
        s = got[f"img{i}"]
        assert (s.width, s.height) == (W, H)
        np.testing.assert_allclose(s.boxes, np.array(expected, np.float32).reshape(-1, 4), atol=atol)
        want_labels = [c for (b, c) in TEACHER_OUT[i] if b[2] - b[0] >= 2]
        assert s.labels.tolist() == want_labels
        assert not s.iscrowd.any()
    if fmt == "voc":  # labelImg's fields, 1-based inclusive integers, truncated at the border
        xml = (out / "annotations/img3.xml").read_text()
        assert "<filename>img3.jpg</filename>" in xml and "<width>96</width>" in xml
        assert "<xmin>81</xmin>" in xml and "<xmax>96</xmax>" in xml and "<truncated>1</truncated>" in xml
    if fmt == "yolo":
        assert (out / "labels/classes.txt").read_text().split() == ["person", "bike"]
        assert (out / "labels/img2.txt").read_text() == ""
    if fmt == "coco":
        d = json.loads((out / "annotations/train.json").read_text())
        assert [c["id"] for c in d["categories"]] == [1, 2]
        assert len(d["images"]) == 4 and len(d["annotations"]) == 4


@pytest.mark.parametrize("hw,upscale", [((64, 96), 1.0), ((80, 40), 1.5), ((127, 300), 1.0)])
def test_hog_teacher_on_frames_smaller_than_its_window(hw: tuple[int, int], upscale: float) -> None:
    """A frame (after upscaling) smaller than HOG's 128x64 window has no people; OpenCV's
    detectMultiScale would crash the process (SIGSEGV) on it."""
    d = HogTeacher(upscale=upscale)(np.full((*hw, 3), 128, np.uint8))
    assert len(d) == 0 and d.boxes.shape == (0, 4) and d.labels.dtype == np.int64


@need_video
def test_hog_teacher_finds_walkers() -> None:
    """OpenCV's HOG finds people on vtest frames, inside the frame, after NMS (no near-duplicates)."""
    teacher = HogTeacher()
    frames = []
    src = open_source(VIDEO)
    for i, _, f in src:
        if i in (0, 150, 300):
            frames.append(f)
        if i >= 300:
            break
    src.close()
    for f in frames:
        d = teacher(f)
        assert 1 <= len(d) <= 12, len(d)
        b = d.boxes
        assert b.dtype == np.float32 and d.labels.tolist() == [0] * len(d)
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 768).all() and (b[:, 3] <= 576).all()
        assert ((b[:, 2] - b[:, 0]) < (b[:, 3] - b[:, 1])).all()  # upright people, taller than wide
        iou = box_iou(b, b)
        np.fill_diagonal(iou, 0)
        assert iou.max(initial=0) <= 0.3 + 1e-6  # NMS at IoU 0.3 (before the same shrink for all)


NO_TORCH = no_torch_script("det_toolkit.train.label")


@need_video
def test_artifact_teacher_without_torch(tmp_path: Path) -> None:
    """An ONNX artifact as teacher, in a Python that cannot import torch: frame range and --every
    pick the right frames, boxes equal the artifact's own predictions, the COCO files parse."""
    pytest.importorskip("torch")
    from det_toolkit.benchmarks.artifacts import cached_detector
    from det_toolkit.runtime.backends import load_backend
    from det_toolkit.runtime.predictor import Predictor

    det = cached_detector(256, 8)[1]
    out = tmp_path / "coco"
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, str(VIDEO), "--teacher", str(det), "--format", "coco",
                           "--start", "3", "--end", "12", "--every", "4", "--conf", "0.0", "--out", str(out)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 frames labelled (source frames 3-11, every 4): 2 train, 1 val" in proc.stdout
    res = CliRunner().invoke(main, [str(VIDEO), "--teacher", str(det), "--classes", "persn", "--end", "1",
                                    "--out", str(tmp_path / "bad")])  # the library's ClassSpecError -> usage error
    assert res.exit_code == 2 and "Invalid value for --classes" in res.output and "did you mean 'person'" in res.output
    assert not (tmp_path / "bad").exists()
    assert "teacher ms per frame" in proc.stdout
    assert sorted(p.name for p in (out / "images").iterdir()) == [
        "vtest_000003.jpg", "vtest_000007.jpg", "vtest_000011.jpg"]
    samples, names, cat_ids, _ = read_split(load_data_config(out / "data.yaml"), "train")
    assert names == ["person"] and cat_ids == [1] and len(samples) == 2
    predictor = Predictor(load_backend(det, "cpu"), conf=0.0)
    src = open_source(VIDEO)
    frame = next(f for i, _, f in src if i == 7)
    src.close()
    want = predictor(frame)
    assert len(want) > 0
    s = next(s for s in samples if Path(s.image).stem == "vtest_000007")
    np.testing.assert_allclose(s.boxes, want.boxes, atol=0.011)


@need_video
def test_cli_errors(tmp_path: Path) -> None:
    run = CliRunner().invoke
    res = run(main, [str(tmp_path / "missing.avi"), "--out", str(tmp_path / "a")])
    assert res.exit_code == 1 and "source not found" in res.output
    res = run(main, [str(VIDEO), "--teacher", "yolo.txt"])
    assert res.exit_code == 2 and "neither 'hog' nor a detector artifact" in res.output
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    res = run(main, [str(VIDEO), "--teacher", str(junk), "--out", str(tmp_path / "b")])
    assert res.exit_code == 1 and "junk.onnx" in res.output and not (tmp_path / "b").exists()
    res = run(main, [str(VIDEO), "--start", "10", "--end", "10"])
    assert res.exit_code == 2 and "must be greater than --start" in res.output
    res = run(main, [str(VIDEO), "--classes", "person"])
    assert res.exit_code == 2 and "artifact teachers only" in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full/x.txt").write_text("x")
    res = run(main, [str(VIDEO), "--end", "1", "--out", str(tmp_path / "full")])
    assert res.exit_code == 1 and "not an empty folder" in res.output
    with pytest.raises(LabelError, match="no frame of"):  # range past the end of a 1-image folder
        photos = tmp_path / "p"
        photos.mkdir()
        cv2.imwrite(str(photos / "a.png"), np.zeros((8, 8, 3), np.uint8))
        label_source(photos, HogTeacher(), tmp_path / "c", start=3, progress=False)


@need_video
def test_project_name_run_folders(tmp_path: Path) -> None:
    """Like det-run: PROJECT/NAME (default name: the source's stem), incremented, never reused;
    --out is the exact folder instead, and a failed run leaves no folder behind."""
    run = CliRunner().invoke
    runs = tmp_path / "runs"
    for want in ("vtest", "vtest2"):
        res = run(main, [str(VIDEO), "--end", "1", "--project", str(runs)])
        assert res.exit_code == 0, res.output
        assert f"saved to {runs / want};" in res.output and (runs / want / "data.yaml").is_file()
    res = run(main, [str(VIDEO), "--end", "1", "--project", str(runs), "--name", "people"])
    assert res.exit_code == 0 and (runs / "people/images/vtest_000000.jpg").is_file()
    res = run(main, [str(tmp_path / "missing.avi"), "--project", str(runs)])
    assert res.exit_code == 1 and "source not found" in res.output
    assert sorted(p.name for p in runs.iterdir()) == ["people", "vtest", "vtest2"]
    res = run(main, [str(VIDEO), "--end", "1", "--out", str(tmp_path / "d"), "--name", "x"])
    assert res.exit_code == 2 and "not both" in res.output



class OneBoxTeacher:
    """A teacher that finds one ``person`` box in the top-left quarter of every frame."""

    name = "one box"
    class_names = ["person"]

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        h, w = frame_bgr.shape[:2]
        return Detections(np.array([[0, 0, w / 2, h / 2]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64))


def test_several_sources_make_one_dataset(photos: Path, tmp_path: Path) -> None:
    """Several sources: one dataset in the order given; a repeated file name gets its index appended;
    a missing source is recorded as failed and the others are labelled (det-label: exit 1); no
    shard folder is left."""
    other = tmp_path / "other"
    other.mkdir()
    for f in sorted(photos.iterdir())[:3]:
        (other / f.name).write_bytes(f.read_bytes())
    missing = tmp_path / "missing.avi"
    out = tmp_path / "ds"
    summary = label_sources([photos, missing, other], OneBoxTeacher(), out, "yolo", progress=False)
    assert (summary.frames, summary.train, summary.val, summary.boxes) == (8, 6, 2, 8)
    assert summary.failed == [{"source": str(missing), "reason": f"source not found: {missing}"}]
    assert summary.source == f"{photos}, {missing}, {other}"
    want = [f"img{i}.jpg" for i in range(5)] + [f"img{i}_{i:06d}.jpg" for i in range(3)]
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(want)
    assert (out / "val.txt").read_text().split() == ["./images/img1_000001.jpg", "./images/img2_000002.jpg"]
    assert not (out / ".shards").exists()
    assert "failed: " in summary.table() and json.loads((out / "label_summary.json").read_text())["failed"]
    samples = read_split(load_data_config(out / "data.yaml"), "val")[0]
    np.testing.assert_allclose(samples[0].boxes, [[0, 0, W / 2, H / 2]], atol=1e-3)
    with pytest.raises(LabelError, match="source not found"):  # every source failed: nothing is written
        label_sources([missing, tmp_path / "gone.avi"], OneBoxTeacher(), tmp_path / "none", progress=False)
    assert not (tmp_path / "none").exists()
