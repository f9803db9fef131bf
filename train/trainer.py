"""``fit``: the whole training run (data, model, loop, evaluation, checkpoints, logs).

The run is set up once (:func:`_setup`: run folder, data loaders, model, optimizer, EMA, AMP and,
with ``--resume``, their saved state) into a :class:`TrainState`; :func:`_train_epochs` then trains,
evaluates and saves epoch by epoch, and :func:`_print_summary` reports the best epoch.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from det_toolkit.runtime.files import atomic_write, increment_path
from det_toolkit.train import distributed as ddp
from det_toolkit.train.anchors import fit_anchors, set_anchors
from det_toolkit.train.checkpoint import load_checkpoint, make_checkpoint, rng_state, save_atomic, set_rng_state
from det_toolkit.train.coco_eval import CocoResult, evaluate_coco
from det_toolkit.train.config import DataConfig, TrainConfig, load_data_config
from det_toolkit.train.data.dataset import DetectionDataset, aug_params, collate, draw_sample
from det_toolkit.train.data.formats import Sample, read_split, require_labels
from det_toolkit.train.engine import describe, ema_avg_fn, predict_dataset, train_one_epoch, warmup_cosine, warmup_step
from det_toolkit.train.evaluate import write_eval_plots
from det_toolkit.train.models import build_model, check_model_name
from det_toolkit.train.models.common import Detector
from det_toolkit.train.models.extras import freeze_stages, inverse_frequency, set_class_weights
from det_toolkit.train.plots import plot_dataset_stats, plot_results

log = logging.getLogger("det-train")

Say = Callable[..., None]
Predictions = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


def select_device(name: str) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; ``cuda`` without a GPU raises ``RuntimeError``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available on this machine")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig, say: Say = print) -> tuple[DataConfig, dict[str, Any]]:
    """Read and validate both splits; print the data report.

    Returns:
        ``(data config, {"train": (samples, report), "val": (samples, report), "names": [str],
        "category_ids": [int]})``.

    Raises:
        det_toolkit.train.config.ConfigError: a bad data config.
        det_toolkit.train.data.formats.DatasetError: no usable training labels.
    """
    dcfg = load_data_config(cfg.data)
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        samples, names, cat_ids, report = read_split(dcfg, split)
        say(report.table())
        if split == "train":
            require_labels(samples, report, dcfg)
        out[split] = (samples, report)
        out["names"], out["category_ids"] = names, cat_ids
    return dcfg, out


def _amp_setup(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
    """``(autocast dtype, grad scaler)``: ``(None, None)`` for fp32 (CPU, or ``--no-amp``), bf16
    without a scaler, fp16 with one. Raises ``RuntimeError`` for bf16 on a GPU without it."""
    if device.type != "cuda" or not cfg.amp:
        if cfg.amp and device.type != "cuda":
            log.info("AMP is CUDA-only: training in fp32 on %s", device)
        return None, None
    if cfg.amp_dtype == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise RuntimeError("--amp-dtype bf16 requested but this GPU does not support bfloat16")
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


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


@dataclass
class TrainState:
    """The objects of one training run and the progress a checkpoint records.

    Attributes:
        cfg: the run's settings (for ``--resume``: the checkpoint's, with this call's device).
        run_dir: the run folder.
        device: where the model trains.
        core: the detector (unwrapped).
        model: ``core``, or its DistributedDataParallel wrapper under ``torchrun``.
        ema: exponential moving average of ``core`` (``--ema``), else ``None``.
        optimizer / scheduler: the optimizer and its per-iteration LR schedule.
        scaler / amp_dtype: mixed precision (:func:`_amp_setup`).
        epoch: last finished epoch (0-based; ``-1`` before the first).
        best: best val mAP@[.5:.95] so far (``-1`` before the first evaluation).
        stale: epochs since ``best`` last improved (``--patience``).
    """

    cfg: TrainConfig
    run_dir: Path
    device: torch.device
    core: Detector
    model: torch.nn.Module
    ema: AveragedModel | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    epoch: int = -1
    best: float = -1.0
    stale: int = 0

    @property
    def final(self) -> torch.nn.Module:
        """What is evaluated and saved: the EMA model with ``--ema``, else ``core``."""
        return self.ema.module if self.ema is not None else self.core

    def resume_state(self) -> dict[str, Any]:
        """The ``last.pt`` entries ``--resume`` restores (:meth:`restore`)."""
        state = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                 "scaler": self.scaler.state_dict() if self.scaler else {}, "rng": rng_state(),
                 "stale_epochs": self.stale}
        if self.ema is not None:  # checkpoints hold the EMA weights; the raw ones resume training
            state.update(ema=self.ema.state_dict(), train_state_dict={
                k: v.detach().cpu() for k, v in self.core.state_dict().items()})
        return state

    def restore(self, ckpt: dict[str, Any]) -> None:
        """Continue from ``ckpt`` (a ``last.pt``): optimizer, scheduler, scaler, EMA, RNG, progress."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"])
        self.epoch, self.best = int(ckpt["epoch"]), float(ckpt["best_fitness"])
        self.stale = int(ckpt.get("stale_epochs", 0))
        set_rng_state(ckpt["rng"])


def fit(cfg: TrainConfig, show: bool = True) -> Path:
    """Train, evaluate every epoch, write the run folder; returns the run folder.

    Run folder: ``args.yaml``, ``data_report.txt``, ``results.csv``, ``results.png``,
    ``weights/last.pt`` (every epoch, with resume state) and ``weights/best.pt`` (best
    mAP@[.5:.95]). With ``cfg.resume`` the run continues in the checkpoint's folder from the epoch
    after the saved one, with optimizer, scheduler, scaler and RNG state restored. The last line
    printed is the command that exports ``best.pt``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel, each
    rank trains on its ``DistributedSampler`` shard and predicts on its share of the val images;
    rank 0 evaluates the union, writes every file and prints; losses are averaged across ranks.

    Raises:
        ValueError: an unknown model, a checkpoint that cannot be resumed, or inconsistent options
            (e.g. ``--sync-bn`` without ``torchrun``).
        det_toolkit.train.config.ConfigError, det_toolkit.train.data.formats.DatasetError: bad data.
        RuntimeError: a CUDA device or dtype that is not available.
    """
    ddp_device = ddp.setup(cfg.device)
    main = ddp.is_main()
    say = print if main else (lambda *a, **k: None)
    try:
        return _fit(cfg, show and main, ddp_device, main, say)
    finally:
        ddp.cleanup()


def _fit(cfg: TrainConfig, show: bool, ddp_device: torch.device | None, main: bool, say: Say) -> Path:
    ckpt, cfg = _resume_config(cfg)
    check_model_name(cfg.model)
    device = ddp_device or select_device(cfg.device)
    seed_everything(cfg.seed)
    dcfg, data = load_data(cfg, say)
    run_dir = Path(cfg.resume).resolve().parent.parent if ckpt else ddp.broadcast(
        increment_path(Path(cfg.project) / cfg.name, cfg.exist_ok) if main else None)
    if main:
        _write_run_files(cfg, data, run_dir, say)
    if cfg.show_aug:
        ds = DetectionDataset(data["train"][0], cfg.imgsz, aug_params(cfg.aug, cfg.aug_set), cache=False, train=True)
        return show_augmentations(ds, data["names"], cfg.show_aug, run_dir)
    run = _make_loaders(cfg, dcfg, data, say)
    state = _make_state(cfg, ckpt, run, run_dir, device, say)
    _train_epochs(state, run, show, main, say)
    if main:
        _print_summary(run_dir, say)
    return run_dir


def _resume_config(cfg: TrainConfig) -> tuple[dict[str, Any] | None, TrainConfig]:
    """``(last.pt checkpoint or None, the config to run)``: with ``cfg.resume``, the checkpoint's
    training arguments with this call's ``resume``, ``device`` and ``verbose``.

    Raises:
        ValueError: the checkpoint has no optimizer state (not a ``last.pt``).
    """
    if not cfg.resume:
        return None, cfg
    ckpt = load_checkpoint(cfg.resume)
    if "optimizer" not in ckpt:
        raise ValueError(f"{cfg.resume}: has no optimizer state (only last.pt can be resumed)")
    saved = TrainConfig(**ckpt["train_args"])
    saved.resume, saved.device, saved.verbose = cfg.resume, cfg.device, cfg.verbose
    return ckpt, saved


def _write_run_files(cfg: TrainConfig, data: dict[str, Any], run_dir: Path, say: Say) -> None:
    """``weights/``, ``args.yaml``, ``data_report.txt`` and the dataset statistics (rank 0 only)."""
    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    (run_dir / "args.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run_dir / "data_report.txt").write_text(
        "\n".join(data[s][1].table(max_files=20) for s in ("train", "val")) + "\n")
    write_dataset_stats(data["train"][0], data["names"], cfg.imgsz, run_dir, say)


def _make_loaders(cfg: TrainConfig, dcfg: DataConfig, data: dict[str, Any], say: Say) -> RunData:
    """Datasets (decoded into RAM with ``--cache``) and loaders of both splits for this rank."""
    t_cache = time.perf_counter()
    train_samples, val_samples = data["train"][0], data["val"][0]
    train_ds = DetectionDataset(train_samples, cfg.imgsz, aug=aug_params(cfg.aug, cfg.aug_set), cache=cfg.cache,
                                train=True)
    world, rank = ddp.world_size(), ddp.rank()
    val_part = list(range(rank, len(val_samples), world))  # this rank's share of the val images
    val_ds = DetectionDataset(val_samples, cfg.imgsz, aug="none", cache=cfg.cache)
    if cfg.cache:
        say(f"cached {len(train_ds) + len(val_ds)} images at imgsz {cfg.imgsz} in "
            f"{time.perf_counter() - t_cache:.1f}s")
    g = torch.Generator()
    sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed, drop_last=True) if world > 1 else None
    train_loader = DataLoader(train_ds, batch_size=cfg.batch, shuffle=sampler is None, sampler=sampler,
                              collate_fn=collate, num_workers=cfg.workers, generator=g,
                              drop_last=len(train_ds) > cfg.batch * world)
    val_loader = DataLoader(Subset(val_ds, val_part), batch_size=cfg.batch, shuffle=False, collate_fn=collate,
                            num_workers=0)
    return RunData(dcfg, train_samples, val_samples, data["names"], data["category_ids"], train_loader,
                   val_loader, sampler, g)


def _build_core(cfg: TrainConfig, ckpt: dict[str, Any] | None, run: RunData, device: torch.device,
                say: Say) -> Detector:
    """The detector to train, on ``device``: rebuilt from ``ckpt`` (structure, anchors and raw
    weights) or built fresh (``--anchors auto`` fitted), then ``--freeze``, ``--class-weights`` and
    ``--sync-bn`` applied.

    Raises:
        ValueError: ``--sync-bn`` outside a multi-GPU ``torchrun`` launch.
    """
    names = run.names
    if ckpt:  # rebuild exactly what was trained (structure and anchors from the checkpoint)
        core = build_model(cfg.model, len(names), weights=None, **ckpt["model_args"])
        core.load_state_dict(ckpt.get("train_state_dict", ckpt["state_dict"]))
    else:
        core = build_model(cfg.model, len(names), weights=cfg.weights_init, **cfg.model_kwargs())
        if cfg.anchors == "auto":
            fit_model_anchors(core, run.train_samples, cfg.imgsz, cfg.seed, say)
    if cfg.freeze:
        say(f"froze the first {cfg.freeze} backbone stages "
            f"({freeze_stages(core.model, cfg.freeze) / 1e6:.2f} M more parameters frozen)")
    if cfg.class_weights:
        counts = [int(sum((s.labels == k).sum() for s in run.train_samples)) for k in range(len(names))]
        w = inverse_frequency(counts) if cfg.class_weights == "auto" else torch.tensor(
            [float(v) for v in cfg.class_weights.split(",")])
        set_class_weights(core.model, w)
        say("class weights: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, w.tolist())))
    if cfg.sync_bn:
        if ddp.world_size() == 1 or device.type != "cuda":
            raise ValueError("--sync-bn needs a multi-GPU torchrun launch (SyncBatchNorm is CUDA-only)")
        core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
    return core.to(device)


def _make_state(cfg: TrainConfig, ckpt: dict[str, Any] | None, run: RunData, run_dir: Path,
                device: torch.device, say: Say) -> TrainState:
    """Model, DDP wrapper, EMA, optimizer, LR schedule and AMP of the run; restored from ``ckpt``
    when resuming. Prints the run's one-line description."""
    core = _build_core(cfg, ckpt, run, device, say)
    world = ddp.world_size()
    model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda"
                                    else None) if world > 1 else core
    ema = AveragedModel(core, avg_fn=ema_avg_fn(cfg.ema_decay, cfg.ema_tau), use_buffers=True) if cfg.ema else None
    params = [p for p in core.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    iters = len(run.train_loader)
    amp_dtype, scaler = _amp_setup(cfg, device)
    state = TrainState(cfg, run_dir, device, core, model, ema, optimizer, make_scheduler(cfg, optimizer, iters),
                       scaler, amp_dtype)
    if ckpt:
        state.restore(ckpt)
        say(f"resuming {run_dir} from epoch {state.epoch + 2}/{cfg.epochs}")
    n_params = sum(p.numel() for p in core.parameters())
    say(f"{cfg.model}: {n_params / 1e6:.2f} M parameters, {len(run.names)} classes, imgsz {cfg.imgsz}, "
        f"device {device}{f' x {world} processes' if world > 1 else ''}, {len(run.train_loader.dataset)} "
        f"train / {len(run.val_samples)} val images, {iters} it/epoch")
    return state


def _train_epochs(state: TrainState, run: RunData, show: bool, main: bool, say: Say) -> None:
    """Train from the epoch after ``state.epoch`` to ``cfg.epochs`` (or until ``--patience`` runs
    out); after each: evaluate, and on rank 0 append to ``results.csv``, plot, save checkpoints and,
    on a new best, the evaluation plots."""
    cfg = state.cfg
    csv_path = state.run_dir / "results.csv"
    rows = _read_rows(csv_path, upto=state.epoch + 1) if main else []
    for epoch in range(state.epoch + 1, cfg.epochs):
        t0 = time.perf_counter()
        tr = _train_epoch(state, run, epoch, show)
        res, preds, ms = _validate(state, run, main)
        is_best = res.stats["mAP"] > state.best
        state.epoch, state.best = epoch, max(state.best, res.stats["mAP"])
        state.stale = 0 if is_best else state.stale + 1
        if main:
            row = _csv_row(epoch, tr, res, ms, time.perf_counter() - t0)
            rows.append(row)
            _write_rows(csv_path, rows)
            plot_results(csv_path)
            _save(state, run, res, is_best)
            if is_best:
                write_eval_plots(res, run.val_samples, preds, run.names, run.category_ids, state.run_dir,
                                 verbose=cfg.verbose)
            say(f"epoch {epoch + 1}/{cfg.epochs}  {describe({k: row[k] for k in ('loss', 'mAP', 'AP50')})}"
                f"  {tr['img_s']:.1f} img/s  {row['epoch_s']:.0f}s{'  *best*' if is_best else ''}")
        if cfg.patience and state.stale >= cfg.patience:
            say(f"early stop: no better mAP for {cfg.patience} epochs (best {state.best:.4f})")
            break


def _train_epoch(state: TrainState, run: RunData, epoch: int, show: bool) -> dict[str, float]:
    """One pass over the training split; the losses, ``lr`` and ``img_s`` (images/s of the whole
    job), averaged across ranks."""
    cfg = state.cfg
    run.generator.manual_seed(cfg.seed * 1000 + epoch)  # the shuffle order depends only on (seed, epoch)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    state.core.set_epoch(epoch)
    tr = train_one_epoch(state.model, state.optimizer, state.scheduler, run.train_loader, state.device, epoch,
                         cfg.epochs, scaler=state.scaler, amp_dtype=state.amp_dtype, clip_grad=cfg.clip_grad,
                         show=show, l1=cfg.l1, ema=state.ema)
    tr = ddp.mean_across(tr)
    tr["img_s"] *= ddp.world_size()  # throughput of the whole job
    return tr


def _validate(state: TrainState, run: RunData, main: bool) -> tuple[CocoResult, Predictions, float]:
    """Predict the val split with :attr:`TrainState.final` (each rank its share) and evaluate the
    union on rank 0 (the result is broadcast). Returns ``(metrics, predictions by sample index,
    ms per val image of the whole job)``."""
    t_val = time.perf_counter()
    preds = ddp.merge_dicts(predict_dataset(state.final, run.val_loader, state.device))
    ms = (time.perf_counter() - t_val) * 1000 * ddp.world_size() / max(1, len(preds))
    res = ddp.broadcast(evaluate_coco(run.val_samples, preds, run.names, run.category_ids,
                                      verbose=state.cfg.verbose) if main else None)
    res.stats["val_images_predicted"] = len(preds)
    return res, preds, ms


def _csv_row(epoch: int, tr: dict[str, float], res: CocoResult, ms: float, epoch_s: float) -> dict[str, Any]:
    """One ``results.csv`` row: epoch (1-based), losses, lr, mAP/AP50/AP75, throughput, timings."""
    return {"epoch": epoch + 1, **{k: round(v, 5) for k, v in tr.items() if k.startswith("loss")},
            "lr": tr["lr"], "mAP": round(res.stats["mAP"], 5), "AP50": round(res.stats["AP50"], 5),
            "AP75": round(res.stats["AP75"], 5), "train_img_s": round(tr["img_s"], 2),
            "val_ms_per_img": round(ms, 1), "epoch_s": round(epoch_s, 1)}


def _save(state: TrainState, run: RunData, res: CocoResult, is_best: bool) -> None:
    """Write ``last.pt`` (with resume state), ``best.pt`` when ``is_best`` and the periodic
    ``epoch<N>.pt`` of ``--save-period``, for the epoch ``state.epoch`` just evaluated as ``res``."""
    cfg, weights = state.cfg, state.run_dir / "weights"
    common = dict(class_names=run.names, imgsz=cfg.imgsz, category_ids=run.category_ids, epoch=state.epoch,
                  metrics={**res.stats, "per_class": res.per_class}, train_args=cfg.to_dict(),
                  data=run.config.to_dict(), best_fitness=state.best)
    # best.pt first: a run killed between the two writes must not leave a last.pt whose epoch's
    # best.pt is missing (the resumed run may never beat that fitness again)
    if is_best:
        save_atomic(make_checkpoint(state.final, **common), weights / "best.pt")
    save_atomic(make_checkpoint(state.final, **common, resume_state=state.resume_state()), weights / "last.pt")
    if cfg.save_period and (state.epoch + 1) % cfg.save_period == 0:
        save_atomic(make_checkpoint(state.final, **common), weights / f"epoch{state.epoch + 1}.pt")


def _print_summary(run_dir: Path, say: Say) -> None:
    """The best epoch's metrics (overall and per class), the run folder and the next command."""
    best = run_dir / "weights" / "best.pt"
    best_ckpt = load_checkpoint(best)
    m = best_ckpt["metrics"]
    say(f"best epoch {best_ckpt['epoch'] + 1}: mAP@[.5:.95] {m['mAP']:.4f}  AP50 {m['AP50']:.4f}")
    say(f"{'class':<24}{'AP50':>8}{'mAP':>8}")
    for name, v in m.get("per_class", {}).items():
        say(f"{name:<24}{v['AP50']:>8.4f}{v['AP']:>8.4f}")
    say(f"results in {run_dir}; export with: det-export {best}")


def write_dataset_stats(samples: list[Sample], names: list[str], imgsz: int, run_dir: Path, say: Say) -> None:
    """Print boxes per class and write ``dataset_stats.png`` (counts, box-size histogram)."""
    counts = {n: 0 for n in names}
    sizes = []
    for s in samples:
        for b, lab in zip(s.boxes, s.labels):
            counts[names[int(lab)]] += 1
            sizes.append(float(np.sqrt((b[2] - b[0]) * (b[3] - b[1]))) * imgsz / max(s.width, s.height))
    say("training boxes per class: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    plot_dataset_stats(counts, np.asarray(sizes), imgsz, run_dir / "dataset_stats.png")


def fit_model_anchors(core: Detector, samples: list[Sample], imgsz: int, seed: int, say: Say) -> None:
    """``--anchors auto``: fit the RPN anchors to the training boxes at the training size, print
    the mean best-anchor IoU before and after, and keep the fit only if it is better (it is then
    recorded in ``build_args``, hence in checkpoints).

    Raises:
        ValueError: the model has no RPN anchor generator (not a Faster R-CNN).
    """
    wh = np.concatenate([(s.boxes[:, 2:] - s.boxes[:, :2]) * (imgsz / max(s.width, s.height))
                         for s in samples if len(s.boxes)])
    gen = getattr(getattr(core.model, "rpn", None), "anchor_generator", None)
    if gen is None:
        raise ValueError(f"--anchors auto applies to Faster R-CNN models, not {core.name}")
    fit = fit_anchors(wh, gen, seed)
    say(f"anchors: mean best IoU over {len(wh)} training boxes {fit.iou_before:.4f} (default) -> "
        f"{fit.iou_after:.4f} (auto); sizes {fit.sizes[0]}{' per level' if len(fit.sizes[0]) > 1 else ''}, "
        f"ratios {fit.ratios[0]}")
    if fit.iou_after > fit.iou_before:
        set_anchors(core.model, fit.sizes, fit.ratios)
        core.build_args.update(anchor_sizes=[list(x) for x in fit.sizes],
                               anchor_ratios=[list(x) for x in fit.ratios])
    else:
        say("anchors: keeping the default anchors (the fit is not better)")


def show_augmentations(ds: DetectionDataset, names: list[str], n: int, run_dir: Path) -> Path:
    """Write ``n`` augmented training samples with their boxes to ``run_dir/aug_samples/``
    (:func:`det_toolkit.train.data.dataset.draw_sample`); returns ``run_dir``."""
    out = run_dir / "aug_samples"
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for k in range(n * 2):
        item = ds[k % len(ds)]
        if item is not None:
            cv2.imwrite(str(out / f"aug_{written:03d}.jpg"), draw_sample(*item, names))
            written += 1
        if written == n:
            break
    print(f"wrote {written} augmented samples to {out}")
    return run_dir


def make_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer, iters: int
                   ) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-iteration LR schedule of ``cfg.scheduler`` (see :class:`TrainConfig`) for ``iters``
    iterations per epoch.

    Raises:
        ValueError: ``onecycle`` with fewer than 4 iterations in all.
    """
    total, warm = cfg.epochs * iters, int(cfg.warmup_epochs * iters)
    if cfg.scheduler == "onecycle":
        if total < 4:
            raise ValueError(f"--scheduler onecycle needs at least 4 iterations, got {total}")
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=cfg.lr, total_steps=total, pct_start=min(max(warm / total, 0.01), 0.5),
            final_div_factor=1 / max(cfg.lrf, 1e-6) / 25.0)
    fn = (warmup_step(iters, cfg.milestones(), cfg.lr_gamma, warm, cfg.warmup_factor)
          if cfg.scheduler == "step" else warmup_cosine(total, warm, cfg.warmup_factor, cfg.lrf))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


def _read_rows(path: Path, upto: int) -> list[dict[str, Any]]:
    """Rows of an existing results.csv for epochs ``<= upto`` (1-based; rows of a killed epoch are dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["epoch"]) <= upto]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``results.csv`` with ``rows`` (header from the last row), atomically."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=list(rows[-1].keys()))
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, buf.getvalue().encode())
