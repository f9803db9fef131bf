"""Bad input gets a clear error or a counted skip, never a silent wrong number or a lost output
(issue 14): unreadable val images leave the evaluation whole, truncated JPEGs are decoded and
counted everywhere, label values are type-checked with their file and line, --weights-init refuses
pickles with the way out, failed runs leave no partial folders, and no command prints a traceback
for a corpus of bad inputs."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from click.testing import CliRunner, Result
from conftest import VTEST, make_synthetic, need_raccoon, write_voc
from PIL import Image, ImageFile

from det_toolkit.runtime.files import check_writable
from det_toolkit.runtime.image_bytes import truncated_image
from det_toolkit.runtime.predictor import Detections
from det_toolkit.runtime.sources import open_source
from det_toolkit.train.coco_eval import evaluate_coco
from det_toolkit.train.config import DataConfig
from det_toolkit.train.data.formats import read_split
from det_toolkit.train.data.images import load_rgb
from det_toolkit.train.data.samples import DatasetError

need_video = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} absent")
BIN = Path(sys.executable).parent


# --- bad files, made from the real raccoon photos -------------------------------------------------


def truncated_jpeg(src: Path, dst: Path, keep: float = 0.6) -> Path:
    """``src`` (a JPEG) cut after ``keep`` of its bytes: a real truncated download."""
    data = src.read_bytes()
    dst.write_bytes(data[:int(len(data) * keep)])
    return dst


def undecodable_png(src: Path, dst: Path) -> Path:
    """``src`` as a PNG whose header is intact but whose pixel data (IDAT, CRC fixed) is noise: the
    readers see a valid image, decoding it fails (not a truncation)."""
    buf = io.BytesIO()
    Image.open(src).save(buf, "PNG")
    d = bytearray(buf.getvalue())
    i = d.find(b"IDAT")
    n = int.from_bytes(d[i - 4:i], "big")
    d[i + 104:i + 4 + n] = np.random.default_rng(0).integers(0, 256, n - 100, dtype=np.uint8).tobytes()
    d[i + 4 + n:i + 8 + n] = (zlib.crc32(bytes(d[i:i + 4 + n])) & 0xFFFFFFFF).to_bytes(4, "big")
    dst.write_bytes(bytes(d))
    return dst


def truncated_tiff(src: Path, dst: Path) -> Path:
    """``src`` as a TIFF cut in the middle of its pixel data: its header and tags are intact, so the
    readers keep it (they detect truncated JPEG/PNG/BMP/WebP, not TIFF), and decoding it fails: the
    image a training run meets only when it loads the pixels."""
    Image.open(src).save(dst, "TIFF")
    data = dst.read_bytes()
    dst.write_bytes(data[:len(data) // 2])
    return dst


def raccoon_val(k: int) -> list[Path]:
    """The first ``k`` images of the raccoon val split."""
    root = need_raccoon()
    stems = (root / "val.txt").read_text().split()[:k]
    return [root / "images" / f"{s}.jpg" for s in stems]


# --- case 1: an image that cannot be read leaves the evaluation, ground truth included ------------


def test_excluded_images_leave_coco_evaluation_whole() -> None:
    """evaluate_coco(exclude=...) scores exactly the other images: with perfect predictions on two
    of three raccoon val images, mAP is 1.0 as for the 2-image set; counting the third image's
    ground truth (the old behaviour) would report its boxes as misses."""
    root = need_raccoon()
    cfg = DataConfig(path=str(root), format="voc", train="train.txt", val="val.txt", names=["raccoon"])
    samples, names, ids, _ = read_split(cfg, "val")
    samples = samples[:3]
    preds = {i: (s.boxes.copy(), np.full(len(s.boxes), 0.9, np.float32), s.labels.copy())
             for i, s in enumerate(samples[:2])}
    full = evaluate_coco(samples, preds, names, ids, exclude={2})
    two = evaluate_coco(samples[:2], preds, names, ids)
    assert full.stats == two.stats and full.stats["mAP"] == pytest.approx(1.0)
    assert (full.n_images, full.images_skipped, full.excluded) == (2, [samples[2].image.name], {2})
    assert evaluate_coco(samples, preds, names, ids).stats["mAP"] < 0.99  # what excluding prevents


@pytest.fixture(scope="module")
def detector() -> tuple[Path, Path]:
    """``(det.pt, det.onnx)``: a real detector (random head, class 'person'), exported once."""
    pytest.importorskip("torch")
    from det_toolkit.benchmarks.artifacts import cached_detector

    return cached_detector(256, 8)


def _coco_val(root: Path, images: list[Path], onnx: Path) -> Path:
    """A COCO val set of ``images`` (copied) whose ground truth is the detector's own 3 best boxes
    per image (so its mAP is well above 0); returns the data YAML."""
    from det_toolkit.runtime.backends import load_backend
    from det_toolkit.runtime.predictor import Predictor

    predictor = Predictor(load_backend(onnx, "cpu"), conf=0.001)
    (root / "images").mkdir(parents=True)
    ims, anns = [], []
    for i, src in enumerate(images, 1):
        (root / "images" / src.name).write_bytes(src.read_bytes())
        d = predictor(cv2.imread(str(src)))
        ims.append({"id": i, "file_name": src.name})
        for b in d.boxes[np.argsort(-d.scores)[:3]]:
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                         "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    (root / "val.json").write_text(json.dumps({"images": ims, "annotations": anns,
                                               "categories": [{"id": 1, "name": "person"}]}))
    (root / "data.yaml").write_text("format: coco\ntrain: val.json\nval: val.json\n")
    return root / "data.yaml"


@pytest.mark.parametrize("damage", ["garbage bytes", "undecodable pixels"])
def test_det_eval_leaves_unreadable_image_out(detector: tuple[Path, Path], tmp_path: Path, damage: str) -> None:
    """A 3-image raccoon val set with one file damaged evaluates exactly like the 2-image set without
    it (mAP > 0, so the comparison can fail); metrics.json names the file in images_skipped."""
    from det_toolkit.train.evaluate import main

    onnx = detector[1]
    images = raccoon_val(3)
    data3 = _coco_val(tmp_path / "three", images, onnx)
    data2 = _coco_val(tmp_path / "two", images[:2], onnx)
    bad = tmp_path / "three" / "images" / images[2].name
    if damage == "garbage bytes":
        bad.write_bytes(b"\x00garbage, not an image" * 50)
    else:
        undecodable_png(images[2], bad)
    run = CliRunner().invoke
    out = {}
    for key, data in (("three", data3), ("two", data2)):
        res = run(main, ["--weights", str(onnx), "--data", str(data), "--device", "cpu",
                         "--project", str(tmp_path / "runs"), "--name", key])
        assert res.exit_code == 0, res.output
        out[key] = json.loads((tmp_path / "runs" / key / "metrics.json").read_text())
    assert out["two"]["stats"]["mAP"] > 0.1
    assert out["three"]["stats"] == out["two"]["stats"]
    assert out["three"]["per_class"] == out["two"]["per_class"]
    assert (out["three"]["n_images"], out["three"]["images_skipped"]) == (2, [bad.name])
    assert out["two"]["images_skipped"] == []


# --- case 2: truncated JPEGs are decoded and counted everywhere -----------------------------------


def test_truncated_jpeg_policy_in_readers_loader_and_sources(tmp_path: Path) -> None:
    """A raccoon JPEG cut at 60%: the data report counts it (decoded, grey bottom rows) and keeps the
    image; load_rgb decodes it exactly as PIL's LOAD_TRUNCATED_IMAGES and OpenCV do, without
    touching PIL's global switch; det-run's image source counts it. A truncated PNG does not decode
    anywhere: the readers skip it, the image source counts it unreadable."""
    src = raccoon_val(1)[0]
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    cut = truncated_jpeg(src, root / "images" / "cut.jpg")
    (root / "images" / "whole.jpg").write_bytes(src.read_bytes())
    png = root / "images" / "cutpng.png"
    Image.open(src).save(png)
    png.write_bytes(png.read_bytes()[:png.stat().st_size // 2])
    for stem in ("cut", "whole", "cutpng"):
        write_voc(root / "annotations" / f"{stem}.xml", stem, 10, 10, [("raccoon", 11, 11, 100, 100)])
    (root / "train.txt").write_text("cut\nwhole\ncutpng\n")
    cfg = DataConfig(path=str(root), format="voc", train="train.txt", val="train.txt", names=["raccoon"],
                     source="trunc.yaml")
    samples, _, _, rep = read_split(cfg, "train")
    assert [s.image.name for s in samples] == ["cut.jpg", "whole.jpg"]
    assert rep.issues == [(str(cut), "truncated JPEG", "decoded, missing bottom rows grey"),
                          (str(png), "truncated PNG file (does not decode)", "image skipped")]
    assert "truncated JPEG" in rep.table() and "decoded, missing bottom rows grey: cut.jpg" in rep.table()
    assert (truncated_image(cut), truncated_image(png), truncated_image(src)) == ("JPEG", "PNG", None)

    rgb = load_rgb(cut)
    assert rgb.shape == (samples[0].height, samples[0].width, 3)
    assert (rgb[-1] == 128).all() and not (rgb[0] == 128).all()  # grey bottom rows, real top rows
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on for the process
    np.testing.assert_array_equal(rgb, cv2.imread(str(cut))[:, :, ::-1])  # what det-run decodes
    try:
        ImageFile.LOAD_TRUNCATED_IMAGES = True
        with Image.open(cut) as im:
            flagged = np.array(im.convert("RGB"))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
    np.testing.assert_array_equal(rgb, flagged)
    with pytest.raises(OSError, match="truncated"):
        load_rgb(png)

    folder = open_source(root / "images")
    names = [name for _, name, _ in folder]
    assert names == ["cut.jpg", "whole.jpg"] and folder.truncated == ["cut.jpg"] and folder.skipped == 1


def test_truncated_jpeg_in_the_training_loader(tmp_path: Path) -> None:
    """The training dataset decodes a truncated JPEG (it is no longer dropped with a warning)."""
    pytest.importorskip("torch")
    from det_toolkit.train.data.dataset import DetectionDataset

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    truncated_jpeg(raccoon_val(1)[0], root / "images" / "cut.jpg")
    write_voc(root / "annotations" / "cut.xml", "cut", 10, 10, [("raccoon", 11, 11, 100, 100)])
    (root / "train.txt").write_text("cut\n")
    cfg = DataConfig(path=str(root), format="voc", train="train.txt", val="train.txt", names=["raccoon"])
    ds = DetectionDataset(read_split(cfg, "train")[0], 128, cache=False)
    img, target = ds[0]
    assert ds.bad == set() and img.shape[0] == 3 and max(img.shape[1:]) == 128 and len(target["boxes"]) == 1


def test_det_run_and_det_label_report_truncated_jpegs(detector: tuple[Path, Path], tmp_path: Path) -> None:
    """det-run's summary and det-label's summary name the truncated JPEG they decoded."""
    from det_toolkit.runtime.cli import main as det_run
    from det_toolkit.train.label import main as det_label

    folder = tmp_path / "photos"
    folder.mkdir()
    a, b = raccoon_val(2)
    truncated_jpeg(a, folder / "cut.jpg")
    (folder / "whole.jpg").write_bytes(b.read_bytes())
    res = CliRunner().invoke(det_run, [str(folder), "--weights", str(detector[1]), "--device", "cpu",
                                       "--project", str(tmp_path / "runs"), "--name", "r"])
    assert res.exit_code == 0, res.output
    assert "1 truncated image decoded (grey bottom rows): cut.jpg" in res.output
    summary = json.loads((tmp_path / "runs" / "r" / "summary.json").read_text())
    assert (summary["frames"], summary["skipped"], summary["truncated"]) == (2, 0, ["cut.jpg"])
    res = CliRunner().invoke(det_label, [str(folder), "--out", str(tmp_path / "labels")])
    assert res.exit_code == 0, res.output
    assert "1 truncated image decoded (grey bottom rows): cut.jpg" in res.output
    assert json.loads((tmp_path / "labels" / "label_summary.json").read_text())["truncated"] == ["cut.jpg"]


# --- case 3: label values are type-checked, with the file and line/record -----------------------


def _one_image_dataset(root: Path, size: tuple[int, int] = (100, 80)) -> Path:
    (root / "images").mkdir(parents=True)
    Image.new("RGB", size, (90, 90, 90)).save(root / "images" / "a.jpg")
    return root


def test_yolo_label_values_are_checked_per_line(tmp_path: Path) -> None:
    root = _one_image_dataset(tmp_path / "yolo")
    (root / "labels").mkdir()
    lines = ["0 0.5 0.5 0.2 0.2",          # 1 fine
             "0.7 0.5 0.5 0.2 0.2",        # 2 not an integer: must not become class 0
             "1 0.5 0.5 0.2 0.2",          # 3 >= nc
             "0 nan 0.5 0.2 0.2",          # 4
             "0 0.5 0.5 inf 0.2",          # 5
             "0 0.5 0.5 -0.2 0.2",         # 6 negative size
             "0 0.5 0.5 0.2",              # 7 four fields
             "0 0.5 0.5 0.2 0.2 0.9",      # 8 six fields
             "0 0.1 0.1 0.9 0.1 0.9 0.9",  # 9 a segment polygon
             "0 a 0.5 0.2 0.2",            # 10 non-numeric
             "0.0 0.25 0.25 0.1 0.1"]      # 11 an integral float class: fine
    txt = root / "labels" / "a.txt"
    txt.write_text("\n".join(lines) + "\n")
    cfg = DataConfig(path=str(root), format="yolo", train="images", val="images", names=["x"], source="y.yaml")
    samples, _, _, rep = read_split(cfg, "train")
    got = {f.rsplit(":line ", 1)[1]: p for f, p, a in rep.issues if a == "box skipped"}
    assert all(f.startswith(f"{txt}:line ") for f, _, _ in rep.issues)
    assert got == {"2": "class id '0.7' is not an integer",
                   "3": "class id 1 out of range 0..0",
                   "4": "non-finite box coordinate",
                   "5": "non-finite box coordinate",
                   "6": "box width or height <= 0",
                   "7": "malformed line: 4 fields (need 5: class cx cy w h)",
                   "8": "6 fields (need 5: class cx cy w h; a prediction file with a score column?)",
                   "9": "segment polygon, not a box (YOLO segmentation format; det-toolkit reads "
                        "'class cx cy w h' boxes: convert the segments to boxes)",
                   "10": "non-numeric value (need 5 numbers: class cx cy w h)"}
    np.testing.assert_allclose(samples[0].boxes, [[40, 32, 60, 48], [20, 16, 30, 24]], atol=1e-4)
    assert samples[0].labels.tolist() == [0, 0]
    assert "a.txt:line 2" in rep.table()
    txt.write_bytes(b"\xff\xfe\x00binary")  # not text: the file is unusable, its image skipped
    samples, _, _, rep = read_split(cfg, "train")
    assert samples == [] and rep.issues == [(str(txt), "unreadable label file (UnicodeDecodeError)", "image skipped")]


def test_voc_objects_are_checked_per_object(tmp_path: Path) -> None:
    root = _one_image_dataset(tmp_path / "voc")
    (root / "annotations").mkdir()
    xml = root / "annotations" / "a.xml"
    xml.write_text(
        "<annotation><object><name>x</name><bndbox><xmin>11</xmin><ymin>11</ymin><xmax>50</xmax>"
        "<ymax>50</ymax></bndbox></object>"
        "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "<object><name>x</name><bndbox><xmin>abc</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "<object><name>x</name></object>"
        "<object><name>x</name><bndbox><xmin>nan</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"
        "</annotation>")
    (root / "train.txt").write_text("a\n")
    cfg = DataConfig(path=str(root), format="voc", train="train.txt", val="train.txt", names=["x"])
    samples, _, _, rep = read_split(cfg, "train")
    assert rep.issues == [(f"{xml}:object 2", "unknown class name 'dog'", "box skipped"),
                          (f"{xml}:object 3", "malformed <bndbox> (missing or non-numeric coordinate)", "box skipped"),
                          (f"{xml}:object 4", "object without <bndbox>", "box skipped"),
                          (f"{xml}:object 5", "non-finite box coordinate", "box skipped")]
    np.testing.assert_allclose(samples[0].boxes, [[10, 10, 50, 50]])


def _coco(root: Path, doc: dict, names: list[str] | None = None) -> tuple[list, object, Path]:
    (root / "ann.json").write_text(json.dumps(doc))
    cfg = DataConfig(path=str(root), format="coco", train="ann.json", val="ann.json", names=names or [])
    samples, _, _, rep = read_split(cfg, "train")
    return samples, rep, root / "ann.json"


def test_coco_records_are_checked_per_record(tmp_path: Path) -> None:
    root = _one_image_dataset(tmp_path / "coco")
    box = [10, 10, 30, 20]
    doc = {"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2}, {"file_name": "b.jpg"}],
           "categories": [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}],
           "annotations": [
               {"id": 10, "image_id": 1, "category_id": 1, "bbox": box},             # fine
               {"id": 11, "image_id": 99, "category_id": 1, "bbox": box},            # no such image
               {"id": 12, "image_id": 1, "category_id": 5, "bbox": box},             # no such category
               {"id": 13, "image_id": 1, "category_id": 1, "bbox": [1, 2, 3]},       # 3 numbers
               {"id": 14, "image_id": 1, "category_id": 1, "bbox": "1234"},          # was read as 1,2,3,4
               {"id": 15, "image_id": 1, "category_id": 1, "bbox": [1, 2, "3", 4]},  # a string
               {"id": 16, "image_id": 1, "category_id": 1, "bbox": box, "iscrowd": "0"},  # was truthy
               {"id": 17, "image_id": 1, "category_id": 2, "bbox": box},             # y: not in names
               "not an annotation"]}
    samples, rep, js = _coco(root, doc, names=["x"])
    assert rep.issues == [
        (f"{js}:images[1]", "image record without 'file_name'", "image skipped"),
        (f"{js}:images[2]", "image record without an integer 'id'", "image skipped"),
        (f"{js}:annotation 11", "image_id names no (usable) image record", "box skipped"),
        (f"{js}:annotation 12", "unknown category id 5", "box skipped"),
        (f"{js}:annotation 13", "bbox is not a list of 4 numbers [x, y, w, h]", "box skipped"),
        (f"{js}:annotation 14", "bbox is not a list of 4 numbers [x, y, w, h]", "box skipped"),
        (f"{js}:annotation 15", "bbox is not a list of 4 numbers [x, y, w, h]", "box skipped"),
        (f"{js}:annotation 16", "iscrowd is not 0 or 1", "box skipped"),
        (f"{js}:annotation 17", "category 'y' is not in names", "box skipped"),
        (f"{js}:annotations[8]", "annotation is not an object", "box skipped")]
    assert len(samples) == 1 and samples[0].boxes.tolist() == [[10, 10, 40, 30]]


@pytest.mark.parametrize("doc, match", [
    ({"images": {}, "categories": []}, "'images' must be a list, got a dict"),
    ({"images": []}, "'categories' must be a list, got missing"),
    ([1, 2], "a JSON list, not an object"),
    ({"images": [], "categories": [{"id": "1", "name": "x"}]}, r"categories\[0\]: needs an integer 'id'"),
    ({"images": [], "categories": [{"id": 1, "name": "x"}, {"id": 1, "name": "y"}]}, r"repeated id \[1\]"),
    ({"images": [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}],
      "categories": [{"id": 1, "name": "x"}]}, r"images: repeated id \[1\]"),
])
def test_unusable_coco_file_is_an_error(tmp_path: Path, doc: object, match: str) -> None:
    root = _one_image_dataset(tmp_path / "coco")
    with pytest.raises(DatasetError, match=match):
        _coco(root, doc)  # type: ignore[arg-type]


def test_binary_split_list_is_a_config_error(tmp_path: Path) -> None:
    from det_toolkit.train.config import ConfigError

    root = _one_image_dataset(tmp_path / "d")
    (root / "train.txt").write_bytes(b"\xff\xd8\xff\xe0 a jpeg named train.txt")
    cfg = DataConfig(path=str(root), format="voc", train="train.txt", val="train.txt", names=["x"], source="d.yaml")
    with pytest.raises(ConfigError, match="d.yaml: split 'train.txt': .* is not a text list of images"):
        read_split(cfg, "train")


# --- case 4: --weights-init is a plain state dict or a clear error --------------------------------


@pytest.fixture(scope="module")
def bad_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Weights files people pass by mistake: text, truncated, empty, not a dict, an unsafe pickle."""
    torch = pytest.importorskip("torch")
    d = tmp_path_factory.mktemp("weights")
    files = {"text": d / "text.pt", "empty": d / "empty.pt", "dict": d / "dict.pt", "list": d / "list.pt",
             "unsafe": d / "unsafe.pt", "truncated": d / "truncated.pt", "other": d / "other.pt"}
    files["text"].write_text("these are not weights\n")
    files["empty"].write_bytes(b"")
    torch.save({"a": 1}, files["dict"])
    torch.save([1, 2], files["list"])
    torch.save({"model": torch.nn.Linear(2, 2), "epoch": 3}, files["unsafe"])  # an Ultralytics-style pickle
    data = files["unsafe"].read_bytes()
    files["truncated"].write_bytes(data[:len(data) // 2])
    torch.save({"foo.weight": torch.zeros(3, 3)}, files["other"])  # another architecture
    return files


@pytest.mark.parametrize("kind, match", [
    ("text", "not a readable PyTorch file"),
    ("empty", "not a readable PyTorch file"),
    ("truncated", "not a readable PyTorch file"),
    ("dict", r"not a state dict .*1 of its 1 entries are not tensors \('a': int\)"),
    ("list", "not a state dict .*it holds a list"),
    ("unsafe", r"not a plain state dict \(it pickles a torch.nn.modules.linear.Linear object\)"),
])
def test_weights_init_errors(bad_weights: dict[str, Path], kind: str, match: str) -> None:
    from det_toolkit.train.models import build_model
    from det_toolkit.train.models.weights import WeightsError, check_weights_init

    path = bad_weights[kind]
    with pytest.raises(WeightsError, match=match) as e:
        check_weights_init(str(path))
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg
    if kind == "unsafe":  # the way out for a trusted file, not torch's blanket advice
        assert ("Only if you trust this file" in msg and
                f"torch.save(torch.load('{path}', weights_only=False)['model'].state_dict(), 'plain.pt')" in msg)
        assert "Re-running `torch.load`" not in msg and "WeightsUnpickler" not in msg
    with pytest.raises(WeightsError, match=match):  # what det-train's model builder raises
        build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights=str(path))


def test_weights_of_another_architecture_are_an_error(bad_weights: dict[str, Path]) -> None:
    from det_toolkit.train.models import build_model
    from det_toolkit.train.models.weights import WeightsError, check_weights_init

    check_weights_init(str(bad_weights["other"]))  # a plain state dict: fine until it meets the model
    with pytest.raises(WeightsError, match="none of its 1 tensors matches the detector or its backbone"):
        build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights=str(bad_weights["other"]))


# --- case 5: output folders checked before the work; failed runs leave nothing --------------------


def test_check_writable(tmp_path: Path) -> None:
    f = tmp_path / "a_file"
    f.write_text("x")
    assert check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checks only
    with pytest.raises(NotADirectoryError, match=f"--project {f}/sub/exp: cannot write there: {f} is a file"):
        check_writable(f / "sub" / "exp", "--project")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(PermissionError, match="no write permission"):
            check_writable(ro / "x")


def test_det_eval_checks_the_output_folder_first(tmp_path: Path) -> None:
    """An unwritable --project fails before anything is read: here the weights are junk too, and the
    message is about the folder."""
    from det_toolkit.train.evaluate import main

    data = make_synthetic(tmp_path / "s", n_train=1, n_val=1, size=64)
    junk = tmp_path / "junk.onnx"
    junk.write_text("junk")
    (tmp_path / "a_file").write_text("x")
    res = CliRunner().invoke(main, ["--weights", str(junk), "--data", str(data), "--project",
                                    str(tmp_path / "a_file" / "sub")])
    assert res.exit_code == 1 and "a_file is a file, not a folder" in res.output, res.output


class FailingTeacher:
    """Boxes for the first two frames, then a crash (a teacher failing mid-run)."""

    name = "flaky"
    class_names = ["person"]

    def __init__(self, fail_at: int = 2) -> None:
        self.calls, self.fail_at = 0, fail_at

    def __call__(self, frame: np.ndarray) -> Detections:
        self.calls += 1
        if self.calls > self.fail_at:
            raise RuntimeError("CUDA error: out of memory")
        return Detections(np.array([[1, 1, 20, 20]], np.float32), np.ones(1, np.float32), np.zeros(1, np.int64))


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"p{i}.jpg"), np.full((48, 64, 3), 40 * i, np.uint8))
    return folder


def test_failed_label_run_leaves_nothing_and_can_rerun(photos: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A teacher crashing on the third frame: one-line error naming the frame, no out/images left
    (--out absent before, or empty before: it stays empty), the same command then succeeds."""
    from det_toolkit.train import label

    run = CliRunner().invoke
    teacher = FailingTeacher()
    monkeypatch.setattr(label, "make_teacher", lambda *a, **k: teacher)
    out = tmp_path / "new" / "out"
    res = run(label.main, [str(photos), "--out", str(out)])
    assert res.exit_code == 1 and "teacher flaky failed on frame 2 (p2.jpg)" in res.output, res.output
    assert "RuntimeError: CUDA error: out of memory" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    teacher.calls = 0
    assert run(label.main, [str(photos), "--out", str(empty)]).exit_code == 1
    assert empty.is_dir() and list(empty.iterdir()) == []
    runs = tmp_path / "runs"
    teacher.calls = 0
    assert run(label.main, [str(photos), "--project", str(runs), "--name", "x"]).exit_code == 1
    assert list(runs.iterdir()) == []
    teacher.fail_at = 99
    for target in (["--out", str(out)], ["--out", str(empty)]):
        res = run(label.main, [str(photos), *target])
        assert res.exit_code == 0, res.output
    assert len(list((out / "images").iterdir())) == 4 and (empty / "data.yaml").is_file()


def test_bad_label_source_leaves_nothing(tmp_path: Path) -> None:
    """A folder of fake images (nothing decodes) and a source under a file: errors, no folder."""
    from det_toolkit.train.label import main

    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "a.jpg").write_text("not an image")
    out = tmp_path / "out"
    run = CliRunner().invoke
    res = run(main, [str(fake), "--out", str(out)])
    assert res.exit_code == 1 and "no frame of" in res.output and "1 unreadable" in res.output, res.output
    assert not out.exists()
    (tmp_path / "f").write_text("x")
    res = run(main, [str(fake), "--out", str(tmp_path / "f" / "out")])
    assert res.exit_code == 1 and "is a file, not a folder" in res.output


# --- case 6: no traceback for a corpus of bad inputs ------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory, detector: tuple[Path, Path]) -> Path:
    """Bad inputs, plus a tiny valid dataset and a real model to pair them with."""
    import torch

    d = tmp_path_factory.mktemp("corpus")
    make_synthetic(d / "data", n_train=2, n_val=1, size=64)
    (d / "syntax.yaml").write_text("path: [unclosed\ntrain: a\n")
    (d / "types.yaml").write_text("path: .\ntrain: 5\nval: [1, 2]\nnames: 7\n")
    (d / "recipe.yaml").write_text("lr: fast\n")
    (d / "recipe_epochs.yaml").write_text("epochs: many\n")  # overridden by --epochs 1: still an error
    (d / "empty_val.txt").write_text("")
    (d / "empty_val.yaml").write_text(f"path: {d / 'data'}\nformat: voc\ntrain: train.txt\nval: {d / 'empty_val.txt'}\n"
                                      "names: [square, bar]\n")
    (d / "a_file").write_text("a regular file")
    (d / "text.pt").write_text("these are not weights\n")
    (d / "text.onnx").write_text("this is not a graph\n")
    torch.save({"a": 1}, d / "dict.pt")
    torch.save([1, 2], d / "list.pt")
    torch.save({"model": torch.nn.Linear(2, 2)}, d / "unsafe.pt")
    torch.save({"w": torch.zeros(2)}, d / "state_dict.pt")
    fake = d / "fake_images"
    (fake / "images").mkdir(parents=True)
    (fake / "annotations").mkdir()
    for i in range(2):
        (fake / "images" / f"f{i}.jpg").write_text("not a jpeg")
        write_voc(fake / "annotations" / f"f{i}.xml", f"f{i}.jpg", 64, 64, [("square", 2, 2, 30, 30)])
    (fake / "data.yaml").write_text("path: .\nformat: voc\ntrain: images\nval: images\nnames: [square, bar]\n")
    if VTEST.is_file():
        data = VTEST.read_bytes()
        (d / "head_only.avi").write_bytes(data[:2048])
        (d / "cut.avi").write_bytes(data[:len(data) // 20])
    (d / "model.onnx").symlink_to(detector[1])
    return d


#: what every command that reads a checkpoint says of a pickle (not torch's weights_only=False advice)
UNSAFE = "not a det-toolkit checkpoint (it pickles a torch.nn.modules.linear.Linear object)"
TRAIN = ["--epochs", "1", "--batch", "1", "--workers", "0", "--imgsz", "64", "--no-cache", "--device", "cpu"]

#: (id, command, args ({c}: corpus folder), exit code, text the Error line contains, xfail reason)
CASES: list[tuple[str, str, list[str], int, str, str | None]] = [
    ("train-missing-data", "det-train", ["--data", "{c}/missing.yaml", *TRAIN], 1, "missing.yaml", None),
    ("train-yaml-syntax", "det-train", ["--data", "{c}/syntax.yaml", *TRAIN], 1, "invalid YAML", None),
    ("train-yaml-types", "det-train", ["--data", "{c}/types.yaml", *TRAIN], 1, "names: expected a list", None),
    ("train-recipe-types", "det-train", ["--cfg", "{c}/recipe.yaml", "--data", "{c}/data/data.yaml", *TRAIN], 1,
     "lr: expected a number", None),
    ("train-fake-images", "det-train", ["--data", "{c}/fake_images/data.yaml", *TRAIN], 1,
     "no valid boxes (0 usable images; 2 x unreadable image (UnidentifiedImageError): image skipped)", None),
    ("train-weights-text", "det-train", ["--data", "{c}/data/data.yaml", "--weights-init", "{c}/text.pt", *TRAIN],
     1, "not a readable PyTorch file", None),
    ("train-weights-dict", "det-train", ["--data", "{c}/data/data.yaml", "--weights-init", "{c}/dict.pt", *TRAIN],
     1, "not a state dict", None),
    ("train-weights-list", "det-train", ["--data", "{c}/data/data.yaml", "--weights-init", "{c}/list.pt", *TRAIN],
     1, "not a state dict", None),
    ("train-weights-unsafe", "det-train", ["--data", "{c}/data/data.yaml", "--weights-init", "{c}/unsafe.pt",
                                           *TRAIN], 1, "not a plain state dict", None),
    ("train-resume-text", "det-train", ["--resume", "{c}/text.pt", *TRAIN], 1, "text.pt", None),
    ("train-resume-dict", "det-train", ["--resume", "{c}/dict.pt", *TRAIN], 1, "not a det-toolkit checkpoint", None),
    ("train-resume-unsafe", "det-train", ["--resume", "{c}/unsafe.pt", *TRAIN], 1, UNSAFE, None),
    ("train-resume-state-dict", "det-train", ["--resume", "{c}/state_dict.pt", *TRAIN], 1,
     "state_dict.pt: not a det-toolkit checkpoint: it holds a plain state dict of 1 tensors", None),
    ("train-recipe-overridden", "det-train", ["--cfg", "{c}/recipe_epochs.yaml", "--data", "{c}/data/data.yaml",
                                              *TRAIN], 1, "recipe_epochs.yaml: epochs: expected an integer, got 'many'",
     None),
    ("train-empty-val", "det-train", ["--data", "{c}/empty_val.yaml", *TRAIN], 1,
     "empty_val.yaml has no images: det-train picks best.pt by val mAP; add val images", None),
    ("train-project-under-file", "det-train", ["--data", "{c}/data/data.yaml", "--project", "{c}/a_file/sub",
                                               *TRAIN], 1, "a_file", None),
    ("eval-yaml-syntax", "det-eval", ["--weights", "{c}/model.onnx", "--data", "{c}/syntax.yaml"], 1,
     "invalid YAML", None),
    ("eval-yaml-types", "det-eval", ["--weights", "{c}/model.onnx", "--data", "{c}/types.yaml"], 1,
     "names: expected a list", None),
    ("eval-fake-images", "det-eval", ["--weights", "{c}/model.onnx", "--data", "{c}/fake_images/data.yaml"], 1,
     "has no valid box in 0 usable images; 2 skipped: f0.jpg, f1.jpg", None),
    ("eval-weights-text-onnx", "det-eval", ["--weights", "{c}/text.onnx", "--data", "{c}/data/data.yaml"], 1,
     "text.onnx", None),
    ("eval-weights-text-pt", "det-eval", ["--weights", "{c}/text.pt", "--data", "{c}/data/data.yaml"], 1,
     "text.pt", None),
    ("eval-weights-list", "det-eval", ["--weights", "{c}/list.pt", "--data", "{c}/data/data.yaml"], 1,
     "not a det-toolkit checkpoint", None),
    ("eval-weights-unsafe", "det-eval", ["--weights", "{c}/unsafe.pt", "--data", "{c}/data/data.yaml"], 1,
     UNSAFE, None),
    ("eval-project-under-file", "det-eval", ["--weights", "{c}/model.onnx", "--data", "{c}/data/data.yaml",
                                             "--project", "{c}/a_file/sub"], 1, "a_file is a file, not a folder", None),
    ("export-missing", "det-export", ["{c}/missing.pt"], 1, "missing.pt", None),
    ("export-text", "det-export", ["{c}/text.pt"], 1, "text.pt", None),
    ("export-dict", "det-export", ["{c}/dict.pt"], 1, "not a det-toolkit checkpoint: it holds a dict with keys 'a'",
     None),
    ("export-list", "det-export", ["{c}/list.pt"], 1, "not a det-toolkit checkpoint: it holds a list", None),
    ("export-state-dict", "det-export", ["{c}/state_dict.pt"], 1, "it holds a plain state dict of 1 tensors", None),
    ("export-unsafe", "det-export", ["{c}/unsafe.pt"], 1, UNSAFE, None),
    ("run-missing-source", "det-run", ["{c}/missing.mp4", "--weights", "{c}/model.onnx"], 1, "source not found",
     None),
    ("run-fake-images", "det-run", ["{c}/fake_images/images", "--weights", "{c}/model.onnx", "--project",
                                    "{c}/runs"], 1, "could be decoded", None),
    ("run-weights-text-onnx", "det-run", ["{c}/fake_images/images", "--weights", "{c}/text.onnx"], 1, "text.onnx",
     None),
    ("run-weights-dict", "det-run", ["{c}/fake_images/images", "--weights", "{c}/dict.pt"], 1,
     "not a det-toolkit checkpoint", None),
    ("run-weights-unsafe", "det-run", ["{c}/fake_images/images", "--weights", "{c}/unsafe.pt"], 1,
     UNSAFE, None),
    ("run-project-under-file", "det-run", ["{c}/data/images", "--weights", "{c}/model.onnx", "--project",
                                           "{c}/a_file/sub"], 1, "a_file is a file, not a folder", None),
    ("run-video-header-only", "det-run", ["{c}/head_only.avi", "--weights", "{c}/model.onnx", "--project",
                                         "{c}/runs"], 1, "head_only.avi", None),
    ("label-missing-source", "det-label", ["{c}/missing.mp4", "--out", "{c}/l1"], 1, "source not found", None),
    ("label-fake-images", "det-label", ["{c}/fake_images/images", "--out", "{c}/l2"], 1, "2 unreadable", None),
    ("label-out-under-file", "det-label", ["{c}/data/images", "--out", "{c}/a_file/out"], 1,
     "a_file is a file, not a folder", None),
    ("label-teacher-text-onnx", "det-label", ["{c}/data/images", "--teacher", "{c}/text.onnx", "--out", "{c}/l3"],
     1, "text.onnx", None),
    ("label-teacher-unsafe", "det-label", ["{c}/data/images", "--teacher", "{c}/unsafe.pt", "--out", "{c}/l4"], 1,
     UNSAFE, None),
    ("label-video-header-only", "det-label", ["{c}/head_only.avi", "--out", "{c}/l5"], 1, "head_only.avi", None),
    ("bench-missing-data", "det-bench", ["--weights", "{c}/text.pt", "--data", "{c}/missing.yaml"], 2,
     "missing.yaml", None),
    ("bench-weights-text", "det-bench", ["--weights", "{c}/text.pt", "--data", "{c}/data/data.yaml", "--formats",
                                         "torch", "--project", "{c}/bench"], 1, "text.pt", None),
    ("bench-project-under-file", "det-bench", ["--weights", "{c}/model.onnx", "--data", "{c}/data/data.yaml",
                                               "--project", "{c}/a_file/sub"], 1, "a_file is a file, not a folder",
     None),
]


def _run(command: str, args: list[str], corpus: Path) -> subprocess.CompletedProcess:
    exe = BIN / command
    if not exe.is_file():
        pytest.skip(f"{exe} is not installed (pip install -e .)")
    return subprocess.run([str(exe), *(a.format(c=corpus) for a in args)], capture_output=True, text=True,
                          timeout=300, check=False, cwd=corpus)


@pytest.mark.parametrize("command, args, code, says", [
    pytest.param(cmd, args, code, says, id=cid,
                 marks=[pytest.mark.xfail(strict=True, reason=why)] if why else [])
    for cid, cmd, args, code, says, why in CASES])
def test_no_traceback_for_bad_input(corpus: Path, command: str, args: list[str], code: int, says: str) -> None:
    """Each command on a bad input: no traceback, the expected non-zero exit, and one line saying what
    is wrong (the last line on stderr, click's 'Error: ...'); never a run that starts working."""
    if "avi" in " ".join(args) and not VTEST.is_file():
        pytest.skip(f"{VTEST} absent")
    proc = _run(command, args, corpus)
    err = proc.stderr
    assert "Traceback" not in err, err[-3000:]
    assert proc.returncode == code, (proc.returncode, err[-2000:])
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert last.startswith("Error: ") and says in last, err[-2000:]
    assert "epoch 1/" not in proc.stdout  # caught before any training


@need_video
def test_truncated_video_is_processed_up_to_the_cut(corpus: Path) -> None:
    """A video cut at 5% of its bytes: the frames before the cut are detected, the run succeeds, no
    traceback (the tail is reported, not fatal)."""
    proc = _run("det-run", ["{c}/cut.avi", "--weights", "{c}/model.onnx", "--project", "{c}/runs", "--name",
                            "cut", "--no-save"], corpus)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    summary = json.loads((corpus / "runs" / "cut" / "summary.json").read_text())
    assert 0 < summary["frames"] < 795


def test_det_train_checks_weights_init_before_the_run_folder(corpus: Path) -> None:
    proc = _run("det-train", ["--data", "{c}/data/data.yaml", "--weights-init", "{c}/unsafe.pt", "--project",
                              "{c}/train_runs", *TRAIN], corpus)
    assert proc.returncode == 1 and "not a plain state dict" in proc.stderr
    assert not (corpus / "train_runs").exists()


# --- det-train: checks before work, unreadable images, nothing left behind when a run fails -------

TINY_TRAIN = ["--epochs", "1", "--batch", "2", "--workers", "0", "--imgsz", "64", "--device", "cpu"]


def _train(args: list[str]) -> Result:
    from det_toolkit.train.cli import train_cli

    return CliRunner().invoke(train_cli, args)


def test_det_train_refuses_a_val_split_without_images_or_boxes(tmp_path: Path) -> None:
    """best.pt is chosen by val mAP: an empty val split, or one without any box, is refused before any
    folder is made (it used to train with mAP 0 every epoch and keep best.pt at epoch 1, silently)."""
    data = make_synthetic(tmp_path / "s", n_train=2, n_val=2, size=64)
    runs = tmp_path / "runs"
    (data.parent / "val.txt").write_text("")
    res = _train(["--data", str(data), *TINY_TRAIN, "--project", str(runs)])
    assert res.exit_code == 1, res.output
    assert (f"Error: the val split val.txt of {data} has no images: det-train picks best.pt by val mAP; add val "
            "images (e.g. 20% of yours)") in res.output
    (data.parent / "val.txt").write_text("img002\nimg003\n")
    for stem in ("img002", "img003"):
        write_voc(data.parent / "annotations" / f"{stem}.xml", f"{stem}.png", 64, 64, [])
    res = _train(["--data", str(data), *TINY_TRAIN, "--project", str(runs)])
    assert res.exit_code == 1, res.output
    assert f"Error: the val split val.txt of {data} has no boxes in its 2 images" in res.output
    assert "epoch 1/" not in res.output and not runs.exists()


def test_cvat_export_without_a_val_subset_still_validates_on_its_images(tmp_path: Path) -> None:
    """The other side of that rule: a CVAT COCO export with only its 'default' subset validates on the
    training images (with the readers' warning) and passes det-train's data checks."""
    pytest.importorskip("torch")
    from det_toolkit.train.config import TrainConfig, load_data_config
    from det_toolkit.train.run_data import load_data

    data = make_synthetic(tmp_path / "s", n_train=3, n_val=1, size=64)
    samples, names, _, _ = read_split(load_data_config(data), "train")
    cvat = tmp_path / "task_shapes-coco"
    (cvat / "images").mkdir(parents=True)
    (cvat / "annotations").mkdir()
    images, anns = [], []
    for i, s in enumerate(samples, 1):
        (cvat / "images" / s.image.name).write_bytes(s.image.read_bytes())
        images.append({"id": i, "file_name": s.image.name, "width": s.width, "height": s.height})
        anns += [{"id": len(anns) + 1, "image_id": i, "category_id": int(lab) + 1, "iscrowd": 0,
                  "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
                 for b, lab in zip(s.boxes, s.labels)]
    (cvat / "annotations" / "instances_default.json").write_text(json.dumps(
        {"images": images, "annotations": anns, "categories": [{"id": k + 1, "name": n} for k, n in enumerate(names)]}))
    dcfg, out = load_data(TrainConfig(data=str(cvat)), say=lambda *a: None)
    assert dcfg.val == dcfg.train and len(out["val"][0]) == len(out["train"][0]) == 3


def test_det_train_leaves_an_undecodable_val_image_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A raccoon val set of 3 images, one of which does not decode (a truncated TIFF the readers keep):
    every epoch evaluates the 2 others, ground truth included, as det-eval does; the count is printed
    and recorded in the checkpoint."""
    pytest.importorskip("torch")
    from det_toolkit.train import trainer
    from det_toolkit.train.checkpoint import load_checkpoint

    root = need_raccoon()
    ds = tmp_path / "rac"
    (ds / "images").mkdir(parents=True)
    (ds / "annotations").mkdir()
    train = [root / "images" / f"{s}.jpg" for s in (root / "train.txt").read_text().split()[:2]]
    val = raccoon_val(3)
    for src in train + val[:2]:
        (ds / "images" / src.name).write_bytes(src.read_bytes())
    bad = truncated_tiff(val[2], ds / "images" / f"{val[2].stem}.tif")
    for src in train + val:
        (ds / "annotations" / f"{src.stem}.xml").write_bytes((root / "annotations" / f"{src.stem}.xml").read_bytes())
    (ds / "train.txt").write_text("\n".join(p.stem for p in train) + "\n")
    (ds / "val.txt").write_text("\n".join(p.stem for p in val) + "\n")
    (ds / "data.yaml").write_text(f"path: {ds}\nformat: voc\ntrain: train.txt\nval: val.txt\nnames: [raccoon]\n")
    calls = []
    real = trainer.evaluate_coco

    def spy(samples: list, preds: dict, *args: Any, **kw: Any) -> Any:
        calls.append((samples, preds, kw.get("exclude")))
        return real(samples, preds, *args, **kw)

    monkeypatch.setattr(trainer, "evaluate_coco", spy)
    res = _train(["--data", str(ds / "data.yaml"), *TINY_TRAIN, "--imgsz", "128", "--project", str(tmp_path / "runs"),
                  "--name", "r"])
    assert res.exit_code == 0, res.output
    [(samples, preds, exclude)] = calls
    assert samples[2].image == bad and set(exclude) == {2}
    assert "(1 unreadable val image left out)" in res.output
    ck = load_checkpoint(tmp_path / "runs" / "r" / "weights" / "best.pt")
    assert ck["metrics"]["val_images_unreadable"] == 1
    two = real(samples[:2], {i: p for i, p in preds.items() if i < 2}, ["raccoon"], [1])  # the set without it
    assert {k: ck["metrics"][k] for k in two.stats} == two.stats


@pytest.mark.parametrize("cache", ["--cache", "--no-cache"])
def test_det_train_stops_before_work_when_no_training_image_decodes(tmp_path: Path, cache: str) -> None:
    """Every training image undecodable (truncated TIFFs, which the readers keep): one error before
    the first epoch and no run folder (it used to write untrained best.pt/last.pt, then crash with
    KeyError: 'loss')."""
    data = make_synthetic(tmp_path / "s", n_train=3, n_val=1, size=64)
    for i in range(3):
        png = data.parent / "images" / f"img{i:03d}.png"
        truncated_tiff(png, png.with_suffix(".tif"))
        png.unlink()
    runs = tmp_path / "runs"
    res = _train(["--data", str(data), *TINY_TRAIN, cache, "--project", str(runs)])
    assert res.exit_code == 1, res.output
    assert (f"Error: no image of the train split of {data} decodes (3 images, e.g. img000.tif, img001.tif, "
            "img002.tif)") in res.output
    assert "epoch 1/" not in res.output and not runs.exists()


def test_an_epoch_without_a_training_step_writes_no_checkpoint(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The last guard: an epoch that ran no step (what train_one_epoch returns when every batch came out
    empty) ends the run with one error, no checkpoint, and the run folder it created removed."""
    pytest.importorskip("torch")
    from det_toolkit.train import trainer

    monkeypatch.setattr(trainer, "train_one_epoch", lambda *a, **k: {"lr": 0.01, "img_s": 0.0, "n_images": 0})
    data = make_synthetic(tmp_path / "s", n_train=2, n_val=1, size=64)
    runs = tmp_path / "runs"
    res = _train(["--data", str(data), *TINY_TRAIN, "--project", str(runs), "--name", "r"])
    assert res.exit_code == 1, res.output
    assert ("Error: epoch 1 ran no training step: no image of its batches decoded (0 of 2 training images "
            "unreadable)") in res.output
    assert "KeyError" not in res.output and list(runs.iterdir()) == []


def test_recipe_values_are_checked_even_when_a_flag_overrides_them(tmp_path: Path) -> None:
    """`epochs: many` in a --cfg recipe is an error with --epochs 1 too; an overridden value is checked
    against the rest of the config only for its own key (scheduler: step replaced by --scheduler cosine
    needs no lr_step)."""
    import re

    from det_toolkit.train.config import ConfigError, load_train_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: many\nlr: 0.02\n")
    with pytest.raises(ConfigError, match=f"^{re.escape(str(recipe))}: epochs: expected an integer, got 'many'$"):
        load_train_config(recipe, {"epochs": 1})
    recipe.write_text("imgsz: 100\n")
    with pytest.raises(ConfigError, match="recipe.yaml: imgsz: must be a multiple of 32"):
        load_train_config(recipe, {"imgsz": 128})
    recipe.write_text("scheduler: step\nlr: 0.02\n")
    cfg = load_train_config(recipe, {"scheduler": "cosine"})
    assert (cfg.scheduler, cfg.lr) == ("cosine", 0.02)
    for key, value, says in (("cache_mib", "lots", "expected auto or a number of MiB >= 0, got 'lots'"),
                             ("cache_mib", "-1", "expected auto or a number of MiB >= 0, got '-1'"),
                             ("class_weights", "1,abc", "expected auto or comma-separated positive numbers")):
        recipe.write_text(f"{key}: '{value}'\n")
        with pytest.raises(ConfigError, match=f"recipe.yaml: {key}: {re.escape(says)}"):
            load_train_config(recipe, {})


def test_det_train_checks_the_output_folder_before_reading_anything(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    res = _train(["--data", str(tmp_path / "missing.yaml"), *TINY_TRAIN, "--project", str(tmp_path / "a_file" / "sub")])
    assert res.exit_code == 1 and "a_file is a file, not a folder" in res.output, res.output
