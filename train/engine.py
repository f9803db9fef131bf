"""One training epoch and one evaluation pass, in the style of torchvision's detection references."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN/inf: the learning rate is probably too high."""


def warmup_cosine(total_iters: int, warmup_iters: int, warmup_factor: float, lrf: float):
    """LR multiplier ``f(it)``: linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters``,
    then cosine from 1 to ``lrf`` at ``total_iters`` (for ``torch.optim.lr_scheduler.LambdaLR``)."""

    def f(it: int) -> float:
        if it < warmup_iters:
            a = it / max(1, warmup_iters)
            return warmup_factor * (1 - a) + a
        t = (it - warmup_iters) / max(1, total_iters - warmup_iters)
        return lrf + (1 - lrf) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))

    return f


def warmup_step(iters_per_epoch: int, milestones: list[int], gamma: float, warmup_iters: int,
                warmup_factor: float):
    """LR multiplier: linear warm-up, then ``gamma ** (number of milestone epochs passed)``."""

    def f(it: int) -> float:
        w = warmup_factor + (1 - warmup_factor) * it / warmup_iters if it < warmup_iters else 1.0
        return w * gamma ** sum(it >= m * iters_per_epoch for m in milestones)

    return f


def ema_avg_fn(decay: float, tau: float):
    """``avg_fn`` for ``torch.optim.swa_utils.AveragedModel``: EMA whose decay ramps up as
    ``decay * (1 - exp(-n / tau))`` over the first updates (Ultralytics' ModelEMA), so early
    weights are not frozen into the average."""

    def avg(ema_p: torch.Tensor, p: torch.Tensor, n: torch.Tensor | int) -> torch.Tensor:
        d = decay * (1 - math.exp(-float(n) / tau))
        return ema_p * d + p * (1 - d)

    return avg


class AmpProbe:
    """Checks, on the first step of an epoch, that autocast really ran the convolutions in the AMP
    dtype (in some pipelines ``--amp`` silently does nothing).

    Args:
        model: hooked at its first ``nn.Conv2d`` until :meth:`check`.
        dtype: the autocast dtype expected (``torch.float16`` or ``torch.bfloat16``).

    :meth:`check` (after one forward pass) removes the hook and raises ``RuntimeError`` if that
    convolution's output was not ``dtype``.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        self.dtype, self.seen = dtype, None
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        self.handle = conv.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any, out: torch.Tensor) -> None:
        self.seen = out.dtype

    def check(self) -> None:
        self.handle.remove()
        if self.seen != self.dtype:
            raise RuntimeError(f"AMP requested ({self.dtype}) but convolutions ran in {self.seen}")


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    loader: DataLoader,
    device: torch.device,
    epoch: int,
    epochs: int,
    scaler: torch.amp.GradScaler | None = None,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float = 0.0,
    show: bool = True,
    l1: float = 0.0,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
) -> dict[str, float]:
    """Train for one epoch; the scheduler steps every iteration.

    Args:
        amp_dtype: ``torch.float16``/``torch.bfloat16`` to run the forward pass under
            ``torch.autocast`` (CUDA), ``None`` for fp32. ``scaler`` is required with fp16.
        clip_grad: max global L2 norm of the gradients (0 disables).
        l1: weight of an L1 penalty ``sum(|w|)`` over the trainable parameters (0 disables).
        ema: an ``AveragedModel`` updated after every optimizer step.

    Returns:
        Mean of each loss over the epoch, ``loss`` (their sum), ``lr`` (of the last step), ``img_s``
        (training throughput, images per second) and ``n_images``.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite.
    """
    model.train()
    amp_probe = AmpProbe(model, amp_dtype) if amp_dtype else None
    sums: dict[str, float] = {}
    n_img, n_it = 0, 0
    t0 = time.perf_counter()
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not show, dynamic_ncols=True,
               leave=True)
    for images, targets in bar:
        if not images:
            continue
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [{"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets]
        ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
        with ctx:
            losses = model(images, targets)
        if amp_probe is not None:
            amp_probe.check()
            amp_probe = None
        loss = sum(losses.values())
        if l1:
            loss = loss + l1 * sum(p.abs().sum() for p in model.parameters() if p.requires_grad)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"loss is {loss.item()} at epoch {epoch + 1} ({ {k: v.item() for k, v in losses.items()} }); "
                "lower --lr or check the labels")
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if clip_grad:
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # the LR this step used
        scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        n_it += 1
        n_img += len(images)
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        if show:
            bar.set_postfix(loss=f"{sums['loss'] / n_it:.3f}", lr=f"{lr:.2e}",
                            img_s=f"{n_img / (time.perf_counter() - t0):.1f}")
    out = {k: v / max(1, n_it) for k, v in sums.items()}
    out["lr"] = lr if n_it else optimizer.param_groups[0]["lr"]
    out["img_s"] = n_img / max(1e-9, time.perf_counter() - t0)
    out["n_images"] = n_img
    return out


@torch.inference_mode()
def predict_dataset(model: nn.Module, loader: DataLoader, device: torch.device, show: bool = False
                    ) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Run ``model`` over ``loader`` (a :class:`det_toolkit.train.data.dataset.DetectionDataset` without
    augmentation) and return sample index -> ``(boxes float32 [K, 4] xyxy original-image pixels,
    scores float32 [K], labels int64 [K] 0-based)``."""
    model.eval()
    preds = {}
    for images, targets in tqdm(loader, desc="val", disable=not show, leave=False):
        if not images:
            continue
        out = model([im.to(device) for im in images])
        for o, t in zip(out, targets):
            boxes = o["boxes"].float().cpu().numpy() / t["scale"]
            preds[t["index"]] = (boxes, o["scores"].float().cpu().numpy(),
                                 o["labels"].cpu().numpy())
    return preds


def describe(stats: dict[str, Any]) -> str:
    """A compact one-line rendering of a metrics dict."""
    return "  ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items())
