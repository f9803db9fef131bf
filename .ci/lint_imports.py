#!/usr/bin/env python3
"""Check the import contracts of ``.importlinter`` on det_toolkit laid out as it is installed.

import-linter builds its graph with grimp, which walks the package's folder on disk. det_toolkit's
sub-packages live in other folders (``setup.cfg`` ``package_dir``: ``det_toolkit.train`` ->
``train/``, ...) and the editable install reaches them through an import hook that grimp does not
follow, so in the checkout grimp sees ``det_toolkit/__init__.py`` alone and every contract passes
vacuously. This script therefore:

1. copies the ``.py`` files of every package in ``setup.cfg``'s ``packages`` list from its
   ``package_dir`` folder to ``OUT/det_toolkit/...`` (what ``pip install`` would put in
   site-packages), and fails when a folder with an ``__init__.py`` under a package is missing from
   that list (it would not be installed);
2. builds grimp's graph of ``OUT`` and fails unless it holds every copied module (a contract over a
   graph without the modules would check nothing);
3. runs ``lint-imports`` on ``ROOT/.importlinter`` with ``PYTHONPATH=OUT`` from ``OUT`` (import-linter
   puts its working directory first on ``sys.path``; in ``ROOT`` that would be the bare
   ``det_toolkit/`` folder again).

Usage: ``python .ci/lint_imports.py [--root REPO] [--out DIR]``. ``DIR`` is recreated; by default
it is a fresh temporary folder under ``REPO/build/lint/``, removed afterwards (so concurrent runs do
not share one). Exit status 0 when every contract is kept, else 1.
"""

from __future__ import annotations

import argparse
import configparser
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT_PACKAGE = "det_toolkit"


class LayoutError(Exception):
    """setup.cfg and the folders disagree, or grimp does not see the copied modules."""


def _lines(value: str) -> list[str]:
    return [ln.strip() for ln in value.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def package_folders(root: Path) -> dict[str, Path]:
    """Every package of ``setup.cfg`` ``[options] packages`` -> its source folder under ``root``.

    A package's folder is its longest ``package_dir`` prefix's folder plus the remaining dotted
    parts (setuptools' rule).

    Raises:
        LayoutError: a listed package has no folder with an ``__init__.py``, or a folder with an
            ``__init__.py`` below a listed package is not listed (``pip install`` would drop it).
    """
    cfg = configparser.ConfigParser()
    cfg.read(root / "setup.cfg", encoding="utf-8")
    mapping = dict(ln.split("=", 1) for ln in _lines(cfg["options"]["package_dir"]))
    mapping = {k.strip(): v.strip() for k, v in mapping.items()}
    folders = {}
    for pkg in _lines(cfg["options"]["packages"]):
        parts = pkg.split(".")
        for n in range(len(parts), 0, -1):
            prefix = ".".join(parts[:n])
            if prefix in mapping:
                folders[pkg] = root.joinpath(mapping[prefix], *parts[n:])
                break
        else:
            folders[pkg] = root.joinpath(*parts)
        if not (folders[pkg] / "__init__.py").is_file():
            raise LayoutError(f"setup.cfg lists {pkg}, but {folders[pkg]} has no __init__.py")
    listed = {f.resolve() for f in folders.values()}
    for pkg, folder in folders.items():
        for init in folder.glob("*/__init__.py"):
            if init.parent.resolve() not in listed:
                raise LayoutError(f"{init.parent.relative_to(root)} is a package below {pkg} but setup.cfg "
                                  f"[options] packages does not list {pkg}.{init.parent.name}: add it")
    return folders


def copy_tree(root: Path, out: Path) -> list[str]:
    """Lay out det_toolkit under ``out`` as installed; returns the module names copied."""
    shutil.rmtree(out, ignore_errors=True)
    modules = []
    for pkg, folder in package_folders(root).items():
        dest = out.joinpath(*pkg.split("."))
        dest.mkdir(parents=True, exist_ok=True)
        for src in sorted(folder.glob("*.py")):
            shutil.copy2(src, dest / src.name)
            modules.append(pkg if src.stem == "__init__" else f"{pkg}.{src.stem}")
    return modules


def check_graph(out: Path, modules: list[str]) -> int:
    """Build grimp's graph of ``out`` in a subprocess and check it holds ``modules``.

    Returns:
        The number of modules in the graph.

    Raises:
        LayoutError: a copied module is missing from the graph (grimp looked somewhere else).
    """
    code = (f"import grimp; g = grimp.build_graph({ROOT_PACKAGE!r}, cache_dir=None); "
            "print('\\n'.join(sorted(g.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=out, env={**os.environ, "PYTHONPATH": str(out)},
                          capture_output=True, text=True, check=False)
    if proc.returncode:
        raise LayoutError(f"grimp could not build the graph of {out}:\n{proc.stderr}")
    seen = set(proc.stdout.split())
    missing = sorted(set(modules) - seen)
    if missing:
        raise LayoutError(f"grimp's graph of {out} lacks {len(missing)} of the {len(modules)} copied modules "
                          f"(e.g. {', '.join(missing[:5])}): it did not read the copy")
    return len(seen)


def main(argv: list[str] | None = None) -> int:
    """Command line entry; see the module docstring."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                    help="repository root (setup.cfg, .importlinter)")
    ap.add_argument("--out", type=Path, default=None,
                    help="where to lay out the package (default: a temporary folder under ROOT/build/lint)")
    args = ap.parse_args(argv)
    root = args.root.resolve()
    if args.out is not None:
        return lint(root, args.out.resolve())
    (root / "build" / "lint").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="run-", dir=root / "build" / "lint") as tmp:
        return lint(root, Path(tmp))


def lint(root: Path, out: Path) -> int:
    """Lay det_toolkit out under ``out``, check grimp sees it, run lint-imports; returns the exit status."""
    try:
        modules = copy_tree(root, out)
        n = check_graph(out, modules)
    except LayoutError as e:
        print(f"lint_imports: {e}", file=sys.stderr)
        return 1
    print(f"lint_imports: {n} modules of {ROOT_PACKAGE} laid out under {out}")
    cmd = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]
    proc = subprocess.run([*cmd, "--no-cache", "--no-logo", str(root / ".importlinter")], cwd=out,
                          env={**os.environ, "PYTHONPATH": str(out)}, check=False)
    return 1 if proc.returncode else 0


if __name__ == "__main__":
    sys.exit(main())
