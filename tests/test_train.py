"""Training loop, checkpoints, resume and the CLIs on tiny synthetic data (fast) and raccoon (slow)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from train.checkpoint import (CheckpointError, load_checkpoint, make_checkpoint,
                              model_from_checkpoint, save_atomic)
from train.cli import eval_cli, train_cli
from train.engine import warmup_cosine
from train.models import MODELS, build_model, check_model_name

TINY = ["--imgsz", "128", "--batch", "4", "--workers", "0", "--lr", "0.005"]


def test_warmup_cosine_schedule() -> None:
    f = warmup_cosine(total_iters=100, warmup_iters=10, warmup_factor=0.001, lrf=0.05)
    assert f(0) == pytest.approx(0.001)
    assert f(5) == pytest.approx(0.5005)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.05 + 0.95 * 0.5)
    assert f(100) == pytest.approx(0.05)


def test_unknown_model_suggests_nearest() -> None:
    with pytest.raises(ValueError, match="did you mean 'fasterrcnn_resnet50_fpn'"):
        check_model_name("fasterrcnn_resnet50fpn")


@pytest.mark.parametrize("name", list(MODELS))
def test_every_builder_trains_a_step_and_round_trips(name: str, tmp_path: Path) -> None:
    model = build_model(name, 2, weights="auto")
    model.train()
    imgs = [torch.rand(3, 128, 160), torch.rand(3, 96, 128)]
    tg = [{"boxes": torch.tensor([[10.0, 10.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
          {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    losses = model(imgs, tg)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness"}
    sum(losses.values()).backward()
    path = save_atomic(make_checkpoint(model, ["a", "b"], 128), tmp_path / "m.pt")
    assert oct(path.stat().st_mode)[-3:] == "644"
    rebuilt = model_from_checkpoint(path)
    model.eval()
    x = [torch.rand(3, 128, 128)]
    with torch.no_grad():
        a, b = model(x)[0], rebuilt(x)[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    assert (a["labels"] < 2).all() and (a["labels"] >= 0).all()  # 0-based outside the model


def test_load_checkpoint_rejects_foreign_files(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="x.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save({"state_dict": {}}, tmp_path / "y.pt")
    with pytest.raises(CheckpointError, match="not a det-toolkit checkpoint"):
        load_checkpoint(tmp_path / "y.pt")


def _run(args: list[str]) -> str:
    res = CliRunner().invoke(train_cli, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return res.output


def test_train_writes_run_folder_and_resume_is_exact(synthetic: Path, tmp_path: Path) -> None:
    proj = str(tmp_path / "runs")
    _run(["--data", str(synthetic), "--epochs", "2", *TINY, "--project", proj, "--name", "full"])
    full = Path(proj) / "full"
    for f in ("args.yaml", "data_report.txt", "results.csv", "results.png",
              "weights/last.pt", "weights/best.pt"):
        assert (full / f).is_file(), f
    rows = list(csv.DictReader(open(full / "results.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(math.isfinite(float(r["loss"])) and 0 <= float(r["mAP"]) <= 1 for r in rows)
    assert float(rows[0]["train_img_s"]) > 0
    ck = load_checkpoint(full / "weights" / "last.pt")
    assert ck["class_names"] == ["square", "bar"] and ck["epoch"] == 1 and ck["imgsz"] == 128
    assert {"optimizer", "scheduler", "rng"} <= set(ck)
    assert "optimizer" not in load_checkpoint(full / "weights" / "best.pt")

    # the same run interrupted after epoch 1, then resumed, ends with identical weights
    _run(["--data", str(synthetic), "--epochs", "2", *TINY, "--project", proj, "--name", "part"])
    part = Path(proj) / "part"
    # simulate a kill after epoch 1: rebuild last.pt as it was at the end of epoch 1
    _run(["--data", str(synthetic), "--epochs", "1", *TINY, "--project", proj, "--name", "one"])
    one = load_checkpoint(Path(proj) / "one" / "weights" / "last.pt")
    one["train_args"]["epochs"] = 2  # same recipe as the full run, stopped after epoch 1
    one["train_args"]["name"] = "part"
    save_atomic(one, part / "weights" / "last.pt")
    out = _run(["--resume", str(part / "weights" / "last.pt")])
    assert "resuming" in out
    a = load_checkpoint(full / "weights" / "last.pt")
    b = load_checkpoint(part / "weights" / "last.pt")
    assert b["epoch"] == 1
    for k in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][k], b["state_dict"][k], rtol=0, atol=0, msg=k)
    assert a["metrics"]["mAP"] == b["metrics"]["mAP"]


def test_run_folder_increments_and_bad_flags_fail(synthetic: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(train_cli, ["--data", str(synthetic), "--aug", "heavy"])
    assert res.exit_code != 0 and "aug='heavy' is not one of" in res.output
    res = CliRunner().invoke(train_cli, ["--data", str(synthetic), "--model", "fasterrcnn_resnet5"])
    assert res.exit_code != 0 and "did you mean" in res.output
    res = CliRunner().invoke(train_cli, ["--help"])
    assert "--imgsz" in res.output and "default: 416" in res.output


def test_det_eval_on_checkpoint(synthetic: Path, tmp_path: Path) -> None:
    proj = tmp_path / "runs"
    _run(["--data", str(synthetic), "--epochs", "1", *TINY, "--project", str(proj), "--name", "e"])
    res = CliRunner().invoke(eval_cli, ["--weights", str(proj / "e" / "weights" / "best.pt"),
                                        "--data", str(synthetic), "--project", str(proj / "eval")])
    assert res.exit_code == 0, res.output
    assert "mAP@[.5:.95]" in res.output and "square" in res.output
    m = json.loads((proj / "eval" / "exp" / "metrics.json").read_text())
    assert 0.0 <= m["stats"]["mAP"] <= 1.0 and m["n_images"] == 4
    assert set(m["per_class"]) == {"square", "bar"}
