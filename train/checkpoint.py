"""Self-describing checkpoints, written atomically and read with ``weights_only=True``.

A checkpoint is a plain dict (only tensors, numbers, strings, lists and dicts, so the safe
unpickler accepts it)::

    format: "det-toolkit/checkpoint", format_version: 1
    model: builder name            model_args: builder kwargs (without weights)
    class_names: [str]             category_ids: [int] (dataset category id of each class)
    imgsz: int                     train_args: dict (the TrainConfig)
    epoch: int (last finished, 0-based)   metrics: dict   best_fitness: float
    versions: {toolkit, torch, torchvision}
    state_dict: model weights (no DDP ``module.`` prefix)
    optimizer / scheduler / scaler / rng: resume state (absent in stripped exports)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision

from det_toolkit import __version__
from det_toolkit.runtime.files import atomic_write
from det_toolkit.runtime.meta import ModelMeta
from det_toolkit.train.models import build_model
from det_toolkit.train.models.common import Detector
from det_toolkit.train.models.weights import WeightsError, load_safely

FORMAT = "det-toolkit/checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a readable det-toolkit checkpoint."""


def versions() -> dict[str, str]:
    """Versions recorded in every checkpoint."""
    # str(): TorchVersion objects are rejected by torch.load(weights_only=True)
    return {"toolkit": __version__, "torch": str(torch.__version__),
            "torchvision": str(torchvision.__version__)}


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states in a ``weights_only``-safe form."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy(), int(n[2]), int(n[3]), float(n[4])))
    torch.set_rng_state(state["torch"])


def save_atomic(obj: dict[str, Any], path: str | Path) -> Path:
    """``torch.save`` ``obj`` with :func:`det_toolkit.runtime.files.atomic_write`: a crash mid-write
    leaves the previous file intact. Missing folders are created; returns ``path`` as a ``Path``."""
    return atomic_write(path, lambda f: torch.save(obj, f))


#: keys every det-toolkit checkpoint has (:func:`make_checkpoint`)
REQUIRED = ("model", "model_args", "class_names", "imgsz", "state_dict")


def _describe(obj: Any) -> str:
    """What a loaded object that is not a checkpoint is, for messages."""
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return (f"a plain state dict of {len(obj)} tensors (weights without the model's description; "
                "det-train --weights-init takes it)")
    keys = ", ".join(repr(k) for k in list(obj)[:5]) + (", ..." if len(obj) > 5 else "")
    return f"a dict with keys {keys}" if obj else "an empty dict"


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict with ``torch.load(weights_only=True)`` on CPU
    (:func:`det_toolkit.train.models.weights.load_safely`: every failure is one line naming the file,
    never torch's advice to load with ``weights_only=False``).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: not a readable PyTorch file; a pickle of Python objects (another tool's
            checkpoint); or not a det-toolkit checkpoint, saying what the file holds instead (a state
            dict, a list, a dict with other keys, a checkpoint missing keys or of a newer format).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = load_safely(path, "a det-toolkit checkpoint", advice=(
            "det-toolkit checkpoints hold only tensors, numbers and strings: is it another tool's checkpoint "
            "(e.g. Ultralytics)? Pass its weights to det-train --weights-init as a plain state dict"))
    except WeightsError as e:
        raise CheckpointError(str(e)) from e
    expected = "expected a det-toolkit checkpoint (weights/best.pt or last.pt of a det-train run)"
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a det-toolkit checkpoint: it holds {_describe(ckpt)}; {expected}")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: a det-toolkit checkpoint of format_version {version!r}, which this "
                              f"det-toolkit {__version__} (format_version {FORMAT_VERSION}) cannot read: upgrade it")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a complete det-toolkit checkpoint: no {', '.join(missing)}; {expected}")
    return ckpt


#: Builder defaults that changed: a checkpoint whose ``model_args`` do not record the argument (one
#: written before det-toolkit recorded every builder default) was built with the value given here.
FORMER_DEFAULTS: dict[str, dict[str, Any]] = {
    "fasterrcnn_mobilenet_v2_fpn": {"pyramid": "c5"},  # "c3-c5" since 2026-12-04 (docs/training.md)
}


def checkpoint_model_args(ckpt: dict[str, Any]) -> dict[str, Any]:
    """The builder kwargs that rebuild ``ckpt``'s model: its ``model_args`` over :data:`FORMER_DEFAULTS`."""
    return {**FORMER_DEFAULTS.get(ckpt["model"], {}), **ckpt.get("model_args", {})}


def model_from_checkpoint(ckpt: dict[str, Any] | str | Path) -> Detector:
    """Rebuild the model of a checkpoint (no pretrained download) and load its weights, eval mode."""
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    model = build_model(ckpt["model"], len(ckpt["class_names"]), weights=None, **checkpoint_model_args(ckpt))
    model.load_state_dict(ckpt["state_dict"])
    return model.eval()


def make_checkpoint(
    model: Detector,
    class_names: list[str],
    imgsz: int,
    *,
    category_ids: list[int] | None = None,
    epoch: int = -1,
    metrics: dict[str, Any] | None = None,
    train_args: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    best_fitness: float = 0.0,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the checkpoint dict (see module docstring) for ``model``.

    ``model`` may be DDP-wrapped; the ``module.`` prefix is removed. ``resume_state`` holds
    ``optimizer``, ``scheduler``, ``scaler`` and ``rng`` entries for ``--resume``.
    """
    core = getattr(model, "module", model)
    ckpt: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": core.name,
        "model_args": dict(core.build_args),
        "class_names": list(class_names),
        "category_ids": list(category_ids) if category_ids else list(range(1, len(class_names) + 1)),
        "imgsz": int(imgsz),
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        "best_fitness": float(best_fitness),
        "train_args": dict(train_args or {}),
        "data": dict(data or {}),
        "versions": versions(),
        "state_dict": {k: v.detach().cpu() for k, v in core.state_dict().items()},
    }
    if resume_state:
        ckpt.update(resume_state)
    return ckpt


def meta_from_checkpoint(ckpt: dict[str, Any], source: str = "") -> ModelMeta:
    """The :class:`det_toolkit.runtime.meta.ModelMeta` an artifact exported from ``ckpt`` carries.

    ``score_thresh`` and ``max_det`` are read from the rebuilt model's RoI heads when present.
    """
    args = ckpt.get("model_args", {})
    return ModelMeta(
        model=ckpt["model"],
        class_names=list(ckpt["class_names"]),
        imgsz=(int(ckpt["imgsz"]), int(ckpt["imgsz"])),
        score_thresh=float(args.get("box_score_thresh", 0.05)),
        max_det=int(args.get("box_detections_per_img", 100)),
        extra={"checkpoint": source, "epoch": ckpt.get("epoch"),
               "metrics": ckpt.get("metrics", {}), "category_ids": ckpt.get("category_ids"),
               "versions": ckpt.get("versions", {})},
    )
