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
from dataclasses import asdict, dataclass, field, fields
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

    def to_json(self) -> str:
        """Serialise to a JSON string (tuples become lists)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "<metadata>") -> ModelMeta:
        """Build from a dict, checking required keys and the format version.

        Raises:
            MetadataError: a required key is missing or the format version is newer than supported.
        """
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("model", "class_names", "imgsz") if k not in d]
        if missing:
            raise MetadataError(f"{source}: metadata lacks {missing}; re-export it with det-export")
        if int(d.get("format_version", 1)) > FORMAT_VERSION:
            raise MetadataError(
                f"{source}: metadata format {d['format_version']} is newer than this runtime "
                f"supports ({FORMAT_VERSION}); upgrade det-toolkit"
            )
        kw = {k: v for k, v in d.items() if k in known}
        kw["imgsz"] = tuple(int(v) for v in kw["imgsz"])
        kw["pad_value"] = tuple(int(v) for v in kw.get("pad_value", PAD_VALUE))
        kw["output_names"] = tuple(kw.get("output_names", ("boxes", "scores", "labels")))
        kw["class_names"] = [str(n) for n in kw["class_names"]]
        return cls(**kw)

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
