"""det-toolkit: from a folder of labelled photos to a detector running on live video at the edge.

The installed import package. Its subpackages live in the repository's top-level folders
(``setup.cfg`` maps them with ``package_dir``):

- :mod:`det_toolkit.train` (``train/``): data readers, model builders, the training loop, COCO
  evaluation. Needs the ``[train]`` extra (PyTorch).
- :mod:`det_toolkit.export` (``export/``): checkpoints -> ONNX graphs and TensorRT engines. Needs
  the ``[export]`` extra.
- :mod:`det_toolkit.runtime` (``runtime/``): run artifacts on images, video and streams. The base
  install (no PyTorch).
- :mod:`det_toolkit.benchmarks` (``benchmarks/``): speed and accuracy benchmarks.

The Python API (:class:`Detector`, :func:`track`) is torch-free for ``.onnx`` artifacts and is
imported lazily, so ``import det_toolkit`` costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["Detector", "__version__", "track"]

if TYPE_CHECKING:  # pragma: no cover
    from det_toolkit.runtime.api import Detector, track


def __getattr__(name: str) -> Any:
    # Lazy: the API pulls in OpenCV and ONNX Runtime; `det_toolkit.__version__` must not.
    if name in ("Detector", "track"):
        from det_toolkit.runtime import api

        return getattr(api, name)
    raise AttributeError(f"module 'det_toolkit' has no attribute {name!r}")
