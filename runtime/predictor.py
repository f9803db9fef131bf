"""Frame-in, detections-out: letterbox, backend inference, filtering and mapping back to the frame."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from det_toolkit.runtime.backends.base import Backend
from det_toolkit.runtime.preprocess import LetterboxInfo, letterbox, to_input, unletterbox_boxes

STAGES = ("preprocess", "inference", "postprocess")
_INV255 = np.float32(1.0 / 255.0)


@dataclass
class Detections:
    """Detections of one frame.

    Attributes:
        boxes: float32 ``[K, 4]`` ``xyxy`` in original-frame pixels, clipped to the frame.
        scores: float32 ``[K]`` confidences in ``[0, 1]``.
        labels: int64 ``[K]`` 0-based class indices into ``ModelMeta.class_names``.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True)
class PreparedFrame:
    """One frame letterboxed and normalized by :meth:`Predictor.prepare`, ready for
    :meth:`Predictor.predict_prepared`.

    Attributes:
        x: float32 ``[3, H, W]`` (``H, W`` = the predictor's ``imgsz``) RGB in ``[0, 1]``, read-only:
            exactly the values :meth:`Predictor.predict_batch` puts in its batch for that frame.
        info: how the frame was mapped into ``x`` (for mapping boxes back).
    """

    x: np.ndarray
    info: LetterboxInfo


def _normalize_into(padded_bgr: np.ndarray, out: np.ndarray) -> None:
    """Write uint8 ``[H, W, 3]`` BGR ``padded_bgr`` into float32 ``out`` ``[3, H, W]`` as RGB in ``[0, 1]``:
    the values of ``to_input(padded_bgr[:, :, ::-1])[0]``, without its intermediate copy."""
    np.multiply(padded_bgr[:, :, ::-1].transpose(2, 0, 1), _INV255, out=out)


class Predictor:
    """Runs a :class:`Backend` on BGR frames.

    Args:
        backend: a loaded detector.
        conf: minimum score kept, in ``[0, 1]`` (values below ``meta.score_thresh`` change nothing:
            the graph already dropped those).
        classes: 0-based class ids to keep; ``None`` keeps all.
        imgsz: letterbox size override, ``N`` or ``(H, W)`` pixels; only for graphs with
            ``meta.dynamic_hw``. Default ``meta.imgsz``.
        rect: rectangular inference, for graphs with dynamic H/W only: frames scaled to fit
            ``imgsz`` and not padded to it (the graph pads to its stride, as training's batches
            are; :func:`letterbox` ``rect``). On a 768x576 frame at 320 px the input is 320x240
            instead of 320x320. Off by default, so every format of a model (PyTorch, dynamic and
            static ONNX, TensorRT) sees the same input as the export's parity check;
            ``docs/evaluation.md`` gives its measured effect on accuracy (model-dependent, either sign).

    Attributes:
        imgsz: ``(H, W)`` letterbox size in pixels.
        rect: whether inputs are rectangular (see ``rect``).
        times_ms: wall time in ms of the last call's stages, keys :data:`STAGES`.

    Raises:
        ValueError: ``imgsz`` differs from a fixed-size graph's, ``rect`` is asked of one, or
            ``classes`` holds an unknown id.
    """

    def __init__(self, backend: Backend, conf: float = 0.25, classes: Sequence[int] | None = None,
                 imgsz: int | tuple[int, int] | None = None, rect: bool = False) -> None:
        meta = backend.meta
        size = meta.imgsz if imgsz is None else (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
        if tuple(size) != tuple(meta.imgsz) and not meta.dynamic_hw:
            raise ValueError(f"imgsz {size} requested but the model's graph is fixed at {meta.imgsz}; "
                             "re-export with dynamic H/W or drop --imgsz")
        if rect and not meta.dynamic_hw:
            raise ValueError(f"rectangular inputs need a graph with dynamic H/W; {backend.name}'s is fixed "
                             f"at {meta.imgsz} (use square letterboxing)")
        self.rect = bool(rect)
        bad = [c for c in classes or () if not 0 <= c < len(meta.class_names)]
        if bad:
            raise ValueError(f"class ids {bad} out of range for {len(meta.class_names)} classes")
        self.backend = backend
        self.conf = conf
        self.classes = None if classes is None else np.asarray(classes, dtype=np.int64)
        self.imgsz: tuple[int, int] = (int(size[0]), int(size[1]))
        self._pad_bgr = tuple(meta.pad_value[::-1])
        self._buf = np.empty((*self.imgsz, 3), np.uint8)
        self._batch = np.empty((0, 3, *self.imgsz), np.float32)
        self.times_ms = dict.fromkeys(STAGES, 0.0)

    def __call__(self, frame_bgr: np.ndarray) -> Detections:
        """Detect objects in ``frame_bgr`` (uint8 ``[H, W, 3]`` BGR); see :class:`Detections`.

        Raises:
            ValueError: ``frame_bgr`` is not a non-empty 3-channel image.
        """
        t0 = time.perf_counter()
        # letterbox in BGR (pad colour reversed), then flip to RGB inside to_input's single copy
        padded, info = letterbox(frame_bgr, self.imgsz, self._pad_bgr, out=self._buf, rect=self.rect)
        self._buf = padded  # our own buffer: reused while frames keep their size
        x = to_input(padded[:, :, ::-1])
        t1 = time.perf_counter()
        raw = self.backend.infer(x)[0]
        t2 = time.perf_counter()
        dets = self._keep(raw, info)
        t3 = time.perf_counter()
        self.times_ms["preprocess"] = (t1 - t0) * 1e3
        self.times_ms["inference"] = (t2 - t1) * 1e3
        self.times_ms["postprocess"] = (t3 - t2) * 1e3
        return dets

    def predict_batch(self, images_bgr: Sequence[np.ndarray]) -> list[Detections]:
        """Detect objects in several images with one :meth:`Backend.infer` call.

        The backend decides how many run per forward pass (all at once for batched graphs and
        PyTorch, one by one for a batch-1 ONNX graph). Each image is letterboxed exactly as
        :meth:`__call__` does (same input values), straight into one reused float32 batch buffer;
        with :attr:`rect`, images of different shapes are padded (mean colour, right/bottom) to
        the largest height and width among them.

        Args:
            images_bgr: uint8 ``[H_i, W_i, 3]`` BGR images (sizes may differ; views are fine).

        Returns:
            One :class:`Detections` per image, boxes in that image's pixels. ``times_ms`` holds
            the whole batch's stage times.
        """
        t0 = time.perf_counter()
        if self.rect:
            batch, infos = self._rect_batch(images_bgr)
        else:
            batch = self._batch_buffer(len(images_bgr), self.imgsz)
            infos = [self._letterbox_into(img, batch[i], self._buf) for i, img in enumerate(images_bgr)]
        return self._infer(batch, infos, t0)

    def prepare(self, frame_bgr: np.ndarray) -> PreparedFrame:
        """Letterbox and normalize ``frame_bgr`` (uint8 ``[H, W, 3]`` BGR) for :meth:`predict_prepared`.

        Thread-safe: uses fresh buffers and reads only settings fixed at construction, so reader
        threads can prepare frames while another thread runs the predictor (OpenCV's resize and
        NumPy's large-array ufuncs release the GIL).

        Returns:
            A :class:`PreparedFrame` whose ``x`` holds exactly what :meth:`predict_batch` would put
            in its batch for this frame.

        Raises:
            ValueError: the predictor is :attr:`rect` (a rectangular batch's padding depends on the
                other frames in it), or ``frame_bgr`` is not a non-empty 3-channel image.
        """
        if self.rect:
            raise ValueError("prepare() needs a square predictor: a rect batch's padding depends on all its frames")
        x = np.empty((3, *self.imgsz), np.float32)
        info = self._letterbox_into(frame_bgr, x, None)
        x.flags.writeable = False
        return PreparedFrame(x, info)

    def predict_prepared(self, frames: Sequence[PreparedFrame]) -> list[Detections]:
        """Detect objects in frames from :meth:`prepare` with one :meth:`Backend.infer` call.

        Stacks the frames into the reused float32 batch buffer (:attr:`times_ms` ``preprocess`` is
        this stacking time only), then infers and filters as :meth:`predict_batch` does: the result
        equals ``predict_batch`` on the original frames exactly. Not thread-safe (one caller at a time,
        as every other detection method).

        Returns:
            One :class:`Detections` per frame, boxes in that frame's pixels.

        Raises:
            ValueError: the predictor is :attr:`rect`, or a frame was prepared at another size.
        """
        t0 = time.perf_counter()
        if self.rect:
            raise ValueError("predict_prepared() needs a square predictor")
        batch = self._batch_buffer(len(frames), self.imgsz)
        for i, f in enumerate(frames):
            if f.x.shape != batch.shape[1:]:
                raise ValueError(f"frame {i} was prepared as {f.x.shape[1:]}, this predictor takes {self.imgsz}")
            batch[i] = f.x
        return self._infer(batch, [f.info for f in frames], t0)

    def _letterbox_into(self, img_bgr: np.ndarray, out: np.ndarray, buf: np.ndarray | None) -> LetterboxInfo:
        """Square-letterbox uint8 BGR ``img_bgr`` (via uint8 ``buf`` ``[*imgsz, 3]``, or a fresh one if
        ``None``) into float32 ``out`` ``[3, *imgsz]`` (see :func:`_normalize_into`); raises
        ``ValueError`` for a non-image."""
        padded, info = letterbox(img_bgr, self.imgsz, self._pad_bgr, out=buf)
        _normalize_into(padded, out)
        return info

    def _batch_buffer(self, n: int, hw: tuple[int, int]) -> np.ndarray:
        """The first ``n`` images of the reused float32 ``[N, 3, *hw]`` batch buffer (grown or reshaped as needed)."""
        if n > len(self._batch) or self._batch.shape[2:] != hw:
            self._batch = np.empty((n, 3, *hw), np.float32)
        return self._batch[:n]

    def _rect_batch(self, images_bgr: Sequence[np.ndarray]) -> tuple[np.ndarray, list[LetterboxInfo]]:
        """Rectangular inputs, padded (mean colour, right/bottom) to the largest height and width among them."""
        sized = [letterbox(img, self.imgsz, self._pad_bgr, rect=True) for img in images_bgr]
        hw = (max(p.shape[0] for p, _ in sized), max(p.shape[1] for p, _ in sized))
        batch = self._batch_buffer(len(images_bgr), hw)
        for i, (padded, _) in enumerate(sized):
            if padded.shape[:2] != hw:
                canvas = np.empty((*hw, 3), np.uint8)
                canvas[:] = self._pad_bgr
                canvas[:padded.shape[0], :padded.shape[1]] = padded
                padded = canvas
            _normalize_into(padded, batch[i])
        return batch, [info for _, info in sized]

    def _infer(self, batch: np.ndarray, infos: list[LetterboxInfo], t0: float) -> list[Detections]:
        """Run the backend on the filled ``batch`` and filter each image's output; sets :attr:`times_ms`
        (preprocess: from ``t0``, a ``perf_counter()`` time, to now)."""
        t1 = time.perf_counter()
        raw = self.backend.infer(batch)
        t2 = time.perf_counter()
        out = [self._keep(r, info) for r, info in zip(raw, infos)]
        t3 = time.perf_counter()
        self.times_ms["preprocess"] = (t1 - t0) * 1e3
        self.times_ms["inference"] = (t2 - t1) * 1e3
        self.times_ms["postprocess"] = (t3 - t2) * 1e3
        return out

    def _keep(self, raw: tuple[np.ndarray, np.ndarray, np.ndarray], info: LetterboxInfo) -> Detections:
        """Apply ``conf``/``classes`` to one image's raw backend output and map boxes to the image."""
        boxes, scores, labels = raw
        keep = scores >= self.conf
        if self.classes is not None:
            keep &= np.isin(labels, self.classes)
        return Detections(unletterbox_boxes(boxes[keep], info), scores[keep].astype(np.float32, copy=False),
                          labels[keep].astype(np.int64, copy=False))
