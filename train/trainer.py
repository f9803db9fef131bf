"""``fit``: the whole training run (data, model, loop, evaluation, checkpoints, logs).

Inputs are checked before any work (:func:`_check_inputs`); the data (:mod:`det_toolkit.train.run_data`),
model, optimizer, EMA, AMP and, with ``--resume``, their saved state are then set up into a
:class:`TrainState`, and only then is the run folder claimed (:mod:`det_toolkit.train.run_files`).
:func:`_train_epochs` trains, evaluates and saves epoch by epoch; the summary reports the best epoch.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from det_toolkit.runtime.files import check_writable
from det_toolkit.train import distributed as ddp
from det_toolkit.train.checkpoint import load_checkpoint, make_checkpoint, rng_state, save_atomic, set_rng_state
from det_toolkit.train.coco_eval import CocoResult, evaluate_coco
from det_toolkit.train.config import ConfigError, TrainConfig, from_dict
from det_toolkit.train.data.dataset import DetectionDataset, aug_params, draw_sample
from det_toolkit.train.data.samples import DatasetError
from det_toolkit.train.engine import describe, ema_avg_fn, predict_dataset, train_one_epoch
from det_toolkit.train.evaluate import write_eval_plots
from det_toolkit.train.model_setup import amp_setup, build_core, make_optimizer, make_scheduler
from det_toolkit.train.models import check_model_name
from det_toolkit.train.models.common import Detector
from det_toolkit.train.models.weights import check_weights_init
from det_toolkit.train.plots import plot_results
from det_toolkit.train.run_data import RunData, choose_recipe, load_data, make_loaders, require_decodable
from det_toolkit.train.run_files import (
    claim_run_dir,
    csv_row,
    print_summary,
    read_rows,
    remove_failed_run,
    write_rows,
    write_run_files,
)

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
        scaler / amp_dtype: mixed precision (:func:`det_toolkit.train.model_setup.amp_setup`).
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

    Epochs and input size left at ``0`` are chosen from the training split and printed as the run's
    recipe (:func:`det_toolkit.train.run_data.choose_recipe`) before any training.

    Nothing is written before the inputs have passed every check that does not need training: the
    model name, ``--weights-init``, a writable ``--project``, both splits (a val split with images and
    boxes: best.pt is chosen by val mAP; an image that decodes in each), the model and its options.
    Val images that fail to decode are left out of every evaluation and counted. A fresh run that
    fails before its first checkpoint (an epoch with no training step, a NaN loss, Ctrl-C) removes
    the run folder it created.

    Raises:
        ValueError: an unknown model, a checkpoint that cannot be resumed, or inconsistent options
            (e.g. ``--sync-bn`` without ``torchrun``).
        det_toolkit.train.models.weights.WeightsError: a bad ``--weights-init``.
        det_toolkit.train.config.ConfigError, det_toolkit.train.data.samples.DatasetError: bad data.
        OSError: ``--project`` cannot be written.
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
    ckpt, cfg = _run_config(cfg)
    _check_inputs(cfg, ckpt is not None)
    device = ddp_device or select_device(cfg.device)
    seed_everything(cfg.seed)
    dcfg, data = load_data(cfg, say)
    if ckpt is None:  # a resumed run keeps the values its checkpoint records
        cfg = choose_recipe(cfg, data["train"][0], say)
    if cfg.show_aug:
        ds = DetectionDataset(data["train"][0], cfg.imgsz, aug_params(cfg.aug, cfg.aug_set), cache=False, train=True)
        require_decodable(ds, "train", dcfg)
        return show_augmentations(ds, data["names"], cfg.show_aug, claim_run_dir(cfg, False, main)[0])
    run = make_loaders(cfg, dcfg, data, say)
    state, created = _make_state(cfg, ckpt, run, device, main, say)
    try:
        if main:
            write_run_files(cfg, data, state.run_dir, say)
        _train_epochs(state, run, show, main, say)
    except BaseException:
        if main and created:
            remove_failed_run(state.run_dir)
        raise
    if main:
        print_summary(state.run_dir, say)
    return state.run_dir


def _run_config(cfg: TrainConfig) -> tuple[dict[str, Any] | None, TrainConfig]:
    """``(last.pt checkpoint or None, the config to run)``. A fresh run: ``cfg`` with ``data`` made
    absolute (checkpoints record it, so ``--resume`` works from any folder). With ``cfg.resume``: the
    checkpoint's training arguments with this call's ``resume``, ``device`` and ``verbose``.

    Raises:
        FileNotFoundError, det_toolkit.train.checkpoint.CheckpointError: not a readable checkpoint.
        ValueError: the checkpoint has no optimizer state (not a ``last.pt``), or it finished all its
            epochs.
        ConfigError: its training arguments are invalid, or name a relative data config that is not
            found from here (a run of an older det-toolkit).
    """
    if not cfg.resume:
        if not cfg.data:
            raise ConfigError("--data is required (a data config YAML or a dataset folder)")
        return None, dataclasses.replace(cfg, data=str(Path(cfg.data).expanduser().resolve()))
    ckpt = load_checkpoint(cfg.resume)
    if "optimizer" not in ckpt:
        raise ValueError(f"{cfg.resume}: has no optimizer state (only last.pt can be resumed)")
    saved = from_dict(TrainConfig, {**ckpt.get("train_args", {}), "resume": cfg.resume, "device": cfg.device,
                                    "verbose": cfg.verbose}, f"{cfg.resume}: train_args")
    if int(ckpt["epoch"]) + 1 >= saved.epochs:
        raise ValueError(f"{cfg.resume}: the run finished all {saved.epochs} epochs; nothing to resume (to train "
                         f"longer, start a new run with --weights-init from its weights)")
    if not Path(saved.data).is_absolute() and not Path(saved.data).exists():
        raise ConfigError(f"{cfg.resume}: the run's data config '{saved.data}' is a relative path not found from "
                          f"{Path.cwd()}: resume from the folder the run started in")
    return ckpt, saved


def _check_inputs(cfg: TrainConfig, resuming: bool) -> None:
    """What can be checked before any work: the model name, ``--weights-init`` (a plain state dict)
    and, for a fresh run, that ``--project/--name`` can be created.

    Raises:
        ValueError: an unknown model (the nearest is suggested).
        det_toolkit.train.models.weights.WeightsError, FileNotFoundError: a bad ``--weights-init``.
        OSError: ``--project`` under a file, or not writable.
    """
    check_model_name(cfg.model)
    if not resuming:
        check_weights_init(cfg.weights_init)
        check_writable(Path(cfg.project) / cfg.name, "--project")


def _make_state(cfg: TrainConfig, ckpt: dict[str, Any] | None, run: RunData, device: torch.device, main: bool,
                say: Say) -> tuple[TrainState, bool]:
    """Model, DDP wrapper, EMA, optimizer, LR schedule and AMP of the run; restored from ``ckpt``
    when resuming. Prints the run's one-line description. The run folder is claimed last, once all
    of this (which bad weights, class weights or schedules can break) is built.

    Returns:
        ``(state, whether the run folder was created by this call)``.
    """
    core = build_core(cfg, ckpt, run, device, say)
    world = ddp.world_size()
    model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda"
                                    else None) if world > 1 else core
    ema = AveragedModel(core, avg_fn=ema_avg_fn(cfg.ema_decay, cfg.ema_tau), use_buffers=True) if cfg.ema else None
    optimizer = make_optimizer(cfg, core)
    iters = len(run.train_loader)
    amp_dtype, scaler = amp_setup(cfg, device)
    scheduler = make_scheduler(cfg, optimizer, iters)
    run_dir, created = claim_run_dir(cfg, ckpt is not None, main)
    state = TrainState(cfg, run_dir, device, core, model, ema, optimizer, scheduler, scaler, amp_dtype)
    if ckpt:
        state.restore(ckpt)
        say(f"resuming {run_dir} from epoch {state.epoch + 2}/{cfg.epochs}")
    n_params = sum(p.numel() for p in core.parameters())
    say(f"{cfg.model}: {n_params / 1e6:.2f} M parameters, {len(run.names)} classes, imgsz {cfg.imgsz}, "
        f"device {device}{f' x {world} processes' if world > 1 else ''}, {len(run.train_loader.dataset)} "
        f"train / {len(run.val_samples)} val images, {iters} it/epoch")
    return state, created


def _train_epochs(state: TrainState, run: RunData, show: bool, main: bool, say: Say) -> None:
    """Train from the epoch after ``state.epoch`` to ``cfg.epochs`` (or until ``--patience`` runs
    out); after each: evaluate, and on rank 0 append to ``results.csv``, plot, save checkpoints and,
    on a new best, the evaluation plots."""
    cfg = state.cfg
    csv_path = state.run_dir / "results.csv"
    rows = read_rows(csv_path, upto=state.epoch + 1) if main else []
    for epoch in range(state.epoch + 1, cfg.epochs):
        t0 = time.perf_counter()
        tr = _train_epoch(state, run, epoch, show)
        res, preds, ms = _validate(state, run, main)
        is_best = res.stats["mAP"] > state.best
        state.epoch, state.best = epoch, max(state.best, res.stats["mAP"])
        state.stale = 0 if is_best else state.stale + 1
        if main:
            row = csv_row(epoch, tr, res, ms, time.perf_counter() - t0)
            rows.append(row)
            write_rows(csv_path, rows)
            plot_results(csv_path)
            _save(state, run, res, is_best)
            if is_best:
                write_eval_plots(res, run.val_samples, preds, run.names, run.category_ids, state.run_dir,
                                 verbose=cfg.verbose)
            n_bad = int(res.stats["val_images_unreadable"])
            say(f"epoch {epoch + 1}/{cfg.epochs}  {describe({k: row[k] for k in ('loss', 'mAP', 'AP50')})}"
                f"  {tr['img_s']:.1f} img/s  {row['epoch_s']:.0f}s{'  *best*' if is_best else ''}"
                + (f"  ({n_bad} unreadable val image{'s' * (n_bad > 1)} left out)" if n_bad else ""))
        if cfg.patience and state.stale >= cfg.patience:
            say(f"early stop: no better mAP for {cfg.patience} epochs (best {state.best:.4f})")
            break


def _train_epoch(state: TrainState, run: RunData, epoch: int, show: bool) -> dict[str, float]:
    """One pass over the training split; the losses, ``lr`` and ``img_s`` (images/s of the whole
    job), averaged across ranks.

    Raises:
        DatasetError: the epoch ran no training step (no image of its batches decoded), so that no
            checkpoint is ever written from it.
    """
    cfg = state.cfg
    run.generator.manual_seed(cfg.seed * 1000 + epoch)  # the shuffle order depends only on (seed, epoch)
    if run.sampler is not None:
        run.sampler.set_epoch(epoch)
    state.core.set_epoch(epoch)
    tr = train_one_epoch(state.model, state.optimizer, state.scheduler, run.train_loader, state.device, epoch,
                         cfg.epochs, scaler=state.scaler, amp_dtype=state.amp_dtype, clip_grad=cfg.clip_grad,
                         show=show, l1=cfg.l1, ema=state.ema)
    tr = ddp.mean_across(tr)
    if tr["n_images"] == 0:
        bad = sorted(run.train_loader.dataset.bad)  # type: ignore[attr-defined]
        raise DatasetError(f"epoch {epoch + 1} ran no training step: no image of its batches decoded ({len(bad)} of "
                           f"{len(run.train_samples)} training images unreadable"
                           f"{', e.g. ' + run.train_samples[bad[0]].image.name if bad else ''})")
    tr["img_s"] *= ddp.world_size()  # throughput of the whole job
    return tr


def _validate(state: TrainState, run: RunData, main: bool) -> tuple[CocoResult, Predictions, float]:
    """Predict the val split with :attr:`TrainState.final` (each rank its share) and evaluate the
    union on rank 0 (the result is broadcast), leaving the images that failed to decode out of the
    evaluation, ground truth included (``val_images_unreadable`` in the stats counts them). Returns
    ``(metrics, predictions by sample index, ms per val image of the whole job)``."""
    t_val = time.perf_counter()
    preds = ddp.merge_dicts(predict_dataset(state.final, run.val_loader, state.device))
    ms = (time.perf_counter() - t_val) * 1000 * ddp.world_size() / max(1, len(preds))
    bad = run.unreadable_val()
    res = ddp.broadcast(evaluate_coco(run.val_samples, preds, run.names, run.category_ids, exclude=bad,
                                      verbose=state.cfg.verbose) if main else None)
    res.stats["val_images_predicted"] = len(preds)
    res.stats["val_images_unreadable"] = len(bad)
    return res, preds, ms


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
