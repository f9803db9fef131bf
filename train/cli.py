"""Command-line interfaces ``det-train`` and ``det-eval`` (click).

``det-train`` options are generated from :class:`det_toolkit.train.config.TrainConfig`, so a flag, a YAML key
(``--cfg``) and a checkpoint's ``train_args`` always agree; an unknown YAML key is an error that
suggests the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import yaml

from det_toolkit.train.config import ConfigError, TrainConfig, from_dict, increment_path

HELP: dict[str, str] = {
    "data": "data config YAML (dataset root, splits, names, format)",
    "model": "model builder name; 'list' prints them with parameters and GFLOPs",
    "weights_init": "initial weights: auto (offline defaults), none, or a local .pth path",
    "imgsz": "longest image side in pixels (multiple of 32)",
    "epochs": "number of epochs",
    "batch": "images per SGD step",
    "workers": "DataLoader worker processes",
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
    "ema": "keep an EMA of the weights; evaluate and save it",
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
    "anchors": "default, or auto: k-means (1 - IoU) anchors fitted to the training boxes",
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
    "cache": "decode and resize all images into RAM once",
    "project": "parent folder of the run folder",
    "name": "run folder name (incremented: exp, exp2, ...)",
    "exist_ok": "reuse an existing run folder instead of incrementing",
    "resume": "continue a run from its weights/last.pt",
}


def _options_from(cls: type) -> Callable[[Callable], Callable]:
    """click options for every field of dataclass ``cls``, defaults shown in ``--help``.

    Which flags were really typed is read back with :func:`_given` (so ``--cfg`` values are only
    overridden by explicit flags).
    """

    def deco(f: Callable) -> Callable:
        for fld in reversed(dataclasses.fields(cls)):
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
        print_models(flags["imgsz"])
        return
    try:
        values: dict[str, Any] = {}
        if cfg:
            loaded = yaml.safe_load(Path(cfg).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ConfigError(f"{cfg}: expected a mapping")
            values.update(loaded)
        values.update(_given(ctx, flags))
        tc = from_dict(TrainConfig, values, cfg or "command line")
        if not tc.data and not tc.resume:
            raise ConfigError("--data is required (a data config YAML such as configs/raccoon.yaml)")
        from det_toolkit.train.trainer import fit

        fit(tc)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(e)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
              help="checkpoint (.pt) or exported model (.onnx)")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="data config YAML")
@click.option("--split", default="val", show_default=True, help="split to evaluate: train, val, test")
@click.option("--conf", default=0.001, show_default=True, type=float,
              help="score threshold (keep it low for mAP)")
@click.option("--iou", default=0.5, show_default=True, type=float,
              help="IoU threshold of the confusion matrix")
@click.option("--plot-conf", default=0.25, show_default=True, type=float,
              help="score threshold of the confusion matrix and prediction samples")
@click.option("--imgsz", default=None, type=int, show_default="the model's",
              help="input size override (dynamic graphs only)")
@click.option("--rect/--square", "rect", default=False, show_default="square",
              help="rectangular inputs padded only to the model's stride (dynamic H/W graphs) "
              "or letterboxed to the full square (as every format's parity check)")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda")
@click.option("--project", default="runs/eval", show_default=True, help="parent of the run folder")
@click.option("--name", default="exp", show_default=True, help="run folder name (incremented)")
def eval_cli(weights: str, data: str, split: str, conf: float, iou: float, plot_conf: float,
             imgsz: int | None, rect: bool, device: str, project: str, name: str) -> None:
    """COCO mAP@[.5:.95], AP50 and per-class AP of a .pt or .onnx model on a dataset split.

    Both formats run through the runtime's backends (letterbox pre-processing, same as det-run),
    so their numbers compare directly. Writes metrics.json, pr_curve.png, confusion_matrix.png and
    val_predictions.jpg to the run folder.
    """
    try:
        result, info, samples, preds = evaluate_weights(weights, data, split, conf, imgsz, device, rect)
    except (ConfigError, FileNotFoundError, ValueError, RuntimeError) as e:
        _fail(e)
    click.echo(result.table())
    click.echo(f"{info['n_images']} images, {info['ms_per_image']:.1f} ms/image after warm-up "
               f"({info['backend']})")
    from det_toolkit.train.trainer import write_eval_plots

    out = increment_path(Path(project) / name)
    out.mkdir(parents=True, exist_ok=True)
    write_eval_plots(result, samples, preds, info["class_names"], info["category_ids"], out,
                     conf=plot_conf, iou=iou)
    (out / "metrics.json").write_text(json.dumps({**result.to_dict(), **info}, indent=2))
    click.echo(f"wrote {out / 'metrics.json'} and plots")


def evaluate_weights(weights: str, data: str, split: str = "val", conf: float = 0.001,
                     imgsz: int | None = None, device: str = "auto", rect: bool = False):
    """Evaluate an artifact on a split through :mod:`runtime` backends.

    Returns ``(CocoResult, info, samples, predictions)`` with ``info`` = weights, backend, split,
    n_images, ms_per_image (pre-process + inference + post-process, after one warm-up image),
    class_names, category_ids; ``predictions`` maps sample index -> (boxes, scores, labels).

    Raises:
        ValueError: the artifact's class names differ from the data config's.
    """
    import cv2

    from det_toolkit.runtime.backends import load_backend
    from det_toolkit.runtime.predictor import Predictor
    from det_toolkit.train.coco_eval import evaluate_coco
    from det_toolkit.train.config import load_data_config
    from det_toolkit.train.data.dataset import load_rgb
    from det_toolkit.train.data.formats import read_split

    dcfg = load_data_config(data)
    samples, names, cat_ids, report = read_split(dcfg, split)
    backend = load_backend(weights, device=device)
    if list(backend.meta.class_names) != list(names):
        raise ValueError(f"{weights}: model classes {backend.meta.class_names} differ from "
                         f"{data} names {names}")
    pred = Predictor(backend, conf=conf, imgsz=imgsz, rect=rect)
    preds, elapsed, n_timed = {}, 0.0, 0
    for i, s in enumerate(samples):
        try:
            bgr = cv2.cvtColor(load_rgb(str(s.image)), cv2.COLOR_RGB2BGR)
        except (OSError, ValueError) as e:
            click.echo(f"warning: {s.image}: unreadable ({e}), skipped", err=True)
            continue
        t0 = time.perf_counter()
        d = pred(bgr)
        if i > 0:
            elapsed += time.perf_counter() - t0
            n_timed += 1
        preds[i] = (d.boxes, d.scores, d.labels)
    result = evaluate_coco(samples, preds, names, cat_ids)
    info = {"weights": str(weights), "backend": backend.name, "split": split,
            "n_images": len(preds), "ms_per_image": 1000 * elapsed / max(1, n_timed), "rect": pred.rect,
            "class_names": names, "category_ids": cat_ids}
    return result, info, samples, preds
