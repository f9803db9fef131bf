"""``det-bench``: measure a detector's export formats (or several models) and write a report."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from det_toolkit.benchmarks.bench import FORMATS, ROOT, machine_info, run_bench, write_report

VTEST = ROOT.parent / "shared" / "videos" / "vtest.avi"


def _model_weights(spec: str, data: str, imgsz: int | None, workdir: Path) -> Path:
    """A checkpoint path as given, or an untrained checkpoint of builder ``spec`` (ImageNet
    backbone where the builder has one) for the data config's classes, written to ``workdir``."""
    p = Path(spec)
    if p.suffix == ".pt":
        if not p.is_file():
            raise click.BadParameter(f"{p} not found", param_hint="--models")
        return p
    from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
    from det_toolkit.train.config import load_data_config
    from det_toolkit.train.models import build_model, check_model_name

    try:
        check_model_name(spec)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--models") from e
    out = workdir / f"{spec}_untrained_{imgsz or 320}.pt"
    if not out.is_file():
        names = list(load_data_config(data).names)
        save_atomic(make_checkpoint(build_model(spec, len(names), weights="auto"), names, imgsz or 320), out)
    return out


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Checkpoint (.pt) whose formats are measured.")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Data config YAML (val split for mAP and latency images).")
@click.option("--formats", default="torch,onnx,onnx-fp16,trt", show_default=True,
              help=f"Comma-separated formats: {', '.join(FORMATS)}.")
@click.option("--models", default=None, help="Comma-separated checkpoints (.pt) or model names "
              "(untrained, ImageNet backbone) to compare instead of/besides --weights.")
@click.option("--imgsz", type=click.IntRange(32), default=None, show_default="the checkpoint's",
              help="Square input size for the exports.")
@click.option("--batch", type=click.IntRange(1), default=1, show_default=True,
              help="Images per inference call (latency/throughput; static graph batch).")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda", "auto"]))
@click.option("--warmup", type=click.IntRange(0), default=3, show_default=True)
@click.option("--iters", type=click.IntRange(1), default=20, show_default=True, help="Timed calls.")
@click.option("--video", type=click.Path(path_type=Path), default=VTEST, show_default="shared vtest.avi",
              help="Video for the end-to-end det-run FPS (skipped if missing).")
@click.option("--video-frames", type=click.IntRange(1), default=30, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=ROOT / "benchmarks" / "reports",
              show_default="benchmarks/reports", help="Report folder.")
@click.option("--name", default="latest", show_default=True, help="Report file stem.")
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("runs/bench"),
              show_default=True, help="Scratch folder (untrained checkpoints, det-run outputs).")
def main(weights: Path | None, data: str, formats: str, models: str | None, imgsz: int | None,
         batch: int, device: str, warmup: int, iters: int, video: Path, video_frames: int, out: Path,
         name: str, workdir: Path) -> None:
    """Measure size, mAP/AP50, latency p50/p95, throughput, peak memory and det-run FPS per format.

    Missing exports are made beside the weights; formats that cannot run here (e.g. trt without an
    NVIDIA GPU and TensorRT) appear as rows with the reason.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    ckpts = [weights] if weights else []
    ckpts += [_model_weights(m.strip(), data, imgsz, workdir) for m in (models or "").split(",") if m.strip()]
    if not ckpts:
        raise click.UsageError("give --weights and/or --models")
    try:
        rows = run_bench(ckpts, data, [f.strip() for f in formats.split(",") if f.strip()], imgsz=imgsz,
                         batch=batch, device=device, warmup=warmup, iters=iters, video=video,
                         video_frames=video_frames, workdir=workdir, echo=click.echo)
    except (ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from e
    paths = write_report(rows, machine_info(), out, name,
                         command="det-bench " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    click.echo(paths["md"].read_text())
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
