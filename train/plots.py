"""Training plots (matplotlib, headless Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_results(csv_path: Path, out: Path | None = None) -> Path:
    """Plot losses, mAP@[.5:.95] and AP50 per epoch from ``results.csv`` into ``results.png``."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = out or csv_path.with_suffix(".png")
    ep = [int(r["epoch"]) for r in rows]
    loss_keys = [k for k in rows[0] if k.startswith("loss")] if rows else []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for k in loss_keys:
        axes[0].plot(ep, [float(r[k]) for r in rows], marker=".", label=k)
    axes[0].set_title("training losses")
    axes[0].legend(fontsize=7)
    for k, ax in (("mAP", axes[1]), ("AP50", axes[2])):
        ax.plot(ep, [float(r[k]) for r in rows], marker="o")
        ax.set_title(f"val {k}" + (" @[.5:.95]" if k == "mAP" else ""))
        ax.set_ylim(0, 1)
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
