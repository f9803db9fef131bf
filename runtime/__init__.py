"""det-toolkit runtime: run exported detectors on images, folders, video and streams.

This package is the edge side of the toolkit (the base ``pip install det-toolkit``). It imports
no ``torch`` except inside :mod:`det_toolkit.runtime.backends.torch_backend`, so a box that only
runs ONNX or TensorRT artifacts needs no training stack.
"""
