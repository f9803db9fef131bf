"""Parity between a PyTorch detector and its ONNX export, on real (or, failing that, synthetic) images.

Both sides see exactly the runtime's pre-processing (BGR -> RGB, :func:`det_toolkit.runtime.preprocess.letterbox`
to the artifact's ``imgsz``, :func:`det_toolkit.runtime.preprocess.to_input`); boxes are compared in letterboxed
input pixels, greedily per class by IoU.
"""

from __future__ import annotations

import glob
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from det_toolkit.runtime.backends.base import RawDetections
from det_toolkit.runtime.backends.onnx_backend import providers_for, session_metadata
from det_toolkit.runtime.backends.outputs import run_chunks
from det_toolkit.runtime.backends.torch_backend import torch_device
from det_toolkit.runtime.boxes import box_iou
from det_toolkit.runtime.files import IMAGE_SUFFIXES
from det_toolkit.runtime.meta import META_KEY, ModelMeta
from det_toolkit.runtime.preprocess import letterbox, to_input
from det_toolkit.train.checkpoint import model_from_checkpoint
from det_toolkit.train.config import ConfigError, DataConfig, from_dict
from det_toolkit.train.data.formats import list_split_images, read_split
from det_toolkit.train.data.samples import DatasetError


class ParityError(RuntimeError):
    """The exported graph does not reproduce the PyTorch model's detections."""


@dataclass
class ParityReport:
    """Result of :func:`check_parity`.

    Box counts exclude unmatched boxes within ``score_tol`` of the score cut-off (the graph's
    ``score_thresh``, or the lowest kept score when an image hit ``max_det``): there a float
    rounding legitimately moves a box across the cut.

    Attributes:
        n_images: images compared.
        n_ref_boxes: PyTorch (reference) boxes counted.
        n_onnx_boxes: ONNX boxes counted.
        n_matched: reference boxes matched by an ONNX box (same label, IoU >= ``iou_thr``,
            ``|score diff| <= score_tol``; or an NMS swap, see :func:`match_detections`).
        n_swaps: how many of ``n_matched`` are NMS swaps (0 unless ``swap_iou`` is set).
        match_rate: ``n_matched / max(n_ref_boxes, n_onnx_boxes)`` (1.0 when both are 0), so missing
            and extra boxes both lower it.
        mean_iou: mean IoU of the matched pairs (0.0 when none).
        max_score_diff: largest ``|score diff|`` of the matched pairs.
        passed: ``match_rate >= min_match``.
        iou_thr, score_tol, min_match: the criteria used.
        min_score: only boxes scoring ``>= min_score`` on their own side were compared (0: every
            box the graph returns, i.e. down to its ``score_thresh``).
        swap_iou: the NMS IoU threshold above which leftover pairs count as swaps (``None``: off).
        ref_name, test_name: what the two sides are, for the printed lines.
    """

    n_images: int
    n_ref_boxes: int
    n_onnx_boxes: int
    n_matched: int
    match_rate: float
    mean_iou: float
    max_score_diff: float
    passed: bool
    iou_thr: float
    score_tol: float
    min_match: float
    min_score: float = 0.0
    n_swaps: int = 0
    swap_iou: float | None = None
    ref_name: str = "torch"
    test_name: str = "onnx"

    def criterion(self) -> str:
        """The matching rule in words, e.g. ``boxes >= 0.25, IoU >= 0.9, |score diff| <= 0.03``."""
        scope = f"boxes scoring >= {self.min_score:g}" if self.min_score > 0 else "all boxes"
        swaps = "" if self.swap_iou is None else f" (or an NMS swap: IoU > {self.swap_iou:g})"
        return f"{scope}, same class, IoU >= {self.iou_thr:g}{swaps}, |score diff| <= {self.score_tol:g}"

    def summary(self) -> str:
        """One line: counts, rates and the verdict."""
        verdict = "PASS" if self.passed else "FAIL"
        note = " (no boxes to compare: parity not meaningful)" if self.n_ref_boxes == 0 else ""
        return (f"parity {verdict}: {self.n_matched}/{self.n_ref_boxes} {self.ref_name} boxes matched "
                f"({self.match_rate:.2%}, need {self.min_match:.0%}) on {self.n_images} images "
                f"[{self.criterion()}], mean IoU {self.mean_iou:.4f}, max |score diff| "
                f"{self.max_score_diff:.5f}{note}")

    def table(self) -> str:
        """Multi-line table of every figure, for the CLI."""
        rows = [
            ("images", f"{self.n_images}"),
            (f"{self.ref_name} boxes", f"{self.n_ref_boxes}"),
            (f"{self.test_name} boxes", f"{self.n_onnx_boxes}"),
            ("matched", f"{self.n_matched} ({self.match_rate:.2%}, need >= {self.min_match:.0%})"
                        + (f", {self.n_swaps} of them NMS swaps (IoU > {self.swap_iou:g})" if self.n_swaps else "")),
            ("mean IoU", f"{self.mean_iou:.4f} (match needs >= {self.iou_thr})"),
            ("max |score diff|", f"{self.max_score_diff:.5f} (match needs <= {self.score_tol})"),
            ("result", "PASS" if self.passed else "FAIL"),
        ]
        if self.min_score > 0:
            rows.insert(1, ("compared", f"boxes scoring >= {self.min_score:g}"))
        head = ("parity, PyTorch vs onnxruntime CPU:" if self.ref_name == "torch"
                else f"parity, {self.ref_name} vs {self.test_name} graph, onnxruntime CPU:")
        return head + "\n" + "\n".join(f"  {k:<17}{v}" for k, v in rows)


def match_detections(ref: RawDetections, test: RawDetections, iou_thr: float, score_tol: float,
                     cutoff: float, swap_iou: float | None = None) -> tuple[int, int, list[float], list[float]]:
    """Greedily match one image's reference detections to test detections, per class.

    Reference boxes are visited by descending score; each takes the unmatched test box of its label
    with the highest IoU, and counts as matched if IoU >= ``iou_thr`` and ``|score diff| <=
    score_tol``. With ``swap_iou`` (the model's NMS IoU threshold), a second pass pairs the
    reference and test boxes left over: same label, IoU > ``swap_iou`` and ``|score diff| <=
    score_tol`` also count as matched, as an *NMS swap*: two boxes overlapping more than the NMS
    threshold cannot both survive NMS, so they are candidates for one object, and which of them a
    graph keeps is decided by a score order that rounding flips when the scores are this close.
    Swaps are the matched pairs whose IoU is ``< iou_thr``. Unmatched boxes of either side scoring
    below ``cutoff + score_tol`` are not counted.

    Returns:
        ``(n_ref_counted, n_test_counted, matched_ious, matched_score_diffs)``.
    """
    (rb, rs, rl), (tb, ts, tl) = ref, test
    iou = box_iou(rb, tb)
    ref_hit, test_hit = np.zeros(len(rb), bool), np.zeros(len(tb), bool)
    ious: list[float] = []
    diffs: list[float] = []
    order = np.argsort(-rs, kind="stable")
    for i in order:
        cand = np.flatnonzero((tl == rl[i]) & ~test_hit)
        if not len(cand):
            continue
        j = cand[np.argmax(iou[i, cand])]
        diff = abs(float(rs[i]) - float(ts[j]))
        if iou[i, j] >= iou_thr and diff <= score_tol:
            ref_hit[i] = test_hit[j] = True
            ious.append(float(iou[i, j]))
            diffs.append(diff)
    if swap_iou is not None:
        for i in order[~ref_hit[order]]:
            ok = np.flatnonzero((tl == rl[i]) & ~test_hit & (iou[i] > swap_iou)
                                & (np.abs(ts - rs[i]) <= score_tol))
            if len(ok):
                j = ok[np.argmax(iou[i, ok])]
                ref_hit[i] = test_hit[j] = True
                ious.append(float(iou[i, j]))
                diffs.append(abs(float(rs[i]) - float(ts[j])))
    edge = cutoff + score_tol
    n_ref = int(ref_hit.sum() + (~ref_hit & (rs >= edge)).sum())
    n_test = int(test_hit.sum() + (~test_hit & (ts >= edge)).sum())
    return n_ref, n_test, ious, diffs


def _onnx_session(onnx_model: str | Path | onnx.ModelProto,
                  device: str = "cpu") -> tuple[ort.InferenceSession, ModelMeta]:
    """A session on ``device`` (:func:`det_toolkit.runtime.backends.onnx_backend.providers_for`) and the
    :class:`ModelMeta` stored in the model's ``metadata_props``."""
    if isinstance(onnx_model, onnx.ModelProto):
        source, data = "<in-memory model>", onnx_model.SerializeToString()
    else:
        source = data = str(onnx_model)
    sess = ort.InferenceSession(data, providers=providers_for(device))
    return sess, ModelMeta.from_json(session_metadata(sess, META_KEY, source), source)


def onnx_detections(sess: ort.InferenceSession, meta: ModelMeta, xs: list[np.ndarray]) -> list[RawDetections]:
    """Run an ONNX detector (single-image dynamic or static batched graph) on inputs ``xs``.

    Args:
        sess: an open session of a det-toolkit graph.
        meta: its :class:`ModelMeta` (``batch``, ``output_names``; ``num_dets`` marks the padded
            batched outputs of :mod:`det_toolkit.runtime.backends.outputs`).
        xs: float32 ``[1, 3, H, W]`` inputs, one per image.

    Returns:
        Per-image ``(boxes float32 [K, 4] xyxy, scores float32 [K], labels int64 [K])``.
    """
    names = list(meta.output_names)
    if "num_dets" not in names:
        return [tuple(sess.run(names[:3], {meta.input_name: x})) for x in xs]  # type: ignore[misc]
    return run_chunks(lambda b: sess.run(names, {meta.input_name: b}),
                      np.concatenate(xs) if xs else np.zeros((0, 3, *meta.imgsz), np.float32),
                      meta.batch)


def compare_detections(ref: list[RawDetections], test: list[RawDetections], meta: ModelMeta, iou_thr: float,
                       score_tol: float, min_match: float, min_score: float = 0.0,
                       names: tuple[str, str] = ("torch", "onnx"), swap_iou: float | None = None) -> ParityReport:
    """Match ``test`` against ``ref`` image by image (see :class:`ParityReport`); only boxes
    scoring ``>= min_score`` take part (the cut-off then is ``max(score_thresh, min_score)``)."""
    n_ref = n_test = 0
    ious: list[float] = []
    diffs: list[float] = []
    for r_det, t_det in zip(ref, test):
        if min_score > 0:
            r_det, t_det = (tuple(a[d[1] >= min_score] for a in d) for d in (r_det, t_det))
        cutoff = max(meta.score_thresh, min_score)
        for _, scores, _ in (r_det, t_det):
            if len(scores) >= meta.max_det:
                cutoff = max(cutoff, float(scores.min()))
        r, t, i, d = match_detections(r_det, t_det, iou_thr, score_tol, cutoff, swap_iou)
        n_ref, n_test = n_ref + r, n_test + t
        ious += i
        diffs += d
    denom = max(n_ref, n_test)
    rate = len(ious) / denom if denom else 1.0
    return ParityReport(
        n_images=len(ref), n_ref_boxes=n_ref, n_onnx_boxes=n_test, n_matched=len(ious),
        match_rate=rate, mean_iou=float(np.mean(ious)) if ious else 0.0,
        max_score_diff=max(diffs, default=0.0), passed=rate >= min_match,
        iou_thr=iou_thr, score_tol=score_tol, min_match=min_match, min_score=min_score,
        n_swaps=sum(v < iou_thr for v in ious), swap_iou=swap_iou, ref_name=names[0], test_name=names[1],
    )


def parity_inputs(images: list[np.ndarray], meta: ModelMeta) -> list[np.ndarray]:
    """Graph inputs of BGR ``uint8 [H, W, 3]`` frames as the runtime makes them: float32 ``[1, 3, H, W]``
    RGB in ``[0, 1]``, letterboxed to ``meta.imgsz`` with ``meta.pad_value``, one per frame.

    Raises:
        ValueError: ``images`` is empty.
    """
    if not images:
        raise ValueError("parity needs at least one image")
    return [to_input(letterbox(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), meta.imgsz, meta.pad_value)[0])
            for img in images]


@torch.no_grad()
def check_parity(
    ckpt_or_model: dict[str, Any] | str | Path | nn.Module,
    onnx_path: str | Path | onnx.ModelProto,
    images: list[np.ndarray],
    iou_thr: float = 0.9,
    score_tol: float = 0.01,
    min_match: float = 0.99,
    device: str = "cpu",
) -> ParityReport:
    """Compare PyTorch and onnxruntime detections on ``images``, both on ``device``.

    Only boxes with score >= the graph's ``score_thresh`` are produced by either side; boxes near
    the cut-off are handled as described in :class:`ParityReport`. Static batched graphs
    (``num_dets`` output) are fed in chunks of ``meta.batch`` (the last one zero-padded).

    Args:
        ckpt_or_model: checkpoint dict or path, or a :class:`det_toolkit.train.models.common.Detector`.
        onnx_path: the exported ``.onnx`` file (or an in-memory ``onnx.ModelProto``) carrying
            :class:`det_toolkit.runtime.meta.ModelMeta` metadata; its ``imgsz`` and ``pad_value`` drive the
            letterbox.
        images: BGR ``uint8 [H, W, 3]`` frames of any size.
        iou_thr: minimum IoU of a matched pair.
        score_tol: maximum absolute score difference of a matched pair.
        min_match: minimum ``match_rate`` to pass.
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (:func:`det_toolkit.runtime.device.parse_device`)
            for the PyTorch model (moved there in place) and the ONNX Runtime session.

    Raises:
        FileNotFoundError, det_toolkit.train.checkpoint.CheckpointError: bad checkpoint path.
        det_toolkit.runtime.meta.MetadataError: the ONNX model has no det-toolkit metadata.
        det_toolkit.runtime.backends.BackendError: an unknown or unavailable ``device``.
        ValueError: ``images`` is empty or holds a non-3-channel image.
    """
    if not images:
        raise ValueError("check_parity needs at least one image")
    model = ckpt_or_model if isinstance(ckpt_or_model, nn.Module) else model_from_checkpoint(ckpt_or_model)
    dev = torch_device(device)
    model.eval().to(dev)
    sess, meta = _onnx_session(onnx_path, device)
    xs = parity_inputs(images, meta)
    ref = []
    for x in xs:
        out = model(torch.from_numpy(x).to(dev))[0]
        ref.append(tuple(out[k].cpu().numpy() for k in ("boxes", "scores", "labels")))
    return compare_detections(ref, onnx_detections(sess, meta, xs), meta, iou_thr, score_tol, min_match)


def onnx_pair_detections(ref_onnx: str | Path | onnx.ModelProto, test_onnx: str | Path | onnx.ModelProto,
                         images: list[np.ndarray]) -> tuple[list[RawDetections], list[RawDetections], ModelMeta]:
    """Run two ONNX graphs of one model in onnxruntime CPU on the same inputs.

    Both get the letterbox of ``ref_onnx``'s metadata (BGR ``uint8`` ``images`` -> float32
    ``[1, 3, H, W]``). Returns ``(ref detections, test detections, ref metadata)``, one
    ``(boxes [K, 4] xyxy input pixels, scores [K], labels [K])`` per image.

    Raises:
        det_toolkit.runtime.meta.MetadataError: a graph has no det-toolkit metadata.
        ValueError: ``images`` is empty.
    """
    ref_sess, meta = _onnx_session(ref_onnx)
    test_sess, test_meta = _onnx_session(test_onnx)
    xs = parity_inputs(images, meta)
    return onnx_detections(ref_sess, meta, xs), onnx_detections(test_sess, test_meta, xs), meta


def check_onnx_parity(ref_onnx: str | Path | onnx.ModelProto, test_onnx: str | Path | onnx.ModelProto,
                      images: list[np.ndarray], iou_thr: float = 0.9, score_tol: float = 0.01,
                      min_match: float = 0.98, min_score: float = 0.0,
                      names: tuple[str, str] = ("fp32", "fp16"), swap_iou: float | None = None) -> ParityReport:
    """Compare two ONNX graphs of one model in onnxruntime CPU (e.g. FP16 against FP32).

    Both are fed the letterbox of ``ref_onnx``'s metadata; criteria as :func:`check_parity`,
    restricted to boxes scoring ``>= min_score`` (e.g. a deployment confidence threshold; 0
    compares everything the graphs return). ``names`` label the two sides in the report;
    ``swap_iou`` enables NMS swaps (:func:`match_detections`).

    Raises:
        det_toolkit.runtime.meta.MetadataError: a graph has no det-toolkit metadata.
        ValueError: ``images`` is empty.
    """
    ref, test, meta = onnx_pair_detections(ref_onnx, test_onnx, images)
    return compare_detections(ref, test, meta, iou_thr, score_tol, min_match, min_score, names, swap_iou)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as BGR ``uint8 [H, W, 3]`` (grayscale is expanded). Raises ``ValueError``."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path}")
    return img


def load_images(spec: str | Path) -> list[np.ndarray]:
    """All images of a folder, or of a glob pattern (sorted by path), as BGR ``uint8`` arrays.

    Raises:
        FileNotFoundError: nothing matches ``spec``.
        ValueError: a matched file is not a readable image.
    """
    p = Path(spec)
    paths = sorted(p.iterdir()) if p.is_dir() else sorted(Path(s) for s in glob.glob(str(spec)))
    paths = [q for q in paths if q.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise FileNotFoundError(f"no images at {spec}")
    return [read_image(q) for q in paths]


def val_image_paths(data: dict[str, Any]) -> list[Path]:
    """Existing validation image files of a checkpoint's data config (``ckpt["data"]``).

    ``data`` is a :class:`det_toolkit.train.config.DataConfig` as a dict; the split is resolved exactly as
    training resolves it (list file, folder or COCO JSON). Returns ``[]`` when it cannot be.
    """
    try:
        cfg = from_dict(DataConfig, data, "checkpoint data config")
        if str(cfg.split("val")).endswith(".json"):  # a list of folders/list files is never COCO
            return [s.image for s in read_split(cfg, "val")[0]]
        return [p for p in list_split_images(cfg, cfg.val) if p.is_file()]
    except (ConfigError, DatasetError):
        return []


def synthetic_images(n: int = 8, seed: int = 0) -> list[np.ndarray]:
    """``n`` reproducible random-noise BGR ``uint8`` frames of mixed sizes (last-resort parity input)."""
    rng = np.random.default_rng(seed)
    sizes = [(480, 640), (640, 480), (360, 360), (300, 500)]
    return [rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8) for i in range(n)]


def default_parity_images(ckpt: dict[str, Any], n: int = 50,
                          echo: Callable[[str], None] = print) -> list[np.ndarray]:
    """Up to ``n`` validation images of the checkpoint's dataset, else synthetic noise (with a warning)."""
    paths = val_image_paths(ckpt.get("data") or {})[:n]
    if paths:
        echo(f"parity images: {len(paths)} val images from {paths[0].parent}")
        return [read_image(p) for p in paths]
    echo("WARNING: the checkpoint's dataset (ckpt['data'] 'path'/'val') could not be resolved; "
         f"parity runs on {min(n, 8)} SYNTHETIC noise images, which exercise the graph but say little "
         "about real detections. Pass --parity-images DIR|GLOB for a meaningful check.")
    return synthetic_images(min(n, 8))
