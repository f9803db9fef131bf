"""Every model of the zoo trains one short epoch on real raccoon photos and exports to ONNX with
parity; every Faster R-CNN also exports the static TensorRT graph, which must pass the readiness
check and match PyTorch. Marked ``zoo``: about 15-25 minutes for the 16 models on 2 loaded CPU
cores, more than CI's test budget, so `make test` leaves it out and `make test-zoo` runs it
(``-k NAME`` for a subset; ``-s`` prints one result line per export)."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from det_toolkit.export.onnx_export import export_onnx
from det_toolkit.export.trt_check import check_trt_readiness
from det_toolkit.train.checkpoint import load_checkpoint, save_atomic
from det_toolkit.train.cli import train_cli
from det_toolkit.train.models import MODELS
from tests.conftest import RACCOON, need_raccoon

pytestmark = pytest.mark.zoo

#: TOOD's static graph (export/static_tood.py) is its author's, tested in tests/test_tood.py; its zoo
#: case is left to them, so the static test here covers the Faster R-CNN models.
TOOD_STATIC = "TOOD static graph: zoo case left to export/static_tood.py's author (see tests/test_tood.py)"
#: Score threshold of the static-parity checkpoint: a one-epoch model's scores are low, and with
#: the models' default 0.05 several would return no box at all, making parity vacuous.
PARITY_SCORE_THRESH = 0.01
STATIC_BATCH = 2


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


@pytest.fixture(scope="module")
def val_images() -> list[np.ndarray]:
    """The 4 val photos of the subset, BGR ``uint8``."""
    need_raccoon()
    return [cv2.imread(str(RACCOON / "images" / f"{s}.jpg"))
            for s in (RACCOON / "val.txt").read_text().split()[:4]]


@pytest.fixture(scope="module")
def trained(raccoon_subset: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """``trained(name) -> best.pt`` of a one-epoch run at 128 px, trained once per model."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            project = tmp_path_factory.mktemp(name)
            res = CliRunner().invoke(train_cli, [
                "--data", str(raccoon_subset), "--model", name, "--epochs", "1", "--imgsz", "128",
                "--batch", "4", "--workers", "0", "--project", str(project), "--name", "z"])
            assert res.exit_code == 0, res.output
            cache[name] = project / "z" / "weights" / "best.pt"
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(MODELS))
def test_model_trains_on_raccoon_and_exports_with_parity(name: str, trained: Callable[[str], Path],
                                                         val_images: list[np.ndarray]) -> None:
    best = trained(name)
    ck = load_checkpoint(best)
    assert ck["model"] == name and ck["epoch"] == 0
    onnx_path = export_onnx(best, parity_images=val_images, echo=lambda s: None)
    assert onnx_path.stat().st_size > 100_000


STATIC_CASES = [pytest.param(n, marks=pytest.mark.skip(reason=TOOD_STATIC)) if n.startswith("tood") else n
                for n in MODELS]


@pytest.mark.parametrize("name", STATIC_CASES)
def test_static_graph_is_trt_ready_with_parity(name: str, trained: Callable[[str], Path],
                                               val_images: list[np.ndarray], tmp_path: Path) -> None:
    """Static graph (batch 2, 128x128, 4 val photos: two full chunks) of the one-epoch model:
    export_onnx itself fails below 99% parity or when the readiness check fails; here the figures
    are re-read and the readiness re-checked on the written file."""
    ck = load_checkpoint(trained(name))
    ck["model_args"] = {**ck["model_args"], "box_score_thresh": PARITY_SCORE_THRESH}
    src = save_atomic(ck, tmp_path / "best.pt")
    lines: list[str] = []
    path = export_onnx(src, tmp_path / "static.onnx", static=True, batch=STATIC_BATCH,
                       parity_images=val_images, echo=lines.append)
    text = "\n".join(lines)
    ready = check_trt_readiness(path)
    assert ready.ready, ready.summary()
    assert "If" not in ready.op_counts and "NonZero" not in ready.op_counts
    matched = re.search(r"matched\s+(\d+) \(([\d.]+)%", text)
    torch_boxes = int(re.search(r"torch boxes\s+(\d+)", text).group(1))
    assert matched and float(matched.group(2)) >= 99.0, text
    print(f"\nZOO static {name}: parity {matched.group(1)}/{torch_boxes} boxes ({matched.group(2)}%), "
          f"{ready.summary().splitlines()[0]}")
