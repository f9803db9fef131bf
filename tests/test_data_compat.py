"""The data people already have: Ultralytics / Roboflow / CVAT exports read unchanged.

Every layout is written by the tests from real raccoon photos and their VOC boxes (the photos are
symlinked, the annotations converted), read back through ``load_data_config`` + ``read_split`` and
compared box for box with the VOC original; a Roboflow YOLO export and a Roboflow COCO export each
train one epoch with no edits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from det_toolkit.train.config import ConfigError, DataConfig, load_data_config
from det_toolkit.train.data.formats import detect_format, read_split
from det_toolkit.train.data.samples import Sample
from tests.conftest import need_raccoon, write_voc

N_TRAIN, N_VAL, N_TEST = 8, 4, 2


@pytest.fixture(scope="module")
def ref() -> dict[str, list[Sample]]:
    """A few real raccoon samples per split (VOC reader), the reference every layout must reproduce."""
    root = need_raccoon()
    cfg = DataConfig(path=str(root), format="voc", train="train.txt", val="val.txt", names=["raccoon"],
                     source="raccoon")
    train, val = read_split(cfg, "train")[0], read_split(cfg, "val")[0]
    return {"train": train[:N_TRAIN], "valid": val[:N_VAL], "test": train[N_TRAIN:N_TRAIN + N_TEST]}


def _rf_name(s: Sample) -> str:
    """Roboflow's renaming: ``raccoon-1.jpg`` -> ``raccoon-1_jpg.rf.<hash>.jpg``."""
    return f"{s.image.stem}_jpg.rf.{abs(hash(s.image.stem)) % 16**8:08x}.jpg"


def _stem(image: Path) -> str:
    """The original raccoon stem of an image written under any layout's naming."""
    return image.name.split("_jpg.rf.")[0].removesuffix(".jpg")


def _yolo_lines(s: Sample) -> str:
    return "\n".join(f"{lab} {(b[0] + b[2]) / 2 / s.width:.8f} {(b[1] + b[3]) / 2 / s.height:.8f} "
                     f"{(b[2] - b[0]) / s.width:.8f} {(b[3] - b[1]) / s.height:.8f}"
                     for b, lab in zip(s.boxes, s.labels)) + "\n"


def _coco(samples: list[Sample], file_names: list[str], categories: list[dict], cat_of_label: list[int]) -> dict:
    images, anns = [], []
    for i, (s, fn) in enumerate(zip(samples, file_names)):
        images.append({"id": i, "file_name": fn, "width": s.width, "height": s.height})
        for b, lab in zip(s.boxes.tolist(), s.labels.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns), "image_id": i, "category_id": cat_of_label[lab], "bbox": [b[0], b[1], w, h],
                         "area": w * h, "segmentation": [], "iscrowd": 0})
    return {"info": {"description": "raccoons"}, "licenses": [], "categories": categories, "images": images,
            "annotations": anns}


def roboflow_yolo(root: Path, ref: dict[str, list[Sample]]) -> Path:
    """Roboflow "YOLOv8" export: data.yaml with ``../train/images`` entries, ``roboflow:`` block."""
    for split, samples in ref.items():
        (root / split / "images").mkdir(parents=True)
        (root / split / "labels").mkdir(parents=True)
        for s in samples:
            name = _rf_name(s)
            (root / split / "images" / name).symlink_to(s.image)
            (root / split / "labels" / name).with_suffix(".txt").write_text(_yolo_lines(s))
    (root / "README.roboflow.txt").write_text("Raccoons - v1\nExported via roboflow.com\n")
    (root / "data.yaml").write_text(
        "train: ../train/images\nval: ../valid/images\ntest: ../test/images\n\nnc: 1\nnames: ['raccoon']\n\n"
        "roboflow:\n  workspace: det-toolkit\n  project: raccoons\n  version: 1\n  license: MIT\n"
        "  url: https://universe.roboflow.com/det-toolkit/raccoons/dataset/1\n")
    return root / "data.yaml"


ROBOFLOW_CATEGORIES = [{"id": 0, "name": "raccoons", "supercategory": "none"},
                       {"id": 1, "name": "raccoon", "supercategory": "raccoons"}]


def roboflow_coco(root: Path, ref: dict[str, list[Sample]]) -> Path:
    """Roboflow "COCO" export: ``<split>/_annotations.coco.json`` beside the images, category 0 the dataset."""
    for split, samples in ref.items():
        (root / split).mkdir(parents=True)
        names = [_rf_name(s) for s in samples]
        for s, n in zip(samples, names):
            (root / split / n).symlink_to(s.image)
        (root / split / "_annotations.coco.json").write_text(
            json.dumps(_coco(samples, names, ROBOFLOW_CATEGORIES, [1])))
    return root


def cvat_coco(root: Path, ref: dict[str, list[Sample]], subsets: bool) -> Path:
    """CVAT "COCO 1.0" export: ``annotations/instances_<subset>.json`` + ``images/`` (flat for the single
    ``default`` subset; ``images/<subset>/`` with Train/Validation subsets)."""
    (root / "annotations").mkdir(parents=True)
    cats = [{"id": 1, "name": "raccoon", "supercategory": ""}]
    parts = {"train": ref["train"], "val": ref["valid"]} if subsets else {"default": ref["train"] + ref["valid"]}
    for subset, samples in parts.items():
        folder = root / "images" / subset if subsets else root / "images"
        folder.mkdir(parents=True, exist_ok=True)
        for s in samples:
            (folder / s.image.name).symlink_to(s.image)
        (root / "annotations" / f"instances_{subset}.json").write_text(
            json.dumps(_coco(samples, [s.image.name for s in samples], cats, [1])))
    return root


def cvat_voc(root: Path, ref: dict[str, list[Sample]], subsets: bool) -> Path:
    """CVAT "PASCAL VOC 1.1" export: ``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/*.txt``,
    ``labelmap.txt``; VOC's 1-based inclusive pixel indices."""
    for d in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / d).mkdir(parents=True)
    (root / "labelmap.txt").write_text("# label:color_rgb:parts:actions\nbackground:0,0,0::\nraccoon:250,50,83::\n")
    sets = {"train": ref["train"], "val": ref["valid"]} if subsets else {"default": ref["train"] + ref["valid"]}
    for subset, samples in sets.items():
        for s in samples:
            (root / "JPEGImages" / s.image.name).symlink_to(s.image)
            write_voc(root / "Annotations" / f"{s.image.stem}.xml", s.image.name, s.width, s.height,
                      [("raccoon", b[0] + 1, b[1] + 1, b[2], b[3]) for b in s.boxes.tolist()])
        (root / "ImageSets" / "Main" / f"{subset}.txt").write_text("".join(f"{s.image.stem}\n" for s in samples))
    return root


def ultralytics(root: Path, ref: dict[str, list[Sample]]) -> Path:
    """Ultralytics' own layout with the YAML elsewhere: ``path:`` relative to it, names as a dict, a
    ``.txt`` list of ``./images/...`` paths for train and a list of folders for val."""
    for split, samples in ref.items():
        sub = {"valid": "val"}.get(split, split)
        (root / "ds" / "images" / sub).mkdir(parents=True)
        (root / "ds" / "labels" / sub).mkdir(parents=True)
        for s in samples:
            (root / "ds" / "images" / sub / s.image.name).symlink_to(s.image)
            (root / "ds" / "labels" / sub / f"{s.image.stem}.txt").write_text(_yolo_lines(s))
    (root / "ds" / "train.txt").write_text("".join(f"./images/train/{s.image.name}\n" for s in ref["train"]))
    (root / "cfg").mkdir()
    (root / "cfg" / "raccoon8.yaml").write_text(
        "path: ../ds\ntrain: train.txt\nval: [images/val, images/test]\nnames:\n  0: raccoon\n"
        "download: https://example.org/raccoon8.zip\n")
    return root / "cfg" / "raccoon8.yaml"


def _check_same_boxes(cfg: DataConfig, split: str, expected: list[Sample]) -> tuple[list[str], list[int]]:
    got, names, cat_ids, rep = read_split(cfg, split)
    assert names == ["raccoon"], names
    assert not [i for i in rep.issues if i[2] != "category dropped"], rep.table()
    by_stem = {_stem(s.image): s for s in got}
    assert sorted(by_stem) == sorted(s.image.stem for s in expected)
    for s in expected:
        g = by_stem[s.image.stem]
        assert (g.width, g.height) == (s.width, s.height)
        np.testing.assert_allclose(g.boxes, s.boxes, atol=1e-2, err_msg=f"{cfg.source} {s.image.name}")
        np.testing.assert_array_equal(g.labels, s.labels)
    return names, cat_ids


def test_roboflow_yolo_export(tmp_path: Path, ref: dict[str, list[Sample]], caplog: pytest.LogCaptureFixture) -> None:
    data = roboflow_yolo(tmp_path / "Raccoons.v1i.yolov8", ref)
    with caplog.at_level(logging.INFO):
        by_file = load_data_config(data)
        by_dir = load_data_config(data.parent)  # the folder itself finds its data.yaml
    assert by_file == by_dir
    assert [r.getMessage() for r in caplog.records if "ignoring" in r.getMessage()] == \
        [f"{data}: ignoring keys det-toolkit does not use: roboflow"] * 2
    assert by_file.root == data.parent and by_file.nc == 1 and detect_format(by_file) == "yolo"
    assert by_file.split_path(by_file.train) == data.parent / "train" / "images"  # ../train/images fallback
    for split, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        _, cat_ids = _check_same_boxes(by_file, split, ref[key])
        assert cat_ids == [0]


def test_roboflow_coco_export_drops_the_dataset_category(tmp_path: Path, ref: dict[str, list[Sample]]) -> None:
    root = roboflow_coco(tmp_path / "Raccoons.v1i.coco", ref)
    cfg = load_data_config(root)
    assert (cfg.format, cfg.train, cfg.val, cfg.test) == \
        ("coco", "train/_annotations.coco.json", "valid/_annotations.coco.json", "test/_annotations.coco.json")
    for split, key in (("train", "train"), ("val", "valid"), ("test", "test")):
        _, cat_ids = _check_same_boxes(cfg, split, ref[key])
        assert cat_ids == [1]
    rep = read_split(cfg, "val")[3]
    assert rep.issues == [(str(root / "valid" / "_annotations.coco.json"),
                           "category 0 'raccoons' is the super-category of the others and has no boxes",
                           "category dropped")]
    assert "category dropped" in rep.table()
    # the same file through a data YAML (format: coco and the JSON paths) reads the same
    (root / "data.yaml").write_text("format: coco\ntrain: train/_annotations.coco.json\n"
                                    "val: valid/_annotations.coco.json\n")
    _check_same_boxes(load_data_config(root / "data.yaml"), "val", ref["valid"])


def test_coco_category_in_use_is_never_dropped(tmp_path: Path, ref: dict[str, list[Sample]]) -> None:
    root = tmp_path / "c"
    (root / "train").mkdir(parents=True)
    s = ref["train"][0]
    (root / "train" / s.image.name).symlink_to(s.image)
    cats = [{"id": 0, "name": "animals", "supercategory": "none"},
            {"id": 1, "name": "raccoon", "supercategory": "animals"}]
    (root / "train" / "_annotations.coco.json").write_text(json.dumps(_coco([s], [s.image.name], cats, [0])))
    cfg = DataConfig(path=str(root), train="train/_annotations.coco.json", val="train/_annotations.coco.json",
                     source="c")
    samples, names, cat_ids, rep = read_split(cfg, "train")
    assert names == ["animals", "raccoon"] and cat_ids == [0, 1] and not rep.issues
    assert samples[0].labels.tolist() == [0] * len(s.boxes)


@pytest.mark.parametrize("subsets", [False, True], ids=["default-subset", "train-val-subsets"])
def test_cvat_coco_export(tmp_path: Path, ref: dict[str, list[Sample]], subsets: bool,
                          caplog: pytest.LogCaptureFixture) -> None:
    root = cvat_coco(tmp_path / "task_raccoons-coco", ref, subsets)
    with caplog.at_level(logging.WARNING):
        cfg = load_data_config(root)
    assert cfg.format == "coco"
    if subsets:
        assert (cfg.train, cfg.val) == ("annotations/instances_train.json", "annotations/instances_val.json")
        assert not caplog.records
        _check_same_boxes(cfg, "train", ref["train"])
        _check_same_boxes(cfg, "val", ref["valid"])
    else:
        assert cfg.train == cfg.val == "annotations/instances_default.json"
        assert [r.getMessage() for r in caplog.records] == [
            f"{root} (COCO export (annotations/*.json + images/)): no validation subset; validating on the "
            "training images (that mAP says little about new images: export a validation subset)"]
        _check_same_boxes(cfg, "train", ref["train"] + ref["valid"])


@pytest.mark.parametrize("subsets", [False, True], ids=["default-subset", "train-val-subsets"])
def test_cvat_voc_export(tmp_path: Path, ref: dict[str, list[Sample]], subsets: bool) -> None:
    root = cvat_voc(tmp_path / "task_raccoons-voc", ref, subsets)
    cfg = load_data_config(root)
    assert (cfg.format, cfg.images, cfg.labels, cfg.names) == ("voc", "JPEGImages", "Annotations", ["raccoon"])
    if subsets:
        assert (cfg.train, cfg.val) == ("ImageSets/Main/train.txt", "ImageSets/Main/val.txt")
        _check_same_boxes(cfg, "train", ref["train"])
        _check_same_boxes(cfg, "val", ref["valid"])
    else:
        assert cfg.train == cfg.val == "ImageSets/Main/default.txt"
        _, cat_ids = _check_same_boxes(cfg, "train", ref["train"] + ref["valid"])
        assert cat_ids == [1]
    (root / "labelmap.txt").unlink()  # plain Pascal VOC: names come from the XML files
    assert load_data_config(root).names == ["raccoon"]


def test_ultralytics_yaml_with_list_file_and_folder_list(tmp_path: Path, ref: dict[str, list[Sample]]) -> None:
    data = ultralytics(tmp_path, ref)
    cfg = load_data_config(data)
    assert cfg.root == tmp_path / "ds" and cfg.val == ["images/val", "images/test"] and cfg.format == "auto"
    _check_same_boxes(cfg, "train", ref["train"])
    _check_same_boxes(cfg, "val", ref["valid"] + ref["test"])


def test_unknown_folder_layout_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    with pytest.raises(ConfigError, match=r"photos: not a dataset layout det-train knows\. Expected one of: a data "
                                          r"YAML \(data\.yaml\); train/_annotations\.coco\.json \(Roboflow COCO\)"):
        load_data_config(tmp_path / "photos")
    for n in ("a.yaml", "b.yaml"):
        (tmp_path / "photos" / n).write_text("train: x\nval: y\n")
    with pytest.raises(ConfigError, match=r"several data YAMLs \(a\.yaml, b\.yaml\); pass one of them with --data"):
        load_data_config(tmp_path / "photos")


TINY = ["--epochs", "1", "--imgsz", "128", "--batch", "4", "--workers", "0"]


def _train(data: Path, project: Path) -> str:
    from det_toolkit.train.checkpoint import load_checkpoint
    from det_toolkit.train.cli import train_cli

    res = CliRunner().invoke(train_cli, ["--data", str(data), *TINY, "--project", str(project), "--name", "r"])
    assert res.exit_code == 0, res.output
    ck = load_checkpoint(project / "r" / "weights" / "best.pt")
    assert ck["class_names"] == ["raccoon"] and ck["epoch"] == 0
    return res.output


@pytest.mark.slow
def test_roboflow_yolo_export_trains_unchanged(tmp_path: Path, ref: dict[str, list[Sample]]) -> None:
    data = roboflow_yolo(tmp_path / "Raccoons.v1i.yolov8", ref)
    def files() -> dict[Path, bytes]:
        return {p: p.read_bytes() for p in data.parent.rglob("*") if p.is_file() and not p.is_symlink()}

    before = files()
    out = _train(data, tmp_path / "runs")
    assert f"[train] {N_TRAIN} images" in out and f"[val] {N_VAL} images" in out
    assert files() == before  # nothing in the export was edited or added (no label caches)


@pytest.mark.slow
def test_roboflow_coco_export_trains_unchanged(tmp_path: Path, ref: dict[str, list[Sample]]) -> None:
    root = roboflow_coco(tmp_path / "Raccoons.v1i.coco", ref)
    out = _train(root, tmp_path / "runs")  # --data DIR
    assert f"[train] {N_TRAIN} images" in out and "category dropped" in out
