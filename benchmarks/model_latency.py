"""CPU latency of every model in PyTorch eager mode, beside its parameters and GFLOPs.

    python -m det_toolkit.benchmarks.model_latency [--imgsz 416] [--runs 5] [--models a,b]

Prints, per model (1 class, random weights, ``box_score_thresh`` 0.05): parameters (M), forward
GFLOPs at ``imgsz x imgsz`` (``torch.utils.flop_counter``; RoIAlign, NMS and deformable convolutions
count 0) and the median wall time (ms) of ``--runs`` single-image forwards after one warm-up, with
torch's default threads. A figure printer, not a test.
"""

from __future__ import annotations

import statistics
import time

import click
import torch

from det_toolkit.train.models import MODELS, build_model
from det_toolkit.train.models.common import count_parameters, gflops


@click.command()
@click.option("--imgsz", default=416, show_default=True, help="square input size in pixels")
@click.option("--runs", default=5, show_default=True, help="timed forwards per model")
@click.option("--models", default="", help="comma-separated subset (default: all)")
def main(imgsz: int, runs: int, models: str) -> None:
    """Print params, GFLOPs and median CPU latency per model."""
    names = [m for m in models.split(",") if m] or list(MODELS)
    torch.manual_seed(0)
    x = [torch.rand(3, imgsz, imgsz)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, imgsz {imgsz}")
    print(f"{'model':<40}{'params M':>9}{'GFLOPs':>8}{'ms (median)':>13}")
    for name in names:
        model = build_model(name, 1, weights=None).eval()
        with torch.inference_mode():
            model(x)
            ts = []
            for _ in range(runs):
                t = time.perf_counter()
                model(x)
                ts.append((time.perf_counter() - t) * 1000)
        print(f"{name:<40}{count_parameters(model) / 1e6:>9.2f}{gflops(model, imgsz):>8.1f}"
              f"{statistics.median(ts):>13.1f}", flush=True)


if __name__ == "__main__":
    main()
