"""TensorRT: clear failures without a GPU (always run) and real engine tests (``pytest -m gpu``).

The GPU tests build engines from the exported static ONNX with the TensorRT Python API, run them
through :class:`det_toolkit.runtime.backends.trt_backend.TrtBackend` on real raccoon photos and compare with
ONNX Runtime; on a machine without TensorRT/CUDA they skip with the reason (shown by ``-ra``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from det_toolkit.export.cli import main
from det_toolkit.export.onnx_export import export_onnx
from det_toolkit.export.parity import _compare, _inputs, load_images, onnx_detections
from det_toolkit.runtime.backends import BackendError, load_backend
from det_toolkit.runtime.backends.trt_backend import engine_meta_path
from det_toolkit.runtime.meta import ModelMeta
from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
from det_toolkit.train.models import build_model

RACCOON = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "raccoon"
GLOB = str(RACCOON / "images" / "raccoon-2[0-4].jpg")


def _trt_or_skip() -> None:
    """Skip unless tensorrt, cuda-python and a CUDA device are present (reason printed by -ra)."""
    from det_toolkit.export.trt_build import TrtBuildError, require_tensorrt

    try:
        require_tensorrt()
    except TrtBuildError as e:
        pytest.skip(f"needs an NVIDIA GPU with TensorRT and cuda-python: {str(e)[:160]}")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights="auto", box_score_thresh=0.05)
    return save_atomic(make_checkpoint(model, ["raccoon"], imgsz=320), tmp_path_factory.mktemp("trt") / "best.pt")


def test_trt_export_fails_at_once_without_tensorrt(ckpt: Path) -> None:
    from det_toolkit.export.trt_build import TrtBuildError, require_tensorrt

    try:
        require_tensorrt()
    except TrtBuildError:
        result = CliRunner().invoke(main, [str(ckpt), "--trt"])
        assert result.exit_code == 1 and "TensorRT is not available" in result.output
        assert "pip install" in result.output and "tracing" not in result.output  # no work done first
        assert not ckpt.with_suffix(".onnx").exists()
    else:
        pytest.skip("TensorRT is installed here: covered by the gpu tests")


def test_engine_needs_sidecar_and_tensorrt(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    with pytest.raises(FileNotFoundError, match="m.engine.json"):
        load_backend(engine, device="cuda")
    with pytest.raises(BackendError, match="CUDA only"):
        load_backend(engine, device="cpu")
    meta = ModelMeta(model="x", class_names=["raccoon"], imgsz=(256, 256), dynamic_hw=False, batch=2,
                     output_names=("boxes", "scores", "labels", "num_dets"),
                     extra={"tensorrt": "0.0.0", "gpu": "None"})
    engine_meta_path(engine).write_text(meta.to_json())
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(BackendError, match="tensorrt.*not installed.*pip install"):
            load_backend(engine, device="cuda")
    else:
        with pytest.raises(BackendError, match="built with TensorRT 0.0.0|CUDA error"):
            load_backend(engine, device="cuda")


@pytest.fixture(scope="module")
def static_onnx(ckpt: Path) -> Path:
    _trt_or_skip()
    images = load_images(GLOB)
    return export_onnx(ckpt, ckpt.with_name("static.onnx"), imgsz=(320, 320), static=True, batch=2,
                       parity_images=images)


def _compare_with_ort(engine: Path, onnx_path: Path, min_match: float) -> None:
    import onnxruntime as ort

    images = load_images(GLOB)
    backend = load_backend(engine, device="cuda")
    meta = backend.meta
    xs = _inputs(images, meta)
    got = backend.infer(np.concatenate(xs))
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = onnx_detections(sess, meta, xs)
    report = _compare(ref, got, meta, 0.9, 0.02, min_match)
    assert report.n_ref_boxes > 0 and report.passed, report.table()
    again = backend.infer(np.concatenate(xs[:1]))  # reused pinned buffers, padded batch
    np.testing.assert_allclose(again[0][0], got[0][0], atol=1e-3)


@pytest.mark.gpu
def test_fp32_engine_matches_onnxruntime(static_onnx: Path) -> None:
    from det_toolkit.export.trt_build import build_engine

    engine = build_engine(static_onnx, static_onnx.with_name("fp32.engine"), workspace_gib=2)
    side = json.loads(engine_meta_path(engine).read_text())
    assert side["extra"]["tensorrt"] and side["extra"]["gpu"] and side["batch"] == 2
    assert engine.with_name(engine.name + ".timing.cache").is_file()
    _compare_with_ort(engine, static_onnx, 0.99)


@pytest.mark.gpu
def test_fp16_engine_matches_onnxruntime(static_onnx: Path) -> None:
    from det_toolkit.export.fp16 import export_fp16
    from det_toolkit.export.trt_build import build_engine, import_tensorrt, trt_major

    src = static_onnx
    if trt_major(import_tensorrt()) >= 11:  # strongly typed: precision comes from the FP16 ONNX
        src, _ = export_fp16(static_onnx, images=load_images(GLOB), min_match=0.9)
    engine = build_engine(src, static_onnx.with_name("fp16.engine"), fp16=True, workspace_gib=2)
    _compare_with_ort(engine, static_onnx, 0.9)
