"""Format readers on real data (VOC, and COCO/YOLO converted in-test), validation of bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from det_toolkit.train.config import ConfigError, DataConfig, TrainConfig, from_dict, load_data_config
from det_toolkit.train.data.dataset import DetectionDataset, collate, load_rgb
from det_toolkit.train.data.formats import read_split, require_labels
from det_toolkit.train.data.samples import DatasetError, image_size
from tests.conftest import make_synthetic, need_raccoon, write_voc


def _raccoon_cfg() -> DataConfig:
    root = need_raccoon()
    return DataConfig(path=str(root), format="voc", train="train.txt", val="val.txt",
                      names=["raccoon"], source="test")


def test_voc_reader_real_raccoon() -> None:
    cfg = _raccoon_cfg()
    tr, names, ids, rep_tr = read_split(cfg, "train")
    va, _, _, rep_va = read_split(cfg, "val")
    assert (len(tr), len(va)) == (160, 40)
    assert rep_tr.n_boxes + rep_va.n_boxes == 217
    assert not rep_tr.issues and not rep_va.issues
    assert ids == [1]
    s = next(s for s in tr if s.image.name == "raccoon-1.jpg")
    # labelImg 1-based inclusive <81,88,522,408> -> continuous xyxy
    np.testing.assert_allclose(s.boxes, [[80, 87, 522, 408]])
    assert (s.width, s.height) == (650, 417)


def test_raccoon_config_file_resolves() -> None:
    need_raccoon()
    cfg = load_data_config(Path(__file__).resolve().parents[1] / "configs" / "raccoon.yaml")
    assert (cfg.root / "train.txt").is_file()


def _to_coco(samples, names, cat_ids, images_dir: Path) -> dict:
    images, anns = [], []
    for i, s in enumerate(samples):
        images.append({"id": 1000 + i, "file_name": s.image.name, "width": s.width, "height": s.height})
        for b, lab in zip(s.boxes, s.labels):
            anns.append({"id": len(anns) + 1, "image_id": 1000 + i, "category_id": cat_ids[lab],
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
                         "iscrowd": 0, "area": float((b[2] - b[0]) * (b[3] - b[1]))})
    return {"images": images, "annotations": anns,
            "categories": [{"id": c, "name": n} for c, n in zip(cat_ids, names)]}


def test_coco_and_yolo_readers_give_same_boxes_as_voc(tmp_path: Path) -> None:
    voc = _raccoon_cfg()
    ref = {}
    for split in ("train", "val"):
        samples, names, _, _ = read_split(voc, split)
        ref[split] = samples
    root = Path(voc.path)
    # COCO: non-contiguous category id 7 for the only class
    coco_root = tmp_path / "coco"
    (coco_root / "annotations").mkdir(parents=True)
    (coco_root / "images").symlink_to(root / "images")
    for split, samples in ref.items():
        (coco_root / "annotations" / f"{split}.json").write_text(
            json.dumps(_to_coco(samples, ["raccoon"], [7], root / "images")))
    coco = DataConfig(path=str(coco_root), train="annotations/train.json",
                      val="annotations/val.json", source="coco-test")
    # YOLO: images/<split>/x.jpg + labels/<split>/x.txt (Ultralytics layout), directory splits
    yolo_root = tmp_path / "yolo"
    for split, samples in ref.items():
        (yolo_root / "images" / split).mkdir(parents=True)
        (yolo_root / "labels" / split).mkdir(parents=True)
        for s in samples:
            (yolo_root / "images" / split / s.image.name).symlink_to(s.image)
            lines = [f"{lab} {(b[0] + b[2]) / 2 / s.width:.8f} {(b[1] + b[3]) / 2 / s.height:.8f} "
                     f"{(b[2] - b[0]) / s.width:.8f} {(b[3] - b[1]) / s.height:.8f}"
                     for b, lab in zip(s.boxes, s.labels)]
            (yolo_root / "labels" / split / f"{s.image.stem}.txt").write_text("\n".join(lines))
    yolo = DataConfig(path=str(yolo_root), train="images/train", val="images/val",
                      names=["raccoon"], source="yolo-test")
    for cfg, fmt in ((coco, "coco"), (yolo, "yolo")):
        for split in ("train", "val"):
            got, names, cat_ids, rep = read_split(cfg, split)
            assert names == ["raccoon"] and not rep.issues, (fmt, rep.table())
            assert cat_ids == ([7] if fmt == "coco" else [0])
            by_name = {s.image.name: s for s in got}
            assert len(by_name) == len(ref[split])
            for s in ref[split]:
                g = by_name[s.image.name]
                np.testing.assert_allclose(g.boxes, s.boxes, atol=1e-2, err_msg=f"{fmt} {s.image.name}")
                np.testing.assert_array_equal(g.labels, s.labels)


def test_bad_input_is_reported_and_skipped(tmp_path: Path) -> None:
    root = tmp_path / "bad"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for stem in ("ok", "boxes", "corrupt_xml", "empty"):
        Image.new("RGB", (100, 80), (90, 90, 90)).save(root / "images" / f"{stem}.jpg")
    (root / "images" / "broken.jpg").write_bytes(b"not a jpeg at all")
    write_voc(root / "annotations" / "ok.xml", "ok.jpg", 100, 80, [("cat", 11, 11, 50, 50)])
    write_voc(root / "annotations" / "boxes.xml", "boxes.jpg", 100, 80, [
        ("cat", 11, 11, 50, 50),     # fine
        ("cat", 60, 10, 40, 30),     # x2 <= x1
        ("cat", 80, 60, 130, 120),   # partly outside -> clipped
        ("cat", 200, 200, 300, 300), # entirely outside
        ("dog", 5, 5, 20, 20),       # unknown class
    ])
    (root / "annotations" / "corrupt_xml.xml").write_text("<annotation><object>")
    write_voc(root / "annotations" / "empty.xml", "empty.jpg", 100, 80, [])
    (root / "train.txt").write_text("ok\nboxes\ncorrupt_xml\nempty\nbroken\nmissing\n")
    cfg = DataConfig(path=str(root), format="voc", train="train.txt", val="train.txt",
                     names=["cat"], source="bad.yaml")
    samples, _, _, rep = read_split(cfg, "train")
    counts = {p: n for (p, a), n in rep.counts().items()}
    assert counts["degenerate box (x2<=x1 or y2<=y1)"] == 1
    assert counts["box outside the image"] == 1
    assert counts["box entirely outside the image"] == 1
    assert counts["unknown class name 'dog'"] == 1
    assert counts["missing image"] == 1
    assert counts["label file has no objects"] == 1
    assert any(p.startswith("unreadable image") for p in counts)
    assert any(p.startswith("unreadable label file") for p in counts)
    names = sorted(s.image.stem for s in samples)
    assert names == ["boxes", "empty", "ok"]  # one bad box never drops its image
    boxes = next(s for s in samples if s.image.stem == "boxes").boxes
    np.testing.assert_allclose(boxes, [[10, 10, 50, 50], [79, 59, 100, 80]])
    table = rep.table()
    assert "boxes.xml" in table and "box clipped" in table


def test_no_valid_labels_is_a_clear_error(tmp_path: Path) -> None:
    root = tmp_path / "nolabels"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (50, 50)).save(root / "images" / "a.jpg")
    (root / "labels" / "a.txt").write_text("3 0.5 0.5 0.2 0.2\nfoo\n")
    cfg = DataConfig(path=str(root), format="yolo", train="images", val="images", names=["x"],
                     source="nolabels.yaml")
    samples, _, _, rep = read_split(cfg, "train")
    counts = {p for p, a in rep.counts()}
    assert "class id 3 out of range 0..0" in counts
    assert "malformed line: 1 field (need 5: class cx cy w h)" in counts
    with pytest.raises(DatasetError, match="nolabels.yaml.*no valid boxes"):
        require_labels(samples, rep, cfg)


def test_exif_orientation_grayscale_and_palette(tmp_path: Path) -> None:
    img = Image.new("RGB", (60, 40), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW on display
    img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert image_size(tmp_path / "rot.jpg") == (40, 60)
    assert load_rgb(str(tmp_path / "rot.jpg")).shape == (60, 40, 3)
    Image.new("L", (30, 20), 128).save(tmp_path / "gray.png")
    Image.new("P", (30, 20), 3).save(tmp_path / "pal.png")
    for name in ("gray.png", "pal.png"):
        a = load_rgb(str(tmp_path / name))
        assert a.shape == (20, 30, 3) and a.dtype == np.uint8


def test_real_grayscale_raccoon_images_become_rgb() -> None:
    cfg = _raccoon_cfg()
    samples = read_split(cfg, "train")[0] + read_split(cfg, "val")[0]
    gray = [s for s in samples if Image.open(s.image).mode == "L"]
    assert len(gray) == 3
    ds = DetectionDataset(gray, 128, cache=False)
    for i in range(len(ds)):
        img, _ = ds[i]
        assert img.shape[0] == 3 and max(img.shape[1:]) == 128


def test_corrupt_image_at_load_time_is_skipped(tmp_path: Path) -> None:
    cfg_path = make_synthetic(tmp_path / "s", n_train=4, n_val=1)
    cfg = load_data_config(cfg_path)
    samples, *_ = read_split(cfg, "train")
    data = samples[1].image.read_bytes()
    samples[1].image.write_bytes(data[: len(data) // 3])  # a truncated PNG: only truncated JPEGs decode
    ds = DetectionDataset(samples, 64, aug="default", cache=True, train=True)
    images, targets = collate([ds[i] for i in range(len(ds))])
    assert len(images) == 3 and ds.bad == {1}
    for img, t in zip(images, targets):
        assert img.dtype == torch.float32 and 0.0 <= float(img.min()) and float(img.max()) <= 1.0
        assert t["boxes"].shape[1] == 4 and len(t["boxes"]) == len(t["labels"])


def test_augmentation_keeps_boxes_inside_and_aligned() -> None:
    cfg = _raccoon_cfg()
    samples = read_split(cfg, "train")[0][:40]
    ds = DetectionDataset(samples, 320, aug="default", cache=True, train=True)
    torch.manual_seed(0)
    kept = 0
    for i in range(len(ds)):
        img, t = ds[i]
        h, w = img.shape[1:]
        assert max(h, w) <= 320
        b = t["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 1] >= 0).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        kept += len(b)
    assert kept == sum(len(s.boxes) for s in samples)  # flips/scale never lose a raccoon


def test_unknown_config_key_suggests_nearest(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key 'epoch'.*did you mean 'epochs'"):
        from_dict(TrainConfig, {"epoch": 3}, "train.yaml")
    p = tmp_path / "d.yaml"
    p.write_text("path: .\ntrain: a.txt\nval: b.txt\nnmaes: [x]\n")
    with pytest.raises(ConfigError, match="d.yaml: unknown key 'nmaes'.*'names'"):
        load_data_config(p)
    with pytest.raises(ConfigError, match="multiple of 32"):
        TrainConfig(imgsz=100)


def test_strong_preset_with_mosaic_keeps_boxes_valid() -> None:
    import random

    from det_toolkit.train.data.dataset import aug_params

    cfg = _raccoon_cfg()
    samples = read_split(cfg, "train")[0][:24]
    ds = DetectionDataset(samples, 256, aug=aug_params("strong", "mosaic=1.0"), cache=True,
                          train=True)
    torch.manual_seed(0)
    random.seed(0)
    n_boxes = []
    for i in range(len(ds)):
        img, t = ds[i]
        h, w = img.shape[1:]
        b = t["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
        assert len(b) == len(t["labels"])
        n_boxes.append(len(b))
    assert sum(n_boxes) / len(n_boxes) > 2.5  # mosaic: ~4 images' raccoons per sample


def test_mosaic_places_boxes_on_their_pixels() -> None:
    from det_toolkit.train.data.dataset import mosaic

    items = []
    for c in range(4):
        img = np.zeros((40, 60, 3), np.uint8)
        img[10:20, 30:50] = 50 * (c + 1)
        items.append((img, np.array([[30, 10, 50, 20]], np.float32), np.array([c])))
    canvas, boxes, labels = mosaic(items, 128)
    assert canvas.shape == (128, 128, 3) and list(labels) == [0, 1, 2, 3]
    for (x1, y1, x2, y2), c in zip(boxes.round().astype(int), labels):
        patch = canvas[y1 + 1:y2 - 1, x1 + 1:x2 - 1]
        assert patch.size and (np.abs(patch.astype(int) - 50 * (c + 1)) <= 2).all()


def test_aug_overrides_are_validated() -> None:
    from det_toolkit.train.data.dataset import aug_params

    assert aug_params("light", "mosaic=0.3,scale=0.5:1.2")["scale"] == (0.5, 1.2)
    with pytest.raises(ValueError, match="did you mean 'mosaic'"):
        aug_params("light", "mosaik=0.3")
    with pytest.raises(ValueError, match="bad augmentation value"):
        aug_params("light", "rotate=lots")
