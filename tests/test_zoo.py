"""Every model of the zoo trains one short epoch on real raccoon photos and exports to ONNX with
parity. Marked ``zoo``: about 15 minutes for the 16 models on 2 loaded CPU cores, more than CI's
test budget, so `make test` leaves it out and `make test-zoo` runs it."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from export.onnx_export import export_onnx
from tests.conftest import RACCOON, need_raccoon
from train.checkpoint import load_checkpoint
from train.cli import train_cli
from train.models import MODELS

pytestmark = pytest.mark.zoo


@pytest.fixture(scope="module")
def raccoon_subset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data config over 8 train and 4 val raccoon photos (the real files, listed by path)."""
    need_raccoon()
    root = tmp_path_factory.mktemp("subset")
    train = (RACCOON / "train.txt").read_text().split()[:8]
    val = (RACCOON / "val.txt").read_text().split()[:4]
    (root / "train.txt").write_text("\n".join(train))
    (root / "val.txt").write_text("\n".join(val))
    cfg = root / "data.yaml"
    cfg.write_text(json.dumps({"path": str(RACCOON), "format": "voc", "names": ["raccoon"],
                               "train": str(root / "train.txt"), "val": str(root / "val.txt")}))
    return cfg


@pytest.mark.parametrize("name", list(MODELS))
def test_model_trains_on_raccoon_and_exports_with_parity(name: str, raccoon_subset: Path,
                                                         tmp_path: Path) -> None:
    res = CliRunner().invoke(train_cli, [
        "--data", str(raccoon_subset), "--model", name, "--epochs", "1", "--imgsz", "128",
        "--batch", "4", "--workers", "0", "--project", str(tmp_path), "--name", "z"])
    assert res.exit_code == 0, res.output
    best = tmp_path / "z" / "weights" / "best.pt"
    ck = load_checkpoint(best)
    assert ck["model"] == name and ck["epoch"] == 0
    val = [cv2.imread(str(RACCOON / "images" / f"{s}.jpg"))
           for s in (RACCOON / "val.txt").read_text().split()[:4]]
    onnx_path = export_onnx(best, parity_images=val, echo=lambda s: None)
    assert onnx_path.stat().st_size > 100_000
