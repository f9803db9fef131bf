"""RoI pooling in exported graphs: ONNX ``RoiAlign`` against the separable matrix-product pooling.

Exports one checkpoint twice with the same code, once with separable pooling switched off
(``export.roi_pool.SEPARABLE_MAX_CELLS = 0``: every level through ``RoiAlign``, as before it
existed) and once as ``det-export`` does now (both parity-checked on the checkpoint's val images,
as ``det-export`` does), for each graph kind asked for (the dynamic batch-1
graph, static graphs at ``--batch`` sizes). Then runs both versions interleaved, frame by frame, on
video frames letterboxed as ``det-run`` does, and prints the median ms per image and, for each
graph, the fraction of the PyTorch checkpoint's boxes (score >= ``--conf``) it reproduces (same
class, IoU >= 0.95).

    PYTHONPATH=. python -m benchmarks.roi_pool_bench --weights runs/train/nano/weights/best.pt --batch 1 --batch 5

Needs torch (it exports). A figure printer, not a test.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import click

from benchmarks.common import VTEST, match_count, read_frames


def _export(ckpt: Path, out: Path, batch: int | None, separable: bool) -> Path:
    """det-export of ``ckpt`` (parity on its dataset's val images) with or without separable pooling."""
    from export import roi_pool
    from export.onnx_export import export_onnx

    saved = roi_pool.SEPARABLE_MAX_CELLS
    roi_pool.SEPARABLE_MAX_CELLS = saved if separable else 0
    try:
        return export_onnx(ckpt, out, static=batch is not None, batch=batch or 1, echo=lambda _: None)
    finally:
        roi_pool.SEPARABLE_MAX_CELLS = saved


@click.command(context_settings={"show_default": True})
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="det-train checkpoint (.pt).")
@click.option("--batch", "batches", multiple=True, type=click.IntRange(1),
              help="Static graph batch sizes (repeatable); the dynamic batch-1 graph is always measured.")
@click.option("--video", default=VTEST, type=click.Path(exists=True, path_type=Path))
@click.option("--frames", default=10, type=click.IntRange(1), help="Frames timed per graph (after 2 warm-ups).")
@click.option("--conf", default=0.25, type=float, help="Boxes compared: score >= conf.")
def main(weights: Path, batches: tuple[int, ...], video: Path, frames: int, conf: float) -> None:
    """Print ms/image of RoiAlign vs separable pooling graphs of WEIGHTS and their box agreement."""
    from runtime.backends import load_backend
    from runtime.predictor import Predictor

    imgs = read_frames(video, frames + 2, 10)
    torch_pred = Predictor(load_backend(weights, "cpu"), conf)
    torch_dets = {i: torch_pred(im) for i, im in enumerate(imgs)}
    tmp = tempfile.TemporaryDirectory()
    kinds: list[int | None] = [None, *batches]
    rows = []
    for batch in kinds:
        tag = "dynamic b1" if batch is None else f"static b{batch}"
        paths = [_export(weights, Path(tmp.name) / f"{tag.replace(' ', '_')}_{s}.onnx", batch, s)
                 for s in (False, True)]
        preds = [Predictor(load_backend(p, "cpu"), conf) for p in paths]
        n = batch or 1
        groups = [[(i + j) % len(imgs) for j in range(n)] for i in range(frames + 2)]
        ms: list[list[float]] = [[], []]
        counts = [[0, 0], [0, 0]]
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
        rows.append((tag, statistics.median(ms[0]), statistics.median(ms[1]), counts))
    ref = load_backend(paths[0], "cpu")
    click.echo(f"\n{weights.name}: {ref.meta.model}, imgsz {ref.meta.imgsz}, {frames} {video.name} frames, "
               f"ONNX Runtime CPU, median ms per image (input letterboxing included)")
    click.echo(f"{'graph':<14}{'RoiAlign':>10}{'separable':>11}{'speed-up':>10}"
               f"{'PyTorch boxes: RoiAlign':>26}{'separable':>14}")
    for tag, a, b, counts in rows:
        cells = [f"{m}/{c} = {m / max(c, 1):.1%}" for m, c in counts]
        click.echo(f"{tag:<14}{a:>10.1f}{b:>11.1f}{a / b:>9.2f}x{cells[0]:>26}  {cells[1]:>14}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
