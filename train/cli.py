"""Command-line interface ``det-train`` (click); ``det-eval`` is :mod:`det_toolkit.train.evaluate`.

``det-train`` options are generated from :class:`det_toolkit.train.config.TrainConfig`, so a flag, a YAML key
(``--cfg``) and a checkpoint's ``train_args`` always agree; an unknown YAML key is an error that
suggests the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import click

from det_toolkit import __version__
from det_toolkit.train.config import ConfigError, TrainConfig, load_train_config

HELP: dict[str, str] = {
    "data": "data config YAML (dataset root, splits, names, format), or a dataset folder: a Roboflow/"
            "CVAT/Ultralytics export (data.yaml, _annotations.coco.json, annotations/*.json, VOC)",
    "model": "model builder name; 'list' prints them with parameters and GFLOPs",
    "weights_init": "initial weights: auto (offline defaults), none, or a local .pth path",
    "imgsz": "longest image side in pixels (multiple of 32); 0: chosen from the box sizes (416-832), printed first",
    "epochs": "number of epochs; 0: chosen from the training set size (~800 optimizer steps, 12-100 epochs), "
              "printed first",
    "batch": "images per SGD step",
    "workers": "DataLoader worker processes [default: 0 on a machine with 2 CPUs or fewer, else 2]",
    "optimizer": "sgd or adamw",
    "lr": "peak learning rate",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (L2)",
    "warmup_epochs": "linear warm-up length in epochs (fractions allowed)",
    "warmup_factor": "LR multiplier at the start of warm-up",
    "lrf": "final LR as a fraction of --lr (cosine decay)",
    "clip_grad": "max gradient L2 norm (0 = off)",
    "scheduler": "LR schedule after warm-up: cosine, step (--lr-step) or onecycle",
    "lr_step": "step schedule: epochs at which the LR is multiplied by --lr-gamma, e.g. 8,11",
    "lr_gamma": "step schedule: LR factor at each --lr-step epoch",
    "l1": "L1 regularisation weight on trainable parameters (0 = off)",
    "ema": "keep an EMA of the weights; evaluate and save it (--no-ema: the raw weights)",
    "ema_decay": "EMA decay (ramped up over the first updates)",
    "ema_tau": "EMA ramp length in updates",
    "patience": "stop after this many epochs without a better mAP (0 = off)",
    "save_period": "also save weights/epoch<N>.pt every N epochs (0 = off)",
    "aug": "augmentation preset: none, light, default, strong (mosaic, rotation, noise, ...)",
    "aug_set": "per-key augmentation overrides, e.g. 'mosaic=0.3,rotate=5,scale=0.5:1.2'",
    "show_aug": "write this many augmented training samples with their boxes, then exit",
    "amp": "mixed precision on CUDA (ignored on CPU)",
    "amp_dtype": "AMP dtype on CUDA: fp16 (with GradScaler) or bf16",
    "trainable_layers": "backbone stages left trainable when pretrained (torchvision's setting)",
    "freeze": "freeze the first N backbone stages (on top of --trainable-layers; 0 = off)",
    "anchors": "auto: k-means (1 - IoU) anchors fitted to the training boxes (kept if they fit better), "
               "or default: the model's layout",
    "attention": "none, or cbam: CBAM attention on every backbone/FPN output",
    "class_weights": "box classifier loss weights: auto (inverse frequency) or w1,w2,... per class",
    "rpn_pre_nms_test": "RPN proposals per FPN level before NMS at inference (0 = model default)",
    "rpn_post_nms_test": "RPN proposals kept after NMS at inference; the box head runs once per "
                         "proposal, so this sets most of the CPU latency (0 = model default)",
    "rpn_post_nms_train": "RPN proposals kept after NMS in training (0 = model default)",
    "roi_batch": "RoIs sampled per image for the box head in training (0 = model default)",
    "max_det": "maximum detections per image (0 = model default, 100)",
    "device": "auto, cpu, cuda or cuda:N (under torchrun: each rank takes cuda:LOCAL_RANK)",
    "sync_bn": "convert BatchNorm to SyncBatchNorm (multi-GPU torchrun runs)",
    "seed": "random seed",
    "cache": "decode and resize the images into RAM once (up to --cache-mib; --no-cache: read from disk)",
    "cache_mib": "RAM budget of the image cache in MiB, training images first: auto (half the available "
                 "memory) or a number (0 = no cache)",
    "project": "parent folder of the run folder",
    "name": "run folder name (incremented: exp, exp2, ...)",
    "exist_ok": "reuse an existing run folder instead of incrementing",
    "resume": "continue a run from its weights/last.pt",
    "verbose": "show faster-coco-eval's progress and summary lines at every evaluation",
}


#: TrainConfig fields that are records, not options (``from_data``: which values the data chose).
NOT_FLAGS = frozenset({"from_data"})


def _options_from(cls: type) -> Callable[[Callable], Callable]:
    """click options for every field of dataclass ``cls``, defaults shown in ``--help``.

    Which flags were really typed is read back with :func:`_given` (so ``--cfg`` values are only
    overridden by explicit flags).
    """

    def deco(f: Callable) -> Callable:
        for fld in reversed(dataclasses.fields(cls)):
            if fld.name in NOT_FLAGS:
                continue
            default = fld.default if fld.default is not dataclasses.MISSING else None
            flag = "--" + fld.name.replace("_", "-")
            help_ = HELP.get(fld.name, "")
            if fld.type in ("bool", bool):
                f = click.option(f"{flag}/--no-{flag[2:]}", fld.name, default=default, help=help_,
                                 show_default=True)(f)
            else:
                typ = {"int": int, "float": float}.get(str(fld.type), str)
                f = click.option(flag, fld.name, type=typ, default=default, help=help_,
                                 show_default=default not in ("", None))(f)
        return f

    return deco


def _given(ctx: click.Context, flags: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``flags`` typed on the command line (not defaults)."""
    return {k: v for k, v in flags.items()
            if ctx.get_parameter_source(k) == click.core.ParameterSource.COMMANDLINE}


def print_models(imgsz: int, num_classes: int = 80) -> None:
    """Print each model of :data:`det_toolkit.train.models.MODELS` with parameters (M) and forward GFLOPs at
    ``imgsz x imgsz`` (``num_classes`` classes; pretrained weights are not loaded)."""
    from det_toolkit.train.models import MODELS, build_model
    from det_toolkit.train.models.common import count_parameters, gflops

    logging.getLogger("det_toolkit.train.models.weights").setLevel(logging.ERROR)
    click.echo(f"{'model':<40}{'params (M)':>12}{f'GFLOPs@{imgsz}':>14}")
    for name in MODELS:
        model = build_model(name, num_classes, weights=None)
        click.echo(f"{name:<40}{count_parameters(model) / 1e6:>12.2f}{gflops(model, imgsz):>14.1f}")


def _fail(e: Exception) -> None:
    raise click.ClickException(str(e)) from e


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="det-train")
@click.option("--cfg", type=click.Path(exists=True, dir_okay=False), default=None,
              help="YAML file of training options (flags override it)")
@_options_from(TrainConfig)
@click.pass_context
def train_cli(ctx: click.Context, cfg: str | None, **flags: Any) -> None:
    """Train a detector on a dataset described by --data; writes runs/train/<name>.

    `det-train --model list [--imgsz 640]` prints every model with its parameters and GFLOPs.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if flags["model"] == "list":
        print_models(flags["imgsz"] or 640)
        return
    try:
        tc = load_train_config(cfg, _given(ctx, flags))
        if not tc.data and not tc.resume:
            raise ConfigError("--data is required (a data config YAML such as configs/raccoon.yaml)")
        from det_toolkit.train.trainer import fit

        fit(tc)
    except (ConfigError, OSError, ValueError, RuntimeError) as e:  # OSError: e.g. --project under a file
        _fail(e)
