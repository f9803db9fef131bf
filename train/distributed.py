"""Multi-process training with ``torchrun`` (DistributedDataParallel) and its small helpers.

``torchrun --nproc_per_node N -m det_toolkit.train ...`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``;
:func:`setup` joins the process group (NCCL on CUDA, gloo on CPU). Only rank 0 writes files and
prints; metrics are computed on the union of every rank's predictions.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of processes (1 when not launched by torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True on rank 0 (the process that writes files and logs)."""
    return rank() == 0


def setup(device: str) -> torch.device | None:
    """Join the process group if launched by torchrun; returns this rank's device (``None`` when
    not distributed). ``device`` ``auto``/``cuda`` picks ``cuda:LOCAL_RANK`` when CUDA exists."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return torch.device(f"cuda:{local}") if use_cuda else torch.device("cpu")


def cleanup() -> None:
    """Leave the process group (no-op when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (picklable objects)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def merge_dicts(d: dict) -> dict:
    """The union of every rank's dict (``all_gather_object``); keys must not collide."""
    if world_size() == 1:
        return d
    parts: list[dict] = [{} for _ in range(world_size())]
    dist.all_gather_object(parts, d)
    out: dict = {}
    for p in parts:
        out.update(p)
    return out


def mean_across(values: dict[str, float]) -> dict[str, float]:
    """Average each value over ranks (``all_reduce``)."""
    if world_size() == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist())}
