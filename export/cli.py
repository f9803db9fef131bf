"""``det-export``: checkpoint -> ONNX detector (+ Deep SORT embedder), with a parity check."""

from __future__ import annotations

from pathlib import Path

import click

from export.embedder import export_embedder
from export.onnx_export import export_onnx
from export.parity import ParityError, load_images
from runtime.embedder import EMBEDDER_FILENAME


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("weights", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              show_default="WEIGHTS with suffix .onnx", help="Output .onnx file.")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset.")
@click.option("--simplify/--no-simplify", default=True, show_default=True,
              help="Simplify with onnxslim (kept only if it passes parity).")
@click.option("--parity-images", type=str, metavar="DIR|GLOB",
              show_default="up to 50 val images of the checkpoint's dataset",
              help="Images for the PyTorch-vs-ONNX parity check.")
@click.option("--iou-thr", type=click.FloatRange(0.0, 1.0), default=0.9, show_default=True,
              help="Parity: minimum IoU of a matched box.")
@click.option("--score-tol", type=click.FloatRange(min=0.0), default=0.01, show_default=True,
              help="Parity: maximum score difference of a matched box.")
@click.option("--embedder/--no-embedder", default=True, show_default=True,
              help=f"Also write the Deep SORT appearance embedder ({EMBEDDER_FILENAME}) beside the detector.")
@click.option("--trt", is_flag=True, default=False, show_default="off",
              help="Build a TensorRT engine (not available in this build).")
def main(weights: Path, output: Path | None, opset: int, simplify: bool, parity_images: str | None,
         iou_thr: float, score_tol: float, embedder: bool, trt: bool) -> None:
    """Export checkpoint WEIGHTS (.pt) to a self-describing ONNX detector.

    The graph is compared with the PyTorch model on real images; the export fails (exit 1, nothing
    written) if the detections differ.
    """
    if trt:
        raise click.ClickException(
            "--trt: TensorRT engine building is not available in this build of det-toolkit "
            "(a later release adds it). Export without --trt to get the ONNX model.")
    try:
        images = load_images(parity_images) if parity_images else None
        onnx_path = export_onnx(weights, output, opset=opset, simplify=simplify,
                                parity_images=images, iou_thr=iou_thr, score_tol=score_tol,
                                echo=click.echo)
        emb_path = export_embedder(onnx_path.parent / EMBEDDER_FILENAME, opset=opset,
                                   echo=click.echo) if embedder else None
    except (FileNotFoundError, ValueError, ParityError) as e:  # CheckpointError, MetadataError: ValueError
        raise click.ClickException(str(e)) from e
    click.echo(f"detector: {onnx_path} ({_mib(onnx_path)}, opset {opset})")
    if emb_path is not None:
        click.echo(f"embedder: {emb_path} ({_mib(emb_path)}, opset {opset})")


if __name__ == "__main__":
    main()
