"""det-bench: one real (small) measurement, rows for formats that cannot run here, the report files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from det_toolkit.benchmarks.bench import (
    Row,
    Unavailable,
    artifact,
    machine_info,
    run_bench,
    write_report,
)
from det_toolkit.benchmarks.cli import main
from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
from det_toolkit.train.models import build_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "configs" / "raccoon.yaml"
RACCOON = ROOT.parent / "shared" / "datasets" / "raccoon"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The raccoon data with a 4-image val split (keeps the mAP evaluation short)."""
    if not (RACCOON / "images").is_dir():
        pytest.skip(f"real raccoon data not found at {RACCOON}")
    d = tmp_path_factory.mktemp("data")
    stems = (RACCOON / "val.txt").read_text().split()[:4]
    (d / "val4.txt").write_text("\n".join(stems) + "\n")
    cfg = d / "raccoon4.yaml"
    cfg.write_text(json.dumps({"path": str(RACCOON), "format": "voc", "train": str(d / "val4.txt"),
                               "val": str(d / "val4.txt"), "names": ["raccoon"]}))
    return cfg


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (RACCOON / "images").is_dir():
        pytest.skip(f"real raccoon data not found at {RACCOON}")
    model = build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights="auto", box_score_thresh=0.05)
    return save_atomic(make_checkpoint(model, ["raccoon"], imgsz=128), tmp_path_factory.mktemp("b") / "best.pt")


def test_bench_torch_row_and_unavailable_trt(ckpt: Path, data: Path, tmp_path: Path) -> None:
    trt_missing = True
    try:
        artifact("trt", ckpt, None, 1)
    except Unavailable as e:
        assert "TensorRT is not available" in str(e)
    else:
        trt_missing = False
    formats = ["torch", "trt"] if trt_missing else ["torch"]
    rows = run_bench([ckpt], str(data), formats, batch=2, warmup=0, iters=2, video=None,
                     workdir=tmp_path, echo=lambda s: None)
    torch_row = rows[0]
    assert torch_row.status == "ok", torch_row.note
    assert torch_row.model == "fasterrcnn_mobilenet_v2_fpn" and torch_row.params_m > 1 and torch_row.gflops > 0
    assert 0 <= torch_row.map <= torch_row.ap50 <= 1 and torch_row.p95_ms >= torch_row.p50_ms > 0
    assert torch_row.throughput > 0 and torch_row.peak_rss_mib > 100 and torch_row.size_mib > 1
    if trt_missing:
        assert rows[1].status == "skipped" and "TensorRT" in rows[1].note and rows[1].p50_ms is None
    paths = write_report(rows, machine_info(), tmp_path / "reports", "t", command="det-bench test")
    md = paths["md"].read_text()
    assert "| fasterrcnn_mobilenet_v2_fpn | torch |" in md and "CPU:" in md and "onnxruntime" in md
    assert "measuring processes: OMP_WAIT_POLICY=" in md  # PyTorch's workers do not spin (see WORKER_ENV)
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(paths["json"].read_text())
    assert saved["machine"]["versions"]["torch"] and len(saved["rows"]) == len(rows)


def test_report_shows_skipped_rows(tmp_path: Path) -> None:
    rows = [Row(model="m", format="onnx", size_mib=1.5, map=0.4, ap50=0.8, p50_ms=10.0, p95_ms=12.0,
                throughput=100.0, extra={"fp16_match_rate": 0.97, "fp16_n_matched": 97, "fp16_n_ref_boxes": 100,
                                         "fp16_n_images": 40, "fp16_criterion": "boxes scoring >= 0.25",
                                         "fp16_strict_match_rate": 0.9}),
            Row(model="m", format="onnx-fp16", extra={"fp16_match_rate": 0.99}),
            Row(model="m", format="trt", status="skipped", note="no GPU")]
    md = write_report(rows, machine_info(), tmp_path, "r")["md"].read_text()
    assert "skipped: no GPU" in md
    assert ("FP16 vs FP32 boxes matched 97.0% (97/100 on 40 val images) [boxes scoring >= 0.25], FAIL at 98%; "
            r"all boxes at \|score diff\| <= 0.01: 90.0%") in md  # pipes escaped in the table
    assert "| FP16 vs FP32 boxes matched 99.0% |" in md  # older metadata without the criterion


def test_report_int8_row_note(tmp_path: Path) -> None:
    """An onnx-int8 row says how its boxes compare with the fp32 static graph, against det-export's
    INT8 gate, and which scope and calibration made it."""
    from det_toolkit.benchmarks.bench import FORMATS, SUFFIX
    from det_toolkit.export.int8 import INT8_MIN_MATCH

    assert "onnx-int8" in FORMATS and SUFFIX["onnx-int8"] == "_int8.onnx"
    extra = {"int8_match_rate": 0.985, "int8_n_matched": 197, "int8_n_ref_boxes": 200, "int8_n_images": 40,
             "int8_criterion": "boxes scoring >= 0.25, IoU >= 0.5", "int8_strict_match_rate": 0.7,
             "int8_scope": "heads", "int8_calib_images": 64}
    rows = [Row(model="m", format="onnx-int8", size_mib=20.0, p50_ms=5.0, extra=extra),
            Row(model="m", format="onnx-int8", extra={**extra, "int8_match_rate": INT8_MIN_MATCH - 0.01})]
    md = write_report(rows, machine_info(), tmp_path, "r")["md"].read_text()
    assert (f"INT8 vs FP32 boxes matched 98.5% (197/200 on 40 val images) [boxes scoring >= 0.25, IoU >= 0.5], "
            f"PASS at {INT8_MIN_MATCH:.0%}; all boxes at IoU >= 0.9, " + r"\|score diff\| <= 0.01: 70.0%; "
            "scope heads, 64 calibration images |") in md
    assert f"FAIL at {INT8_MIN_MATCH:.0%}" in md


def test_cli_errors(tmp_path: Path) -> None:
    """Bad arguments are usage errors that leave no run folder behind."""
    project = ["--project", str(tmp_path / "runs")]
    result = CliRunner().invoke(main, ["--data", str(DATA), *project])
    assert result.exit_code == 2 and "--weights and/or --models" in result.output
    result = CliRunner().invoke(main, ["--data", str(DATA), "--models", "nope_net", *project])
    assert result.exit_code == 2 and "unknown model" in result.output
    result = CliRunner().invoke(main, ["--data", str(DATA), "--models", "fasterrcnn_mobilenet_v2_fpn",
                                       "--formats", "torch,tflite", *project])
    assert result.exit_code == 2 and "unknown formats ['tflite']" in result.output
    result = CliRunner().invoke(main, ["--data", str(DATA), "--models", "m", "--video", str(tmp_path / "no.avi")])
    assert result.exit_code == 2 and "no.avi" in result.output and "does not exist" in result.output
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="unknown formats"):
        run_bench([], str(DATA), ["tflite"])


def test_cli_writes_the_report_to_an_incremented_run_folder(ckpt: Path, data: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """``--project/--name`` (relative to the working directory, never the package folder); an
    existing run folder is not reused; without --video the det-run FPS column is skipped with a note."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "bench" / "b").mkdir(parents=True)
    result = CliRunner().invoke(main, ["--weights", str(ckpt), "--data", str(data), "--formats", "torch",
                                       "--warmup", "0", "--iters", "1", "--name", "b"])
    assert result.exit_code == 0, result.output
    assert "note: no --video given: the det-run FPS column is skipped" in result.output
    run = Path("runs/bench/b2")
    assert sorted(p.name for p in run.iterdir()) == ["report.json", "report.md", "report.png"]
    saved = json.loads((run / "report.json").read_text())
    (row,) = saved["rows"]
    assert row["format"] == "torch" and row["status"] == "ok" and row["video_fps"] is None and row["map"] is not None
    assert saved["command"].startswith("det-bench") and not any((tmp_path / "runs" / "bench" / "b").iterdir())


def test_train_workers_prints_each_setting_interleaved(tmp_path: Path) -> None:
    """The DataLoader-workers benchmark runs det-train per setting and round and tables the figures."""
    from click.testing import CliRunner

    from det_toolkit.benchmarks.train_workers import main as workers_main
    from tests.conftest import make_synthetic

    data = make_synthetic(tmp_path / "syn", n_train=4, n_val=2, size=64)
    res = CliRunner().invoke(workers_main, ["--data", str(data), "--workers", "0,1", "--rounds", "2",
                                            "--epochs", "2", "--imgsz", "64"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    runs = [ln for ln in lines if ln.startswith("round ")]
    assert [ln.split(":")[0] for ln in runs] == ["round 1 workers 0", "round 1 workers 1",
                                                "round 2 workers 1", "round 2 workers 0"]
    assert all(len(ln.split(":")[1].split(",")) == 2 for ln in runs)  # one img/s per epoch
    rows = [ln for ln in lines if ln.startswith("| 0 |") or ln.startswith("| 1 |")]
    assert len(rows) == 2 and all(float(r.split("|")[2]) > 0 and float(r.split("|")[3]) > 0 for r in rows)
