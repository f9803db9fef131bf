"""The data-dependent recipe (epochs from the training set's size, input size from its box sizes):
the rules, their printed block, flags and --cfg overriding them, the record in the run's config; and
benchmarks/recipe_matrix.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from det_toolkit.benchmarks import recipe_matrix
from det_toolkit.train.checkpoint import load_checkpoint
from det_toolkit.train.cli import train_cli
from det_toolkit.train.config import ConfigError, TrainConfig, load_data_config, load_train_config
from det_toolkit.train.data.formats import read_split
from det_toolkit.train.data.samples import Sample
from det_toolkit.train.run_data import (
    BASE_IMGSZ,
    MAX_AUTO_IMGSZ,
    MAX_EPOCHS,
    MIN_EPOCHS,
    auto_epochs,
    auto_imgsz,
    choose_recipe,
)
from tests.conftest import ROOT, SHARED, make_synthetic, need_raccoon


def _samples(image_wh: tuple[int, int], box_sides: list[float], n_images: int = 10) -> list[Sample]:
    """``n_images`` samples of size ``image_wh``, each with square boxes of the given sides (px)."""
    w, h = image_wh
    boxes = np.array([[0, 0, s, s] for s in box_sides], np.float32).reshape(-1, 4)
    return [Sample(Path(f"{i}.png"), w, h, boxes, np.zeros(len(boxes), np.int64), np.zeros(len(boxes), bool))
            for i in range(n_images)]


def test_epochs_rule_targets_800_steps_within_bounds() -> None:
    assert auto_epochs(160, 4)[0] == 20  # raccoon: 40 steps/epoch, the former default kept
    assert auto_epochs(130, 4)[0] == 25  # Penn-Fudan: 32 steps/epoch (last partial batch dropped)
    assert auto_epochs(161, 4)[0] == 20 and auto_epochs(159, 4)[0] == 21  # ceil(800 / 39)
    assert auto_epochs(100_000, 4)[0] == MIN_EPOCHS == 12  # large sets: at least Detectron's 1x
    assert auto_epochs(8, 4)[0] == MAX_EPOCHS == 100  # tiny sets: 2 steps/epoch, capped
    assert auto_epochs(3, 4)[0] == MAX_EPOCHS  # fewer images than a batch: one step per epoch
    assert auto_epochs(160, 8)[0] == auto_epochs(160, 4, world=2)[0] == 40  # 20 steps/epoch
    assert "from 130 train images: 32 steps/epoch at batch 4, 800 steps" in auto_epochs(130, 4)[1]


def test_imgsz_rule_follows_the_small_boxes() -> None:
    # large boxes: the default 416 (never smaller)
    assert auto_imgsz(_samples((500, 400), [200, 300]))[0] == BASE_IMGSZ
    # 1280 px images whose smallest 10% are 40 px (0.03125 of the side): 32 px needs 1024, capped at 832
    imgsz, why = auto_imgsz(_samples((1280, 720), [40] * 3 + [200] * 7))
    assert imgsz == MAX_AUTO_IMGSZ == 832 and "capped" in why
    # 12 px of 600 px (0.02): 1600 wanted; images of 600 px: never above their own size (rounded up to 32)
    assert auto_imgsz(_samples((600, 400), [12] * 5 + [100] * 5))[0] == 608
    # 1000 px images, small boxes 60 px (0.06): 32 / 0.06 = 533 -> 544
    imgsz, why = auto_imgsz(_samples((1000, 800), [60] * 3 + [300] * 7))
    assert imgsz == 544 and "capped" not in why
    assert np.isclose(0.06 * 544, 32.64) and 0.06 * 512 < 32  # the smallest multiple of 32 that reaches 32 px
    assert auto_imgsz(_samples((640, 480), []))[0] == BASE_IMGSZ  # no boxes: the default


def test_real_datasets_keep_416_and_get_epochs_from_their_size() -> None:
    """Raccoon keeps the former defaults (20 epochs, 416 px); Penn-Fudan (130 train images, people
    large in the frame) gets 25 epochs at 416 px."""
    need_raccoon()
    raccoon = read_split(load_data_config(ROOT / "configs" / "raccoon.yaml"), "train")[0]
    cfg = choose_recipe(TrainConfig(data="x"), raccoon, say=lambda *a: None)
    assert (cfg.epochs, cfg.imgsz, cfg.from_data) == (20, 416, ["epochs", "imgsz"])
    pennfudan = SHARED / "datasets" / "pennfudan"
    if not (pennfudan / "Annotation").is_dir():
        pytest.skip(f"Penn-Fudan not found at {pennfudan}")
    from det_toolkit.train.data.pennfudan import read_pennfudan

    people = read_pennfudan(pennfudan, "train").samples
    cfg = choose_recipe(TrainConfig(data="x"), people, say=lambda *a: None)
    assert (len(people), cfg.epochs, cfg.imgsz) == (130, 25, 416)


def test_given_values_win_and_the_choice_is_printed(tmp_path: Path) -> None:
    samples = _samples((1000, 800), [60] * 3 + [300] * 7, n_images=40)
    lines: list[str] = []
    cfg = choose_recipe(TrainConfig(data="x", epochs=3), samples, say=lines.append)
    assert (cfg.epochs, cfg.imgsz, cfg.from_data) == (3, 544, ["imgsz"])
    block = lines[0].splitlines()
    assert block[0].startswith("recipe") and block[1].split()[:3] == ["epochs", "3", "given"]
    assert block[2].split()[:2] == ["imgsz", "544"] and "from box sizes" in block[2]
    assert block[3].split()[:2] == ["anchors", "auto"] and "fitted to the training boxes" in block[3]
    cfg = choose_recipe(TrainConfig(data="x", imgsz=320, anchors="default"), samples, say=lines.append)
    assert (cfg.epochs, cfg.imgsz, cfg.from_data) == (80, 320, ["epochs"])  # 40 images: 10 steps/epoch
    assert "anchors default given" in lines[1]
    # a --cfg value is as explicit as a flag
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("imgsz: 256\n")
    cfg = choose_recipe(load_train_config(recipe, {"epochs": 2}), samples, say=lines.append)
    assert (cfg.epochs, cfg.imgsz, cfg.from_data) == (2, 256, [])


def test_config_checks_of_the_automatic_keys() -> None:
    assert (TrainConfig().epochs, TrainConfig().imgsz) == (0, 0)
    with pytest.raises(ConfigError, match="^epochs: must be >= 1, got -1"):
        TrainConfig(epochs=-1)
    with pytest.raises(ConfigError, match=r"^from_data: \['lr'\] are not among the keys chosen from the data"):
        TrainConfig(from_data=["lr"])


def test_det_train_records_what_the_data_chose(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "synth")  # 128 px images: the rule keeps 416
    res = CliRunner().invoke(train_cli, ["--data", str(data), "--epochs", "1", "--batch", "4", "--workers", "0",
                                         "--project", str(tmp_path / "runs"), "--name", "r"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "  epochs  1       given" in res.output and "  imgsz   416     from box sizes" in res.output
    run = tmp_path / "runs" / "r"
    args = yaml.safe_load((run / "args.yaml").read_text())
    assert (args["epochs"], args["imgsz"], args["from_data"]) == (1, 416, ["imgsz"])
    ck = load_checkpoint(run / "weights" / "best.pt")
    assert ck["imgsz"] == 416 and ck["train_args"]["from_data"] == ["imgsz"]
    # the saved config as a recipe: everything is given now, nothing is chosen again
    out = tmp_path / "again"
    res = CliRunner().invoke(train_cli, ["--cfg", str(run / "args.yaml"), "--show-aug", "1", "--project", str(out)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "  imgsz   416     given" in res.output and "  epochs  1       given" in res.output


def test_recipe_matrix_rejects_unknown_datasets_and_full_folders(tmp_path: Path) -> None:
    res = CliRunner().invoke(recipe_matrix.main, ["--only", "raccoon-voc,coco128"])
    assert res.exit_code == 2
    assert "unknown dataset coco128; known: raccoon-voc, pennfudan-coco, raccoon-yolo" in res.output
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    res = CliRunner().invoke(recipe_matrix.main, ["--only", "raccoon-voc", "--out", str(tmp_path / "full")])
    assert res.exit_code == 2 and "is not empty" in res.output


@pytest.mark.slow
def test_recipe_matrix_smoke_run_on_raccoon_in_yolo_layout(tmp_path: Path) -> None:
    """det-convert to YOLO, det-train 1 epoch at 128 px, det-export, det-eval of .pt and .onnx: one row."""
    need_raccoon()
    out = tmp_path / "matrix"
    proc = subprocess.run([sys.executable, "-m", "det_toolkit.benchmarks.recipe_matrix", "--only", "raccoon-yolo",
                           "--epochs", "1", "--imgsz", "128", "--out", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    print(proc.stdout)
    report = json.loads((out / "matrix.json").read_text())
    (row,) = report["rows"]
    assert (row["dataset"], row["layout"], row["epochs"], row["imgsz"], row["from_data"]) == \
        ("raccoon", "YOLO", 1, 128, [])
    assert 0 < row["ap50_pt"] <= 1 and 0 < row["map_pt"] <= row["ap50_pt"]
    assert abs(row["ap50_pt"] - row["ap50_onnx"]) < 0.02 and abs(row["map_pt"] - row["map_onnx"]) < 0.02
    assert row["train_img_s"] > 0 and row["train_s"] > 0 and row["eval_s"] > 0
    assert (out / "data" / "raccoon-yolo" / "images").is_dir()  # converted in the output folder
    assert any(p.is_symlink() for p in (out / "data" / "raccoon-yolo" / "images").rglob("*.jpg"))
    assert proc.stdout.splitlines()[-2] == row_md(row) and (out / "matrix.md").read_text().startswith("| dataset |")


def row_md(row: dict) -> str:
    """The Markdown row recipe_matrix prints for a JSON row."""
    return recipe_matrix.MatrixRow(**row).markdown()
