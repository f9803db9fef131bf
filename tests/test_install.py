"""The base install as a user gets it: the wheel, without extras, in a fresh virtual environment.

``pip install det_toolkit-*.whl -c constraints.txt`` (the index and pins of ``make setup``), then,
from a folder outside the checkout (whose ``det_toolkit/`` folder would shadow the install):
PyTorch is absent; det-train and det-export stop with one line naming their extra; det-run tracks
a clip of the street video with an ONNX graph exported by the main environment's det-export;
det-label writes a dataset with the HOG teacher; det-eval scores the ONNX graph on raccoon photos.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest

from det_toolkit import __version__
from tests.conftest import VTEST, need_raccoon
from tests.test_packaging import ROOT, build_wheel

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CLIP_FRAMES = 20


class EdgeBox:
    """A fresh venv holding only the base install, and a working folder outside the checkout."""

    def __init__(self, venv: Path, cwd: Path) -> None:
        self.bin, self.cwd = venv / "bin", cwd
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
        self.env.update(PATH=f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}", VIRTUAL_ENV=str(venv))

    def run(self, command: str, *args: str | Path, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run the venv's ``command`` (a console script or ``python``) in :attr:`cwd`; prints its time."""
        t0 = time.perf_counter()
        proc = subprocess.run([str(self.bin / command), *map(str, args)], capture_output=True, text=True,
                              cwd=self.cwd, env=self.env, timeout=timeout)
        print(f"{command} {' '.join(map(str, args))[:80]}: exit {proc.returncode}, {time.perf_counter() - t0:.1f} s")
        return proc


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.fixture(scope="module")
def edge(tmp_path_factory: pytest.TempPathFactory) -> EdgeBox:
    root = tmp_path_factory.mktemp("edge")
    wheel = build_wheel(root / "wheel")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    (root / "work").mkdir()
    box = EdgeBox(venv, root / "work")
    t0 = time.perf_counter()
    proc = box.run("python", "-m", "pip", "install", "-q", wheel, "-c", ROOT / "constraints.txt", timeout=1200)
    print(f"pip install of the base wheel into a fresh venv: {time.perf_counter() - t0:.1f} s")
    ok(proc)
    return box


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained 1-class ('raccoon') detector exported by the main environment's det-export:
    ``det.onnx`` and ``deepsort_embedder.onnx`` (parity checked on one raccoon photo)."""
    import torch

    from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
    from det_toolkit.train.models import build_model

    photo = need_raccoon() / "images" / "raccoon-1.jpg"
    out = tmp_path_factory.mktemp("graph")
    torch.manual_seed(0)
    det = build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights="auto", box_score_thresh=0.0,
                      box_detections_per_img=8)
    save_atomic(make_checkpoint(det, ["raccoon"], 256), out / "det.pt")
    t0 = time.perf_counter()
    proc = subprocess.run([str(Path(sys.executable).parent / "det-export"), str(out / "det.pt"), "--no-simplify",
                           "--parity-images", str(photo)], capture_output=True, text=True, timeout=900)
    print(f"det-export (main venv): {time.perf_counter() - t0:.1f} s")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (out / "deepsort_embedder.onnx").is_file()
    return out / "det.onnx"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first frames of the street video, re-encoded with OpenCV (MJPG AVI)."""
    if not VTEST.is_file():
        pytest.skip(f"{VTEST} not found")
    cap = cv2.VideoCapture(str(VTEST))
    path = tmp_path_factory.mktemp("clip") / "street.avi"
    writer = None
    for _ in range(CLIP_FRAMES):
        ok_, frame = cap.read()
        assert ok_
        if writer is None:
            h, w = frame.shape[:2]
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
        writer.write(frame)
    cap.release()
    writer.release()
    return path


@pytest.fixture(scope="module")
def raccoon4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real raccoon photos with a 4-image val split (VOC), as a data config."""
    raccoon = need_raccoon()
    d = tmp_path_factory.mktemp("raccoon4")
    (d / "val4.txt").write_text("\n".join((raccoon / "val.txt").read_text().split()[:4]) + "\n")
    cfg = d / "raccoon4.yaml"
    cfg.write_text(json.dumps({"path": str(raccoon), "format": "voc", "train": str(d / "val4.txt"),
                               "val": str(d / "val4.txt"), "names": ["raccoon"]}))
    return cfg


def test_no_torch_and_extras_named_in_one_line(edge: EdgeBox, raccoon4: Path) -> None:
    proc = edge.run("python", "-c", "import torch")
    assert proc.returncode == 1 and "No module named 'torch'" in proc.stderr
    proc = edge.run("python", "-c", "import det_toolkit; print(det_toolkit.__file__)")
    assert str(edge.bin.parent) in ok(proc)  # the installed package, not the checkout
    (edge.cwd / "x.pt").write_bytes(b"never read")
    for args, line in [
        (("det-train", "--data", "x.yaml"), 'det-train needs PyTorch: pip install "det-toolkit[train]"'),
        (("det-export", "x.pt"), 'det-export needs PyTorch and ONNX: pip install "det-toolkit[export]"'),
        (("det-bench", "--data", "x.yaml"), 'det-bench needs PyTorch and ONNX: pip install "det-toolkit[export]"'),
        (("det-eval", "--weights", "x.pt", "--data", str(raccoon4)),
         'x.pt (a PyTorch checkpoint) needs PyTorch: pip install "det-toolkit[train]"'),
    ]:
        proc = edge.run(*args)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and line in proc.stderr, proc.stderr
    for command in ("det-run", "det-label", "det-eval"):
        assert ok(edge.run(command, "--version")).strip() == f"{command}, version {__version__}"


def test_det_run_tracks_a_clip(edge: EdgeBox, graph: Path, clip: Path) -> None:
    ok(edge.run("det-run", clip, "--weights", graph, "--track", "--save-txt", "--conf", "0.01",
                "--project", "runs/run", "--name", "clip"))
    run = edge.cwd / "runs" / "run" / "clip"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["frames"] == CLIP_FRAMES
    frames = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(frames) == CLIP_FRAMES
    mot = [line.split(",") for line in (run / "street_mot.txt").read_text().splitlines()]
    assert mot and all(len(row) == 10 and int(row[1]) >= 1 for row in mot)  # frame, track id, box, ...
    cap = cv2.VideoCapture(str(run / "street.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == CLIP_FRAMES
    cap.release()
    assert len(list((run / "labels").glob("*.txt"))) > 0


def test_det_label_writes_a_dataset(edge: EdgeBox, clip: Path) -> None:
    ok(edge.run("det-label", clip, "--teacher", "hog", "--every", "4", "--out", "people"))
    out = edge.cwd / "people"
    assert (out / "data.yaml").is_file()
    assert len(list((out / "images").glob("*.jpg"))) == CLIP_FRAMES // 4
    listed = (out / "train.txt").read_text().split() + (out / "val.txt").read_text().split()
    assert len(listed) == CLIP_FRAMES // 4


def test_det_eval_scores_the_onnx_graph(edge: EdgeBox, graph: Path, raccoon4: Path) -> None:
    ok(edge.run("det-eval", "--weights", graph, "--data", raccoon4, "--project", "runs/eval", "--name", "e"))
    metrics = json.loads((edge.cwd / "runs" / "eval" / "e" / "metrics.json").read_text())
    assert metrics["n_images"] == 4 and 0.0 <= metrics["stats"]["mAP"] <= metrics["stats"]["AP50"] <= 1.0
    assert "onnxruntime" in metrics["backend"]
