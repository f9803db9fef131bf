"""Checkpoint -> self-describing ONNX detector graph (the contract in :mod:`det_toolkit.runtime.meta`)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import onnxslim
import torch
from torch import Tensor, nn
from torchvision.models.detection import FasterRCNN

from det_toolkit.export.parity import ParityError, ParityReport, check_parity, default_parity_images
from det_toolkit.export.roi_pool import DEFAULT_POOLING, RoIPoolOptions, with_gather_pooling
from det_toolkit.export.static_graph import StaticFasterRCNN
from det_toolkit.export.static_tood import DEFORM_CONV_OPSET, StaticTOOD
from det_toolkit.export.trt_check import DEFAULT_TRT_VERSION, check_trt_readiness
from det_toolkit.runtime.files import atomic_write
from det_toolkit.runtime.preprocess import letterbox, to_input
from det_toolkit.train.checkpoint import (
    load_checkpoint,
    meta_from_checkpoint,
    model_from_checkpoint,
)
from det_toolkit.train.models.tood.model import TOOD

STATIC_OUTPUTS = ("boxes", "scores", "labels", "num_dets")


def static_module(model: nn.Module, batch: int, imgsz: tuple[int, int],
                  pooling: RoIPoolOptions = DEFAULT_POOLING) -> nn.Module:
    """The fixed-size deployment module of a :class:`det_toolkit.train.models.common.Detector`
    (or of the bare detector), chosen by the detector's type.

    :class:`~det_toolkit.train.models.tood.model.TOOD` -> :class:`det_toolkit.export.static_tood.StaticTOOD`;
    torchvision ``FasterRCNN`` -> :class:`det_toolkit.export.static_graph.StaticFasterRCNN` (RoIs pooled
    as ``pooling`` says). Both take
    float32 ``[batch, 3, H, W]`` and return ``boxes [batch, K, 4]``, ``scores [batch, K]``,
    ``labels [batch, K]`` (0-based), ``num_dets [batch]``.

    Raises:
        TypeError: a detector type without a static graph.
        ValueError: ``batch < 1`` or the fixed sizes break a TensorRT limit.
    """
    inner = getattr(model, "model", model)
    if isinstance(inner, TOOD):
        return StaticTOOD(model, batch, imgsz)
    if isinstance(inner, FasterRCNN):
        return StaticFasterRCNN(model, batch, imgsz, pooling)
    raise TypeError(f"{type(inner).__name__}: no static graph (TOOD and torchvision FasterRCNN have one)")


@dataclass(frozen=True)
class ExporterSettings:
    """How :func:`export_onnx` traces a module, by the detector's type (:func:`exporter_settings`).

    Attributes:
        dynamo: ``torch.export`` + onnxscript (``torch.onnx.export(dynamo=True)``) instead of the
            legacy TorchScript tracer.
        min_opset: lowest ONNX opset the graph needs (``None``: any); a lower requested opset is raised.
        deform_impl: the deformable-op implementation traced (TOOD only), recorded in the metadata.
    """

    dynamo: bool = False
    min_opset: int | None = None
    deform_impl: str | None = None


def exporter_settings(module: nn.Module) -> ExporterSettings:
    """The exporter settings for ``module``: a detector (a ``Detector`` or bare) or a static graph.

    * dynamic :class:`~det_toolkit.train.models.tood.model.TOOD`: the dynamo exporter at opset >= 19
      (``torchvision::deform_conv2d`` has a dynamo translation to ONNX ``DeformConv``, opset 19, and
      none in the legacy exporter);
    * :class:`~det_toolkit.export.static_tood.StaticTOOD`: the legacy exporter (its NMS exports
      through a ``symbolic``) at the graph's opset (19 for ``DeformConv``, 16 for ``GridSample``);
    * anything else (torchvision Faster R-CNN, :class:`~det_toolkit.export.static_graph.StaticFasterRCNN`):
      the legacy exporter at the requested opset (the dynamo exporter fails in torchvision's
      ``batched_nms``).
    """
    if isinstance(module, StaticTOOD):
        return ExporterSettings(dynamo=False, min_opset=module.opset, deform_impl=module.deform_impl)
    inner = getattr(module, "model", module)
    if isinstance(inner, TOOD):
        return ExporterSettings(dynamo=True, min_opset=DEFORM_CONV_OPSET, deform_impl=inner.deform_impl)
    return ExporterSettings()


class SingleImageDetector(nn.Module):
    """Graph wrapper: ``images`` float32 ``[1, 3, H, W]`` RGB 0-1 -> detections of image 0.

    Returns ``boxes`` float32 ``[K, 4]`` (``xyxy``, input pixels), ``scores`` float32 ``[K]``,
    ``labels`` int64 ``[K]`` (0-based).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        out = self.detector(images)[0]
        return out["boxes"], out["scores"], out["labels"]


@lru_cache(maxsize=1)
def ort_max_ir_version() -> int:
    """Highest ONNX IR version the installed onnxruntime loads (probed with a one-node model)."""
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "probe",
                                   [vi("x", onnx.TensorProto.FLOAT, [1])],
                                   [vi("y", onnx.TensorProto.FLOAT, [1])])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 13)])
    for ir in range(onnx.IR_VERSION, 7, -1):
        model.ir_version = ir
        try:
            ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
            return ir
        except Exception:  # noqa: BLE001, S112 - any load failure means "too new"
            continue
    return 7


def finalize(model: onnx.ModelProto, props: dict[str, str]) -> onnx.ModelProto:
    """Set ``metadata_props``, lower the IR version to what onnxruntime loads, run the ONNX checker.

    Raises:
        onnx.checker.ValidationError: the graph is invalid.
    """
    onnx.helper.set_model_props(model, props)
    model.ir_version = min(model.ir_version, ort_max_ir_version())
    onnx.checker.check_model(model)
    return model


def save_onnx_atomic(model: onnx.ModelProto, path: Path) -> Path:
    """Serialize ``model`` and write it with :func:`det_toolkit.runtime.files.atomic_write` (a crash
    mid-write leaves any previous file intact). Returns ``path``."""
    return atomic_write(path, model.SerializeToString())


def trace_to_onnx(module: nn.Module, example: Tensor, opset: int, input_name: str,
                  output_names: list[str], dynamic_axes: dict[str, dict[int, str]],
                  dynamo: bool = False) -> onnx.ModelProto:
    """TorchScript-trace ``module`` on ``example`` and return the ONNX model (in memory).

    Uses the legacy exporter (``dynamo=False``): the dynamo exporter fails in torchvision's
    ``batched_nms``. Tracing torchvision detectors emits known-harmless tracer warnings; they are
    silenced here, and parity checks are what vouch for the graph.
    With ``dynamo`` (:func:`exporter_settings`: the dynamic TOOD, whose ``deform_conv2d`` only the
    dynamo exporter translates, to ONNX ``DeformConv``) ``torch.export`` + onnxscript are used instead.
    """
    if dynamo:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            prog = torch.onnx.export(module.eval(), (example,), dynamo=True, opset_version=opset,
                                     input_names=[input_name], output_names=output_names,
                                     dynamic_axes=dynamic_axes or None, verbose=False)
        return prog.model_proto
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), buf, dynamo=False, opset_version=opset,
                          input_names=[input_name], output_names=output_names,
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def export_onnx(
    ckpt_path: str | Path,
    out_path: str | Path | None = None,
    opset: int = 17,
    simplify: bool = True,
    imgsz: int | tuple[int, int] | None = None,
    *,
    static: bool = False,
    batch: int = 1,
    trt_version: str = DEFAULT_TRT_VERSION,
    parity_images: list[np.ndarray] | None = None,
    iou_thr: float = 0.9,
    score_tol: float = 0.01,
    echo: Callable[[str], None] = print,
    pooling: RoIPoolOptions = DEFAULT_POOLING,
    device: str = "cpu",
) -> Path:
    """Export a checkpoint's detector to ONNX, verify it against PyTorch, write it atomically.

    Graph (see :mod:`det_toolkit.runtime.meta`): input ``images`` float32 ``[1, 3, height, width]`` RGB in
    ``[0, 1]`` (letterboxed, dynamic height/width); outputs ``boxes`` float32 ``[K, 4]`` ``xyxy``
    absolute input pixels, ``scores`` float32 ``[K]``, ``labels`` int64 ``[K]`` 0-based. The
    :class:`det_toolkit.runtime.meta.ModelMeta` (class names, imgsz, opset, torch version, ...) is stored in
    ``metadata_props``. With ``simplify`` the onnxslim graph is kept only if it passes parity;
    the parity table is always echoed.

    Args:
        ckpt_path: det-toolkit checkpoint (``.pt``).
        out_path: output file; default: the checkpoint's path with suffix ``.onnx``.
        opset: ONNX opset.
        simplify: try onnxslim.
        imgsz: input size in pixels, ``N`` or ``(H, W)``, to trace at and record; default: the
            checkpoint's.
        static: write the static TensorRT-ready graph instead: input ``[batch, 3, H, W]``, padded
            outputs ``boxes [batch, K, 4]``, ``scores [batch, K]``, ``labels [batch, K]``,
            ``num_dets [batch]`` (``K = max_det``; :mod:`det_toolkit.export.static_graph`), folded by onnxslim at
            the fixed size; its TensorRT readiness (:mod:`det_toolkit.export.trt_check`) must pass.
        batch: batch size ``N`` of the static graph.
        trt_version: supported-operator list the readiness check uses.
        parity_images: BGR ``uint8`` frames for the parity check; default: up to 8 val images of
            the checkpoint's dataset, else synthetic noise (with a warning).
        iou_thr: parity IoU threshold for a matched box.
        score_tol: parity score tolerance for a matched box.
        echo: where progress and the parity table are written.
        pooling: how Faster R-CNN graphs pool RoIs (:class:`det_toolkit.export.roi_pool.RoIPoolOptions`;
            the default is det-export's choice, other values are for benchmarks).
        device: where the parity check runs PyTorch and ONNX Runtime (:func:`check_parity`);
            tracing is always on the CPU.

    Returns:
        The path written.

    Raises:
        FileNotFoundError, det_toolkit.train.checkpoint.CheckpointError: unreadable checkpoint.
        ValueError: ``parity_images`` is empty.
        ParityError: the graph does not reproduce PyTorch's detections (nothing is written).
        TypeError: ``static`` for a model without a static graph.
        ValueError: ``static`` graph not TensorRT-ready (nothing is written), or a bad ``batch``.
    """
    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    out = Path(out_path) if out_path is not None else ckpt_path.with_suffix(".onnx")
    model = model_from_checkpoint(ckpt)
    meta = meta_from_checkpoint(ckpt, source=str(ckpt_path))
    if imgsz is not None:
        meta.imgsz = (int(imgsz), int(imgsz)) if isinstance(imgsz, int) else (int(imgsz[0]), int(imgsz[1]))
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    static_graph = static_module(model, batch, meta.imgsz, pooling) if static else None
    settings = exporter_settings(static_graph if static_graph is not None else model)
    if settings.min_opset is not None:
        opset = max(opset, settings.min_opset)
    if settings.deform_impl is not None:
        meta.extra.update(exporter="dynamo" if settings.dynamo else "legacy", deform_impl=settings.deform_impl)
    meta.extra.update(opset=opset, torch=str(torch.__version__), onnx=onnx.__version__)
    images = parity_images if parity_images is not None else default_parity_images(ckpt, echo=echo)
    if not images:
        raise ValueError("no parity images given")

    xs = [to_input(letterbox(cv2.cvtColor(im, cv2.COLOR_BGR2RGB), meta.imgsz, meta.pad_value)[0])
          for im in images[:batch]]
    if static_graph is not None:
        module: nn.Module = static_graph
        meta.batch, meta.dynamic_hw, meta.output_names = batch, False, STATIC_OUTPUTS
        meta.max_det = int(getattr(module, "max_det", meta.max_det))
        example = torch.from_numpy(np.concatenate([xs[i % len(xs)] for i in range(batch)]))
        axes: dict[str, dict[int, str]] = {}
        echo(f"tracing the static graph of {meta.model}: input [{batch}, 3, {meta.imgsz[0]}, "
             f"{meta.imgsz[1]}], outputs padded to max_det={meta.max_det}, opset {opset}")
    else:
        example = torch.from_numpy(xs[0])
        module = SingleImageDetector(with_gather_pooling(model, example[0], pooling))
        axes = {meta.input_name: {2: "height", 3: "width"}, **{n: {0: "K"} for n in meta.output_names}}
        echo(f"tracing {meta.model} at {meta.imgsz[0]}x{meta.imgsz[1]}, opset {opset}")
    graph = trace_to_onnx(module, example, opset, meta.input_name, list(meta.output_names), axes,
                          dynamo=settings.dynamo)

    def verified(candidate: onnx.ModelProto, simplified: bool) -> tuple[onnx.ModelProto, ParityReport]:
        meta.extra["simplified"] = simplified
        candidate = finalize(candidate, meta.onnx_props())
        return candidate, check_parity(model, candidate, images, iou_thr=iou_thr, score_tol=score_tol,
                                       device=device)

    chosen: tuple[onnx.ModelProto, ParityReport] | None = None
    if simplify:
        slim_input = onnx.ModelProto()
        slim_input.CopyFrom(graph)  # onnxslim modifies its input; the traced graph stays the fallback
        try:
            chosen = verified(onnxslim.slim(slim_input), simplified=True)
        except Exception as e:  # noqa: BLE001 - simplification is optional; the raw graph remains
            echo(f"onnxslim failed ({type(e).__name__}: {e}); keeping the unsimplified graph")
        if chosen is not None and not chosen[1].passed:
            echo(f"onnxslim graph rejected ({chosen[1].summary()}); keeping the unsimplified graph")
            chosen = None
    final, report = chosen if chosen is not None else verified(graph, simplified=False)
    echo(report.table())
    if not report.passed:
        raise ParityError(f"{report.summary()}; {out} was not written")
    if static:
        ready = check_trt_readiness(final, trt_version)
        echo(ready.summary())
        if not ready.ready:
            raise ValueError(f"the static graph is not TensorRT-ready; {out} was not written")
    return save_onnx_atomic(final, out)

