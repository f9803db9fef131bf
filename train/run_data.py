"""The data of a training run: both splits read and checked, the recipe values chosen from them
(:func:`choose_recipe`), the datasets with their RAM cache, the loaders.

Everything here runs before the run folder exists, so a dataset det-train cannot learn from or
select weights on fails with one message and leaves nothing on disk: a val split without images or
boxes (best.pt is chosen by val mAP), a split none of whose images decodes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from det_toolkit.train import distributed as ddp
from det_toolkit.train.config import AUTO_KEYS, DataConfig, TrainConfig, load_data_config
from det_toolkit.train.data.dataset import (
    DetectionDataset,
    aug_params,
    available_mib,
    cache_mib_needed,
    collate,
)
from det_toolkit.train.data.formats import read_split, require_labels
from det_toolkit.train.data.samples import DataReport, DatasetError, Sample

Say = Callable[..., None]


@dataclass
class RunData:
    """The splits of a run and their loaders (this rank's share under ``torchrun``).

    Attributes:
        config: the data config (saved in checkpoints).
        train_samples / val_samples: every sample of each split.
        names / category_ids: class names and their dataset category ids.
        train_loader: shuffled training batches (a :class:`DistributedSampler` shard with ``world > 1``).
        val_loader: this rank's val images (every ``world``-th one), unshuffled, one per batch: each
            is padded only to the model's stride, as ``det-eval --rect`` and det-run's dynamic
            graphs see it. In a batch, torchvision pads every image to the batch's largest, which
            changes the detections and so the val mAP that picks ``best.pt``.
        sampler: the distributed sampler, or ``None`` in a single process.
        generator: the training shuffle's RNG, re-seeded from ``(seed, epoch)`` every epoch.
    """

    config: DataConfig
    train_samples: list[Sample]
    val_samples: list[Sample]
    names: list[str]
    category_ids: list[int]
    train_loader: DataLoader
    val_loader: DataLoader
    sampler: DistributedSampler | None
    generator: torch.Generator

    @property
    def val_dataset(self) -> DetectionDataset:
        """The val :class:`DetectionDataset` (all val samples; the loader takes this rank's share)."""
        return self.val_loader.dataset.dataset  # type: ignore[attr-defined]

    def unreadable_val(self) -> set[int]:
        """Indices of the val samples whose image failed to decode, on any rank (call after a
        prediction pass, which tried every image)."""
        return set(ddp.merge_dicts({i: True for i in self.val_dataset.bad}))


def load_data(cfg: TrainConfig, say: Say = print) -> tuple[DataConfig, dict[str, Any]]:
    """Read and validate both splits; print the data report.

    Returns:
        ``(data config, {"train": (samples, report), "val": (samples, report), "names": [str],
        "category_ids": [int]})``.

    Raises:
        FileNotFoundError, det_toolkit.train.config.ConfigError: a bad data config.
        det_toolkit.train.data.formats.DatasetError: no usable training labels; a val split without
            images or boxes (:func:`require_val`).
    """
    dcfg = load_data_config(cfg.data)
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        samples, names, cat_ids, report = read_split(dcfg, split)
        say(report.table())
        if split == "train":
            require_labels(samples, report, dcfg)
        else:
            require_val(samples, report, dcfg)
        out[split] = (samples, report)
        out["names"], out["category_ids"] = names, cat_ids
    return dcfg, out


#: Automatic epochs: about this many optimizer steps in all: the 20 epochs x 40 steps (160 images at
#: batch 4) of the former default on raccoon, which this rule keeps (docs/training.md explains the rules).
TARGET_STEPS = 800
#: Automatic epochs stay within these bounds: at least Detectron's "1x" schedule (~12 passes over
#: COCO) on large datasets; at most 100 passes over a tiny one.
MIN_EPOCHS, MAX_EPOCHS = 12, 100
#: Automatic input size: the smallest ``SMALL_BOX_QUANTILE`` of the training boxes should reach a
#: side ``sqrt(w h)`` of ``MIN_BOX_PX`` pixels at the input size: the smallest RPN anchor of the
#: Faster R-CNN models (32 px), four cells of the default MobileNetV2-FPN's finest (stride 8) map.
MIN_BOX_PX, SMALL_BOX_QUANTILE = 32.0, 0.10
#: Automatic input size bounds: the long-standing default 416 as the floor (never smaller), at most
#: twice it (4x the compute), and never above the training images' median longest side.
BASE_IMGSZ, MAX_AUTO_IMGSZ = 416, 832


def auto_epochs(n_images: int, batch: int, world: int = 1) -> tuple[int, str]:
    """Epochs for a training split of ``n_images``: ``ceil(TARGET_STEPS / steps per epoch)`` within
    ``[MIN_EPOCHS, MAX_EPOCHS]``, where an epoch is ``n_images // (batch * world)`` optimizer steps
    (at least 1, as the loader drops the last partial batch). Returns ``(epochs, why)``, ``why`` a
    short explanation for the printed recipe."""
    steps = max(1, n_images // (batch * world))
    epochs = min(MAX_EPOCHS, max(MIN_EPOCHS, math.ceil(TARGET_STEPS / steps)))
    return epochs, (f"from {n_images} train images: {steps} steps/epoch at batch {batch * world}, "
                    f"{epochs * steps} steps in all (rule: ~{TARGET_STEPS} steps, {MIN_EPOCHS}-{MAX_EPOCHS} epochs)")


def auto_imgsz(samples: list[Sample]) -> tuple[int, str]:
    """Input size (longest side, pixels) for training boxes ``samples``: the smallest multiple of 32
    at which the ``SMALL_BOX_QUANTILE`` quantile of the box sides ``sqrt(w h)`` (each scaled as its
    image's longest side is to the input size) reaches ``MIN_BOX_PX``, within ``[BASE_IMGSZ,
    min(MAX_AUTO_IMGSZ, the images' median longest side rounded up to 32)]``; ``BASE_IMGSZ`` without
    boxes. Returns ``(imgsz, why)`` for the printed recipe."""
    rel = [np.sqrt(np.clip((s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1]), 0, None))
           / max(s.width, s.height, 1) for s in samples if len(s.boxes)]
    if not rel:
        return BASE_IMGSZ, "no training boxes: the default"
    q = float(np.quantile(np.concatenate(rel), SMALL_BOX_QUANTILE))
    native = 32 * math.ceil(float(np.median([max(s.width, s.height) for s in samples])) / 32)
    cap = min(MAX_AUTO_IMGSZ, max(BASE_IMGSZ, native))
    need = 32 * math.ceil(MIN_BOX_PX / max(q, 1e-6) / 32)
    imgsz = min(cap, max(BASE_IMGSZ, need))
    n = sum(len(r) for r in rel)
    return imgsz, (f"from box sizes: the smallest {SMALL_BOX_QUANTILE:.0%} of the {n} train boxes are under "
                   f"{q * imgsz:.0f} px at {imgsz} (rule: >= {MIN_BOX_PX:.0f} px, {BASE_IMGSZ}-{cap} px"
                   f"{', capped' if need > cap else ''})")


def choose_recipe(cfg: TrainConfig, train_samples: list[Sample], say: Say = print) -> TrainConfig:
    """``cfg`` with its automatic values (``0``, :data:`det_toolkit.train.config.AUTO_KEYS`) chosen
    from the training split (:func:`auto_epochs`, :func:`auto_imgsz`) and ``from_data`` listing them;
    values given (non-zero) are kept. Prints the recipe: one line per data-dependent value, saying
    where it came from."""
    chosen: dict[str, tuple[int, str]] = {}
    if not cfg.epochs:
        chosen["epochs"] = auto_epochs(len(train_samples), cfg.batch, ddp.world_size())
    if not cfg.imgsz:
        chosen["imgsz"] = auto_imgsz(train_samples)
    lines = [f"  {k:<8}{chosen[k][0]:<8}{chosen[k][1]}" if k in chosen else f"  {k:<8}{getattr(cfg, k):<8}given"
             for k in AUTO_KEYS]
    anchors = ("fitted to the training boxes (k-means, 1 - IoU) where that beats the model's layout; "
               "--anchors default keeps it" if cfg.anchors == "auto" else "given")
    lines.append(f"  {'anchors':<8}{cfg.anchors:<8}{anchors}")
    say("recipe (0 = chosen from the data; a flag or --cfg value overrides it):\n" + "\n".join(lines))
    return dataclasses.replace(cfg, from_data=[k for k in AUTO_KEYS if k in chosen],
                               **{k: v[0] for k, v in chosen.items()})


def _spec(dcfg: DataConfig, split: str) -> str:
    value = dcfg.split(split)
    return ", ".join(value) if isinstance(value, list) else value


def require_val(samples: list[Sample], report: DataReport, dcfg: DataConfig) -> None:
    """det-train picks ``best.pt`` by val mAP: refuse a val split without images or without any box
    (its mAP would be 0 every epoch and best.pt would silently stay at epoch 1).

    A dataset folder without a validation subset (CVAT's ``default``) validates on the training
    images (:func:`det_toolkit.train.data.formats.folder_config`, with a warning) and passes.

    Raises:
        DatasetError: ``the val split <spec> of <data config> has no images: ...`` (or no boxes).
    """
    where = f"the val split {_spec(dcfg, 'val')} of {dcfg.source}"
    why = "det-train picks best.pt by val mAP"
    if not samples:
        top = "; ".join(f"{n} x {p}: {a}" for (p, a), n in report.counts().most_common(3))
        raise DatasetError(f"{where} has no {'usable ' if top else ''}images{f' ({top})' if top else ''}: {why}; "
                           "add val images (e.g. 20% of yours)")
    if not any(len(s.boxes) for s in samples):
        raise DatasetError(f"{where} has no boxes in its {len(samples)} images: {why}, which needs ground "
                           "truth; label them, or add labelled val images")


def require_decodable(ds: DetectionDataset, split: str, dcfg: DataConfig) -> None:
    """Check that at least one image of ``ds`` decodes (cached images are known; otherwise images are
    decoded in order until one does: one decode for a healthy split).

    Raises:
        DatasetError: ``no image of the train split of <data config> decodes (N images, e.g. a.png,
            b.png): ...``. Training on it would run no step; validating on it, score nothing.
    """
    if any(ds.readable(i) for i in range(len(ds))):
        return
    shown = ", ".join(s.image.name for s in ds.samples[:3])
    raise DatasetError(f"no image of the {split} split of {dcfg.source} decodes ({len(ds)} images, e.g. {shown}): "
                       "the files are corrupt or not images; re-export or replace them")


def cache_budget(cfg: TrainConfig) -> float | None:
    """The MiB the image cache of this process may take: ``--cache-mib``, or for ``auto`` half of
    :func:`det_toolkit.train.data.dataset.available_mib` shared by the ``torchrun`` processes
    (``None``, no limit, where the available memory is unknown); ``0`` with ``--no-cache``."""
    if not cfg.cache:
        return 0.0
    budget = cfg.cache_budget()
    if budget is not None:
        return budget
    avail = available_mib()
    return None if avail is None else avail / 2 / ddp.world_size()


def _mib(x: float) -> str:
    return f"{x:.0f}" if x >= 10 else f"{x:.2f}"


def cache_line(cfg: TrainConfig, budget: float | None, train_ds: DetectionDataset, val_ds: DetectionDataset,
               seconds: float) -> str:
    """The one line saying what the image cache holds, e.g. ``cache: 160/160 train + 40/40 val images
    in RAM (312 MiB of a 11800 MiB budget, 3.1s)`` or ``..., the rest read from disk``."""
    if budget == 0:
        return (f"cache: off ({'--no-cache' if not cfg.cache else '--cache-mib 0'}): images are decoded "
                "from disk every epoch")
    used = sum(cache_mib_needed(ds.samples[:ds.cached], ds.imgsz) for ds in (train_ds, val_ds))
    of = f"of a {_mib(budget)} MiB budget" if budget is not None else "; no budget: available memory unknown"
    full = train_ds.cached == len(train_ds) and val_ds.cached == len(val_ds)
    return (f"cache: {train_ds.cached}/{len(train_ds)} train + {val_ds.cached}/{len(val_ds)} val images in RAM "
            f"({_mib(used)} MiB{'' if budget is None else ' '}{of}, {seconds:.1f}s)"
            f"{'' if full else ', the rest read from disk'}")


def make_loaders(cfg: TrainConfig, dcfg: DataConfig, data: dict[str, Any], say: Say) -> RunData:
    """Datasets and loaders of both splits for this rank.

    The RAM cache (:func:`cache_budget`) takes the training images first, then the val images with
    what remains; one line (:func:`cache_line`) says what it holds. Both splits must have an image
    that decodes (:func:`require_decodable`).

    Raises:
        ValueError: a bad ``--aug-set``.
        DatasetError: a split none of whose images decodes.
    """
    t0 = time.perf_counter()
    train_samples, val_samples = data["train"][0], data["val"][0]
    budget = cache_budget(cfg)
    train_ds = DetectionDataset(train_samples, cfg.imgsz, aug=aug_params(cfg.aug, cfg.aug_set), cache=budget != 0,
                                train=True, cache_mib=budget)
    left = None if budget is None else max(0.0, budget - cache_mib_needed(train_samples[:train_ds.cached], cfg.imgsz))
    val_ds = DetectionDataset(val_samples, cfg.imgsz, aug="none", cache=left != 0, cache_mib=left)
    say(cache_line(cfg, budget, train_ds, val_ds, time.perf_counter() - t0))
    require_decodable(train_ds, "train", dcfg)
    require_decodable(val_ds, "val", dcfg)
    world, rank = ddp.world_size(), ddp.rank()
    val_part = list(range(rank, len(val_samples), world))  # this rank's share of the val images
    g = torch.Generator()
    sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed, drop_last=True) if world > 1 else None
    train_loader = DataLoader(train_ds, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler,
                              collate_fn=collate, num_workers=cfg.workers, generator=g,
                              drop_last=len(train_ds) > cfg.batch * world)
    val_loader = DataLoader(Subset(val_ds, val_part), batch_size=1, shuffle=False, collate_fn=collate,
                            num_workers=0)  # one image per call: padded as det-eval/det-run pad it (RunData)
    return RunData(dcfg, train_samples, val_samples, data["names"], data["category_ids"], train_loader,
                   val_loader, sampler, g)
