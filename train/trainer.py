"""``fit``: the whole training run (data, model, loop, evaluation, checkpoints, logs)."""

from __future__ import annotations

import csv
import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, DistributedSampler, Subset

from det_toolkit.runtime.preprocess import resize_longest
from det_toolkit.train import distributed as ddp
from det_toolkit.train.anchors import fit_anchors, set_anchors
from det_toolkit.train.checkpoint import load_checkpoint, make_checkpoint, rng_state, save_atomic, set_rng_state
from det_toolkit.train.coco_eval import confusion_matrix, evaluate_coco
from det_toolkit.train.config import DataConfig, TrainConfig, increment_path, load_data_config
from det_toolkit.train.data.dataset import DetectionDataset, aug_params, collate, draw_sample, load_rgb
from det_toolkit.train.data.formats import read_split, require_labels
from det_toolkit.train.engine import describe, ema_avg_fn, predict_dataset, train_one_epoch, warmup_cosine, warmup_step
from det_toolkit.train.models import build_model, check_model_name
from det_toolkit.train.models.extras import freeze_stages, inverse_frequency, set_class_weights
from det_toolkit.train.plots import plot_confusion_matrix, plot_dataset_stats, plot_pr_curves, plot_results

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


def load_data(cfg: TrainConfig, say: Callable[..., None] = print) -> tuple[DataConfig, dict[str, Any]]:
    """Read and validate both splits; print the data report. Raises ``DatasetError`` on no labels."""
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

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DistributedDataParallel, each
    rank trains on its ``DistributedSampler`` shard and predicts on its share of the val images;
    rank 0 evaluates the union, writes every file and prints; losses are averaged across ranks.
    """
    ddp_device = ddp.setup(cfg.device)
    main = ddp.is_main()
    say = print if main else (lambda *a, **k: None)
    try:
        return _fit(cfg, show and main, ddp_device, main, say)
    finally:
        ddp.cleanup()


def _fit(cfg: TrainConfig, show: bool, ddp_device: torch.device | None, main: bool,
         say: Callable[..., None]) -> Path:
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
        run_dir = ddp.broadcast(increment_path(Path(cfg.project) / cfg.name, cfg.exist_ok)
                                if main else None)
    check_model_name(cfg.model)
    device = ddp_device or select_device(cfg.device)
    seed_everything(cfg.seed)
    dcfg, data = load_data(cfg, say)
    names, cat_ids = data["names"], data["category_ids"]
    train_samples, val_samples = data["train"][0], data["val"][0]
    if main:
        (run_dir / "weights").mkdir(parents=True, exist_ok=True)
        (run_dir / "args.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        (run_dir / "data_report.txt").write_text(
            "\n".join(data[s][1].table(max_files=20) for s in ("train", "val")) + "\n")

    if main:
        write_dataset_stats(train_samples, names, cfg.imgsz, run_dir, say)
    t_cache = time.perf_counter()
    aug = aug_params(cfg.aug, cfg.aug_set)
    if cfg.show_aug:
        return show_augmentations(DetectionDataset(train_samples, cfg.imgsz, aug, cache=False,
                                                   train=True), names, cfg.show_aug, run_dir)
    train_ds = DetectionDataset(train_samples, cfg.imgsz, aug=aug, cache=cfg.cache, train=True)
    world, rank = ddp.world_size(), ddp.rank()
    val_part = list(range(rank, len(val_samples), world))  # this rank's share of the val images
    val_ds = DetectionDataset(val_samples, cfg.imgsz, aug="none", cache=cfg.cache)
    if cfg.cache:
        say(f"cached {len(train_ds) + len(val_ds)} images at imgsz {cfg.imgsz} in "
            f"{time.perf_counter() - t_cache:.1f}s")
    g = torch.Generator()
    sampler = DistributedSampler(train_ds, shuffle=True, seed=cfg.seed, drop_last=True) \
        if world > 1 else None
    train_loader = DataLoader(train_ds, batch_size=cfg.batch, shuffle=sampler is None,
                              sampler=sampler, collate_fn=collate, num_workers=cfg.workers,
                              generator=g, drop_last=len(train_ds) > cfg.batch * world)
    val_loader = DataLoader(Subset(val_ds, val_part), batch_size=cfg.batch, shuffle=False,
                            collate_fn=collate, num_workers=0)

    if ckpt:  # rebuild exactly what was trained (structure and anchors from the checkpoint)
        core = build_model(cfg.model, len(names), weights=None, **ckpt["model_args"])
        core.load_state_dict(ckpt.get("train_state_dict", ckpt["state_dict"]))
    else:
        core = build_model(cfg.model, len(names), weights=cfg.weights_init, **cfg.model_kwargs())
        if cfg.anchors == "auto":
            fit_model_anchors(core, train_samples, cfg.imgsz, cfg.seed, say)
    if cfg.freeze:
        say(f"froze the first {cfg.freeze} backbone stages "
            f"({freeze_stages(core.model, cfg.freeze) / 1e6:.2f} M more parameters frozen)")
    if cfg.class_weights:
        counts = [int(sum((s.labels == k).sum() for s in train_samples)) for k in range(len(names))]
        w = inverse_frequency(counts) if cfg.class_weights == "auto" else torch.tensor(
            [float(v) for v in cfg.class_weights.split(",")])
        set_class_weights(core.model, w)
        say("class weights: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, w.tolist())))
    if cfg.sync_bn:
        if world == 1 or device.type != "cuda":
            raise ValueError("--sync-bn needs a multi-GPU torchrun launch (SyncBatchNorm is CUDA-only)")
        core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
    core.to(device)
    model = DistributedDataParallel(core, device_ids=[device.index] if device.type == "cuda"
                                    else None) if world > 1 else core
    ema = AveragedModel(core, avg_fn=ema_avg_fn(cfg.ema_decay, cfg.ema_tau),
                        use_buffers=True) if cfg.ema else None
    params = [p for p in core.parameters() if p.requires_grad]
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
        say(f"resuming {run_dir} from epoch {start_epoch + 1}/{cfg.epochs}")

    csv_path = run_dir / "results.csv"
    rows = _read_rows(csv_path, upto=start_epoch) if main else []
    n_params = sum(p.numel() for p in core.parameters())
    say(f"{cfg.model}: {n_params / 1e6:.2f} M parameters, {len(names)} classes, imgsz {cfg.imgsz}, "
        f"device {device}{f' x {world} processes' if world > 1 else ''}, {len(train_ds)} train / "
        f"{len(val_ds)} val images, {iters} it/epoch")
    for epoch in range(start_epoch, cfg.epochs):
        g.manual_seed(cfg.seed * 1000 + epoch)  # the shuffle order depends only on (seed, epoch)
        if sampler is not None:
            sampler.set_epoch(epoch)
        core.set_epoch(epoch)
        t0 = time.perf_counter()
        tr = train_one_epoch(model, optimizer, sched, train_loader, device, epoch, cfg.epochs,
                             scaler=scaler, amp_dtype=amp_dtype, clip_grad=cfg.clip_grad, show=show,
                             l1=cfg.l1, ema=ema)
        tr = ddp.mean_across(tr)
        tr["img_s"] *= world  # throughput of the whole job
        final = ema.module if ema is not None else core  # what is evaluated and saved
        t_val = time.perf_counter()
        preds = ddp.merge_dicts(predict_dataset(final, val_loader, device))  # keyed by sample index
        ms = (time.perf_counter() - t_val) * 1000 * world / max(1, len(preds))
        res = ddp.broadcast(evaluate_coco(val_samples, preds, names, cat_ids) if main else None)
        res.stats["val_images_predicted"] = len(preds)
        fitness = res.stats["mAP"]
        is_best = fitness > best
        best = max(best, fitness)
        stale = 0 if is_best else stale + 1
        if main:
            row = {"epoch": epoch + 1, **{k: round(v, 5) for k, v in tr.items() if k.startswith("loss")},
                   "lr": tr["lr"], "mAP": round(res.stats["mAP"], 5),
                   "AP50": round(res.stats["AP50"], 5), "AP75": round(res.stats["AP75"], 5),
                   "train_img_s": round(tr["img_s"], 2), "val_ms_per_img": round(ms, 1),
                   "epoch_s": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            _write_rows(csv_path, rows)
            plot_results(csv_path)
            _save(cfg, run_dir, final, core, ema, optimizer, sched, scaler, names, cat_ids, dcfg,
                  epoch, res, best, stale, is_best)
            if is_best:
                write_eval_plots(res, val_samples, preds, names, cat_ids, run_dir)
            say(f"epoch {epoch + 1}/{cfg.epochs}  {describe({k: row[k] for k in ('loss', 'mAP', 'AP50')})}"
                f"  {tr['img_s']:.1f} img/s  {row['epoch_s']:.0f}s{'  *best*' if is_best else ''}")
        if cfg.patience and stale >= cfg.patience:
            say(f"early stop: no better mAP for {cfg.patience} epochs (best {best:.4f})")
            break
    if main:
        best_ckpt = load_checkpoint(run_dir / "weights" / "best.pt")
        m = best_ckpt["metrics"]
        say(f"best epoch {best_ckpt['epoch'] + 1}: mAP@[.5:.95] {m['mAP']:.4f}  AP50 {m['AP50']:.4f}")
        say(f"{'class':<24}{'AP50':>8}{'mAP':>8}")
        for name, v in m.get("per_class", {}).items():
            say(f"{name:<24}{v['AP50']:>8.4f}{v['AP']:>8.4f}")
        say(f"results in {run_dir}")
    return run_dir


def _save(cfg: TrainConfig, run_dir: Path, final: torch.nn.Module, core: torch.nn.Module,
          ema: AveragedModel | None, optimizer: torch.optim.Optimizer,
          sched: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler | None,
          names: list[str], cat_ids: list[int], dcfg: DataConfig, epoch: int, res: Any,
          best: float, stale: int, is_best: bool) -> None:
    """Write last.pt (with resume state), best.pt when ``is_best`` and the periodic snapshot."""
    common = dict(class_names=names, imgsz=cfg.imgsz, category_ids=cat_ids, epoch=epoch,
                  metrics={**res.stats, "per_class": res.per_class}, train_args=cfg.to_dict(),
                  data=dcfg.to_dict(), best_fitness=best)
    resume_state = {"optimizer": optimizer.state_dict(), "scheduler": sched.state_dict(),
                    "scaler": scaler.state_dict() if scaler else {}, "rng": rng_state(),
                    "stale_epochs": stale}
    if ema is not None:
        resume_state.update(ema=ema.state_dict(), train_state_dict={
            k: v.detach().cpu() for k, v in core.state_dict().items()})
    # best.pt first: a run killed between the two writes must not leave a last.pt whose epoch's
    # best.pt is missing (the resumed run may never beat that fitness again)
    if is_best:
        save_atomic(make_checkpoint(final, **common), run_dir / "weights" / "best.pt")
    save_atomic(make_checkpoint(final, **common, resume_state=resume_state),
                run_dir / "weights" / "last.pt")
    if cfg.save_period and (epoch + 1) % cfg.save_period == 0:
        save_atomic(make_checkpoint(final, **common), run_dir / "weights" / f"epoch{epoch + 1}.pt")


def write_dataset_stats(samples: list, names: list[str], imgsz: int, run_dir: Path,
                        say: Callable[..., None]) -> None:
    """Print boxes per class and write ``dataset_stats.png`` (counts, box-size histogram)."""
    counts = {n: 0 for n in names}
    sizes = []
    for s in samples:
        for b, lab in zip(s.boxes, s.labels):
            counts[names[int(lab)]] += 1
            sizes.append(float(np.sqrt((b[2] - b[0]) * (b[3] - b[1]))) * imgsz / max(s.width, s.height))
    say("training boxes per class: " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    plot_dataset_stats(counts, np.asarray(sizes), imgsz, run_dir / "dataset_stats.png")


def write_eval_plots(res: Any, samples: list, preds: dict, names: list[str], cat_ids: list[int],
                     out_dir: Path, conf: float = 0.25, iou: float = 0.5, n_samples: int = 6) -> None:
    """``pr_curve.png``, ``confusion_matrix.png`` and ``val_predictions.jpg`` (the first
    ``n_samples`` val images with detections scoring ``>= conf`` in green, ground truth in blue)."""
    if res.precision is not None:
        plot_pr_curves(res.precision, names, out_dir / "pr_curve.png")
    cm = confusion_matrix(samples, preds, names, cat_ids, conf=conf, iou=iou)
    plot_confusion_matrix(cm, names, out_dir / "confusion_matrix.png", conf, iou)
    tiles = []
    for i in sorted(preds)[:n_samples]:
        s = samples[i]
        img, scale = resize_longest(cv2.cvtColor(load_rgb(str(s.image)), cv2.COLOR_RGB2BGR), 320)
        for b in s.boxes * scale:
            cv2.rectangle(img, tuple(int(v) for v in b[:2]), tuple(int(v) for v in b[2:]), (255, 128, 0), 2)
        for b, sc, lab in zip(*preds[i]):
            if sc >= conf:
                b = b * scale
                cv2.rectangle(img, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 200, 0), 2)
                cv2.putText(img, f"{names[int(lab)]} {sc:.2f}", (int(b[0]) + 2, int(b[1]) + 14),
                            cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 200, 0), 1, cv2.LINE_AA)
        tile = np.full((320, 320, 3), 255, np.uint8)
        tile[:img.shape[0], :img.shape[1]] = img
        tiles.append(tile)
    if tiles:
        while len(tiles) % 3:
            tiles.append(np.full_like(tiles[0], 255))
        rows = [np.hstack(tiles[j:j + 3]) for j in range(0, len(tiles), 3)]
        cv2.imwrite(str(out_dir / "val_predictions.jpg"), np.vstack(rows))


def fit_model_anchors(core: torch.nn.Module, samples: list, imgsz: int, seed: int,
                      say: Callable[..., None]) -> None:
    """``--anchors auto``: fit the RPN anchors to the training boxes at the training size, print
    the mean best-anchor IoU before and after, and keep the fit only if it is better (it is then
    recorded in ``build_args``, hence in checkpoints)."""
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
