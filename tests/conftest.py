"""Shared fixtures: the real raccoon data (read-only, in ../shared) and tiny synthetic datasets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RACCOON = SHARED / "datasets" / "raccoon"
VTEST = SHARED / "videos" / "vtest.avi"


def need_raccoon() -> Path:
    """The raccoon dataset root, or skip the test (with the reason) when it is absent."""
    if not (RACCOON / "annotations").is_dir():
        pytest.skip(f"real raccoon data not found at {RACCOON}")
    return RACCOON


def raccoon_photos(pattern: str) -> tuple[str, list[np.ndarray]]:
    """``(glob, BGR uint8 images)`` of the raccoon photos matching ``pattern`` (e.g.
    ``"raccoon-1[0-3].jpg"``), or skip the test when the real data is absent."""
    from det_toolkit.export.parity import load_images

    glob = str(RACCOON / "images" / pattern)
    if not (RACCOON / "images").is_dir():
        pytest.skip(f"real raccoon images not found at {RACCOON}")
    return glob, load_images(glob)


def write_voc(path: Path, filename: str, w: int, h: int,
              objects: list[tuple[str, float, float, float, float]]) -> None:
    """Write a labelImg-style VOC XML (1-based inclusive pixel coordinates as given)."""
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin>"
        f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>" for n, x1, y1, x2, y2 in objects)
    path.write_text(f"<annotation><filename>{filename}</filename><size><width>{w}</width>"
                    f"<height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def make_synthetic(root: Path, n_train: int = 8, n_val: int = 4, size: int = 128,
                   names: tuple[str, ...] = ("square", "bar"), seed: int = 0) -> Path:
    """A tiny VOC dataset of coloured squares/bars on noise; returns the data YAML path."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    stems = []
    for i in range(n_train + n_val):
        img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
        objs = []
        for _ in range(rng.integers(1, 3)):
            c = int(rng.integers(0, len(names)))
            w = int(rng.integers(24, 48))
            h = w if c == 0 else w // 3
            x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            img[y:y + h, x:x + w] = (220, 60, 60) if c == 0 else (60, 220, 60)
            objs.append((names[c], x + 1, y + 1, x + w, y + h))
        stem = f"img{i:03d}"
        Image.fromarray(img).save(root / "images" / f"{stem}.png")
        write_voc(root / "annotations" / f"{stem}.xml", f"{stem}.png", size, size, objs)
        stems.append(stem)
    (root / "train.txt").write_text("\n".join(stems[:n_train]) + "\n")
    (root / "val.txt").write_text("\n".join(stems[n_train:]) + "\n")
    cfg = root / "data.yaml"
    cfg.write_text(json.dumps({"path": str(root), "format": "voc", "train": "train.txt",
                               "val": "val.txt", "names": list(names)}))
    return cfg


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    """Path of a tiny synthetic VOC data config."""
    return make_synthetic(tmp_path / "synth")


def no_torch_script(entry: str) -> str:
    """Python source for ``python -c``: block torch/torchvision imports (an edge box with only the base
    install), run ``entry``'s click ``main`` on ``sys.argv[1:]``, then assert neither was imported."""
    return f"""
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {{"torch", "torchvision"}}:
            raise ImportError(f"{{name}} is blocked: edge box without torch")
sys.meta_path.insert(0, NoTorch())
from {entry} import main
try:
    main(sys.argv[1:])
finally:
    assert not {{m.partition(".")[0] for m in sys.modules}} & {{"torch", "torchvision"}}
"""
