"""The one-way import layers (``.importlinter``, checked by ``make lint`` through
``.ci/lint_imports.py``): the check passes on the tree as it is, fails naming each deliberately added
back-edge, and really reads every module (a contract over a graph without them would check nothing)."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / ".ci" / "lint_imports.py"

pytest.importorskip("importlinter", reason="import-linter is a [dev] dependency")


def _package_folders() -> list[str]:
    """The repository folders setup.cfg's package_dir maps into det_toolkit."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg", encoding="utf-8")
    lines = [ln.split("=", 1)[1].strip() for ln in cfg["options"]["package_dir"].splitlines() if "=" in ln]
    return sorted(set(lines))


def _copy_tree(dst: Path) -> Path:
    """The package sources (.py files only), setup.cfg and .importlinter, copied under ``dst``."""
    def keep_py(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n == "__pycache__" or (not (Path(folder) / n).is_dir() and not n.endswith(".py"))]

    for folder in _package_folders():
        shutil.copytree(REPO / folder, dst / folder, ignore=keep_py, symlinks=True)
    for f in ("setup.cfg", ".importlinter"):
        shutil.copy2(REPO / f, dst / f)
    return dst


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), "--root", str(root), "--out", str(root / "build" / "lint")],
                          capture_output=True, text=True, timeout=300, check=False)


def _append(path: Path, line: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + f"\n{line}\n", encoding="utf-8")


def test_layers_kept_and_every_module_seen(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path / "repo")
    res = _lint(root)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out
    assert "Contracts: 2 kept, 0 broken." in out
    # grimp read the laid-out copy: every .py file of the package folders is a module of its graph
    n_files = sum(1 for folder in _package_folders() for _ in (root / folder).rglob("*.py"))
    assert f"lint_imports: {n_files} modules of det_toolkit" in out, out
    assert n_files > 50
    assert f"Analyzed {n_files} files" in out, out


def test_back_edges_fail_naming_the_edge(tmp_path: Path) -> None:
    root = _copy_tree(tmp_path / "repo")
    _append(root / "runtime" / "preprocess.py", "import det_toolkit.train  # back-edge: runtime -> train")
    _append(root / "train" / "config.py", "import det_toolkit.export  # back-edge: train -> export")
    _append(root / "det_toolkit" / "__init__.py", "from det_toolkit.train import config  # root -> train")
    res = _lint(root)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "Contracts: 0 kept, 2 broken." in out, out
    assert "det_toolkit.runtime is not allowed to import det_toolkit.train" in out
    assert "det_toolkit.runtime.preprocess -> det_toolkit.train" in out
    assert "det_toolkit.train is not allowed to import det_toolkit.export" in out
    assert "det_toolkit.train.config -> det_toolkit.export" in out
    assert "det_toolkit is not allowed to import det_toolkit.train.config" in out


def test_the_torch_backend_is_the_only_runtime_module_allowed_into_train(tmp_path: Path) -> None:
    """The ignore_imports entry covers runtime.backends.torch_backend alone: the same import from a
    sibling backend module breaks the contract."""
    root = _copy_tree(tmp_path / "repo")
    _append(root / "runtime" / "backends" / "onnx_backend.py", "from det_toolkit.train import checkpoint")
    res = _lint(root)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out
    assert "det_toolkit.runtime.backends.onnx_backend -> det_toolkit.train.checkpoint" in out
    assert "torch_backend" not in out.split("Broken contracts")[-1]


def test_unlisted_subpackage_is_an_error(tmp_path: Path) -> None:
    """A new sub-package folder missing from setup.cfg's packages would not be installed (nor checked)."""
    root = _copy_tree(tmp_path / "repo")
    (root / "runtime" / "extra").mkdir()
    (root / "runtime" / "extra" / "__init__.py").write_text("import det_toolkit.export\n", encoding="utf-8")
    res = _lint(root)
    assert res.returncode == 1
    assert "det_toolkit.runtime.extra" in res.stderr and "add it" in res.stderr, res.stderr
