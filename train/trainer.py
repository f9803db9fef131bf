"""``fit``: the whole training run (data, model, loop, evaluation, checkpoints, logs)."""

from __future__ import annotations

import csv
import logging
import random
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader

from train.checkpoint import load_checkpoint, make_checkpoint, rng_state, save_atomic, set_rng_state
from train.config import DataConfig, TrainConfig, increment_path, load_data_config
from train.data.dataset import DetectionDataset, aug_params, collate, draw_sample
from train.data.formats import read_split, require_labels
from train.engine import (describe, ema_avg_fn, evaluate, train_one_epoch, warmup_cosine,
                          warmup_step)
from train.models import build_model, check_model_name
from train.plots import plot_results

log = logging.getLogger("det-train")


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


def load_data(cfg: TrainConfig) -> tuple[DataConfig, dict[str, Any]]:
    """Read and validate both splits; print the data report. Raises ``DatasetError`` on no labels."""
    dcfg = load_data_config(cfg.data)
    out: dict[str, Any] = {}
    for split in ("train", "val"):
        samples, names, cat_ids, report = read_split(dcfg, split)
        print(report.table())
        if split == "train":
            require_labels(samples, report, dcfg)
        out[split] = (samples, report)
        out["names"], out["category_ids"] = names, cat_ids
    return dcfg, out


def _amp_setup(cfg: TrainConfig, device: torch.device):
    if device.type != "cuda" or not cfg.amp:
        if cfg.amp and device.type != "cuda":
            log.info("AMP is CUDA-only: training in fp32 on %s", device)
        return None, None
    if cfg.amp_dtype == "bf16":
        if not torch.cuda.is_bf16_supported():
            raise RuntimeError("--amp-dtype bf16 requested but this GPU does not support bfloat16")
        return torch.bfloat16, None
    return torch.float16, torch.amp.GradScaler("cuda")


def fit(cfg: TrainConfig, show: bool = True) -> Path:
    """Train, evaluate every epoch, write the run folder; returns the run folder.

    Run folder: ``args.yaml``, ``data_report.txt``, ``results.csv``, ``results.png``,
    ``weights/last.pt`` (every epoch, with resume state) and ``weights/best.pt`` (best
    mAP@[.5:.95]). With ``cfg.resume`` the run continues in the checkpoint's folder from the epoch
    after the saved one, with optimizer, scheduler, scaler and RNG state restored.
    """
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(cfg.resume)
        if "optimizer" not in ckpt:
            raise ValueError(f"{cfg.resume}: has no optimizer state (only last.pt can be resumed)")
        saved = TrainConfig(**ckpt["train_args"])
        saved.resume, saved.device = cfg.resume, cfg.device
        cfg = saved
        run_dir = Path(cfg.resume).resolve().parent.parent
    else:
        run_dir = increment_path(Path(cfg.project) / cfg.name, cfg.exist_ok)
    check_model_name(cfg.model)
    device = select_device(cfg.device)
    seed_everything(cfg.seed)
    dcfg, data = load_data(cfg)
    names, cat_ids = data["names"], data["category_ids"]
    train_samples, val_samples = data["train"][0], data["val"][0]

    (run_dir / "weights").mkdir(parents=True, exist_ok=True)
    (run_dir / "args.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (run_dir / "data_report.txt").write_text(
        "\n".join(data[s][1].table(max_files=20) for s in ("train", "val")) + "\n")

    t_cache = time.perf_counter()
    aug = aug_params(cfg.aug, cfg.aug_set)
    if cfg.show_aug:
        return show_augmentations(DetectionDataset(train_samples, cfg.imgsz, aug, cache=False,
                                                   train=True), names, cfg.show_aug, run_dir)
    train_ds = DetectionDataset(train_samples, cfg.imgsz, aug=aug, cache=cfg.cache, train=True)
    val_ds = DetectionDataset(val_samples, cfg.imgsz, aug="none", cache=cfg.cache)
    if cfg.cache:
        print(f"cached {len(train_ds) + len(val_ds)} images at imgsz {cfg.imgsz} in "
              f"{time.perf_counter() - t_cache:.1f}s")
    g = torch.Generator()
    train_loader = DataLoader(train_ds, batch_size=cfg.batch, shuffle=True, collate_fn=collate,
                              num_workers=cfg.workers, generator=g, drop_last=len(train_ds) > cfg.batch,
                              persistent_workers=False)
    val_loader = DataLoader(val_ds, batch_size=cfg.batch, shuffle=False, collate_fn=collate,
                            num_workers=0)

    model = build_model(cfg.model, len(names), weights=None if ckpt else cfg.weights_init,
                        **cfg.model_kwargs(),
                        **({"frozen_bn": ckpt["model_args"].get("frozen_bn")} if ckpt else {}))
    if ckpt:
        model.load_state_dict(ckpt.get("train_state_dict", ckpt["state_dict"]))
    model.to(device)
    ema = AveragedModel(model, avg_fn=ema_avg_fn(cfg.ema_decay, cfg.ema_tau),
                        use_buffers=True) if cfg.ema else None
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                    weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    iters = len(train_loader)
    sched = make_scheduler(cfg, optimizer, iters)
    amp_dtype, scaler = _amp_setup(cfg, device)

    start_epoch, best, stale = 0, -1.0, 0
    if ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
        sched.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        if ema is not None and ckpt.get("ema"):
            ema.load_state_dict(ckpt["ema"])
        start_epoch, best = ckpt["epoch"] + 1, ckpt["best_fitness"]
        stale = ckpt.get("stale_epochs", 0)
        set_rng_state(ckpt["rng"])
        print(f"resuming {run_dir} from epoch {start_epoch + 1}/{cfg.epochs}")

    csv_path = run_dir / "results.csv"
    rows = _read_rows(csv_path, upto=start_epoch)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{cfg.model}: {n_params / 1e6:.2f} M parameters, {len(names)} classes, imgsz {cfg.imgsz}, "
          f"device {device}, {len(train_ds)} train / {len(val_ds)} val images, {iters} it/epoch")
    for epoch in range(start_epoch, cfg.epochs):
        g.manual_seed(cfg.seed * 1000 + epoch)  # the shuffle order depends only on (seed, epoch)
        model.set_epoch(epoch)
        t0 = time.perf_counter()
        tr = train_one_epoch(model, optimizer, sched, train_loader, device, epoch, cfg.epochs,
                             scaler=scaler, amp_dtype=amp_dtype, clip_grad=cfg.clip_grad, show=show,
                             l1=cfg.l1, ema=ema)
        final = ema.module if ema is not None else model  # what is evaluated and saved
        res, ms = evaluate(final, val_loader, val_samples, names, cat_ids, device)
        row = {"epoch": epoch + 1, **{k: round(v, 5) for k, v in tr.items() if k.startswith("loss")},
               "lr": tr["lr"], "mAP": round(res.stats["mAP"], 5), "AP50": round(res.stats["AP50"], 5),
               "AP75": round(res.stats["AP75"], 5), "train_img_s": round(tr["img_s"], 2),
               "val_ms_per_img": round(ms, 1), "epoch_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        _write_rows(csv_path, rows)
        plot_results(csv_path)
        fitness = res.stats["mAP"]
        is_best = fitness > best
        best = max(best, fitness)
        stale = 0 if is_best else stale + 1
        metrics = {**res.stats, "per_class": res.per_class}
        common = dict(class_names=names, imgsz=cfg.imgsz, category_ids=cat_ids, epoch=epoch,
                      metrics=metrics, train_args=cfg.to_dict(), data=dcfg.to_dict(),
                      best_fitness=best)
        resume_state = {"optimizer": optimizer.state_dict(), "scheduler": sched.state_dict(),
                        "scaler": scaler.state_dict() if scaler else {}, "rng": rng_state(),
                        "stale_epochs": stale}
        if ema is not None:
            resume_state.update(ema=ema.state_dict(), train_state_dict={
                k: v.detach().cpu() for k, v in model.state_dict().items()})
        save_atomic(make_checkpoint(final, **common, resume_state=resume_state),
                    run_dir / "weights" / "last.pt")
        if is_best:
            save_atomic(make_checkpoint(final, **common), run_dir / "weights" / "best.pt")
        if cfg.save_period and (epoch + 1) % cfg.save_period == 0:
            save_atomic(make_checkpoint(final, **common), run_dir / "weights" / f"epoch{epoch + 1}.pt")
        print(f"epoch {epoch + 1}/{cfg.epochs}  {describe({k: row[k] for k in ('loss', 'mAP', 'AP50')})}"
              f"  {tr['img_s']:.1f} img/s  {row['epoch_s']:.0f}s{'  *best*' if is_best else ''}")
        if cfg.patience and stale >= cfg.patience:
            print(f"early stop: no better mAP for {cfg.patience} epochs (best {best:.4f})")
            break
    best_ckpt = load_checkpoint(run_dir / "weights" / "best.pt")
    m = best_ckpt["metrics"]
    print(f"best epoch {best_ckpt['epoch'] + 1}: mAP@[.5:.95] {m['mAP']:.4f}  AP50 {m['AP50']:.4f}")
    print(f"{'class':<24}{'AP50':>8}{'mAP':>8}")
    for name, v in m.get("per_class", {}).items():
        print(f"{name:<24}{v['AP50']:>8.4f}{v['AP']:>8.4f}")
    print(f"results in {run_dir}")
    return run_dir


def show_augmentations(ds: DetectionDataset, names: list[str], n: int, run_dir: Path) -> Path:
    """Write ``n`` augmented training samples with their boxes to ``run_dir/aug_samples/``."""
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
    """The per-iteration LR schedule of ``cfg.scheduler`` (see :class:`TrainConfig`)."""
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
    """Rows of an existing results.csv for epochs ``<= upto`` (rows of a killed epoch are dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["epoch"]) <= upto]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[-1].keys()))
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
