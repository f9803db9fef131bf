"""The main job end to end on real data (slow: minutes on 2 CPU cores; CI runs it once):
det-train on the raccoon photos -> det-export (ONNX, parity) -> det-eval on both formats ->
det-run on the raccoon val images and on the whole street video with Deep SORT tracking."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest
from click.testing import CliRunner

from det_toolkit.export.cli import main as export_cli
from det_toolkit.runtime.cli import main as run_cli
from det_toolkit.train.checkpoint import load_checkpoint
from det_toolkit.train.cli import train_cli
from det_toolkit.train.evaluate import main as eval_cli
from tests.conftest import RACCOON, VTEST, need_raccoon

pytestmark = pytest.mark.slow
CFG = Path(__file__).resolve().parents[1] / "configs" / "raccoon.yaml"


def _ok(cmd, args: list[str]) -> str:
    res = CliRunner().invoke(cmd, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """best.pt after 2 epochs at 256 px on the real raccoon train split."""
    need_raccoon()
    root = tmp_path_factory.mktemp("e2e")
    _ok(train_cli, ["--data", str(CFG), "--epochs", "2", "--imgsz", "256", "--workers", "0",
                    "--project", str(root), "--name", "r"])
    return root / "r" / "weights" / "best.pt"


def test_short_real_training_learns(trained: Path) -> None:
    ck = load_checkpoint(trained)
    # a random detector scores ~0; the pretrained MobileNetV2 default learns raccoons in 2 epochs
    assert ck["metrics"]["AP50"] > 0.2, ck["metrics"]
    assert ck["class_names"] == ["raccoon"] and ck["data"]["val"] == "val.txt"


def test_export_parity_eval_and_run_on_real_data(trained: Path, tmp_path: Path) -> None:
    out = _ok(export_cli, [str(trained)])
    onnx_path = trained.with_suffix(".onnx")
    assert onnx_path.is_file() and (trained.parent / "deepsort_embedder.onnx").is_file()
    assert "PASS" in out

    # det-eval gives the same accuracy for .pt and .onnx (both through the runtime backends)
    stats = {}
    for w in (trained, onnx_path):
        _ok(eval_cli, ["--weights", str(w), "--data", str(CFG), "--project", str(tmp_path),
                       "--name", w.suffix[1:]])
        stats[w.suffix] = json.loads((tmp_path / w.suffix[1:] / "metrics.json").read_text())["stats"]
    assert stats[".onnx"]["AP50"] == pytest.approx(stats[".pt"]["AP50"], abs=0.01)
    assert stats[".onnx"]["AP50"] > 0.2

    # annotated raccoon val images from a list file
    val = [RACCOON / "images" / f"{s}.jpg" for s in (RACCOON / "val.txt").read_text().split()]
    lst = tmp_path / "val_images.txt"
    lst.write_text("\n".join(map(str, val)))
    _ok(run_cli, [str(lst), "--weights", str(onnx_path), "--project", str(tmp_path), "--name", "val"])
    lines = (tmp_path / "val" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 40
    found = sum(bool(json.loads(ln)["detections"]) for ln in lines)
    assert found >= 20, f"raccoons found in only {found}/40 val images"


def test_tracking_the_whole_street_video(trained: Path, tmp_path: Path) -> None:
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} not found")
    onnx_path = trained.with_suffix(".onnx")
    if not onnx_path.is_file():
        _ok(export_cli, [str(trained)])
    out = _ok(run_cli, [str(VTEST), "--weights", str(onnx_path), "--track", "--conf", "0.05",
                        "--project", str(tmp_path), "--name", "video"])
    run = tmp_path / "video"
    assert "FPS" in out
    cap = cv2.VideoCapture(str(run / "vtest.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 795
    assert (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))) == (768, 576)
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(10.0, abs=0.01)
    ok, frame = cap.read()
    assert ok and frame.shape == (576, 768, 3)
    lines = (run / "predictions.jsonl").read_text().splitlines()
    assert [json.loads(ln)["frame"] for ln in lines] == list(range(795))
    for row in (run / "vtest_mot.txt").read_text().splitlines():
        f, tid, x, y, w, h, *_ = row.split(",")
        assert 1 <= int(f) <= 795 and int(tid) >= 1 and float(w) > 0 and float(h) > 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["frames"] == 795 and summary["fps"] > 0
