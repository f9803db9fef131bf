"""The contract between exported artifacts and the runtime.

Every artifact (``.onnx``, ``.engine`` sidecar, ``.pt`` checkpoint) carries a :class:`ModelMeta`.
In ONNX it is stored as JSON under the ``metadata_props`` key :data:`META_KEY`; the most useful
fields are also stored as plain keys (``names``, ``imgsz``, ``model``) so Netron and other tools show
them.

Graph contract (format_version 1):

* input ``images``: float32 ``[N, 3, H, W]``, RGB, values in ``[0, 1]``; the frame is letterboxed
  by :func:`det_toolkit.runtime.preprocess.letterbox` (aspect kept, top-left aligned, right/bottom padded with
  :data:`PAD_VALUE`). ImageNet mean/std normalisation happens inside the graph.
* outputs ``boxes`` float32 ``[K, 4]`` (``xyxy``, absolute pixels of the graph input), ``scores``
  float32 ``[K]`` in ``[0, 1]``, ``labels`` int64 ``[K]`` (0-based index into ``class_names``),
  for batch size 1. Batched graphs (``batch > 1``) add a leading ``N`` axis, pad ``K`` to
  ``max_det`` and add ``num_dets`` int64 ``[N]``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from det_toolkit import __version__

META_KEY = "det_toolkit"
FORMAT_VERSION = 1
#: Letterbox padding colour (RGB, uint8): the ImageNet mean, so padding normalises to ~0 inside the
#: graph, exactly like the zero padding torchvision's batching adds during training.
PAD_VALUE: tuple[int, int, int] = (124, 116, 104)


class MetadataError(ValueError):
    """An artifact's metadata is missing, unreadable or inconsistent."""


@dataclass
class ModelMeta:
    """Self-description of a detector artifact.

    Attributes:
        model: builder name, e.g. ``"fasterrcnn_mobilenet_v2_fpn"``.
        class_names: class names; output label ``i`` is ``class_names[i]``.
        imgsz: ``(H, W)`` letterbox size in pixels the model was trained/exported for.
        dynamic_hw: the graph accepts other ``H, W`` (then ``--imgsz`` may change them).
        batch: batch size of the graph input (1 for the dynamic single-image graph).
        pad_value: letterbox padding colour, RGB uint8.
        input_name: name of the graph input.
        output_names: names of the graph outputs, in order.
        score_thresh: the score threshold applied inside the graph (lower ``--conf`` has no effect).
        max_det: maximum detections per image the graph returns.
        toolkit_version: det-toolkit version that wrote the artifact.
        extra: free-form provenance (torch version, opset, source checkpoint, metrics, ...).
        quantization: ``None`` for float graphs; for INT8 graphs (``det-export --int8``) how they
            were quantized: ``format`` (``"QDQ"``), ``method`` (calibration), ``calib_images``
            (count), ``scope``, ``float_nodes`` (weighted layers left float32), ``parity`` (vs the
            float32 graph), ... (:func:`det_toolkit.export.int8.export_int8`). Omitted from the
            JSON when ``None``, so float artifacts are unchanged.
    """

    model: str
    class_names: list[str]
    imgsz: tuple[int, int]
    dynamic_hw: bool = True
    batch: int = 1
    pad_value: tuple[int, int, int] = PAD_VALUE
    input_name: str = "images"
    output_names: tuple[str, ...] = ("boxes", "scores", "labels")
    score_thresh: float = 0.05
    max_det: int = 100
    format_version: int = FORMAT_VERSION
    toolkit_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None

    def to_json(self) -> str:
        """Serialise to a JSON string (tuples become lists; ``quantization`` only when set)."""
        d = asdict(self)
        if d["quantization"] is None:
            del d["quantization"]
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_dict(cls, d: Any, source: str = "<metadata>") -> ModelMeta:
        """Build from a dict, checking every field's type and range and the format version.

        ``imgsz`` may be one int (square); ``class_names`` must be a non-empty list of non-empty
        strings (a plain string would label every box with one letter). Unknown keys are ignored
        (newer writers may add fields).

        Raises:
            MetadataError: not a mapping, a required key missing, a field of the wrong type or out
                of range (the message names ``source``, the field and the value), or a format version
                newer than supported.
        """
        if not isinstance(d, dict):
            raise MetadataError(f"{source}: metadata must be a JSON object, got {type(d).__name__}")
        missing = [k for k in ("model", "class_names", "imgsz") if k not in d]
        if missing:
            raise MetadataError(f"{source}: metadata lacks {missing}; re-export it with det-export")
        check = _FieldCheck(source)
        version = check.integer(d, "format_version", 1, default=FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise MetadataError(
                f"{source}: metadata format {version} is newer than this runtime "
                f"supports ({FORMAT_VERSION}); upgrade det-toolkit"
            )
        imgsz = d["imgsz"]
        imgsz = check.int_tuple({"imgsz": [imgsz, imgsz]} if _is_int(imgsz) else d, "imgsz", 2, 1)
        return cls(
            model=check.string(d, "model"),
            class_names=check.strings(d, "class_names"),
            imgsz=imgsz,  # type: ignore[arg-type]
            dynamic_hw=check.boolean(d, "dynamic_hw", True),
            batch=check.integer(d, "batch", 1, default=1),
            pad_value=check.int_tuple(d, "pad_value", 3, 0, 255, default=PAD_VALUE),  # type: ignore[arg-type]
            input_name=check.string(d, "input_name", "images"),
            output_names=tuple(check.strings(d, "output_names", ("boxes", "scores", "labels"))),
            score_thresh=check.number(d, "score_thresh", 0.0, 1.0, default=0.05),
            max_det=check.integer(d, "max_det", 1, default=100),
            format_version=version,
            toolkit_version=check.string(d, "toolkit_version", "unknown"),
            extra=check.mapping(d, "extra"),
            quantization=check.mapping(d, "quantization") if d.get("quantization") is not None else None,
        )

    @classmethod
    def from_json(cls, s: str, source: str = "<metadata>") -> ModelMeta:
        """Parse :meth:`to_json` output. Raises :class:`MetadataError` on bad JSON."""
        try:
            d = json.loads(s)
        except json.JSONDecodeError as e:
            raise MetadataError(f"{source}: metadata is not valid JSON ({e})") from e
        return cls.from_dict(d, source)

    def onnx_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries written into an ONNX model."""
        return {
            META_KEY: self.to_json(),
            "model": self.model,
            "names": json.dumps(dict(enumerate(self.class_names))),
            "imgsz": json.dumps(list(self.imgsz)),
            "preprocess": "letterbox top-left, pad RGB "
            f"{list(self.pad_value)}, RGB float32 0-1 NCHW; normalisation in graph",
            "toolkit_version": self.toolkit_version,
        }


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class _FieldCheck:
    """Type/range checks of metadata fields; each failure is a :class:`MetadataError` naming the
    artifact, the field and the value."""

    _MISSING = object()

    def __init__(self, source: str) -> None:
        self.source = source

    def _get(self, d: dict[str, Any], key: str, default: Any) -> Any:
        v = d.get(key, default)
        if v is self._MISSING or v is None:
            raise MetadataError(f"{self.source}: metadata field '{key}' is missing or null; re-export it with "
                                "det-export")
        return v

    def _fail(self, key: str, want: str, v: Any) -> MetadataError:
        return MetadataError(f"{self.source}: metadata field '{key}' must be {want}, got "
                             f"{type(v).__name__} {v!r:.80}; re-export it with det-export")

    def string(self, d: dict[str, Any], key: str, default: Any = _MISSING) -> str:
        v = self._get(d, key, default)
        if not isinstance(v, str) or not v:
            raise self._fail(key, "a non-empty string", v)
        return v

    def strings(self, d: dict[str, Any], key: str, default: Any = _MISSING) -> list[str]:
        v = self._get(d, key, default)
        if not isinstance(v, (list, tuple)) or not v or not all(isinstance(x, str) and x for x in v):
            raise self._fail(key, "a non-empty list of non-empty strings", v)
        return list(v)

    def boolean(self, d: dict[str, Any], key: str, default: Any = _MISSING) -> bool:
        v = self._get(d, key, default)
        if not isinstance(v, bool):
            raise self._fail(key, "true or false", v)
        return v

    def integer(self, d: dict[str, Any], key: str, lo: int, hi: int | None = None, default: Any = _MISSING) -> int:
        v = self._get(d, key, default)
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            raise self._fail(key, f"an integer >= {lo}" + (f" and <= {hi}" if hi is not None else ""), v)
        return v

    def number(self, d: dict[str, Any], key: str, lo: float, hi: float, default: Any = _MISSING) -> float:
        v = self._get(d, key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise self._fail(key, f"a number in [{lo:g}, {hi:g}]", v)
        return float(v)

    def int_tuple(self, d: dict[str, Any], key: str, n: int, lo: int, hi: int | None = None,
                  default: Any = _MISSING) -> tuple[int, ...]:
        v = self._get(d, key, default)
        if (not isinstance(v, (list, tuple)) or len(v) != n
                or not all(_is_int(x) and x >= lo and (hi is None or x <= hi) for x in v)):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise self._fail(key, f"a list of {n} integers {rng}", v)
        return tuple(v)

    def mapping(self, d: dict[str, Any], key: str) -> dict[str, Any]:
        v = d.get(key, {})
        if v is None:
            return {}
        if not isinstance(v, dict):
            raise self._fail(key, "a JSON object", v)
        return v
