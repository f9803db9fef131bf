"""The README's "Your own data" walkthrough, run word for word (slow: it trains).

The shell block between ``<!-- walkthrough -->`` and ``<!-- /walkthrough -->`` in the repository's
README.md is run with bash, ``set -e``, in a temporary folder that holds ``my_data/``: the real raccoon
photos (160 train / 40 val, the author's split) converted from their Pascal VOC XML to the
Ultralytics YOLO layout a Roboflow export has::

    my_data/
      data.yaml            path: . / train: images/train / val: images/val / names: {0: raccoon}
      images/train/*.jpg   images/val/*.jpg
      labels/train/*.txt   labels/val/*.txt   (one "cls cx cy w h" line per box, normalised to [0, 1])

with the console scripts of the Python running the tests first on PATH. Then the files the README
promises must exist and be sane: the checkpoint, the ONNX detector and embedder, det-run's annotated
images and JSON lines for every val image, det-eval's metrics with a detector that learned something.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from tests.conftest import need_raccoon

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- walkthrough -->", "<!-- /walkthrough -->"
#: seconds for the whole walkthrough (3 epochs at 320 px, export with parity, det-run, det-eval);
#: a few minutes on 2 idle CPU cores
TIMEOUT_S = 3600


def walkthrough_script(readme: Path) -> str | None:
    """The ``bash``/``sh`` fenced blocks between the walkthrough markers of ``readme``, joined in order.

    Returns ``None`` when ``readme`` has no start marker.

    Raises:
        AssertionError: a start marker without its end marker, or no shell block between them.
    """
    text = readme.read_text(encoding="utf-8")
    if START not in text:
        return None
    region, found_end, _ = text.split(START, 1)[1].partition(END)
    assert found_end, f"{readme}: '{START}' without '{END}'"
    blocks = re.findall(r"^```(?:bash|sh|shell)[ \t]*\n(.*?)^```", region, flags=re.S | re.M)
    assert blocks, f"{readme}: no ```bash block between '{START}' and '{END}'"
    return "\n".join(blocks)


def voc_to_yolo(voc_root: Path, dest: Path, names: list[str]) -> Path:
    """Copy a VOC dataset (``images/``, ``annotations/``, ``train.txt``, ``val.txt``) into the
    Ultralytics layout under ``dest``; returns ``dest / "data.yaml"``.

    VOC boxes are 1-based inclusive pixel indices: the continuous box is ``[xmin - 1, ymin - 1, xmax,
    ymax]`` in the image as displayed (EXIF orientation applied), written as ``cls cx cy w h``
    normalised by that image's width and height and clipped to ``[0, 1]``.
    """
    for split in ("train", "val"):
        (dest / "images" / split).mkdir(parents=True)
        (dest / "labels" / split).mkdir(parents=True)
        for stem in (voc_root / f"{split}.txt").read_text(encoding="utf-8").split():
            image = voc_root / "images" / f"{stem}.jpg"
            with Image.open(image) as im:
                w, h = ImageOps.exif_transpose(im).size
            lines = []
            for obj in ET.parse(voc_root / "annotations" / f"{stem}.xml").getroot().iter("object"):
                bb = obj.find("bndbox")
                assert bb is not None, f"{stem}.xml: object without <bndbox>"
                xmin, ymin, xmax, ymax = (float(bb.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
                x1, y1 = max(xmin - 1, 0.0) / w, max(ymin - 1, 0.0) / h
                x2, y2 = min(xmax, w) / w, min(ymax, h) / h
                cls = names.index((obj.findtext("name") or "").strip())
                lines.append(f"{cls} {(x1 + x2) / 2:.6f} {(y1 + y2) / 2:.6f} {x2 - x1:.6f} {y2 - y1:.6f}")
            shutil.copy2(image, dest / "images" / split / image.name)
            (dest / "labels" / split / f"{stem}.txt").write_text("".join(f"{ln}\n" for ln in lines))
    names_yaml = "".join(f"  {i}: {n}\n" for i, n in enumerate(names))
    cfg = dest / "data.yaml"
    cfg.write_text(f"path: .\ntrain: images/train\nval: images/val\nnames:\n{names_yaml}", encoding="utf-8")
    return cfg


def test_voc_to_yolo_boxes_round_trip(tmp_path: Path) -> None:
    """The fixture's conversion is exact: raccoon-1.xml's box (81, 88, 522, 408) in 650x417 comes back."""
    raccoon = need_raccoon()
    voc_to_yolo(raccoon, tmp_path / "my_data", ["raccoon"])
    n_train = len(list((tmp_path / "my_data" / "images" / "train").glob("*.jpg")))
    n_val = len(list((tmp_path / "my_data" / "images" / "val").glob("*.jpg")))
    assert (n_train, n_val) == (160, 40)
    split = "train" if "raccoon-1" in (raccoon / "train.txt").read_text().split() else "val"
    cls, cx, cy, bw, bh = (float(v) for v in
                           (tmp_path / "my_data" / "labels" / split / "raccoon-1.txt").read_text().split())
    assert cls == 0
    assert ((cx - bw / 2) * 650, (cy - bh / 2) * 417, (cx + bw / 2) * 650, (cy + bh / 2) * 417) == pytest.approx(
        (80, 87, 522, 408), abs=0.01)


@pytest.mark.slow
def test_readme_walkthrough_on_raccoon_in_yolo_layout(tmp_path: Path) -> None:
    raccoon = need_raccoon()
    script = walkthrough_script(ROOT / "README.md")
    assert script is not None, f"no '{START}' block in README.md"

    voc_to_yolo(raccoon, tmp_path / "my_data", ["raccoon"])
    bin_dir = Path(sys.executable).parent
    assert (bin_dir / "det-train").is_file(), f"det-train is not installed beside {sys.executable}"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "MPLBACKEND": "Agg"}
    proc = subprocess.run(["bash", "-e", "-x", "-c", script], cwd=tmp_path, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=TIMEOUT_S)
    # on failure, bash -x has traced the command that stopped it ("+ det-...") just before the error
    assert proc.returncode == 0, f"walkthrough failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}"

    def one(pattern: str) -> Path:
        found = sorted(tmp_path.glob(pattern))
        assert len(found) == 1, f"expected one {pattern} under {tmp_path}, found {found}"
        return found[0]

    # det-train: checkpoint and run records
    best = one("runs/train/*/weights/best.pt")
    assert (best.parent / "last.pt").is_file()
    assert (best.parents[1] / "results.csv").is_file() and (best.parents[1] / "args.yaml").is_file()
    # det-export: the detector graph and the Deep SORT embedder beside the checkpoint
    assert best.with_suffix(".onnx").is_file() and (best.parent / "deepsort_embedder.onnx").is_file()
    # det-run on the val folder: one JSON line and one annotated image per val image
    preds = one("runs/run/*/predictions.jsonl")
    lines = [json.loads(ln) for ln in preds.read_text().splitlines()]
    assert len(lines) == 40
    assert len([p for p in preds.parent.iterdir() if p.suffix == ".jpg"]) == 40
    assert (preds.parent / "summary.json").is_file()
    found = sum(bool(ln["detections"]) for ln in lines)
    assert found >= 20, f"raccoons found in only {found}/40 val images"
    # det-eval of the ONNX graph: the pretrained default model learns raccoons in 3 epochs
    stats = json.loads(one("runs/eval/*/metrics.json").read_text())["stats"]
    assert stats["AP50"] > 0.2, stats
