"""SAHI tiled inference: det-run's batched tiles vs sahi's own ``get_sliced_prediction``.

For each frame of the video, these paths detect with the same weights and SAHI settings:

* ``sahi``: :func:`sahi.predict.get_sliced_prediction` with det-export's default batch-1 ONNX
  (dynamic H/W) wrapped as a sahi ``DetectionModel`` (tiles one by one, sahi's slicing and merge)
  -- the reference the boxes are matched against;
* ``sahi-static``: the same with the static batch-1 graph (``det-export --batch 1``), to separate
  the graph's own speed from batching;
* ``ours-loop``: :class:`det_toolkit.runtime.tiling.TiledPredictor` on the dynamic batch-1 graph (one ORT call
  per tile);
* ``ours-batched``: the same on the static graph with ``N`` = tiles per frame (one ORT call per
  frame), which is what ``det-run --sahi`` does with a ``--batch N`` artifact.

It prints the fraction of merged boxes matching the reference (same class, IoU >= 0.95) and the
mean ms per frame of each path (paths interleaved frame by frame so machine load hits all alike).

Without ``--weights`` a randomly initialised detector (needs torch) is exported to a temporary
folder, with static batch-1 and batch-N copies.

    python -m det_toolkit.benchmarks.sahi_bench --frames 20 --slice 512
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import click
import numpy as np

from det_toolkit.benchmarks.common import VTEST, match_count, read_frames
from det_toolkit.runtime.backends import load_backend
from det_toolkit.runtime.predictor import Predictor
from det_toolkit.runtime.tiling import SahiDetectionModel, SliceConfig, TiledPredictor


@click.command(context_settings={"show_default": True})
@click.option("--video", default=VTEST, type=click.Path(exists=True, path_type=Path))
@click.option("--frames", default=20, type=click.IntRange(1), help="Frames measured (after 1 warm-up).")
@click.option("--every", default=10, type=click.IntRange(1), help="Take every N-th video frame.")
@click.option("--weights", default=None, type=click.Path(exists=True, path_type=Path),
              help="Batch-1 ONNX detector; default: a random-head detector exported here.")
@click.option("--batch-weights", default=None, type=click.Path(exists=True, path_type=Path),
              help="Static fixed-batch ONNX of the same model; default: exported here when building.")
@click.option("--static-weights", default=None, type=click.Path(exists=True, path_type=Path),
              help="Static batch-1 ONNX of the same model; default: exported here when building.")
@click.option("--imgsz", default=256, type=int, help="Letterbox size of the built detector (px).")
@click.option("--max-det", default=30, type=int, help="Detections per image of the built detector.")
@click.option("--conf", default=0.3, type=float)
@click.option("--slice", "slice_size", default=512, type=int, help="Tile side (frame px).")
@click.option("--overlap", default=0.2, type=float)
@click.option("--merge", default="greedynmm", type=click.Choice(["greedynmm", "nmm", "nms"]))
def main(video: Path, frames: int, every: int, weights: Path | None, batch_weights: Path | None,
         static_weights: Path | None, imgsz: int, max_det: int, conf: float, slice_size: int, overlap: float,
         merge: str) -> None:
    """Print matched fraction and ms/frame of sahi's get_sliced_prediction vs det-run's tiling."""
    from sahi.predict import get_sliced_prediction

    imgs = read_frames(video, frames + 1, every)
    cfg = SliceConfig(slice_size, slice_size, overlap, overlap, merge=merge)
    n_tiles = len(cfg.windows(*imgs[0].shape[:2])) + (1 if cfg.full_frame else 0)
    tmp = tempfile.TemporaryDirectory()
    if weights is None:
        from det_toolkit.benchmarks.artifacts import export_batched, make_detector

        click.echo(f"building a random-head detector ({imgsz} px, max_det {max_det}) in {tmp.name}")
        pt, weights = make_detector(Path(tmp.name), imgsz, max_det, parity_image=imgs[0])
        static_weights = export_batched(pt, 1, Path(tmp.name) / "det_b1_static.onnx", imgs[:2])
        batch_weights = export_batched(pt, n_tiles, Path(tmp.name) / f"det_b{n_tiles}.onnx", imgs[:2])
    single = load_backend(weights, "cpu")
    refs = {"sahi": SahiDetectionModel(Predictor(load_backend(weights, "cpu"), conf))}
    if static_weights is not None:
        refs["sahi-static"] = SahiDetectionModel(Predictor(load_backend(static_weights, "cpu"), conf))
    paths = {"ours-loop": TiledPredictor(Predictor(single, conf), cfg)}
    if batch_weights is not None:
        paths["ours-batched"] = TiledPredictor(Predictor(load_backend(batch_weights, "cpu"), conf), cfg)
    kwargs = cfg.sahi_kwargs()

    ms: dict[str, list[float]] = {k: [] for k in [*refs, *paths]}
    counts = {k: [0, 0] for k in [*refs, *paths] if k != "sahi"}
    n_ref = 0
    for i, frame in enumerate(imgs):
        rgb = np.ascontiguousarray(frame[:, :, ::-1])
        rb = rl = None
        for name, model in refs.items():
            t = time.perf_counter()
            preds = get_sliced_prediction(rgb, model, verbose=0, **kwargs).object_prediction_list
            dt = (time.perf_counter() - t) * 1e3
            boxes = np.array([p.bbox.to_xyxy() for p in preds], np.float32).reshape(-1, 4)
            labels = np.array([p.category.id for p in preds], np.int64)
            if rb is None:
                rb, rl = boxes, labels
                n_ref += len(preds) if i else 0
            elif i:
                m, n = match_count(boxes, rb, labels, rl)
                counts[name][0] += m
                counts[name][1] += n
            if i:
                ms[name].append(dt)
        for name, tp in paths.items():
            t = time.perf_counter()
            dets = tp(frame)
            if i:  # frame 0 warms up every path
                ms[name].append((time.perf_counter() - t) * 1e3)
                m, n = match_count(dets.boxes, rb, dets.labels, rl)
                counts[name][0] += m
                counts[name][1] += n

    h, w = imgs[0].shape[:2]
    click.echo(f"\n{video.name}: {frames} frames {w}x{h} (every {every}th), slice {slice_size} overlap "
               f"{overlap}, {n_tiles} detector inputs/frame (tiles + full frame), merge {merge}/ios 0.5, "
               f"conf {conf}, imgsz {single.meta.imgsz[0]}, {single.name}; {n_ref / frames:.1f} "
               "merged boxes/frame (sahi)")
    base = float(np.mean(ms["sahi"]))
    click.echo(f"{'path':<18}{'ms/frame':>10}{'FPS':>8}{'vs sahi':>9}{'matched':>18}")
    click.echo(f"{'sahi':<18}{base:>10.1f}{1e3 / base:>8.2f}{1.0:>8.2f}x{'reference':>18}")
    for name in [*refs, *paths][1:]:
        m, n = counts[name]
        mean = float(np.mean(ms[name]))
        inner = paths[name].predictor.backend if name in paths else refs[name].model.backend
        label = f"{name}" + (f" (N={inner.max_batch})" if inner.max_batch > 1 else "")
        click.echo(f"{label:<18}{mean:>10.1f}{1e3 / mean:>8.2f}{base / mean:>8.2f}x"
                   f"{f'{m}/{n} = {m / max(n, 1):.2%}':>18}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
