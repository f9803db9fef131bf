"""``det-bench``: measure a detector's export formats (or several models) and write a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from det_toolkit import __version__
from det_toolkit.benchmarks.bench import FORMATS, machine_info, run_bench, write_report
from det_toolkit.runtime.device import DEVICE
from det_toolkit.runtime.files import check_writable, increment_path
from det_toolkit.runtime.preprocess import MAX_IMGSZ


def _check_model_spec(spec: str) -> None:
    """``spec`` of ``--models``: an existing ``.pt`` file or a known model builder name.

    Raises:
        click.BadParameter: neither (the message names what is wrong).
    """
    p = Path(spec)
    if p.suffix == ".pt":
        if not p.is_file():
            raise click.BadParameter(f"{p} not found", param_hint="--models")
        return
    from det_toolkit.train.models import check_model_name

    try:
        check_model_name(spec)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--models") from e


def _model_weights(spec: str, data: str, imgsz: int | None, workdir: Path) -> Path:
    """A checkpoint path as given (``.pt``), or an untrained checkpoint of builder ``spec``
    (ImageNet backbone where the builder has one) for the data config's classes, written to
    ``workdir``. ``spec`` was checked by :func:`_check_model_spec`."""
    if Path(spec).suffix == ".pt":
        return Path(spec)
    from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
    from det_toolkit.train.config import load_data_config
    from det_toolkit.train.models import build_model

    out = workdir / f"{spec}_untrained_{imgsz or 320}.pt"
    names = list(load_data_config(data).names)
    return save_atomic(make_checkpoint(build_model(spec, len(names), weights="auto"), names, imgsz or 320), out)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, "--version", prog_name="det-bench")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Checkpoint (.pt) whose formats are measured.")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Data config YAML (val split for mAP and latency images).")
@click.option("--formats", default="torch,onnx,onnx-fp16,onnx-int8,trt", show_default=True,
              help=f"Comma-separated formats: {', '.join(FORMATS)}.")
@click.option("--models", default=None, help="Comma-separated checkpoints (.pt) or model names "
              "(untrained, ImageNet backbone) to compare instead of/besides --weights.")
@click.option("--imgsz", type=click.IntRange(32, MAX_IMGSZ), default=None, show_default="the checkpoint's",
              help="Square input size for the exports.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="Images per inference call (latency/throughput; static graph batch).")
@click.option("--device", default="cpu", show_default=True, type=DEVICE, help="Inference device of every format.")
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True)
@click.option("--iters", type=click.IntRange(1), default=20, show_default=True, help="Timed calls.")
@click.option("--video", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Video for the end-to-end det-run FPS column (its first --video-frames frames); "
              "without it the column is skipped.")
@click.option("--video-frames", type=click.IntRange(1), default=30, show_default=True)
@click.option("--project", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench"),
              show_default=True, help="Parent folder of the run folder.")
@click.option("--name", default="exp", show_default=True,
              help="Run folder name; an existing one gets a number appended (exp2, ...), never reused. It holds "
              "report.md/.json/.png, the untrained checkpoints of --models names with their exports, and the "
              "det-run outputs.")
def main(weights: Path | None, data: str, formats: str, models: str | None, imgsz: int | None,
         batch: int, device: str, warmup: int, iters: int, video: Path | None, video_frames: int, project: Path,
         name: str) -> None:
    """Measure size, mAP/AP50, latency p50/p95, throughput, peak memory and det-run FPS per format;
    write the report to PROJECT/NAME.

    Missing exports are made beside the weights; formats that cannot run here (e.g. trt without an
    NVIDIA GPU and TensorRT) appear as rows with the reason.
    """
    specs = [m.strip() for m in (models or "").split(",") if m.strip()]
    if not weights and not specs:
        raise click.UsageError("give --weights and/or --models")
    for spec in specs:
        _check_model_spec(spec)
    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in FORMATS]
    if bad or not fmts:
        raise click.BadParameter(f"unknown formats {bad}; choose from {', '.join(FORMATS)}" if bad else
                                 f"no format given; choose from {', '.join(FORMATS)}", param_hint="--formats")
    if video is None:
        click.echo("note: no --video given: the det-run FPS column is skipped")
    try:
        run_dir = increment_path(check_writable(project / name, "--project/--name"))
    except OSError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"run folder: {run_dir}")
    try:
        ckpts = [weights] if weights else []
        ckpts += [_model_weights(spec, data, imgsz, run_dir) for spec in specs]
        rows = run_bench(ckpts, data, fmts, imgsz=imgsz,
                         batch=batch, device=device, warmup=warmup, iters=iters, video=video,
                         video_frames=video_frames, workdir=run_dir / "det-run", echo=click.echo)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(f"{e} (partial outputs in {run_dir})") from e
    paths = write_report(rows, machine_info(), run_dir, "report",
                         command="det-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    click.echo(paths["md"].read_text())
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
