"""Training speed against the number of DataLoader worker processes, interleaved in one run.

    python -m det_toolkit.benchmarks.train_workers --data D [--workers 0,1,2] [--rounds 2] [--epochs 3]

Runs ``det-train --data D --epochs E --workers W`` once per value of ``--workers`` in each round
(the order rotates between rounds, so a change in the machine's load falls on every setting),
reads each run's ``results.csv`` and prints, per setting, the median training img/s and seconds per
epoch (``epoch_s``: an epoch's training pass, without its val pass) of epoch 1 and of the later
epochs apart: worker processes are forked again for every epoch, from a process that has by then
trained and evaluated. Everything else is det-train's default recipe; ``--imgsz`` fixes the input
size so that every run trains the same pixels.
"""

from __future__ import annotations

import csv
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import click


def _run(data: str, workers: int, epochs: int, imgsz: int, folder: Path, name: str) -> list[dict[str, str]]:
    """One det-train run; returns its ``results.csv`` rows (one per epoch)."""
    cmd = [sys.executable, "-m", "det_toolkit.train", "--data", data, "--epochs", str(epochs),
           "--imgsz", str(imgsz), "--workers", str(workers), "--project", str(folder), "--name", name]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(folder / name / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def _median(rows: list[dict[str, str]], key: str) -> str:
    return f"{statistics.median(float(x[key]) for x in rows):.2f}" if rows else "-"


@click.command()
@click.option("--data", required=True, help="data YAML to train on")
@click.option("--workers", "workers_", default="0,1,2", show_default=True, help="comma-separated values to compare")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(1), help="runs per setting")
@click.option("--epochs", default=3, show_default=True, type=click.IntRange(1), help="epochs per run")
@click.option("--imgsz", default=416, show_default=True, type=click.IntRange(32), help="input size of every run")
def main(data: str, workers_: str, rounds: int, epochs: int, imgsz: int) -> None:
    """Print the median training img/s and s/epoch for each --workers value."""
    values = [int(v) for v in workers_.split(",")]
    rows: dict[int, list[dict[str, str]]] = {w: [] for w in values}
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {rounds} round(s) x {epochs} epoch(s) at {imgsz} px")
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            order = values[r % len(values):] + values[:r % len(values)]
            for w in order:
                got = _run(data, w, epochs, imgsz, Path(tmp), f"w{w}r{r}")
                rows[w] += got
                print(f"round {r + 1} workers {w}: " + ", ".join(f"{x['train_img_s']}" for x in got) + " img/s",
                      flush=True)
    print("\n| workers | img/s epoch 1 | img/s later epochs | s/epoch later |\n|---:|---:|---:|---:|")
    for w in values:
        first = [x for x in rows[w] if x["epoch"] == "1"]
        later = [x for x in rows[w] if x["epoch"] != "1"]
        print(f"| {w} | {_median(first, 'train_img_s')} | {_median(later, 'train_img_s')} | "
              f"{_median(later, 'epoch_s')} |")
    print(f"load at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
