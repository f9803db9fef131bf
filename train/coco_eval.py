"""COCO box mAP with faster-coco-eval (a C++ reimplementation of pycocotools' COCOeval).

Ground truth comes from :class:`det_toolkit.train.data.samples.Sample` objects; crowd regions and VOC
``difficult`` boxes are passed as ``iscrowd=1`` so detections on them count neither as true nor as
false positives. Label ``i`` is reported under the dataset's category id ``category_ids[i]``.

Images that could not be decoded leave the evaluation whole: callers pass their sample indices as
``exclude`` (det-eval: the images it failed to read; det-train: the val dataset's unreadable
images), and neither their ground truth (which would count as misses) nor any prediction for them
is scored. :attr:`CocoResult.images_skipped` names them.

faster-coco-eval logs its progress at INFO (logger ``faster_coco_eval``: six lines per
evaluation); :func:`evaluate_coco` and :func:`confusion_matrix` keep it quiet unless called with
``verbose=True``.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from faster_coco_eval import COCO, COCOeval_faster
from faster_coco_eval.extra import PreviewResults

from det_toolkit.train.data.samples import Sample

STAT_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@contextlib.contextmanager
def _coco_eval_logging(verbose: bool) -> Iterator[None]:
    """Within the block, faster-coco-eval's INFO progress lines are dropped unless ``verbose``
    (its ``faster_coco_eval`` logger is raised to WARNING and restored afterwards; its warnings and
    errors still show). Its classes take a ``print_function`` only where constructed directly, not
    inside ``PreviewResults``, hence the logger."""
    logger = logging.getLogger("faster_coco_eval")
    level = logger.level
    if not verbose:
        logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class CocoResult:
    """COCO metrics in ``[0, 1]``: ``stats`` keyed by :data:`STAT_NAMES` (``mAP`` is
    mAP@[.5:.95]), ``per_class`` maps class name -> ``{"AP": mAP@[.5:.95], "AP50": ...}``
    (``-1`` when the class has no ground truth), ``n_images`` the images evaluated,
    ``images_skipped`` the file names of the images left out, ``excluded`` the sample indices left
    out (``exclude``), ``precision`` is COCOeval's ``[T=10, R=101, K, A=4, M=3]`` array (for PR
    curves)."""

    stats: dict[str, float]
    per_class: dict[str, dict[str, float]]
    n_images: int
    n_detections: int
    precision: np.ndarray | None = field(default=None, repr=False)
    images_skipped: list[str] = field(default_factory=list)
    excluded: frozenset[int] = frozenset()

    def table(self) -> str:
        """The standard COCO summary plus a per-class AP table, as text."""
        s = self.stats
        lines = [f"mAP@[.5:.95] {s['mAP']:.4f}   AP50 {s['AP50']:.4f}   AP75 {s['AP75']:.4f}   "
                 f"APs {s['APs']:.4f}  APm {s['APm']:.4f}  APl {s['APl']:.4f}   AR100 {s['AR100']:.4f}",
                 f"{'class':<24}{'AP50':>8}{'mAP':>8}"]
        for name, v in self.per_class.items():
            lines.append(f"{name:<24}{v['AP50']:>8.4f}{v['AP']:>8.4f}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {"stats": self.stats, "per_class": self.per_class, "n_images": self.n_images,
                "n_detections": self.n_detections, "images_skipped": self.images_skipped}


def coco_gt(samples: list[Sample], class_names: list[str], category_ids: list[int],
            exclude: Collection[int] = ()) -> dict:
    """A COCO ground-truth dict (``xywh`` boxes) for ``samples`` except the indices in ``exclude``;
    image ids are sample indices."""
    images, anns = [], []
    for i, s in enumerate(samples):
        if i in exclude:
            continue
        images.append({"id": i, "width": s.width, "height": s.height, "file_name": s.image.name})
        for b, lab, crowd in zip(s.boxes, s.labels, s.iscrowd):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": category_ids[int(lab)],
                         "bbox": [float(b[0]), float(b[1]), w, h], "area": w * h,
                         "iscrowd": int(crowd)})
    cats = [{"id": c, "name": n} for c, n in zip(category_ids, class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def _detections(predictions: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]], category_ids: list[int],
                exclude: Collection[int]) -> list[dict[str, Any]]:
    """COCO result records (``xywh``) of ``predictions`` except the samples in ``exclude``."""
    return [{"image_id": int(i), "category_id": category_ids[int(lab)], "score": float(sc),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for i, (boxes, scores, labels) in predictions.items() if i not in exclude
            for b, sc, lab in zip(boxes, scores, labels)]


def evaluate_coco(
    samples: list[Sample],
    predictions: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
    class_names: list[str],
    category_ids: list[int],
    *,
    exclude: Collection[int] = (),
    verbose: bool = False,
) -> CocoResult:
    """COCO bbox evaluation.

    Args:
        samples: ground truth.
        predictions: sample index -> ``(boxes float32 [K, 4] xyxy original-image pixels,
            scores float32 [K], labels int64 [K] 0-based)``. A missing index of an evaluated
            sample counts as no detections.
        class_names / category_ids: as returned by :func:`det_toolkit.train.data.formats.read_split`.
        exclude: indices of samples whose image could not be decoded: their ground truth and
            predictions leave the evaluation (a set; counted in ``n_images``/``images_skipped``).
        verbose: let faster-coco-eval log its progress (INFO) and summary table.
    """
    exclude = {int(i) for i in exclude}
    skipped = [samples[i].image.name for i in sorted(exclude)]
    n_images = len(samples) - len(exclude)
    gt = COCO()
    gt.dataset = coco_gt(samples, class_names, category_ids, exclude)
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    dets = _detections(predictions, category_ids, exclude)
    zero = {k: 0.0 for k in STAT_NAMES}
    if not dets:
        per = {n: {"AP": 0.0, "AP50": 0.0} for n in class_names}
        return CocoResult(zero, per, n_images, 0, images_skipped=skipped, excluded=frozenset(exclude))
    with contextlib.redirect_stdout(io.StringIO()), _coco_eval_logging(verbose):
        dt = gt.loadRes(dets)
        quiet = {} if verbose else {"print_function": lambda *a, **k: None}
        ev = COCOeval_faster(gt, dt, iouType="bbox", **quiet)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {k: float(max(v, 0.0)) for k, v in zip(STAT_NAMES, ev.stats[:12])}
    prec = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    cat_order = list(ev.params.catIds)
    per = {}
    for name, cid in zip(class_names, category_ids):
        p = prec[:, :, cat_order.index(cid), 0, -1]
        valid = p[p > -1]
        p50 = p[0][p[0] > -1]
        per[name] = {"AP": float(valid.mean()) if valid.size else -1.0,
                     "AP50": float(p50.mean()) if p50.size else -1.0}
    return CocoResult(stats, per, n_images, len(dets), precision=prec, images_skipped=skipped,
                      excluded=frozenset(exclude))


def confusion_matrix(samples: list[Sample],
                     predictions: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]],
                     class_names: list[str], category_ids: list[int], conf: float = 0.25,
                     iou: float = 0.5, *, exclude: Collection[int] = (), verbose: bool = False) -> np.ndarray:
    """Detection confusion matrix from faster-coco-eval's ``PreviewResults`` (class-agnostic matching
    at IoU ``iou`` of detections scoring ``>= conf``; ``exclude`` as in :func:`evaluate_coco`;
    ``verbose`` lets faster-coco-eval log its progress at INFO).

    Returns:
        ``float32 [K, K + 2]``: row = true class, column = predicted class, then a false-positive
        column (detections of the row's class matching nothing) and a false-negative column
        (missed ground truth of the row's class). Classes in ``class_names`` order.
    """
    exclude = {int(i) for i in exclude}
    gt = COCO()
    gt.dataset = coco_gt(samples, class_names, category_ids, exclude)
    with contextlib.redirect_stdout(io.StringIO()), _coco_eval_logging(verbose):
        gt.createIndex()
        dets = _detections(predictions, category_ids, exclude)
        k = len(class_names)
        if not dets:
            cm = np.zeros((k, k + 2), np.float32)
            for a in gt.dataset["annotations"]:
                cm[category_ids.index(a["category_id"]), -1] += 1
            return cm
        ev = PreviewResults(gt, gt.loadRes(dets), iouType="bbox", min_score=conf, iou_tresh=iou)
        cm = ev.compute_confusion_matrix()
    order = [list(gt.cats).index(c) for c in category_ids]
    return cm[order][:, order + [k, k + 1]]
