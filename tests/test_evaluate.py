"""det-eval (det_toolkit.train.evaluate): an .onnx artifact evaluated in a Python without torch gives
the same metrics as in-process, on real street-video frames labelled by det-label's HOG teacher; the
confusion-matrix IoU flag is --cm-iou; faster-coco-eval stays quiet unless asked."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import VTEST, no_torch_script

from det_toolkit.runtime.teachers import HogTeacher
from det_toolkit.train.coco_eval import confusion_matrix, evaluate_coco
from det_toolkit.train.data.samples import Sample
from det_toolkit.train.evaluate import evaluate_weights, main
from det_toolkit.train.label import label_source

need_video = pytest.mark.skipif(not VTEST.is_file(), reason=f"{VTEST} absent")


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.yaml of 8 vtest frames (every 25th of 0-199) labelled by the HOG teacher; val = the last 4."""
    out = tmp_path_factory.mktemp("people") / "data"
    summary = label_source(VTEST, HogTeacher(), out, "voc", every=25, end=200, val_fraction=0.5, progress=False)
    assert (summary.frames, summary.val) == (8, 4) and summary.boxes > 8
    return Path(summary.data)


@need_video
def test_det_eval_onnx_without_torch(people: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch")  # to build the artifact; det-eval itself runs without it
    from det_toolkit.benchmarks.artifacts import cached_detector

    onnx = cached_detector(256, 8)[1]  # class "person", random head: 8 boxes per image
    proc = subprocess.run([sys.executable, "-c", no_torch_script("det_toolkit.train.evaluate"), "--weights",
                           str(onnx), "--data", str(people), "--project", str(tmp_path), "--name", "ev"],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mAP@[.5:.95]" in proc.stdout and "4 images" in proc.stdout and "onnxruntime" in proc.stdout
    assert "det-eval val" in proc.stderr and "4/4" in proc.stderr  # the tqdm bar over the images
    assert "COCOeval_opt" not in proc.stdout + proc.stderr  # faster-coco-eval's INFO lines: off
    for f in ("metrics.json", "pr_curve.png", "confusion_matrix.png", "val_predictions.jpg"):
        assert (tmp_path / "ev" / f).stat().st_size > 100, f
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    ref = evaluate_weights(onnx, people, "val", device="cpu")  # the same evaluation, torch importable
    assert got["n_images"] == ref.info["n_images"] == 4 and got["images_skipped"] == got["images_truncated"] == []
    assert got["n_detections"] == ref.result.n_detections > 0
    assert got["stats"] == pytest.approx(ref.result.stats, abs=1e-6)
    assert got["class_names"] == ["person"] and got["backend"].startswith("onnxruntime")


@need_video
def test_cm_iou_flag(people: Path, tmp_path: Path) -> None:
    """--iou (which reads as NMS IoU) is gone; --cm-iou must lie in (0, 1]."""
    run = CliRunner().invoke
    res = run(main, ["--weights", str(people), "--data", str(people), "--iou", "0.5"])
    assert res.exit_code == 2 and "No such option '--iou'" in res.output
    res = run(main, ["--weights", str(people), "--data", str(people), "--cm-iou", "0"])
    assert res.exit_code == 2 and "--cm-iou" in res.output
    assert "confusion matrix" in run(main, ["--help"]).output.split("--cm-iou")[1].split("--plot-conf")[0]
    res = run(main, ["--weights", str(people), "--data", str(people), "--project", str(tmp_path)])
    assert res.exit_code == 1 and "unknown weights type '.yaml'" in res.output  # a clear error, no traceback


def test_faster_coco_eval_quiet_unless_verbose(caplog: pytest.LogCaptureFixture) -> None:
    s = [Sample(Path("a.jpg"), 100, 100, np.array([[10, 10, 50, 50]], np.float32), np.array([0]),
                np.array([False]), 0)]
    p = {0: (np.array([[12, 10, 50, 52]], np.float32), np.array([0.9], np.float32), np.array([0]))}
    caplog.set_level(logging.INFO)
    for verbose in (False, True):
        caplog.clear()
        assert evaluate_coco(s, p, ["a"], [1], verbose=verbose).stats["AP50"] == pytest.approx(1.0)
        assert confusion_matrix(s, p, ["a"], [1], verbose=verbose).tolist() == [[1, 0, 0]]
        chatter = [r for r in caplog.records if r.name.startswith("faster_coco_eval")]
        assert bool(chatter) == verbose, [r.getMessage() for r in chatter]
    assert logging.getLogger("faster_coco_eval").level == logging.NOTSET  # restored after the call
