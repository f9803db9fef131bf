"""The shared primitives of the runtime layer: atomic writes, run folders, image suffixes, box IoU,
the box drawer. Each has one implementation that train/, export/ and runtime/ all call."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou as torch_box_iou

from det_toolkit.runtime import files, sources
from det_toolkit.runtime.boxes import box_iou
from det_toolkit.runtime.draw import colour, draw_boxes, draw_detections
from det_toolkit.runtime.files import IMAGE_SUFFIXES, atomic_write, increment_path
from det_toolkit.runtime.predictor import Detections
from det_toolkit.train.data import formats

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"


def test_atomic_write_bytes_and_callback(tmp_path: Path) -> None:
    target = tmp_path / "new" / "dir" / "a.bin"  # missing parents are created
    assert atomic_write(target, b"first") == target and target.read_bytes() == b"first"
    atomic_write(target, lambda f: f.write(b"second, longer"))
    assert target.read_bytes() == b"second, longer"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert os.listdir(target.parent) == ["a.bin"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "a.csv"
    target.write_bytes(b"old content")

    def half_then_fail(f: object) -> None:
        f.write(b"half of the new")  # type: ignore[attr-defined]
        raise error

    with pytest.raises(type(error)):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["a.csv"]


def test_checkpoint_and_onnx_writers_use_atomic_write(tmp_path: Path) -> None:
    """``save_atomic`` (torch.save) and ``save_onnx_atomic`` keep the previous file on failure."""
    import onnx

    from det_toolkit.export.onnx_export import save_onnx_atomic
    from det_toolkit.train.checkpoint import save_atomic

    pt = save_atomic({"w": torch.ones(2)}, tmp_path / "w.pt")
    assert torch.equal(torch.load(pt, weights_only=True)["w"], torch.ones(2))
    with pytest.raises(Exception):  # noqa: B017, PT011 - a lambda cannot be pickled: any pickling error
        save_atomic({"bad": lambda: None}, pt)
    assert torch.equal(torch.load(pt, weights_only=True)["w"], torch.ones(2))
    graph = onnx.helper.make_graph([], "g", [], [])
    out = save_onnx_atomic(onnx.helper.make_model(graph), tmp_path / "m.onnx")
    assert onnx.load(str(out)).graph.name == "g"
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "w.pt"]


def test_increment_path_claims_fresh_folders(tmp_path: Path) -> None:
    assert increment_path(tmp_path / "runs" / "exp") == tmp_path / "runs" / "exp"
    assert increment_path(tmp_path / "runs" / "exp") == tmp_path / "runs" / "exp2"
    (tmp_path / "runs" / "exp3").write_text("a file in the way is skipped too")
    assert increment_path(tmp_path / "runs" / "exp") == tmp_path / "runs" / "exp4"
    assert all((tmp_path / "runs" / n).is_dir() for n in ("exp", "exp2", "exp4"))
    # exist_ok: the folder itself, created if missing, reused if present
    assert increment_path(tmp_path / "runs" / "exp", exist_ok=True) == tmp_path / "runs" / "exp"
    assert increment_path(tmp_path / "other", exist_ok=True).is_dir()


def test_one_image_suffix_set_everywhere(tmp_path: Path) -> None:
    """The dataset readers, det-run's sources and parity images use the runtime's constant: a
    folder of mixed-case photos is listed the same way by a dataset split and by det-run."""
    assert formats.IMAGE_SUFFIXES is files.IMAGE_SUFFIXES and sources.IMAGE_SUFFIXES is files.IMAGE_SUFFIXES
    assert {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"} == set(IMAGE_SUFFIXES)
    img = np.full((8, 8, 3), 128, np.uint8)
    for name in ("a.JPG", "b.png", "c.webp", "d.tiff"):
        cv2.imwrite(str(tmp_path / name.lower()), img)
        (tmp_path / name.lower()).rename(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not an image")
    src = sources.open_source(tmp_path)
    assert [name for _, name, _ in src] == ["a.JPG", "b.png", "c.webp", "d.tiff"]
    from det_toolkit.export.parity import load_images

    assert len(load_images(tmp_path)) == 4


def test_box_iou_equals_torchvision() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (40, 2))
    a = np.concatenate([xy, xy + rng.uniform(0, 50, (40, 2))], 1).astype(np.float32)
    b = a[::-1].copy() + 3.0
    a[0, 2:] = a[0, :2]  # a degenerate (zero-area) box
    ours = box_iou(a, b)
    assert ours.dtype == np.float32 and ours.shape == (40, 40)
    np.testing.assert_allclose(ours, torch_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy(), atol=1e-6)
    np.testing.assert_allclose(box_iou(a[:1], a[:1]), [[0.0]])  # empty union: 0, not NaN
    np.testing.assert_allclose(box_iou([[0, 0, 2, 2]], [[1, 1, 3, 3]]), [[1 / 7]])
    assert box_iou(np.zeros((0, 4)), b).shape == (0, 40) and box_iou(a, np.zeros((0, 4))).shape == (40, 0)


def test_draw_boxes_colours_captions_and_ground_truth() -> None:
    """The drawer behind det-run's video, det-train's val_predictions.jpg and --show-aug samples.
    On a 1000x1000 frame lines are 3 px wide; the caption sits on a filled band above the box."""

    def band(img: np.ndarray, c: tuple[int, int, int]) -> int:
        """Columns of the caption band (rows 270-296, above the box's top edge at 300) in colour ``c``."""
        return int((img[270:297] == c).all(-1).any(0).sum())

    frame = np.zeros((1000, 1000, 3), np.uint8)
    dets = Detections(np.array([[200, 300, 600, 700]], np.float32), np.array([0.87], np.float32),
                      np.array([1], np.int64))
    draw_detections(frame, dets, ["a", "b"])
    assert tuple(frame[500, 200]) == colour(1) and tuple(frame[700, 400]) == colour(1)  # edges, by class
    assert not frame[500, 400].any()  # the inside stays untouched
    assert band(frame, colour(1)) > 50 and band(frame, (255, 255, 255)) > 10  # filled band, white text
    tracked = np.zeros_like(frame)
    draw_detections(tracked, dets, ["a", "b"], track_ids=[7])
    assert tuple(tracked[500, 200]) == colour(7) and band(tracked, colour(7)) > band(frame, colour(1))  # "#7 "
    gt = np.zeros_like(frame)
    draw_boxes(gt, dets.boxes, dets.labels, ["a", "b"], color=(255, 128, 0), captions=False)
    assert tuple(gt[500, 200]) == (255, 128, 0) and not gt[270:297].any()  # rectangle only
    named = np.zeros_like(frame)
    draw_boxes(named, dets.boxes, dets.labels, ["a", "b"])  # no scores: "b" instead of "b 0.87"
    assert 0 < band(named, colour(1)) < band(frame, colour(1))


def test_draw_sample_uses_the_runtime_drawer() -> None:
    from det_toolkit.train.data.dataset import draw_sample

    image = torch.zeros(3, 120, 160)
    target = {"boxes": torch.tensor([[20.0, 30.0, 90.0, 100.0]]), "labels": torch.tensor([0])}
    out = draw_sample(image, target, ["raccoon"])
    ref = np.zeros((120, 160, 3), np.uint8)
    draw_boxes(ref, target["boxes"].numpy(), target["labels"].numpy(), ["raccoon"])
    assert out.dtype == np.uint8 and out.shape == (120, 160, 3)
    np.testing.assert_array_equal(out, ref)
