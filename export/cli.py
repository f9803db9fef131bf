"""``det-export``: checkpoint -> ONNX detector (+ Deep SORT embedder, FP16 variant, TensorRT engine,
Triton model repository), with parity checks; static graphs also get the TensorRT readiness check."""

from __future__ import annotations

from pathlib import Path

import click
import onnx

from det_toolkit import __version__
from det_toolkit.export.embedder import export_embedder, export_embedder_int8_for
from det_toolkit.export.fp16 import FP16_CONF, FP16_MIN_MATCH, FP16_SCORE_TOL
from det_toolkit.export.int8 import INT8_CALIB_IMAGES, INT8_MIN_MATCH, SCOPES
from det_toolkit.export.onnx_export import export_onnx
from det_toolkit.export.parity import ParityError, default_parity_images, load_images
from det_toolkit.export.quantize import CALIB_METHODS
from det_toolkit.export.trt_check import DEFAULT_TRT_VERSION
from det_toolkit.runtime.device import DEVICE
from det_toolkit.runtime.embedder import EMBEDDER_FILENAME, EMBEDDER_INT8_FILENAME


def _mib(path: Path) -> str:
    return f"{path.stat().st_size / 2**20:.1f} MiB"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="det-export")
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
@click.option("--device", default="cpu", type=DEVICE, show_default=True,
              help="Parity: where PyTorch and ONNX Runtime run the check (tracing is always on the CPU; "
                   "the --fp16 check runs on the CPU).")
@click.option("--embedder/--no-embedder", default=True, show_default=True,
              help=f"Also write the Deep SORT appearance embedder ({EMBEDDER_FILENAME}) beside the detector; "
                   f"with --int8, its INT8 variant too ({EMBEDDER_INT8_FILENAME}, calibrated on the detector's "
                   "boxes in the calibration images).")
@click.option("--imgsz", type=int, nargs=2, metavar="H W", default=None,
              show_default="the checkpoint's imgsz", help="Input size in pixels (height width).")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="Static graph batch size N (implies --static).")
@click.option("--static", "static", is_flag=True, default=False,
              help="Static TensorRT-ready graph: fixed [N,3,H,W] input, outputs padded to max_det "
                   "(boxes [N,K,4], scores [N,K], labels [N,K], num_dets [N]). Default: the dynamic "
                   "single-image graph for ONNX Runtime.")
@click.option("--fp16", is_flag=True, default=False,
              help="Also write <name>_fp16.onnx from the static graph (implies --static; fp32 I/O, fragile "
                   "nodes fp32), checked against the fp32 graph (--fp16-min-match); with --trt, an FP16 engine.")
@click.option("--fp16-min-match", type=click.FloatRange(0.0, 1.0), default=FP16_MIN_MATCH, show_default=True,
              help="--fp16: minimum share of fp32 boxes the fp16 graph must reproduce.")
@click.option("--fp16-conf", type=click.FloatRange(0.0, 1.0), default=FP16_CONF, show_default=True,
              help="--fp16: compare boxes scoring at least this (det-run's default --conf; 0 = all).")
@click.option("--fp16-score-tol", type=click.FloatRange(min=0.0), default=FP16_SCORE_TOL, show_default=True,
              help="--fp16: maximum score difference of a matched fp16 box (see export/fp16.py).")
@click.option("--trt", is_flag=True, default=False,
              help="Build a TensorRT engine (<name>.engine + .engine.json) from the static graph "
                   "(needs an NVIDIA GPU, tensorrt and cuda-python).")
@click.option("--int8", is_flag=True, default=False,
              help="Also write <name>_int8.onnx (QDQ, calibrated; dense layers INT8, fragile nodes fp32) from the "
                   "graph exported, checked against it (--int8-min-match); with --trt, an INT8 engine from it.")
@click.option("--calib-images", type=click.IntRange(min=1), default=INT8_CALIB_IMAGES, show_default=True,
              help="--int8: training images of the checkpoint's dataset calibrating the activation ranges.")
@click.option("--calib", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="--int8: calibrate on every image of this folder instead.")
@click.option("--calib-method", type=click.Choice(["auto", *sorted(CALIB_METHODS)]), default="auto",
              show_default=True,
              help="--int8: activation range calibration; auto: percentile for the box_head scope of a static "
                   "graph, minmax otherwise (docs/design/int8.md).")
@click.option("--int8-scope", type=click.Choice(["auto", *SCOPES]), default="auto", show_default=True,
              help="--int8: layers quantized (box_head < heads < dense < dense_pool, see docs/export.md); "
                   "auto: dense, then box_head, the first that passes --int8-min-match.")
@click.option("--int8-min-match", type=click.FloatRange(0.0, 1.0), default=INT8_MIN_MATCH, show_default=True,
              help="--int8: minimum share of fp32 boxes the INT8 graph must reproduce.")
@click.option("--workspace", type=click.FloatRange(min=0.25), default=4.0, show_default=True,
              help="--trt: builder workspace limit in GiB.")
@click.option("--trt-version", default=DEFAULT_TRT_VERSION, show_default=True,
              help="TensorRT version whose supported-operator list the readiness check uses.")
@click.option("--triton", type=click.Path(path_type=Path), default=None, metavar="REPO_DIR",
              help="Also write a Triton Inference Server model repository: REPO_DIR/<name>/config.pbtxt, "
                   "labels.txt, <version>/model.onnx (model.plan with --trt); see docs/export.md.")
@click.option("--triton-name", default=None, show_default="the run name of <run>/weights/best.pt, else the stem",
              help="--triton: model name (letters, digits, _ . -).")
@click.option("--triton-version", type=click.IntRange(min=1), default=None, show_default="1",
              help="--triton: version folder to add; an existing one is refused.")
@click.option("--triton-max-batch", type=click.IntRange(min=1), default=None, show_default="the graph's --batch N",
              help="--triton: max_batch_size of a static ONNX graph (at most N).")
def main(weights: Path, output: Path | None, opset: int, simplify: bool, parity_images: str | None,
         iou_thr: float, score_tol: float, device: str, embedder: bool, imgsz: tuple[int, int] | None,
         batch: int | None, static: bool, fp16: bool, fp16_min_match: float, fp16_conf: float,
         fp16_score_tol: float, trt: bool, int8: bool, calib_images: int, calib: Path | None,
         calib_method: str, int8_scope: str, int8_min_match: float, workspace: float, trt_version: str,
         triton: Path | None, triton_name: str | None,
         triton_version: int | None, triton_max_batch: int | None) -> None:
    """Export checkpoint WEIGHTS (.pt) to a self-describing ONNX detector.

    The graph is compared with the PyTorch model on real images; the export fails (exit 1, nothing
    written) if the detections differ. --batch/--static/--trt write the static graph and check that
    TensorRT can build it (operator list, static shapes, TopK K and NMS box limits).
    """
    static = static or batch is not None or trt or fp16  # FP16 is made from the static graph
    if int8 and trt and fp16:
        raise click.UsageError("--trt: choose one engine precision, --fp16 or --int8 (the INT8 engine is "
                               "built from the Q/DQ graph, whose float layers stay fp32)")
    if triton is None and (triton_name, triton_version, triton_max_batch) != (None, None, None):
        raise click.UsageError("--triton-name/--triton-version/--triton-max-batch need --triton REPO_DIR")
    try:
        target = None
        if triton is not None:  # a malformed --triton request fails before any work
            from det_toolkit.export.triton import plan_repository

            target = plan_repository(triton, weights, name=triton_name, version=triton_version, static=static,
                                     batch=batch or 1, trt=trt, max_batch=triton_max_batch)
        if trt:  # fail before any work when TensorRT cannot run here
            from det_toolkit.export.trt_build import require_tensorrt

            require_tensorrt()
        if device != "cpu":  # an unavailable device fails before the tracing work, not after it
            from det_toolkit.runtime.backends.onnx_backend import providers_for
            from det_toolkit.runtime.backends.torch_backend import torch_device

            torch_device(device)
            providers_for(device)
        images = load_images(parity_images) if parity_images else None
        calib_set = None
        if int8:  # calibration images are found before the export work, not after it
            from det_toolkit.export.int8 import calibration_images
            from det_toolkit.train.checkpoint import load_checkpoint

            calib_set = calibration_images(load_checkpoint(weights), calib_images, calib, echo=click.echo)
        onnx_path = export_onnx(weights, output, opset=opset, simplify=simplify, imgsz=imgsz,
                                static=static, batch=batch or 1, trt_version=trt_version,
                                parity_images=images, iou_thr=iou_thr, score_tol=score_tol,
                                echo=click.echo, device=device)
        fp16_path = None
        if fp16:
            from det_toolkit.export.fp16 import export_fp16
            from det_toolkit.train.checkpoint import load_checkpoint

            imgs = images if images is not None else default_parity_images(load_checkpoint(weights), echo=click.echo)
            fp16_path, _ = export_fp16(onnx_path, images=imgs, iou_thr=iou_thr, score_tol=fp16_score_tol,
                                       conf=fp16_conf, min_match=fp16_min_match, echo=click.echo)
        int8_path = None
        if calib_set is not None:
            from det_toolkit.export.int8 import export_int8
            from det_toolkit.train.checkpoint import load_checkpoint

            imgs = images if images is not None else default_parity_images(load_checkpoint(weights), echo=click.echo)
            int8_path, _ = export_int8(onnx_path, calib_images=calib_set[0], calib_source=calib_set[1],
                                       parity_images=imgs, scope=int8_scope, method=calib_method,
                                       target="tensorrt" if trt else "cpu", min_match=int8_min_match,
                                       echo=click.echo)
        emb_path = export_embedder(onnx_path.parent / EMBEDDER_FILENAME, opset=opset,
                                   echo=click.echo) if embedder else None
        emb_int8_path = None
        if emb_path is not None and calib_set is not None:  # None (after a note) when it cannot be made
            emb_int8_path = export_embedder_int8_for(onnx_path, emb_path, emb_path.parent / EMBEDDER_INT8_FILENAME,
                                                     calib_set[0], "minmax" if calib_method == "auto" else calib_method,
                                                     calib_set[1], echo=click.echo)
        engine = None
        if trt:
            engine = _build(onnx_path, fp16_path, fp16, int8_path, workspace)
        if target is not None:
            from det_toolkit.export.triton import export_repository
            from det_toolkit.train.checkpoint import load_checkpoint

            checked = target.max_batch_size > 0  # the batchable wrapper is checked on images
            triton_images = (images if images is not None or not checked else
                             default_parity_images(load_checkpoint(weights), n=batch or 1, echo=click.echo))
            export_repository(target, onnx_path, engine, triton_images, echo=click.echo)
    except (FileNotFoundError, ValueError, ParityError, ImportError, RuntimeError) as e:
        # CheckpointError, MetadataError: ValueError; TrtBuildError: RuntimeError
        raise click.ClickException(str(e)) from e
    graph_opset = next((o.version for o in onnx.load(str(onnx_path), load_external_data=False).opset_import
                        if o.domain in ("", "ai.onnx")), opset)  # TOOD raises it to 19
    click.echo(f"detector: {onnx_path} ({_mib(onnx_path)}, opset {graph_opset})")
    if fp16_path is not None:
        click.echo(f"fp16: {fp16_path} ({_mib(fp16_path)})")
    if int8_path is not None:
        click.echo(f"int8: {int8_path} ({_mib(int8_path)})")
    if emb_path is not None:
        click.echo(f"embedder: {emb_path} ({_mib(emb_path)}, opset {opset})")
    if emb_int8_path is not None:
        click.echo(f"embedder int8: {emb_int8_path} ({_mib(emb_int8_path)})")
    if engine is not None:
        click.echo(f"engine: {engine} ({_mib(engine)})")


def _build(onnx_path: Path, fp16_path: Path | None, fp16: bool, int8_path: Path | None,
           workspace: float) -> Path:
    """Build the engine: INT8 from the Q/DQ graph (explicit quantization, strongly typed); FP16 from
    the FP16 ONNX on TensorRT >= 11 (strongly typed), with the FP16 flag on 10.x; else FP32."""
    from det_toolkit.export.trt_build import build_engine, import_tensorrt, trt_major

    if int8_path is not None:
        return build_engine(int8_path, onnx_path.with_suffix(".engine"), int8=True, workspace_gib=workspace,
                            echo=click.echo)
    src = fp16_path if (fp16 and fp16_path is not None and trt_major(import_tensorrt()) >= 11) else onnx_path
    return build_engine(src, onnx_path.with_suffix(".engine"), fp16=fp16, workspace_gib=workspace,
                        echo=click.echo)


if __name__ == "__main__":
    main()
