"""Console-script entry points of the commands that need a pip extra (``setup.cfg`` ``console_scripts``).

Each checks its extra with :func:`det_toolkit.runtime.deps.require_extra` before importing the
command's module, whose imports need PyTorch (and ONNX): in the base install (no extras) the command
prints one line and exits with status 1, whatever its arguments::

    Error: det-train needs PyTorch: pip install "det-toolkit[train]" (missing: torch, torchvision, matplotlib)

The commands of the base install (det-run, det-label, det-eval) are entered directly; det-eval and
det-run check for PyTorch only when given a ``.pt`` checkpoint (:func:`det_toolkit.runtime.backends.load_backend`).
"""

from __future__ import annotations

import sys

import click

from det_toolkit.runtime.deps import EXPORT, TRAIN, Extra, MissingExtraError, require_extra


def _require(extra: Extra, command: str) -> None:
    """Exit with status 1 and one line on stderr (click's ``Error:`` format) if ``extra`` is missing."""
    try:
        require_extra(extra, command)
    except MissingExtraError as e:
        click.echo(f"Error: {e}", err=True)
        sys.exit(1)


def det_train() -> None:
    """``det-train`` (:func:`det_toolkit.train.cli.train_cli`); needs ``[train]``."""
    _require(TRAIN, "det-train")
    from det_toolkit.train.cli import train_cli

    train_cli(prog_name="det-train")


def det_export() -> None:
    """``det-export`` (:func:`det_toolkit.export.cli.main`); needs ``[export]``."""
    _require(EXPORT, "det-export")
    from det_toolkit.export.cli import main

    main(prog_name="det-export")


def det_bench() -> None:
    """``det-bench`` (:func:`det_toolkit.benchmarks.cli.main`); needs ``[export]`` (it exports
    checkpoints before measuring them)."""
    _require(EXPORT, "det-bench")
    from det_toolkit.benchmarks.cli import main

    main(prog_name="det-bench")
