"""``det-eval``: COCO mAP@[.5:.95], AP50 and per-class AP of a checkpoint or an exported artifact.

Every format (``.pt``, ``.onnx``, ``.engine``) runs through the runtime's backends
(:func:`det_toolkit.runtime.backends.load_backend`) and :class:`~det_toolkit.runtime.predictor.Predictor`,
with the same letterbox pre-processing as ``det-run``, so the numbers of a checkpoint and of its
exports compare directly. Ground truth comes from the training readers
(:func:`det_toolkit.train.data.formats.read_split`), the metrics from
:mod:`det_toolkit.train.coco_eval`.

Images that cannot be read leave the evaluation whole, ground truth and predictions: those the
readers skip (missing, unreadable header, truncated PNG) and those that fail to decode
(:func:`det_toolkit.train.coco_eval.evaluate_coco`'s ``exclude``, the rule det-train applies to its
val split too). ``metrics.json`` names them in ``images_skipped``; truncated JPEGs are decoded (grey
bottom rows) and named in ``images_truncated``. The output folder is checked before the work.

torch-free: PyTorch is imported only by the backend of a ``.pt`` checkpoint, so ``det-eval`` of an
``.onnx`` artifact works in the base install. The plots need matplotlib (the ``[train]`` extra);
without it det-eval writes ``metrics.json`` and says the plots were skipped.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import click
import cv2
import numpy as np
from tqdm import tqdm

from det_toolkit import __version__
from det_toolkit.runtime.backends import load_backend
from det_toolkit.runtime.device import DEVICE
from det_toolkit.runtime.draw import draw_boxes
from det_toolkit.runtime.files import check_writable, increment_path
from det_toolkit.runtime.predictor import Predictor
from det_toolkit.runtime.preprocess import MAX_IMGSZ, resize_longest
from det_toolkit.train.coco_eval import CocoResult, confusion_matrix, evaluate_coco
from det_toolkit.train.config import load_data_config
from det_toolkit.train.data.formats import read_split
from det_toolkit.train.data.images import load_rgb
from det_toolkit.train.data.samples import TRUNCATED_JPEG, DatasetError, Sample

#: sample index -> ``(boxes float32 [K, 4] xyxy image px, scores float32 [K], labels int64 [K] 0-based)``
Predictions = dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]


class EvalOutput(NamedTuple):
    """What :func:`evaluate_weights` returns (a tuple: ``result, info, samples, predictions``).

    Attributes:
        result: the COCO metrics; ``result.images_skipped`` names every image left out (skipped by
            the readers or undecodable), ``result.excluded`` the sample indices that failed to decode.
        info: ``weights``, ``backend``, ``split``, ``n_images`` (images predicted), ``ms_per_image``
            (pre-process + inference + post-process in ms, mean after one warm-up image), ``rect``,
            ``class_names``, ``category_ids``, ``images_truncated`` (truncated JPEGs decoded) and
            ``data_report`` (the readers' :meth:`~det_toolkit.train.data.samples.DataReport.table`);
            JSON-ready.
        samples: the split's ground truth (:func:`det_toolkit.train.data.formats.read_split`).
        predictions: sample index -> detections in original-image pixels (unreadable images absent).
    """

    result: CocoResult
    info: dict[str, Any]
    samples: list[Sample]
    predictions: Predictions


def evaluate_weights(weights: str | Path, data: str | Path, split: str = "val", conf: float = 0.001,
                     imgsz: int | None = None, device: str = "auto", rect: bool = False, *,
                     progress: bool = False, verbose: bool = False) -> EvalOutput:
    """Predict every image of a dataset split with an artifact and compute COCO metrics.

    Args:
        weights: ``.pt`` checkpoint, ``.onnx`` graph or ``.engine`` (anything
            :func:`det_toolkit.runtime.backends.load_backend` loads).
        data: data config YAML (:func:`det_toolkit.train.config.load_data_config`).
        split: ``train``, ``val`` or ``test``.
        conf: minimum score kept (keep it low for mAP), in ``[0, 1]``.
        imgsz: letterbox size override in pixels (dynamic graphs only).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        rect: rectangular inputs padded only to the model's stride (dynamic H/W graphs) instead of
            the full letterbox square.
        progress: show a tqdm progress bar over the images (stderr).
        verbose: let faster-coco-eval log its progress (INFO).

    Returns:
        :class:`EvalOutput`.

    Raises:
        FileNotFoundError: ``weights`` or ``data`` missing.
        ValueError: a bad data config or split (``ConfigError``; ``DatasetError``, also for a split
            without any valid box or with no decodable image), an artifact that cannot be loaded
            (``BackendError``, ``MetadataError``, ``CheckpointError``), or class names that differ
            between the artifact and the data config.
    """
    dcfg = load_data_config(data)
    samples, names, cat_ids, report = read_split(dcfg, split)
    if not any(len(s.boxes) for s in samples):  # mAP would be a meaningless 0
        skipped = [Path(f).name for f in report.skipped_images()]
        why = f"; {len(skipped)} skipped: {', '.join(skipped[:3])}{', ...' * (len(skipped) > 3)}" if skipped else ""
        raise DatasetError(f"{dcfg.source}: split '{split}' has no valid box in {len(samples)} usable images{why} "
                           "(nothing to evaluate)")
    backend = load_backend(weights, device=device)
    if list(backend.meta.class_names) != list(names):
        raise ValueError(f"{weights}: model classes {backend.meta.class_names} differ from "
                         f"{data} names {names}")
    pred = Predictor(backend, conf=conf, imgsz=imgsz, rect=rect)
    preds: Predictions = {}
    undecodable: list[int] = []
    elapsed, n_timed = 0.0, 0
    for i, s in enumerate(tqdm(samples, desc=f"det-eval {split}", unit="img", disable=not progress)):
        try:
            bgr = cv2.cvtColor(load_rgb(s.image), cv2.COLOR_RGB2BGR)
        except (OSError, ValueError, SyntaxError):  # PIL.UnidentifiedImageError is an OSError
            undecodable.append(i)
            continue
        t0 = time.perf_counter()
        d = pred(bgr)
        if preds:  # the first image predicted is the warm-up
            elapsed += time.perf_counter() - t0
            n_timed += 1
        preds[i] = (d.boxes, d.scores, d.labels)
    if not preds:
        raise DatasetError(f"{dcfg.source}: split '{split}': none of its {len(samples)} images could be decoded "
                           f"({', '.join(s.image.name for s in samples[:3])}{', ...' * (len(samples) > 3)})")
    result = evaluate_coco(samples, preds, names, cat_ids, exclude=undecodable, verbose=verbose)
    result.images_skipped = [Path(f).name for f in report.skipped_images()] + result.images_skipped
    info = {"weights": str(weights), "backend": backend.name, "split": split,
            "n_images": len(preds), "ms_per_image": 1000 * elapsed / max(1, n_timed), "rect": pred.rect,
            "class_names": names, "category_ids": cat_ids,
            "images_truncated": [Path(f).name for f in report.files(*TRUNCATED_JPEG)],
            "data_report": report.table(max_files=20)}
    return EvalOutput(result, info, samples, preds)


def _report_issues(report_table: str, result: CocoResult) -> None:
    """Print the readers' report (when it lists problems) and the images left out, on stderr."""
    if not report_table.endswith("no problems found"):
        click.echo(report_table, err=True)
    n = len(result.images_skipped)
    if n:
        click.echo(f"warning: {n} image{'s' * (n != 1)} left out of the evaluation (ground truth and "
                   f"predictions; unreadable): {', '.join(result.images_skipped)}", err=True)


def write_eval_plots(res: CocoResult, samples: list[Sample], preds: Predictions, names: list[str],
                     cat_ids: list[int], out_dir: Path, conf: float = 0.25, iou: float = 0.5,
                     n_samples: int = 6, *, verbose: bool = False) -> None:
    """Write ``pr_curve.png``, ``confusion_matrix.png`` and ``val_predictions.jpg`` to ``out_dir``.

    Args:
        res: the metrics of ``preds`` (its ``precision`` array draws the PR curves; the samples
            it ``excluded`` are left out of the confusion matrix too).
        samples / preds / names / cat_ids: as :func:`evaluate_weights` returns them.
        out_dir: existing folder.
        conf: score threshold of the confusion matrix and of the drawn detections.
        iou: IoU at which the confusion matrix matches a detection to a ground-truth box
            (class-agnostic; not an NMS setting).
        n_samples: the first this-many predicted images are drawn (320 px tiles, 3 per row):
            detections scoring ``>= conf`` in green with class and score, ground truth in blue.
        verbose: let faster-coco-eval log its progress (INFO).

    Raises:
        ModuleNotFoundError: matplotlib is not installed (the ``[train]`` extra); nothing is written.
    """
    # deferred: matplotlib (the [train] extra, not in the base install that det-eval of .onnx runs in)
    from det_toolkit.train.plots import plot_confusion_matrix, plot_pr_curves

    if res.precision is not None:
        plot_pr_curves(res.precision, names, out_dir / "pr_curve.png")
    cm = confusion_matrix(samples, preds, names, cat_ids, conf=conf, iou=iou, exclude=res.excluded,
                          verbose=verbose)
    plot_confusion_matrix(cm, names, out_dir / "confusion_matrix.png", conf, iou)
    tiles = []
    for i in sorted(preds)[:n_samples]:
        s = samples[i]
        img, scale = resize_longest(cv2.cvtColor(load_rgb(s.image), cv2.COLOR_RGB2BGR), 320)
        draw_boxes(img, s.boxes * scale, s.labels, names, color=(255, 128, 0), captions=False)
        boxes, scores, labels = preds[i]
        keep = scores >= conf
        draw_boxes(img, boxes[keep] * scale, labels[keep], names, scores[keep], color=(0, 200, 0))
        tile = np.full((320, 320, 3), 255, np.uint8)
        tile[:img.shape[0], :img.shape[1]] = img
        tiles.append(tile)
    if tiles:
        while len(tiles) % 3:
            tiles.append(np.full_like(tiles[0], 255))
        rows = [np.hstack(tiles[j:j + 3]) for j in range(0, len(tiles), 3)]
        cv2.imwrite(str(out_dir / "val_predictions.jpg"), np.vstack(rows))


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="det-eval")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False),
              help="checkpoint (.pt) or exported model (.onnx, .engine)")
@click.option("--data", required=True, type=click.Path(exists=True),
              help="data config YAML, or a dataset folder (Roboflow/CVAT/VOC export)")
@click.option("--split", default="val", show_default=True, help="split to evaluate: train, val, test")
@click.option("--conf", default=0.001, show_default=True, type=click.FloatRange(0, 1),
              help="score threshold of the detections evaluated (keep it low for mAP)")
@click.option("--cm-iou", default=0.5, show_default=True, type=click.FloatRange(0, 1, min_open=True),
              help="IoU at which the confusion matrix matches a detection to a ground-truth box "
              "(class-agnostic); not the model's NMS IoU")
@click.option("--plot-conf", default=0.25, show_default=True, type=click.FloatRange(0, 1),
              help="score threshold of the confusion matrix and prediction samples")
@click.option("--imgsz", default=None, type=click.IntRange(32, MAX_IMGSZ), show_default="the model's",
              help="input size override (dynamic graphs only)")
@click.option("--rect/--square", "rect", default=False, show_default="square",
              help="rectangular inputs padded only to the model's stride (dynamic H/W graphs) "
              "or letterboxed to the full square (as every format's parity check)")
@click.option("--device", default="auto", show_default=True, type=DEVICE, help="auto, cpu, cuda or cuda:N")
@click.option("--project", default="runs/eval", show_default=True, help="parent of the run folder")
@click.option("--name", default="exp", show_default=True, help="run folder name (incremented)")
@click.option("--verbose", is_flag=True, default=False, help="show faster-coco-eval's progress log (INFO)")
def main(weights: str, data: str, split: str, conf: float, cm_iou: float, plot_conf: float,
         imgsz: int | None, rect: bool, device: str, project: str, name: str, verbose: bool) -> None:
    """COCO mAP@[.5:.95], AP50 and per-class AP of a .pt, .onnx or .engine model on a dataset split.

    Every format runs through the runtime's backends (letterbox pre-processing, same as det-run),
    so their numbers compare directly. Writes metrics.json, pr_curve.png, confusion_matrix.png and
    val_predictions.jpg to the run folder. Images that cannot be read are left out of the
    evaluation (ground truth too) and named in metrics.json's images_skipped.
    """
    if verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        check_writable(Path(project) / name, "--project/--name")  # before the work, not after it
        result, info, samples, preds = evaluate_weights(weights, data, split, conf, imgsz, device, rect,
                                                        progress=True, verbose=verbose)
    except (OSError, ValueError, RuntimeError) as e:  # FileNotFoundError, PermissionError are OSErrors
        raise click.ClickException(str(e)) from e
    _report_issues(info.pop("data_report"), result)
    click.echo(result.table())
    click.echo(f"{info['n_images']} images, {info['ms_per_image']:.1f} ms/image after warm-up "
               f"({info['backend']})")
    try:
        out = increment_path(Path(project) / name)
        (out / "metrics.json").write_text(json.dumps({**result.to_dict(), **info}, indent=2))
    except OSError as e:  # the folder changed since the check
        raise click.ClickException(f"cannot write the results: {e}") from e
    try:
        write_eval_plots(result, samples, preds, info["class_names"], info["category_ids"], out,
                         conf=plot_conf, iou=cm_iou, verbose=verbose)
    except ModuleNotFoundError as e:
        if e.name != "matplotlib":
            raise
        click.echo(f"wrote {out / 'metrics.json'}; plots skipped: matplotlib is not installed "
                   "(pip install \"det-toolkit[train]\")")
        return
    click.echo(f"wrote {out / 'metrics.json'} and plots")


if __name__ == "__main__":
    main()
