"""The run folder of ``det-train`` and what is written into it besides checkpoints: ``args.yaml``,
``data_report.txt``, ``dataset_stats.png``, ``results.csv``, and the closing summary.

The folder is claimed (:func:`claim_run_dir`) only once everything that user input can break has
been built; a fresh run that fails before its first checkpoint removes the folder it created
(:func:`remove_failed_run`), so a failed run leaves no half-written run behind.
"""

from __future__ import annotations

import csv
import io
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from det_toolkit.runtime.files import atomic_write, increment_path
from det_toolkit.train import distributed as ddp
from det_toolkit.train.checkpoint import load_checkpoint
from det_toolkit.train.coco_eval import CocoResult
from det_toolkit.train.config import TrainConfig
from det_toolkit.train.data.samples import Sample
from det_toolkit.train.plots import plot_dataset_stats

Say = Callable[..., None]


def claim_run_dir(cfg: TrainConfig, resuming: bool, main: bool) -> tuple[Path, bool]:
    """``(run folder, whether this call created it)``: the checkpoint's folder when ``resuming``, else
    ``--project/--name`` made by :func:`det_toolkit.runtime.files.increment_path` on rank 0 and
    broadcast to every rank.

    Raises:
        OSError: the folder cannot be created.
    """
    if resuming:
        return Path(cfg.resume).resolve().parent.parent, False
    path = Path(cfg.project) / cfg.name
    existed = cfg.exist_ok and path.is_dir()
    run_dir = ddp.broadcast(increment_path(path, cfg.exist_ok) if main else None)
    return run_dir, not existed


def remove_failed_run(run_dir: Path) -> None:
    """Remove ``run_dir`` (a folder this run created) unless it holds a checkpoint: a run that failed
    before its first ``last.pt`` leaves nothing behind."""
    if not (run_dir / "weights" / "last.pt").exists():
        shutil.rmtree(run_dir, ignore_errors=True)


def write_run_files(cfg: TrainConfig, data: dict[str, Any], run_dir: Path, say: Say) -> None:
    """``weights/``, ``args.yaml``, ``data_report.txt`` and the dataset statistics (rank 0 only)."""
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    (run_dir / "args.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run_dir / "data_report.txt").write_text(
        "\n".join(data[s][1].table(max_files=20) for s in ("train", "val")) + "\n")
    write_dataset_stats(data["train"][0], data["names"], cfg.imgsz, run_dir, say)


def write_dataset_stats(samples: list[Sample], names: list[str], imgsz: int, run_dir: Path, say: Say) -> None:
    """Print boxes per class and write ``dataset_stats.png`` (counts, box-size histogram)."""
    counts = {n: 0 for n in names}
    sizes = []
    for s in samples:
        for b, lab in zip(s.boxes, s.labels):
            counts[names[int(lab)]] += 1
            sizes.append(float(np.sqrt((b[2] - b[0]) * (b[3] - b[1]))) * imgsz / max(s.width, s.height))
    say("training boxes per class: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    plot_dataset_stats(counts, np.asarray(sizes), imgsz, run_dir / "dataset_stats.png")


def csv_row(epoch: int, tr: dict[str, float], res: CocoResult, ms: float, epoch_s: float) -> dict[str, Any]:
    """One ``results.csv`` row: epoch (1-based), losses, lr, mAP/AP50/AP75, throughput, timings."""
    return {"epoch": epoch + 1, **{k: round(v, 5) for k, v in tr.items() if k.startswith("loss")},
            "lr": tr["lr"], "mAP": round(res.stats["mAP"], 5), "AP50": round(res.stats["AP50"], 5),
            "AP75": round(res.stats["AP75"], 5), "train_img_s": round(tr["img_s"], 2),
            "val_ms_per_img": round(ms, 1), "epoch_s": round(epoch_s, 1)}


def read_rows(path: Path, upto: int) -> list[dict[str, Any]]:
    """Rows of an existing results.csv for epochs ``<= upto`` (1-based; rows of a killed epoch are dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["epoch"]) <= upto]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``results.csv`` with ``rows`` (header from the last row), atomically."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[-1].keys()))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue().encode())


def print_summary(run_dir: Path, say: Say) -> None:
    """The best epoch's metrics (overall and per class), the run folder and the next command."""
    best = run_dir / "weights" / "best.pt"
    best_ckpt = load_checkpoint(best)
    m = best_ckpt["metrics"]
    say(f"best epoch {best_ckpt['epoch'] + 1}: mAP@[.5:.95] {m['mAP']:.4f}  AP50 {m['AP50']:.4f}")
    say(f"{'class':<24}{'AP50':>8}{'mAP':>8}")
    for name, v in m.get("per_class", {}).items():
        say(f"{name:<24}{v['AP50']:>8.4f}{v['AP']:>8.4f}")
    say(f"results in {run_dir}; export with: det-export {best}")
