"""The data of a training run: both splits read and checked, the datasets with their RAM cache, the
loaders.

Everything here runs before the run folder exists, so a dataset det-train cannot learn from or
select weights on fails with one message and leaves nothing on disk: a val split without images or
boxes (best.pt is chosen by val mAP), a split none of whose images decodes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler, Subset

from det_toolkit.train import distributed as ddp
from det_toolkit.train.config import DataConfig, TrainConfig, load_data_config
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
        val_loader: this rank's val images (every ``world``-th one), unshuffled.
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
    val_loader = DataLoader(Subset(val_ds, val_part), batch_size=cfg.batch, shuffle=False, collate_fn=collate,
                            num_workers=0)
    return RunData(dcfg, train_samples, val_samples, data["names"], data["category_ids"], train_loader,
                   val_loader, sampler, g)
