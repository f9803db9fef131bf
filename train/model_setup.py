"""The detector and the optimisation of a training run: the model to train (``--weights-init``,
``--anchors auto``, ``--freeze``, ``--class-weights``, ``--sync-bn``, or rebuilt from a checkpoint),
the optimizer, the per-iteration LR schedule and mixed precision."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from det_toolkit.train import distributed as ddp
from det_toolkit.train.anchors import fit_anchors, set_anchors
from det_toolkit.train.checkpoint import checkpoint_model_args
from det_toolkit.train.config import TrainConfig
from det_toolkit.train.data.samples import Sample
from det_toolkit.train.engine import warmup_cosine, warmup_step
from det_toolkit.train.models import build_model
from det_toolkit.train.models.common import Detector
from det_toolkit.train.models.extras import freeze_stages, inverse_frequency, set_class_weights
from det_toolkit.train.run_data import RunData

log = logging.getLogger("det-train")

Say = Callable[..., None]


def build_core(cfg: TrainConfig, ckpt: dict[str, Any] | None, run: RunData, device: torch.device,
               say: Say) -> Detector:
    """The detector to train, on ``device``: rebuilt from ``ckpt`` (structure, anchors and raw
    weights) or built fresh (``--anchors auto`` fitted), then ``--freeze``, ``--class-weights`` and
    ``--sync-bn`` applied.

    Raises:
        ValueError: ``--sync-bn`` outside a multi-GPU ``torchrun`` launch.
    """
    names = run.names
    if ckpt:  # rebuild exactly what was trained (structure and anchors from the checkpoint)
        core = build_model(cfg.model, len(names), weights=None, **checkpoint_model_args(ckpt))
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
        values = cfg.class_weight_values()
        w = inverse_frequency(counts) if values is None else torch.tensor(values)
        set_class_weights(core.model, w)
        say("class weights: " + ", ".join(f"{n} {v:.3f}" for n, v in zip(names, w.tolist())))
    if cfg.sync_bn:
        if ddp.world_size() == 1 or device.type != "cuda":
            raise ValueError("--sync-bn needs a multi-GPU torchrun launch (SyncBatchNorm is CUDA-only)")
        core = torch.nn.SyncBatchNorm.convert_sync_batchnorm(core)
    return core.to(device)


def fit_model_anchors(core: Detector, samples: list[Sample], imgsz: int, seed: int, say: Say) -> None:
    """``--anchors auto`` (the default): fit the RPN anchors to the training boxes at the training
    size, print the mean best-anchor IoU before and after, and keep the fit only if it is better (it
    is then recorded in ``build_args``, hence in checkpoints). A model without RPN anchors (TOOD) or a
    split without boxes keeps its layout, with a printed note.
    """
    gen = getattr(getattr(core.model, "rpn", None), "anchor_generator", None)
    if gen is None:
        say(f"anchors: {core.name} has no RPN anchors to fit; its own layout is kept")
        return
    boxed = [s for s in samples if len(s.boxes)]
    if not boxed:
        say("anchors: no training boxes to fit them to; the default anchors are kept")
        return
    wh = np.concatenate([(s.boxes[:, 2:] - s.boxes[:, :2]) * (imgsz / max(s.width, s.height)) for s in boxed])
    try:
        fit = fit_anchors(wh, gen, seed)
    except ValueError as e:  # fewer boxes than anchor shapes: nothing to fit
        say(f"anchors: {e}; the default anchors are kept")
        return
    say(f"anchors: mean best IoU over {len(wh)} training boxes {fit.iou_before:.4f} (default) -> "
        f"{fit.iou_after:.4f} (auto); sizes {fit.sizes[0]}{' per level' if len(fit.sizes[0]) > 1 else ''}, "
        f"ratios {fit.ratios[0]}")
    if fit.iou_after > fit.iou_before:
        set_anchors(core.model, fit.sizes, fit.ratios)
        core.build_args.update(anchor_sizes=[list(x) for x in fit.sizes],
                               anchor_ratios=[list(x) for x in fit.ratios])
    else:
        say("anchors: keeping the default anchors (the fit is not better)")


def make_optimizer(cfg: TrainConfig, core: Detector) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW over the trainable parameters of ``core``."""
    params = [p for p in core.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


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


def amp_setup(cfg: TrainConfig, device: torch.device) -> tuple[torch.dtype | None, torch.amp.GradScaler | None]:
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
