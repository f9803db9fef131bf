"""Typed config values at the boundary: det-train recipes and flags, data YAMLs, det-run's tracker YAML.

Every case is a real file read the way the CLIs read it, with the exact message asserted; the last
tests run the installed commands in subprocesses over a corpus of bad configs.
"""

from __future__ import annotations

import configparser
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from det_toolkit.runtime.config_utils import ConfigError, coerce, from_dict, load_yaml_mapping
from det_toolkit.runtime.tracking import DEFAULT_TRACKER_CONFIG, TrackerConfig
from det_toolkit.train.config import DataConfig, TrainConfig, default_workers, load_data_config, load_train_config
from tests.conftest import make_synthetic


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- det-train recipes (--cfg) and flags -------------------------------------------------------------

def test_recipe_strings_become_typed_values(tmp_path: Path) -> None:
    recipe = _write(tmp_path / "recipe.yaml", 'lr: 1e-3\nepochs: "12"\nema: yes\nwarmup_epochs: 2\n'
                                              "lr_step: 8\nname: 2024\nbatch: 8.0\n")
    raw = yaml.safe_load(recipe.read_text())
    assert raw["lr"] == "1e-3" and raw["epochs"] == "12"  # what PyYAML really hands over
    tc = load_train_config(recipe, {})
    assert (tc.lr, tc.epochs, tc.ema, tc.warmup_epochs, tc.lr_step, tc.name, tc.batch) == \
        (0.001, 12, True, 2.0, "8", "2024", 8)
    assert type(tc.lr) is float and type(tc.epochs) is int and type(tc.warmup_epochs) is float
    assert type(tc.batch) is int


@pytest.mark.parametrize(("line", "message"), [
    ("epochs: 1.5", "recipe.yaml: epochs: expected an integer, got 1.5"),
    ("lr: abc", "recipe.yaml: lr: expected a number, got 'abc'"),
    ("lr: .nan", "recipe.yaml: lr: expected a number, got nan"),
    ("imgsz: -3", "recipe.yaml: imgsz: must be >= 1, got -3"),
    ("imgsz: 100", "recipe.yaml: imgsz: must be a multiple of 32 (the FPN stride), got 100"),
    ("lr: 0", "recipe.yaml: lr: must be > 0, got 0.0"),
    ("workers: -1", "recipe.yaml: workers: must be >= 0, got -1"),
    ("batch: [4, 8]", "recipe.yaml: batch: expected an integer, got a list [4, 8]"),
    ("model: {name: x}", "recipe.yaml: model: expected a string, got a mapping {'name': 'x'}"),
    ("epochs:", "recipe.yaml: epochs: expected an integer, got null"),
    ("ema: 2", "recipe.yaml: ema: expected true or false, got 2"),
    ("lr: true", "recipe.yaml: lr: expected a number, got true"),
    ("aug: heavy", "recipe.yaml: aug: 'heavy' is not one of none, light, default, strong"),
    ("scheduler: step", "recipe.yaml: lr_step: the step scheduler needs --lr-step (lr_step:), the epochs "
                        "at which to decay, e.g. 8,11"),
    ("epoch: 3", "recipe.yaml: unknown key 'epoch' (did you mean 'epochs'?)"),
])
def test_bad_recipe_values_name_file_and_key(tmp_path: Path, line: str, message: str) -> None:
    recipe = _write(tmp_path / "recipe.yaml", f"data: d.yaml\n{line}\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(recipe, {})
    assert str(e.value) == str(recipe.parent / message)


def test_flag_errors_name_the_flag_and_flags_override_the_recipe(tmp_path: Path) -> None:
    recipe = _write(tmp_path / "recipe.yaml", "lr: abc\nepochs: 3\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(recipe, {"imgsz": -3, "lr": 0.01})
    assert str(e.value) == "--imgsz: must be >= 1, got -3"
    with pytest.raises(ConfigError) as e:  # a flag overriding a bad recipe value does not hide it
        load_train_config(recipe, {"lr": 0.02})
    assert str(e.value) == f"{recipe}: lr: expected a number, got 'abc'"
    good = _write(tmp_path / "good.yaml", "lr: 1e-3\nepochs: 3\n")
    assert load_train_config(good, {"lr": 0.02}).lr == 0.02  # the flag replaces the recipe's value
    with pytest.raises(ConfigError) as e:
        load_train_config(None, {"warmup_factor": -0.5})
    assert str(e.value) == "--warmup-factor: must be >= 0, got -0.5"


def test_yaml_syntax_error_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    recipe = _write(tmp_path / "recipe.yaml", "epochs: 3\nlr: [0.1\nbatch: 4\n")
    with pytest.raises(ConfigError) as e:
        load_train_config(recipe, {})
    assert str(e.value) == f"{recipe}:3: invalid YAML: expected ',' or ']', but got ':'"
    bad = _write(tmp_path / "indent.yaml", "epochs: 3\n  lr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_yaml_mapping(bad)
    assert str(e.value) == f"{bad}:2: invalid YAML: mapping values are not allowed here"
    assert "\n" not in str(e.value)
    listing = _write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"list.yaml: expected a mapping of keys, got a list \[1, 2\]"):
        load_yaml_mapping(listing)
    assert load_yaml_mapping(_write(tmp_path / "empty.yaml", "")) == {}


def test_coerce_rules() -> None:
    assert coerce("12", int, "k") == 12 and coerce(12.0, int, "k") == 12 and coerce("1e3", int, "k") == 1000
    assert coerce("1e-3", float, "k") == 0.001 and coerce(3, float, "k") == 3.0
    assert coerce(None, int | None, "k") is None and coerce("7", int | None, "k") == 7
    assert coerce(["a", 1], list[str], "k") == ["a", "1"]
    assert coerce("x.json", str | list[str], "k") == "x.json"
    assert coerce(["a", "b"], str | list[str], "k") == ["a", "b"]
    assert coerce("Off", bool, "k") is False and coerce(1, bool, "k") is True
    for value, tp, msg in ((True, int, "k: expected an integer, got true"),
                           ("1.5", int, "k: expected an integer, got '1.5'"),
                           ("inf", float, "k: expected a number, got 'inf'"),
                           ("x", list[str], "k: expected a list of strings, got 'x'"),
                           ({"a": 1}, str | list[str], "k: expected a string or a list of strings, got a "
                                                       "mapping {'a': 1}"),
                           ([1], int | None, "k: expected an integer or null, got a list [1]")):
        with pytest.raises(ConfigError) as e:
            coerce(value, tp, "k")
        assert str(e.value) == msg


def test_direct_construction_still_checks() -> None:
    with pytest.raises(ConfigError, match="^imgsz: must be a multiple of 32"):
        TrainConfig(imgsz=100)
    with pytest.raises(ConfigError, match="^format: 'xml' is not one of auto, coco, voc, yolo$"):
        DataConfig(path=".", train="a", val="b", format="xml")
    with pytest.raises(ConfigError) as e:
        from_dict(DataConfig, {"path": ".", "val": "v"}, "d.yaml")
    assert str(e.value) == "d.yaml: missing required key 'train'"


# --- data YAMLs -------------------------------------------------------------------------------------

def _data(tmp_path: Path, text: str) -> Path:
    return _write(tmp_path / "data.yaml", text)


@pytest.mark.parametrize(("text", "message"), [
    ("train: a\nval: null\n", "data.yaml: val: expected a string or a list of strings, got null"),
    ("train: a\nval: b\nnames: raccoon\n", "data.yaml: names: expected a list of strings, got 'raccoon'"),
    ("train: a\nval: b\nnames: {0: a, 2: b}\n", "data.yaml: names: class ids must be 0..1 without gaps, got 0, 2"),
    ("train: a\nval: b\nnames: {x: a}\n", "data.yaml: names: class ids must be integers, got 'x'"),
    ("train: a\nval: b\nnc: 2\nnames: [a]\n", "data.yaml: nc: nc: 2 but names lists 1 classes ['a']"),
    ("train: a\nval: b\nnc: two\n", "data.yaml: nc: expected an integer or null, got 'two'"),
    ("train: a\nval: b\nnames: [a, a]\n", "data.yaml: names: duplicate class names ['a']"),
    ("train: a\nval: b\nformat: xml\n", "data.yaml: format: 'xml' is not one of auto, coco, voc, yolo"),
    ("train: a\nval: b\nnmaes: [x]\n", "data.yaml: unknown key 'nmaes' (did you mean 'names'?)"),
    ("train: a\nvla: b\n", "data.yaml: unknown key 'vla' (did you mean 'val'?)"),
    ("train: a\n", "data.yaml: missing required key 'val'"),
    ("train: a\nval: [b\n", "data.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'"),
])
def test_bad_data_yaml_names_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    p = _data(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_data_config(p)
    assert str(e.value) == str(tmp_path / message)


def test_data_yaml_names_dict_nc_and_foreign_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    p = _data(tmp_path, "train: ../train/images\nval: ../valid/images\nnc: 2\nnames: {1: fox, 0: raccoon}\n"
                        "roboflow:\n  workspace: w\n  license: CC BY 4.0\ndownload: bash get.sh\n"
                        "url: https://example.org/d\ncomment: shot in 2017\n")
    with caplog.at_level(logging.INFO, logger="det_toolkit.train.config"):
        cfg = load_data_config(p)
    assert cfg.names == ["raccoon", "fox"] and cfg.nc == 2 and cfg.path == str(tmp_path)
    notes = [r.getMessage() for r in caplog.records]
    assert notes == [f"{p}: ignoring keys det-toolkit does not use: roboflow, download, url, comment"]
    only_nc = load_data_config(_data(tmp_path, "train: a\nval: b\nnc: 3\n"))
    assert only_nc.names == ["class_0", "class_1", "class_2"]  # Ultralytics' rule
    renamed = load_data_config(_data(tmp_path, "train: a\nvalidation: b\nnames: [x]\n"))
    assert renamed.val == "b"


def test_data_yaml_path_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ds" / "train" / "images").mkdir(parents=True)
    (tmp_path / "cfgs").mkdir()
    cfg = load_data_config(_write(tmp_path / "cfgs" / "d.yaml", "path: ../ds\ntrain: train/images\nval: x\n"))
    assert cfg.root == tmp_path / "ds" and cfg.split_path("train/images") == tmp_path / "ds" / "train" / "images"
    monkeypatch.setenv("DS_ROOT", str(tmp_path / "ds"))
    cfg = load_data_config(_write(tmp_path / "cfgs" / "e.yaml", "path: ${DS_ROOT}\ntrain: [train/images]\nval: x\n"))
    assert cfg.root == tmp_path / "ds" and cfg.train == "train/images"  # one-entry list -> the entry
    # Roboflow: YAML inside the dataset folder, 'train: ../train/images' -> falls back to ./train/images
    cfg = load_data_config(_write(tmp_path / "ds" / "data.yaml", "train: ../train/images\nval: ../valid/images\n"))
    assert cfg.root == tmp_path / "ds"
    assert cfg.split_path("../train/images") == tmp_path / "ds" / "train" / "images"
    assert cfg.split_path("../valid/images") == tmp_path / "valid" / "images"  # neither exists: as written


# --- det-run's tracker YAML -------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "message"), [
    ("n_init: abc\n", "t.yaml: n_init: expected an integer, got 'abc'"),
    ("max_age: 1.5\n", "t.yaml: max_age: expected an integer, got 1.5"),
    ("max_iou_distance: 1.5\n", "t.yaml: max_iou_distance: must be in [0, 1], got 1.5"),
    ("nn_budget: 0\n", "t.yaml: nn_budget: must be >= 1 or null (unbounded), got 0"),
    ("max_cosine_dist: 0.3\n", "t.yaml: unknown key 'max_cosine_dist' (did you mean 'max_cosine_distance'?)"),
    ("max_age: [30]\n", "t.yaml: max_age: expected an integer, got a list [30]"),
    ("max_age: 30\n n_init: 3\n", "t.yaml:2: invalid YAML: mapping values are not allowed here"),
])
def test_bad_tracker_yaml(tmp_path: Path, text: str, message: str) -> None:
    p = _write(tmp_path / "t.yaml", text)
    with pytest.raises(ConfigError) as e:
        TrackerConfig.from_yaml(p)
    assert str(e.value) == str(tmp_path / message)


def test_tracker_yaml_values_are_coerced(tmp_path: Path) -> None:
    assert TrackerConfig.from_yaml(DEFAULT_TRACKER_CONFIG) == TrackerConfig()
    cfg = TrackerConfig.from_yaml(_write(tmp_path / "t.yaml", 'max_age: "20"\nmax_cosine_distance: 3e-1\n'
                                                              "nn_budget: null\n"))
    assert cfg == TrackerConfig(max_age=20, max_cosine_distance=0.3, nn_budget=None)


# --- the installed commands over a corpus of bad configs --------------------------------------------

def _entry_points() -> dict[str, str]:
    """``det-train`` -> ``module:function`` from setup.cfg (what ``pip install`` makes the command run)."""
    cfg = configparser.ConfigParser()
    cfg.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {k.strip(): v.strip() for k, _, v in (ln.partition("=") for ln in lines) if v}


def _cli(cmd: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run command ``cmd`` as its console script does, in a fresh Python."""
    module, _, func = _entry_points()[cmd].partition(":")
    code = f"import sys; sys.argv[0] = {cmd!r}; from {module} import {func}; sys.exit({func}())"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Bad recipes, data YAMLs and tracker YAMLs, plus a valid synthetic dataset and a dummy weights file."""
    d = tmp_path_factory.mktemp("corpus")
    make_synthetic(d / "synth", n_train=2, n_val=1)
    files = {
        "lr_abc.yaml": "lr: abc\n", "epochs_float.yaml": "epochs: 1.5\n", "syntax.yaml": "epochs: 3\nlr: [0.1\n",
        "null_epochs.yaml": "epochs: null\n", "typo.yaml": "epoch: 3\n",
        "data_typo.yaml": "path: synth\ntrain: train.txt\nval: val.txt\nnmaes: [square, bar]\n",
        "data_syntax.yaml": "path: synth\ntrain: train.txt\n  val: val.txt\n",
        "data_nc.yaml": "path: synth\ntrain: train.txt\nval: val.txt\nnc: 3\nnames: [square, bar]\n",
        "data_gap.yaml": "path: synth\ntrain: train.txt\nval: val.txt\nnames: {0: square, 5: bar}\n",
        "data_null.yaml": "path: synth\ntrain: null\nval: val.txt\nnames: [square, bar]\n",
        "tracker_abc.yaml": "n_init: abc\n", "tracker_syntax.yaml": "max_age: 3\n n_init: 2\n",
        "tracker_typo.yaml": "max_cosine_dist: 0.3\n",
    }
    for name, text in files.items():
        (d / name).write_text(text)
    (d / "w.onnx").write_bytes(b"not loaded: config errors come first")
    return d


TRAIN_CASES = [
    (["--cfg", "lr_abc.yaml", "--data", "x.yaml"], "lr_abc.yaml: lr: expected a number, got 'abc'"),
    (["--cfg", "epochs_float.yaml"], "epochs_float.yaml: epochs: expected an integer, got 1.5"),
    (["--cfg", "syntax.yaml"], "syntax.yaml:3: invalid YAML: expected ',' or ']', but got '<stream end>'"),
    (["--cfg", "null_epochs.yaml"], "null_epochs.yaml: epochs: expected an integer, got null"),
    (["--cfg", "typo.yaml"], "typo.yaml: unknown key 'epoch' (did you mean 'epochs'?)"),
    (["--data", "x.yaml", "--imgsz", "-3"], "--imgsz: must be >= 1, got -3"),
    (["--data", "data_typo.yaml", "--project", "runs"], "data_typo.yaml: unknown key 'nmaes' (did you mean 'names'?)"),
    (["--data", "data_syntax.yaml", "--project", "runs"], "data_syntax.yaml:3: invalid YAML: mapping values are "
                                                          "not allowed here"),
]
DATA_CASES = [
    ("data_nc.yaml", "data_nc.yaml: nc: nc: 3 but names lists 2 classes ['square', 'bar']"),
    ("data_gap.yaml", "data_gap.yaml: names: class ids must be 0..1 without gaps, got 0, 5"),
    ("data_null.yaml", "data_null.yaml: train: expected a string or a list of strings, got null"),
    ("data_syntax.yaml", "data_syntax.yaml:3: invalid YAML: mapping values are not allowed here"),
]
TRACKER_CASES = [
    ("tracker_abc.yaml", "tracker_abc.yaml: n_init: expected an integer, got 'abc'"),
    ("tracker_syntax.yaml", "tracker_syntax.yaml:2: invalid YAML: mapping values are not allowed here"),
    ("tracker_typo.yaml", "tracker_typo.yaml: unknown key 'max_cosine_dist' (did you mean 'max_cosine_distance'?)"),
]


def _assert_clean_failure(proc: subprocess.CompletedProcess[str], message: str, corpus: Path) -> None:
    err = proc.stderr.replace(str(corpus) + os.sep, "")
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert f"Error: {message}" in err, err
    assert "Traceback" not in proc.stderr + proc.stdout


@pytest.mark.parametrize(("args", "message"), TRAIN_CASES)
def test_det_train_bad_configs_fail_cleanly(corpus: Path, args: list[str], message: str) -> None:
    _assert_clean_failure(_cli("det-train", *args, cwd=corpus), message, corpus)


@pytest.mark.parametrize(("data", "message"), DATA_CASES)
def test_det_eval_bad_data_yaml_fails_cleanly(corpus: Path, data: str, message: str) -> None:
    proc = _cli("det-eval", "--weights", "w.onnx", "--data", data, "--project", "runs", cwd=corpus)
    _assert_clean_failure(proc, message, corpus)


@pytest.mark.parametrize(("tracker", "message"), TRACKER_CASES)
def test_det_run_bad_tracker_yaml_fails_cleanly(corpus: Path, tracker: str, message: str) -> None:
    proc = _cli("det-run", "synth/images", "--weights", "w.onnx", "--track", "--tracker", tracker,
                "--project", "runs", cwd=corpus)
    _assert_clean_failure(proc, message, corpus)


def test_default_workers_follow_the_cpus_this_process_may_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert default_workers() == 0 and TrainConfig().workers == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert default_workers() == 2 and TrainConfig().workers == 2
    assert TrainConfig(workers=3).workers == 3  # a given value always wins
