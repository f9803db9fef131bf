"""det-toolkit runtime: run exported detectors on images, folders and video.

This package is the edge side of the toolkit. It must import no ``torch`` except inside
:mod:`runtime.backends.torch_backend`, so a box that only runs ONNX or TensorRT artifacts needs
no training stack.
"""

__version__ = "0.1.0"
