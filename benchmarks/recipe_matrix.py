"""Does the default recipe transfer? Train it, untouched, on three datasets and layouts, evaluate each
checkpoint and its exported graph, and print one Markdown table.

    python -m det_toolkit.benchmarks.recipe_matrix                      # all three (hours on a CPU)
    python -m det_toolkit.benchmarks.recipe_matrix --only raccoon-yolo --epochs 1 --imgsz 128  # smoke run

Datasets (:data:`DATASETS`): raccoon as Pascal VOC (``configs/raccoon.yaml``), Penn-Fudan converted to
COCO and raccoon converted to YOLO (``det-convert ... --images symlink`` into the output folder, never
into the repository). Each goes through the commands a user types, each in its own process with its
output in ``OUT/logs/``: ``det-train --data D`` (default flags, so epochs and input size are chosen
from the data; ``--epochs``/``--imgsz`` are passed through for smoke runs only), ``det-export
--no-embedder`` (with its parity check), ``det-eval`` of ``best.pt`` and of ``best.onnx`` on the val
split. Table columns: AP50 and mAP@[.5:.95] of both, the epochs run, the wall time of training plus
both evaluations (minutes), and the median training throughput (images/s, ``results.csv``). Everything
is also written to ``OUT/matrix.json`` (with the commands, machine and load) and ``OUT/matrix.md``.

Paths: raccoon from ``configs/raccoon.yaml`` (``$DET_DATA_RACCOON``), Penn-Fudan from
``$DET_DATA_PENNFUDAN``, else ``../shared/datasets/pennfudan`` relative to the current directory.
"""

from __future__ import annotations

import csv
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from det_toolkit.benchmarks.bench import WORKER_ENV, machine_info
from det_toolkit.configs import config_path
from det_toolkit.runtime.files import atomic_write, check_writable, increment_path

#: Penn-Fudan's folder: ``$DET_DATA_PENNFUDAN``, else the shared folder beside a checkout (relative
#: to the current directory, as :data:`det_toolkit.benchmarks.common.VTEST`).
PENNFUDAN = Path(os.environ.get("DET_DATA_PENNFUDAN") or "../shared/datasets/pennfudan")


@dataclass(frozen=True)
class MatrixDataset:
    """One row of the matrix.

    Attributes:
        name: ``--only`` name, e.g. ``pennfudan-coco``.
        dataset / layout: what the table shows.
        source: a data config or dataset folder ``det-convert`` or ``det-train`` reads.
        convert: ``det-convert --to`` format, or ``None`` to train on ``source`` as it is.
    """

    name: str
    dataset: str
    layout: str
    source: Path
    convert: str | None


DATASETS = (
    MatrixDataset("raccoon-voc", "raccoon", "VOC", config_path("raccoon.yaml"), None),
    MatrixDataset("pennfudan-coco", "Penn-Fudan", "COCO", PENNFUDAN, "coco"),
    MatrixDataset("raccoon-yolo", "raccoon", "YOLO", config_path("raccoon.yaml"), "yolo"),
)


@dataclass
class MatrixRow:
    """Results of one dataset: val AP50 / mAP@[.5:.95] of ``best.pt`` and ``best.onnx`` (det-eval),
    epochs run (and whether the data chose them), input size, wall times in seconds, median training
    images/s, and the run folder."""

    name: str
    dataset: str
    layout: str
    ap50_pt: float
    map_pt: float
    ap50_onnx: float
    map_onnx: float
    epochs: int
    imgsz: int
    from_data: list[str]
    train_s: float
    export_s: float
    eval_s: float
    train_img_s: float
    run_dir: str

    def markdown(self) -> str:
        """The row of :data:`HEADER`."""
        return (f"| {self.dataset} | {self.layout} | {self.ap50_pt:.3f} / {self.ap50_onnx:.3f} | "
                f"{self.map_pt:.3f} / {self.map_onnx:.3f} | {self.epochs} | {self.imgsz} | "
                f"{(self.train_s + self.eval_s) / 60:.1f} | {self.train_img_s:.2f} |")


HEADER = ("| dataset | layout | AP50 pt / onnx | mAP@[.5:.95] pt / onnx | epochs | imgsz | "
          "train+eval min | train img/s |\n|---|---|---:|---:|---:|---:|---:|---:|")


class StepError(click.ClickException):
    """A command of the matrix failed; the message holds its command line and the end of its log."""


def run_step(args: list[str], log: Path, echo: Any = click.echo) -> float:
    """Run ``python ARGS`` (with :data:`det_toolkit.benchmarks.bench.WORKER_ENV`), its output into
    ``log``; returns its wall time in seconds.

    Raises:
        StepError: a non-zero exit (the command and the last 15 lines of its log).
    """
    cmd = [sys.executable, *args]
    echo(f"  $ python {' '.join(args)}  (log: {log})")
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**WORKER_ENV, **os.environ},
                              check=False).returncode
    seconds = time.perf_counter() - t0
    if code:
        tail = "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:])
        raise StepError(f"{' '.join(args)} failed (exit {code}); end of {log}:\n{tail}")
    return seconds


def _metrics(folder: Path) -> tuple[float, float]:
    stats = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))["stats"]
    return float(stats["AP50"]), float(stats["mAP"])


def run_dataset(ds: MatrixDataset, out: Path, passthrough: list[str], echo: Any = click.echo) -> MatrixRow:
    """Convert (if the row asks), train, export and evaluate one dataset under ``out``.

    Folders: ``out/data/<name>`` (converted dataset, images symlinked), ``out/train/<name>``,
    ``out/eval/<name>-pt`` and ``-onnx``, ``out/logs/<name>_<step>.log``.

    Raises:
        StepError: a command failed.
    """
    logs = out / "logs"
    data = ds.source
    if ds.convert:
        conv = out / "data" / ds.name
        run_step(["-m", "det_toolkit.train.convert", str(ds.source), "--to", ds.convert, "--images", "symlink",
                  "--out", str(conv)], logs / f"{ds.name}_convert.log", echo)
        data = conv / "data.yaml"
    train_s = run_step(["-m", "det_toolkit.train", "--data", str(data), *passthrough, "--project",
                        str(out / "train"), "--name", ds.name], logs / f"{ds.name}_train.log", echo)
    run_dir = out / "train" / ds.name
    best = run_dir / "weights" / "best.pt"
    export_s = run_step(["-m", "det_toolkit.export.cli", str(best), "--no-embedder"],
                        logs / f"{ds.name}_export.log", echo)
    eval_s = 0.0
    scores = {}
    for kind, weights in (("pt", best), ("onnx", best.with_suffix(".onnx"))):
        eval_s += run_step(["-m", "det_toolkit.train.evaluate", "--weights", str(weights), "--data", str(data),
                            "--split", "val", "--project", str(out / "eval"), "--name", f"{ds.name}-{kind}"],
                           logs / f"{ds.name}_eval_{kind}.log", echo)
        scores[kind] = _metrics(out / "eval" / f"{ds.name}-{kind}")
    args = yaml.safe_load((run_dir / "args.yaml").read_text(encoding="utf-8"))
    with open(run_dir / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return MatrixRow(ds.name, ds.dataset, ds.layout, *scores["pt"], *scores["onnx"],
                     epochs=len(rows), imgsz=int(args["imgsz"]), from_data=list(args.get("from_data", [])),
                     train_s=round(train_s, 1), export_s=round(export_s, 1), eval_s=round(eval_s, 1),
                     train_img_s=round(statistics.median(float(r["train_img_s"]) for r in rows), 2),
                     run_dir=str(run_dir))


def table(rows: list[MatrixRow]) -> str:
    """The Markdown table of ``rows``."""
    return "\n".join([HEADER, *(r.markdown() for r in rows)])


def select(only: str | None) -> list[MatrixDataset]:
    """The datasets named in ``only`` (comma-separated :attr:`MatrixDataset.name`), all for ``None``.

    Raises:
        click.BadParameter: an unknown name (the known ones are listed).
    """
    if not only:
        return list(DATASETS)
    names = [n.strip() for n in only.split(",") if n.strip()]
    known = {d.name: d for d in DATASETS}
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise click.BadParameter(f"unknown dataset {', '.join(bad) or repr(only)}; known: {', '.join(known)}",
                                 param_hint="--only")
    return [known[n] for n in names]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--only", default=None, help="Comma-separated datasets: " + ", ".join(d.name for d in DATASETS))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              show_default="runs/recipe_matrix, runs/recipe_matrix2, ...",
              help="Output folder (must be absent or empty).")
@click.option("--epochs", type=click.IntRange(1), default=None, show_default="chosen from the data",
              help="Passed to det-train: for a quick smoke run only (the matrix measures the default recipe).")
@click.option("--imgsz", type=click.IntRange(32), default=None, show_default="chosen from the data",
              help="Passed to det-train: for a quick smoke run only.")
def main(only: str | None, out: Path | None, epochs: int | None, imgsz: int | None) -> None:
    """Train the default recipe on raccoon (VOC), Penn-Fudan (COCO) and raccoon (YOLO); print AP50,
    mAP@[.5:.95] of best.pt and best.onnx, epochs, wall time and training img/s as a Markdown table."""
    datasets = select(only)
    for ds in datasets:
        if not ds.source.exists():
            raise click.UsageError(f"{ds.name}: {ds.source} not found" + (
                " (set DET_DATA_PENNFUDAN, or run from a checkout beside shared/)" if ds.source == PENNFUDAN else ""))
    if out is None:
        out = increment_path(Path("runs/recipe_matrix"))
    elif out.exists() and any(out.iterdir()):
        raise click.UsageError(f"--out {out} is not empty: choose a new folder")
    else:
        check_writable(out, "--out")
        out.mkdir(parents=True, exist_ok=True)
    passthrough = [*(["--epochs", str(epochs)] if epochs else []), *(["--imgsz", str(imgsz)] if imgsz else [])]
    started = {"machine": machine_info(), "command": " ".join(sys.argv), "passthrough": passthrough}
    rows: list[MatrixRow] = []
    for ds in datasets:
        click.echo(f"{ds.name}:")
        rows.append(run_dataset(ds, out, passthrough))
        click.echo(table(rows[-1:]).splitlines()[-1])
        report = {**started, "load_avg_end": [round(v, 2) for v in os.getloadavg()],
                  "rows": [asdict(r) for r in rows]}
        atomic_write(out / "matrix.json", json.dumps(report, indent=2).encode())  # after every row
        atomic_write(out / "matrix.md", (table(rows) + "\n").encode())
    click.echo(table(rows))
    click.echo(f"wrote {out / 'matrix.json'} and {out / 'matrix.md'}")


if __name__ == "__main__":
    main()
