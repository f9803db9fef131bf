"""RoI pooling in exported graphs: ONNX ``RoiAlign``, separable matrix products, folded box head.

Exports one checkpoint three times with the same code (each parity-checked on the checkpoint's
val images, as ``det-export`` does), for each graph kind asked for (the dynamic batch-1 graph,
static graphs at ``--batch`` sizes):

* ``RoiAlign``: separable pooling switched off (``RoIPoolOptions(separable_max_cells=0)``), every
  level through ONNX ``RoiAlign``, as before it existed;
* ``separable``: pooling as two matrix products into a bins-first box head, the head's first layer
  kept apart (``RoIPoolOptions(fold_head=False)``);
* ``det-export``: as ``det-export`` does now (the box head's first layer folded into the pooling
  where that is cheaper, :class:`det_toolkit.export.roi_fold.FoldedRoILinear`).

Then runs the versions interleaved, frame by frame, on video frames letterboxed as ``det-run``
does, and prints the median ms per image and, for each graph, the fraction of the PyTorch
checkpoint's boxes (score >= ``--conf``) it reproduces (same class, IoU >= 0.95).

    python -m det_toolkit.benchmarks.roi_pool_bench --weights runs/train/nano/weights/best.pt \
        --batch 1 --batch 5

Needs torch (it exports). A figure printer, not a test.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click

from det_toolkit.benchmarks.common import VTEST, match_count, read_frames

#: the exports compared: column name, ``RoIPoolOptions`` keyword arguments (none: det-export's)
VARIANTS: list[tuple[str, dict[str, int | bool]]] = [
    ("RoiAlign", {"separable_max_cells": 0, "fold_head": False}),
    ("separable", {"fold_head": False}),
    ("det-export", {}),
]


def _export(ckpt: Path, out: Path, batch: int | None, pooling: dict[str, int | bool]) -> Path:
    """det-export of ``ckpt`` (parity on its dataset's val images) with the pooling options ``pooling``."""
    # deferred: torch (the benchmark CLI imports without it)
    from det_toolkit.export.onnx_export import export_onnx
    from det_toolkit.export.roi_pool import RoIPoolOptions

    return export_onnx(ckpt, out, static=batch is not None, batch=batch or 1, echo=lambda _: None,
                       pooling=RoIPoolOptions(**pooling))


@click.command(context_settings={"show_default": True})
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="det-train checkpoint (.pt).")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(1),
              help="Static graph batch sizes (repeatable); the dynamic batch-1 graph is always measured.")
@click.option("--video", default=VTEST, type=click.Path(exists=True, path_type=Path))
@click.option("--frames", default=10, type=click.IntRange(1), help="Frames timed per graph (after 2 warm-ups).")
@click.option("--conf", default=0.25, type=float, help="Boxes compared: score >= conf.")
def main(weights: Path, batches: tuple[int, ...], video: Path, frames: int, conf: float) -> None:
    """Print ms/image of WEIGHTS' graphs with each RoI pooling variant and their box agreement."""
    from det_toolkit.runtime.backends import load_backend
    from det_toolkit.runtime.predictor import Predictor

    imgs = read_frames(video, frames + 2, 10)
    torch_pred = Predictor(load_backend(weights, "cpu"), conf)
    torch_dets = {i: torch_pred(im) for i, im in enumerate(imgs)}
    tmp = tempfile.TemporaryDirectory()
    kinds: list[int | None] = [None, *batches]
    rows = []
    for batch in kinds:
        tag = "dynamic b1" if batch is None else f"static b{batch}"
        paths = [_export(weights, Path(tmp.name) / f"{tag.replace(' ', '_')}_{name}.onnx", batch, pooling)
                 for name, pooling in VARIANTS]
        preds = [Predictor(load_backend(p, "cpu"), conf) for p in paths]
        n = batch or 1
        groups = [[(i + j) % len(imgs) for j in range(n)] for i in range(frames + 2)]
        ms: list[list[float]] = [[] for _ in VARIANTS]
        counts = [[0, 0] for _ in VARIANTS]
        for i, group in enumerate(groups):
            for k, pred in enumerate(preds):
                t = time.perf_counter()
                out = pred.predict_batch([imgs[g] for g in group])
                if i >= 2:
                    ms[k].append((time.perf_counter() - t) * 1e3 / n)
                for g, d in zip(group, out):
                    ref = torch_dets[g]
                    m, c = match_count(d.boxes, ref.boxes, d.labels, ref.labels)
                    counts[k][0] += m
                    counts[k][1] += c
        rows.append((tag, [statistics.median(m) for m in ms], counts))
    ref = load_backend(paths[0], "cpu")
    click.echo(f"\n{weights.name}: {ref.meta.model}, imgsz {ref.meta.imgsz}, {frames} {video.name} frames, "
               f"ONNX Runtime CPU, median ms per image (input letterboxing included)")
    names = [name for name, _ in VARIANTS]
    click.echo(f"{'graph':<14}" + "".join(f"{n:>12}" for n in names) + f"{'speed-up':>10}  PyTorch boxes reproduced ("
               + ", ".join(names) + ")")
    for tag, times, counts in rows:
        cells = [f"{m}/{c} = {m / max(c, 1):.1%}" for m, c in counts]
        click.echo(f"{tag:<14}" + "".join(f"{t:>12.1f}" for t in times) + f"{times[0] / times[-1]:>9.2f}x  "
                   + ", ".join(cells))
    tmp.cleanup()


if __name__ == "__main__":
    main()
