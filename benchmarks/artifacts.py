"""Deterministic test/benchmark artifacts: a randomly initialised detector exported to ONNX.

Needs torch (it builds and exports models); the runtime under test does not. The detector is a
Faster R-CNN head on the ImageNet MobileNetV2 backbone with a random head (``torch.manual_seed``),
so its boxes are arbitrary but reproducible. It keeps the former default layout (``pyramid="c5"``:
two stride-32 maps, small and fast, pooled by the separable/folded RoI pooling the export tests check).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def cached_detector(imgsz: int = 256, max_det: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """:func:`make_detector` into a per-user cache folder under the temp dir, reused by later calls
    (test modules share one export instead of repeating it; files are written atomically). The
    folder name carries :func:`code_fingerprint`, so a code change never reuses a stale export.

    Returns:
        ``(det.pt, det.onnx)`` paths.
    """
    import getpass
    import tempfile

    folder = (Path(tempfile.gettempdir()) / f"det_toolkit_{getpass.getuser()}" /
              f"det_{imgsz}_{max_det}_{seed}_{code_fingerprint()}")
    if (folder / "det.pt").is_file() and (folder / "det.onnx").is_file():
        return folder / "det.pt", folder / "det.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    return make_detector(folder, imgsz, max_det, seed)


def code_fingerprint() -> str:
    """A short hash of the sources that shape an exported artifact (export/, the model builders,
    checkpoints and the metadata contract) and of the torch version, so a cached artifact is never
    reused after any of them changes."""
    import hashlib

    import torch

    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256(str(torch.__version__).encode())
    files = [*sorted((root / "export").glob("*.py")), *sorted((root / "train" / "models").rglob("*.py")),
             root / "train" / "checkpoint.py", root / "runtime" / "meta.py"]
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def make_detector(out: Path, imgsz: int = 256, max_det: int = 8, seed: int = 0,
                  parity_image: np.ndarray | None = None) -> tuple[Path, Path]:
    """Write ``out/det.pt`` and its batch-1 ONNX export ``out/det.onnx`` (dynamic H/W).

    Args:
        out: existing folder.
        imgsz: square letterbox size in pixels recorded in the metadata.
        max_det: detections per image the graph returns at most.
        seed: torch seed of the random head.
        parity_image: uint8 BGR image for the export's parity check (default: noise).

    Returns:
        ``(det.pt, det.onnx)`` paths.
    """
    import torch

    from det_toolkit.export.onnx_export import export_onnx
    from det_toolkit.train.checkpoint import make_checkpoint, save_atomic
    from det_toolkit.train.models import build_model

    torch.manual_seed(seed)
    det = build_model("fasterrcnn_mobilenet_v2_fpn", 1, weights="auto", box_score_thresh=0.0,
                      box_detections_per_img=max_det, pyramid="c5")
    save_atomic(make_checkpoint(det, ["person"], imgsz), out / "det.pt")
    if parity_image is None:
        parity_image = np.random.default_rng(seed).integers(0, 255, (imgsz, imgsz, 3), np.uint8)
    export_onnx(out / "det.pt", out / "det.onnx", simplify=False, parity_images=[parity_image],
                echo=lambda _: None)
    return out / "det.pt", out / "det.onnx"


def export_batched(ckpt: Path, batch: int, out: Path, parity_images: list[np.ndarray] | None = None) -> Path:
    """Export ``ckpt`` as det-export's static fixed-batch graph (``det-export --imgsz H W --batch N``).

    Input ``images`` float32 ``[batch, 3, H, W]`` (``H, W`` = the checkpoint's imgsz, fixed);
    outputs ``boxes`` float32 ``[batch, max_det, 4]``, ``scores`` float32 ``[batch, max_det]``,
    ``labels`` int64 ``[batch, max_det]`` (zero-padded past ``num_dets``), ``num_dets`` int64
    ``[batch]`` (:mod:`det_toolkit.export.static_graph`); parity with PyTorch is checked on ``parity_images``
    (default: noise), the TensorRT readiness check must pass.

    Returns:
        ``out``.
    """
    from det_toolkit.export.onnx_export import export_onnx

    if parity_images is None:
        parity_images = [np.random.default_rng(i).integers(0, 255, (480, 640, 3), np.uint8) for i in range(2)]
    return export_onnx(ckpt, out, static=True, batch=batch, parity_images=parity_images, echo=lambda _: None)
