"""Tracking quality of det-run's trackers on public MOT ground truth (motmetrics' TUD sequences),
scored by the ``trackers`` package's evaluation (CLEAR: MOTA, ID switches; Identity: IDF1; HOTA),
which reproduces TrackEval's matching (IoU >= 0.5 for CLEAR and Identity; HOTA over IoU 0.05-0.95).

The ``motmetrics`` wheel ships ``TUD-Campus`` and ``TUD-Stadtmitte`` ground truth (boxes only, no
images). Their ground-truth boxes, jittered (Gaussian, ``jitter`` x box size) and with a fraction
``drop`` of detections removed, are fed frame by frame (score 0.9) through a tracker of
:mod:`det_toolkit.runtime.trackers`, and its confirmed tracks are scored.

Deep SORT's appearance, since no images ship:

* ``random``: an embedder returning random unit vectors, so appearance never matches and the
  figure measures Deep SORT's motion + IoU association alone (a lower bound);
* ``painted``: each person is painted on a grey 640x480 frame as a rectangle with a texture seeded
  by its ground-truth id and embedded by the real ONNX embedder (``--embedder``); an optimistic
  upper bound (people look perfectly distinct and constant);
* ``pasted`` (``--people DIR``, the Penn-Fudan pedestrians): each ground-truth id is a real person,
  a Penn-Fudan person crop (drawn per id and seed) pasted into its box, so that the embedder must
  tell real people apart, some dressed alike; still optimistic (no pose or light change);
* ``-int8`` appended: the same through the INT8 embedder (``--embedder-int8``).

ByteTrack, OC-SORT and BoT-SORT use no appearance (BoT-SORT's camera-motion compensation sees the
grey frame: no camera motion, as in TUD's static camera).

    python -m det_toolkit.benchmarks.track_quality --embedder deepsort_embedder.onnx \
        [--embedder-int8 deepsort_embedder_int8.onnx] [--people ../shared/datasets/pennfudan] [--seeds 3]
"""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import click
import cv2
import numpy as np
from trackers.eval import box_iou, compute_clear_metrics, compute_hota_metrics, compute_identity_metrics

from det_toolkit.runtime.embedder import Embedder, OnnxEmbedder, crop_hw
from det_toolkit.runtime.predictor import Detections
from det_toolkit.runtime.trackers import TRACKERS, AnyTrackerConfig, build_tracker, load_tracker_config
from det_toolkit.runtime.tracking import DeepSortTracker, TrackerConfig

SEQUENCES = ("TUD-Campus", "TUD-Stadtmitte")
FRAME_HW = (480, 640)


class RandomEmbedder:
    """Uninformative appearance: a fresh random unit vector per box (float32 ``[K, 64]``).

    Args:
        seed: random seed.
        input_size: the crop size it claims, a side or ``(H, W)`` (Deep SORT checks it against its config).
    """

    name, dim = "random", 64

    def __init__(self, seed: int = 0, input_size: int | tuple[int, int] = 224) -> None:
        self._rng = np.random.default_rng(seed)
        self.input_size = input_size

    def __call__(self, frame_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        v = self._rng.standard_normal((len(boxes_xyxy), self.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True).clip(1e-6)


def load_gt(sequence: str) -> np.ndarray:
    """motmetrics' ground truth of ``sequence``: float ``[R, 6]`` rows ``frame, id, x, y, w, h``
    (1-based frames, MOT pixel boxes).

    Raises:
        FileNotFoundError: motmetrics has no such sequence.
    """
    spec = importlib.util.find_spec("motmetrics")  # its data only: no need to import it
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the TUD ground truth ships with motmetrics: pip install motmetrics")
    path = Path(spec.submodule_search_locations[0]) / "data" / sequence / "gt.txt"
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


def person_bank(root: Path, min_height: int = 80) -> list[np.ndarray]:
    """Real person crops (uint8 BGR ``[h, w, 3]``) of the Penn-Fudan pedestrians at ``root``
    (train and val splits, every annotated box at least ``min_height`` px tall), in file order.

    Raises:
        det_toolkit.train.config.ConfigError: ``root`` has no Penn-Fudan split lists.
        ValueError: no person crop at least ``min_height`` px tall.
    """
    from det_toolkit.train.data.pennfudan import read_pennfudan  # the benchmark's only use of train/

    crops = []
    for split in ("train", "val"):
        for sample in read_pennfudan(root, split).samples:
            img = cv2.imread(str(sample.image))
            for x1, y1, x2, y2 in sample.boxes.astype(int).tolist():
                if y2 - y1 >= min_height:
                    crops.append(img[y1:y2, x1:x2].copy())
    if not crops:
        raise ValueError(f"{root}: no Penn-Fudan person box >= {min_height} px tall")
    return crops


def paste(frame: np.ndarray, boxes: np.ndarray, ids: np.ndarray, people: dict[int, np.ndarray]) -> None:
    """Paste person crop ``people[id]`` resized into each ``xyxy`` box (in place, BGR; clipped to the frame)."""
    h, w = frame.shape[:2]
    for (x1, y1, x2, y2), i in zip(boxes.astype(int).tolist(), ids.tolist()):
        cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
        if cx2 > cx1 and cy2 > cy1 and x2 > x1 and y2 > y1:
            person = cv2.resize(people[int(i)], (x2 - x1, y2 - y1))
            frame[cy1:cy2, cx1:cx2] = person[cy1 - y1:cy2 - y1, cx1 - x1:cx2 - x1]


def clear_identity_hota(gt: list[tuple[np.ndarray, np.ndarray]],
                        hyp: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Score tracks against ground truth with the ``trackers`` package's CLEAR, Identity and HOTA.

    Args:
        gt: per frame, ``(ids int [G], boxes float [G, 4] xywh px)``.
        hyp: per frame (same frames), the tracker's ``(ids int [T], boxes float [T, 4] xywh px)``.

    Returns:
        ``{"mota", "idf1", "hota", "deta", "assa", "switches"}`` (fractions; ``switches`` a count).
    """
    def remap(seqs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:  # ids -> 0..n-1, as the metrics need
        index = {v: i for i, v in enumerate(sorted({int(x) for ids, _ in seqs for x in ids}))}
        return [np.array([index[int(x)] for x in ids], np.intp) for ids, _ in seqs]

    gt_ids, hyp_ids = remap(gt), remap(hyp)
    sims = [box_iou(np.asarray(g, np.float64).reshape(-1, 4), np.asarray(h, np.float64).reshape(-1, 4),
                    box_format="xywh") for (_, g), (_, h) in zip(gt, hyp)]
    clear = compute_clear_metrics(gt_ids, hyp_ids, sims, threshold=0.5)
    ident = compute_identity_metrics(gt_ids, hyp_ids, sims, threshold=0.5)
    hota = compute_hota_metrics(gt_ids, hyp_ids, sims)
    return {"mota": float(clear["MOTA"]), "idf1": float(ident["IDF1"]), "hota": float(hota["HOTA"]),
            "deta": float(hota["DetA"]), "assa": float(hota["AssA"]), "switches": int(clear["IDSW"])}


def evaluate(sequence: str, embedder: Embedder | None = None, jitter: float = 0.05, drop: float = 0.1,
             seed: int = 0, config: AnyTrackerConfig | None = None,
             bank: list[np.ndarray] | None = None) -> dict[str, float]:
    """Track ``sequence``'s jittered ground truth and score it (:func:`clear_identity_hota`).

    Args:
        sequence: ``"TUD-Campus"`` or ``"TUD-Stadtmitte"``.
        embedder: Deep SORT's appearance model; ``None``: :class:`RandomEmbedder`. A real embedder
            sees :func:`paint`-ed frames, or :func:`paste`-d ones with ``bank``. Unused by the
            motion-only trackers.
        jitter: box noise, standard deviation as a fraction of the box width/height.
        drop: fraction of ground-truth boxes removed from the detections.
        seed: seed of jitter, drops and random embeddings.
        config: tracker settings (default: Deep SORT's :class:`TrackerConfig` with this embedder's
            crop size).
        bank: person crops (:func:`person_bank`): each ground-truth id gets a different one, drawn
            with ``seed``, pasted into its box instead of a painted texture.

    Returns:
        ``{"mota", "idf1", "hota", "deta", "assa", "switches", "frames", "gt_boxes", "crops",
        "reused"}``: the metrics as fractions, and for Deep SORT the crops embedded and the
        embeddings reused (``reuse_embedding_iou``), 0 for the others.
    """
    gt = load_gt(sequence)
    rng = np.random.default_rng(seed)
    config = config if config is not None else TrackerConfig(
        embedder_input_size=list(crop_hw(embedder.input_size)) if embedder else 224)
    deepsort = isinstance(config, TrackerConfig)
    emb = embedder if embedder is not None else RandomEmbedder(seed, config.crop_hw if deepsort else 224)
    tracker = build_tracker(config, emb if deepsort else None)
    blank = np.full((*FRAME_HW, 3), 114, np.uint8)
    people = {}
    if bank is not None:
        ids = np.unique(gt[:, 1]).astype(int)
        if len(ids) > len(bank):
            raise ValueError(f"{sequence} has {len(ids)} people but the bank only {len(bank)} crops")
        pick = np.random.default_rng(1000 + seed).choice(len(bank), len(ids), replace=False)
        people = {int(i): bank[j] for i, j in zip(ids, pick)}
    gt_seq, hyp_seq = [], []
    for f in range(1, int(gt[:, 0].max()) + 1):
        rows = gt[gt[:, 0] == f]
        xyxy = np.concatenate([rows[:, 2:4], rows[:, 2:4] + rows[:, 4:6]], 1).astype(np.float32)
        noisy = xyxy + rng.standard_normal(xyxy.shape).astype(np.float32) * jitter * np.tile(rows[:, 4:6], 2)
        keep = rng.random(len(rows)) >= drop
        noisy = np.clip(noisy[keep], 0, [FRAME_HW[1], FRAME_HW[0]] * 2).astype(np.float32)
        frame = blank
        if embedder is not None and deepsort:
            frame = blank.copy()
            if people:
                paste(frame, xyxy, rows[:, 1], people)
            else:
                paint(frame, xyxy, rows[:, 1])
        dets = Detections(noisy, np.full(len(noisy), 0.9, np.float32), np.zeros(len(noisy), np.int64))
        tracks = tracker.update(frame, dets)
        gt_seq.append((rows[:, 1].astype(int), rows[:, 2:6]))
        hyp_seq.append((np.array([t.track_id for t in tracks], int),
                        np.array([[*t.box[:2], *(t.box[2:] - t.box[:2])] for t in tracks]).reshape(-1, 4)))
    ds = tracker if isinstance(tracker, DeepSortTracker) else None
    return {**clear_identity_hota(gt_seq, hyp_seq), "frames": int(gt[:, 0].max()), "gt_boxes": len(gt),
            "crops": ds.embed_crops if ds else 0, "reused": ds.reused if ds else 0}


#: Deep SORT settings scored besides the shipped deepsort.yaml (128x64 crops, every detection
#: embedded): (label, settings changed). "published" is Deep SORT as deep-sort-realtime runs it;
#: "128sq+reuse" the settings shipped before person-aspect crops.
DEEPSORT_VARIANTS: tuple[tuple[str, dict], ...] = (
    ("published", {"embedder_input_size": 224, "reuse_embedding_iou": None}),
    ("128sq+reuse", {"embedder_input_size": 128, "reuse_embedding_iou": 0.7}),
    ("128sq", {"embedder_input_size": 128, "reuse_embedding_iou": None}),
    ("128x64+reuse", {"embedder_input_size": [128, 64], "reuse_embedding_iou": 0.7}),
)


@click.command(context_settings={"show_default": True})
@click.option("--embedder", default=None, type=click.Path(exists=True, path_type=Path),
              help="Embedder ONNX for Deep SORT's 'painted' rows; without it Deep SORT runs with 'random' "
              "appearance only.")
@click.option("--embedder-int8", default=None, type=click.Path(exists=True, path_type=Path),
              help="INT8 embedder ONNX: adds '-int8' rows (shipped settings and no reuse).")
@click.option("--people", default=None, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Penn-Fudan folder: real person crops pasted ('pasted') instead of painted textures.")
@click.option("--jitter", default=0.05, type=float, help="Box noise (fraction of box size).")
@click.option("--drop", default=0.1, type=float, help="Fraction of detections dropped.")
@click.option("--seeds", default=1, type=click.IntRange(1), help="Runs with seeds 0..N-1; the table shows means.")
@click.option("--only", default=None,
              help="Comma-separated Deep SORT settings labels to score with the embedders (shipped, "
              + ", ".join(label for label, _ in DEEPSORT_VARIANTS) + "); default: all, plus every tracker's "
              "shipped row and Deep SORT's 'random' rows.")
def main(embedder: Path | None, embedder_int8: Path | None, people: Path | None, jitter: float, drop: float,
         seeds: int, only: str | None) -> None:
    """Print MOTA / IDF1 / HOTA / ID switches of every tracker (shipped settings) and of Deep SORT's
    settings on jittered TUD ground truth, with Deep SORT's embedder crops per frame."""
    look = "pasted" if people is not None else "painted"
    bank = person_bank(people) if people is not None else None
    labels = ["shipped", *(label for label, _ in DEEPSORT_VARIANTS)]
    keep = set(labels) if only is None else {s.strip() for s in only.split(",") if s.strip()}
    if keep - set(labels):
        raise click.BadParameter(f"unknown settings {sorted(keep - set(labels))}; choose from {', '.join(labels)}",
                                 param_hint="--only")
    rows: list[tuple[str, str, AnyTrackerConfig, str]] = []
    for name in TRACKERS if only is None else ("deepsort",):
        cfg = load_tracker_config(name)
        if not isinstance(cfg, TrackerConfig):
            rows.append((name, "shipped", cfg, "none"))
            continue
        if only is None:
            rows.append((name, "shipped", cfg, "random"))
            rows.append((name, "published", dataclasses.replace(cfg, **DEEPSORT_VARIANTS[0][1]), "random"))
        variants = [("shipped", cfg),
                    *((label, dataclasses.replace(cfg, **change)) for label, change in DEEPSORT_VARIANTS)]
        if embedder is not None:
            rows += [(name, label, c, look) for label, c in variants if label in keep]
        if embedder_int8 is not None:  # the crop size it was calibrated at, with and without reuse
            rows += [(name, label, c, f"{look}-int8") for label, c in variants
                     if label in keep & {"shipped", "128x64+reuse"}]
    click.echo(f"ground-truth detections, jitter {jitter} x box size, {drop:.0%} dropped, mean of seeds 0-{seeds - 1}; "
               "metrics: the trackers package (CLEAR, Identity, HOTA)")
    click.echo(f"{'sequence':<16}{'tracker':<11}{'settings':<16}{'appearance':<14}{'MOTA':>7}{'IDF1':>7}"
               f"{'HOTA':>7}{'IDsw':>7}{'crops/frame':>13}")
    idf1: dict[int, list[float]] = {}
    for seq in SEQUENCES:
        for r, (name, label, cfg, mode) in enumerate(rows):
            emb = None
            if mode.startswith(look) and isinstance(cfg, TrackerConfig):
                emb = OnnxEmbedder(embedder_int8 if mode.endswith("-int8") else embedder, None, cfg.crop_hw)
            rs = [evaluate(seq, emb, jitter, drop, seed, cfg, bank) for seed in range(seeds)]
            m = {k: float(np.mean([r[k] for r in rs])) for k in ("mota", "idf1", "hota", "switches")}
            crops = float(np.mean([r["crops"] / r["frames"] for r in rs]))
            click.echo(f"{seq:<16}{name:<11}{label:<16}{mode:<14}{m['mota']:>7.3f}{m['idf1']:>7.3f}"
                       f"{m['hota']:>7.3f}{m['switches']:>7.1f}{crops:>13.2f}")
            idf1.setdefault(r, []).append(m["idf1"])
    click.echo("IDF1, mean of both sequences: " + "; ".join(
        f"{name} {label} {mode} {np.mean(idf1[r]):.3f}" for r, (name, label, _, mode) in enumerate(rows)))


if __name__ == "__main__":
    main()
