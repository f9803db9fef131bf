"""Tracking quality of det-run's Deep SORT on public MOT ground truth (motmetrics' TUD sequences).

The ``motmetrics`` wheel ships ``TUD-Campus`` and ``TUD-Stadtmitte`` ground truth (boxes only, no
images). Their ground-truth boxes, jittered (Gaussian, ``jitter`` x box size) and with a fraction
``drop`` of detections removed, are fed frame by frame through :class:`det_toolkit.runtime.tracking.Tracker`,
and the confirmed tracks are scored with motmetrics (IoU >= 0.5 matches): MOTA, IDF1, ID switches.

Appearance, since no images ship:

* ``random`` (default): an embedder returning random unit vectors, so appearance never matches
  and the figure measures Deep SORT's motion + IoU association alone (a lower bound);
* ``painted``: each person is painted on a grey 640x480 frame as a rectangle with a texture seeded
  by its ground-truth id and embedded by the real ONNX embedder (``--embedder``); an optimistic
  upper bound (people look perfectly distinct and constant).

    python -m det_toolkit.benchmarks.track_quality --embedder deepsort_embedder.onnx
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

if not hasattr(np, "asfarray"):  # motmetrics 1.4 calls np.asfarray, removed in NumPy 2
    np.asfarray = lambda a, dtype=np.float64: np.asarray(a, dtype=dtype)  # type: ignore[attr-defined]

import motmetrics as mm

from det_toolkit.runtime.embedder import Embedder, OnnxEmbedder
from det_toolkit.runtime.predictor import Detections
from det_toolkit.runtime.tracking import Tracker, TrackerConfig

SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
FRAME_HW = (480, 640)


class RandomEmbedder:
    """Uninformative appearance: a fresh random unit vector per box (float32 ``[K, 64]``)."""

    input_size, name, dim = 224, "random", 64

    def __init__(self, seed: int = 0) -> None:
        self._rng = np.random.default_rng(seed)

    def __call__(self, frame_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        v = self._rng.standard_normal((len(boxes_xyxy), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-6)


def load_gt(sequence: str) -> np.ndarray:
    """motmetrics' ground truth of ``sequence``: float ``[R, 6]`` rows ``frame, id, x, y, w, h``
    (1-based frames, MOT pixel boxes).

    Raises:
        FileNotFoundError: motmetrics has no such sequence.
    """
    path = Path(mm.__file__).parent / "data" / sequence / "gt.txt"
    if not path.is_file():
        raise FileNotFoundError(f"motmetrics ships no ground truth for {sequence} ({path})")
    return np.loadtxt(path, delimiter=",", ndmin=2)[:, :6]


def paint(frame: np.ndarray, boxes: np.ndarray, ids: np.ndarray) -> None:
    """Paint each ``xyxy`` box as an 8x8-block texture seeded by its id (in place, BGR)."""
    h, w = frame.shape[:2]
    for (x1, y1, x2, y2), i in zip(boxes.astype(int).tolist(), ids.tolist()):
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if x2 > x1 and y2 > y1:
            tex = np.random.default_rng(int(i)).integers(0, 255, (8, 8, 3), np.uint8)
            frame[y1:y2, x1:x2] = np.kron(tex, np.ones((64, 80, 1), np.uint8))[:y2 - y1, :x2 - x1]


def evaluate(sequence: str, embedder: Embedder | None = None, jitter: float = 0.05, drop: float = 0.1,
             seed: int = 0, config: TrackerConfig | None = None) -> dict[str, float]:
    """Track ``sequence``'s jittered ground truth and score it.

    Args:
        sequence: ``"TUD-Campus"`` or ``"TUD-Stadtmitte"``.
        embedder: appearance model; ``None``: :class:`RandomEmbedder`. A real embedder sees
            :func:`paint`-ed frames.
        jitter: box noise, standard deviation as a fraction of the box width/height.
        drop: fraction of ground-truth boxes removed from the detections.
        seed: seed of jitter, drops and random embeddings.
        config: tracker settings (default :class:`TrackerConfig` with this embedder's crop size).

    Returns:
        ``{"mota", "idf1", "switches", "frames", "gt_boxes"}`` (MOTA/IDF1 as fractions).
    """
    gt = load_gt(sequence)
    rng = np.random.default_rng(seed)
    emb = embedder if embedder is not None else RandomEmbedder(seed)
    tracker = Tracker(emb, config or TrackerConfig(embedder_input_size=emb.input_size))
    acc = mm.MOTAccumulator(auto_id=True)
    blank = np.full((*FRAME_HW, 3), 114, np.uint8)
    for f in range(1, int(gt[:, 0].max()) + 1):
        rows = gt[gt[:, 0] == f]
        xyxy = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], 1).astype(np.float32)
        noisy = xyxy + rng.standard_normal(xyxy.shape).astype(np.float32) * jitter * np.tile(rows[:, 4:6], 2)
        keep = rng.random(len(rows)) >= drop
        noisy = np.clip(noisy[keep], 0, [FRAME_HW[1], FRAME_HW[0]] * 2).astype(np.float32)
        frame = blank
        if embedder is not None:
            frame = blank.copy()
            paint(frame, xyxy, rows[:, 1])
        dets = Detections(noisy, np.full(len(noisy), 0.9, np.float32), np.zeros(len(noisy), np.int64))
        tracks = tracker.update(frame, dets)
        hyp = np.array([[*t.box[:2], *(t.box[2:] - t.box[:2])] for t in tracks]).reshape(-1, 4)
        acc.update(rows[:, 1].astype(int).tolist(), [t.track_id for t in tracks],
                   mm.distances.iou_matrix(rows[:, 2:6], hyp, max_iou=0.5))
    res = mm.metrics.create().compute(acc, metrics=["mota", "idf1", "num_switches"], name=sequence)
    return {"mota": float(res["mota"].iloc[0]), "idf1": float(res["idf1"].iloc[0]),
            "switches": int(res["num_switches"].iloc[0]), "frames": int(gt[:, 0].max()),
            "gt_boxes": len(gt)}


@click.command(context_settings={"show_default": True})
@click.option("--embedder", default=None, type=click.Path(exists=True, path_type=Path),
              help="Embedder ONNX for the 'painted' rows; without it only 'random' is run.")
@click.option("--jitter", default=0.05, type=float, help="Box noise (fraction of box size).")
@click.option("--drop", default=0.1, type=float, help="Fraction of detections dropped.")
@click.option("--seed", default=0, type=int)
def main(embedder: Path | None, jitter: float, drop: float, seed: int) -> None:
    """Print MOTA / IDF1 / ID switches of Deep SORT on jittered TUD ground truth."""
    modes: list[tuple[str, Embedder | None]] = [("random", None)]
    if embedder is not None:
        modes.append(("painted", OnnxEmbedder(embedder)))
    click.echo(f"ground-truth detections, jitter {jitter} x box size, {drop:.0%} dropped, seed {seed}, "
               "default deepsort.yaml")
    click.echo(f"{'sequence':<16}{'appearance':<12}{'frames':>7}{'MOTA':>8}{'IDF1':>8}{'IDsw':>6}")
    for seq in SEQUENCES:
        for mode, emb in modes:
            r = evaluate(seq, emb, jitter, drop, seed)
            click.echo(f"{seq:<16}{mode:<12}{r['frames']:>7}{r['mota']:>8.3f}{r['idf1']:>8.3f}{r['switches']:>6}")


if __name__ == "__main__":
    main()
