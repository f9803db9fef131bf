"""Training plots (matplotlib, headless Agg backend)."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_results(csv_path: Path, out: Path | None = None) -> Path:
    """Plot losses, learning rate, mAP@[.5:.95] and AP50 per epoch from ``results.csv`` into
    ``results.png``."""
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = out or csv_path.with_suffix(".png")
    ep = [int(r["epoch"]) for r in rows]
    loss_keys = [k for k in rows[0] if k.startswith("loss")] if rows else []
    fig, axes = plt.subplots(1, 4, figsize=(19, 4))
    for k in loss_keys:
        axes[0].plot(ep, [float(r[k]) for r in rows], marker=".", label=k)
    axes[0].set_title("training losses")
    axes[0].legend(fontsize=7)
    axes[1].plot(ep, [float(r["lr"]) for r in rows], marker=".")
    axes[1].set_title("learning rate (last step of the epoch)")
    for k, ax in (("mAP", axes[2]), ("AP50", axes[3])):
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


def plot_pr_curves(precision: np.ndarray, class_names: list[str], out: Path) -> Path:
    """Precision-recall curves at IoU 0.5 and 0.75 per class from COCOeval's ``precision``
    array ``[T=10, R=101, K, A, M]`` (area "all", 100 detections)."""
    rec = np.linspace(0, 1, precision.shape[1])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, t, name in ((axes[0], 0, "IoU 0.50"), (axes[1], 5, "IoU 0.75")):
        for k, cls in enumerate(class_names):
            p = precision[t, :, k, 0, -1]
            if (p > -1).any():
                ap = p[p > -1].mean()
                ax.plot(rec, np.where(p > -1, p, np.nan), label=f"{cls} AP {ap:.3f}")
        ax.set(xlabel="recall", ylabel="precision", title=f"PR curve, {name}", xlim=(0, 1),
               ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_confusion_matrix(cm: np.ndarray, class_names: list[str], out: Path, conf: float,
                          iou: float) -> Path:
    """Draw the ``[K, K + 2]`` matrix of :func:`det_toolkit.train.coco_eval.confusion_matrix` (counts)."""
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(2.2 + 0.6 * (k + 2), 1.8 + 0.5 * k))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(k + 2), [*class_names, "FP", "FN"], rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, f"{v:.0f}", ha="center", va="center",
                color="white" if v > cm.max() / 2 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=f"confusion (score >= {conf}, IoU >= {iou})")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def plot_dataset_stats(boxes_per_class: dict[str, int], box_sizes: np.ndarray, imgsz: int,
                       out: Path) -> Path:
    """Boxes per class and a histogram of box sizes (``sqrt(w h)`` in pixels at ``imgsz``)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].bar(list(boxes_per_class), list(boxes_per_class.values()), color="tab:blue")
    axes[0].set(title="training boxes per class", ylabel="boxes")
    axes[0].tick_params(axis="x", rotation=45)
    axes[1].hist(box_sizes, bins=30, color="tab:orange")
    axes[1].set(title=f"box size sqrt(w*h) at imgsz {imgsz}", xlabel="pixels", ylabel="boxes")
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
