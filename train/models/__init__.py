"""Model builders: one file per model, listed in the explicit :data:`MODELS` dict.

Each builder is ``build(num_classes, weights="auto", trainable_layers=3, **kwargs) -> nn.Module``
returning a torchvision-style detector for ``num_classes + 1`` classes (background 0);
:func:`build_model` wraps it in :class:`det_toolkit.train.models.common.Detector`.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn
from torchvision.ops.misc import FrozenBatchNorm2d

from det_toolkit.train.models import (
    fasterrcnn_convnext_tiny,
    fasterrcnn_efficientnet_b0,
    fasterrcnn_mini_darknet,
    fasterrcnn_mini_darknet_nano_head,
    fasterrcnn_mobilenet_v2_fpn,
    fasterrcnn_mobilenet_v3_large_320_fpn,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_mobilenet_v3_small_nano_head,
    fasterrcnn_resnet18_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
    fasterrcnn_resnet101_fpn,
    fasterrcnn_squeezenet1_1,
    tood_mobilenet_v2,
    tood_resnet50,
    tood_resnet101_dcn,
)
from det_toolkit.train.models.common import Detector
from det_toolkit.train.models.extras import add_cbam

MODELS: dict[str, Callable[..., nn.Module]] = {
    "fasterrcnn_mini_darknet": fasterrcnn_mini_darknet.build,
    "fasterrcnn_mini_darknet_nano_head": fasterrcnn_mini_darknet_nano_head.build,
    "fasterrcnn_mobilenet_v2_fpn": fasterrcnn_mobilenet_v2_fpn.build,
    "fasterrcnn_mobilenet_v3_large_320_fpn": fasterrcnn_mobilenet_v3_large_320_fpn.build,
    "fasterrcnn_mobilenet_v3_large_fpn": fasterrcnn_mobilenet_v3_large_fpn.build,
    "fasterrcnn_resnet50_fpn": fasterrcnn_resnet50_fpn.build,
    "fasterrcnn_resnet50_fpn_v2": fasterrcnn_resnet50_fpn_v2.build,
    "fasterrcnn_resnet18_fpn": fasterrcnn_resnet18_fpn.build,
    "fasterrcnn_resnet101_fpn": fasterrcnn_resnet101_fpn.build,
    "fasterrcnn_mobilenet_v3_small_nano_head": fasterrcnn_mobilenet_v3_small_nano_head.build,
    "fasterrcnn_efficientnet_b0": fasterrcnn_efficientnet_b0.build,
    "fasterrcnn_convnext_tiny": fasterrcnn_convnext_tiny.build,
    "fasterrcnn_squeezenet1_1": fasterrcnn_squeezenet1_1.build,
    "tood_mobilenet_v2": tood_mobilenet_v2.build,
    "tood_resnet50": tood_resnet50.build,
    "tood_resnet101_dcn": tood_resnet101_dcn.build,
}
DEFAULT_MODEL = "fasterrcnn_mobilenet_v2_fpn"


def check_model_name(name: str) -> str:
    """Return ``name`` if it is a known model, else raise ``ValueError`` suggesting the nearest."""
    if name not in MODELS:
        near = difflib.get_close_matches(name, MODELS, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"unknown model '{name}'{hint} Known: {', '.join(MODELS)}")
    return name


def builder_defaults(builder: Callable[..., nn.Module]) -> dict[str, Any]:
    """The keyword defaults of a builder's signature (``num_classes`` and ``weights`` excepted)."""
    return {k: p.default for k, p in inspect.signature(builder).parameters.items()
            if k not in ("num_classes", "weights") and p.default is not inspect.Parameter.empty}


def build_model(name: str, num_classes: int, weights: str | None = "auto",
                **kwargs: Any) -> Detector:
    """Build model ``name`` for ``num_classes`` object classes, wrapped in :class:`Detector`.

    Args:
        name: a key of :data:`MODELS`.
        num_classes: number of object classes (background excluded).
        weights: initial weights: ``"auto"`` (offline defaults), ``None`` or a local path.
        **kwargs: builder options (``trainable_layers``), ``FasterRCNN`` keyword arguments, and
            ``anchor_sizes``/``anchor_ratios`` (an RPN anchor layout, see :mod:`det_toolkit.train.anchors`),
            ``attention="cbam"`` (CBAM on each backbone output, :mod:`det_toolkit.train.models.extras`).

    Raises:
        ValueError: unknown ``name``.
        det_toolkit.train.models.weights.WeightsNotFoundError: ``weights`` is a missing path.
    """
    check_model_name(name)
    anchors = {k: kwargs.pop(k) for k in ("anchor_sizes", "anchor_ratios") if k in kwargs}
    attention = kwargs.pop("attention", None)
    builder = MODELS[name]
    model = builder(num_classes=num_classes, weights=weights, **kwargs)
    # the builder's own defaults too, so that a checkpoint rebuilds what was built after a default changes
    kwargs = {**builder_defaults(builder), **kwargs}
    if anchors:  # fitted by --anchors auto and recorded in the checkpoint
        from det_toolkit.train.anchors import set_anchors

        set_anchors(model, anchors["anchor_sizes"], anchors["anchor_ratios"])
        kwargs.update(anchors)
    if attention not in (None, "none"):
        if attention != "cbam":
            raise ValueError(f"unknown attention '{attention}' (none, cbam)")
        add_cbam(model)
        kwargs["attention"] = attention
    # record the structure actually built so a checkpoint rebuilds it without the weights file
    kwargs["frozen_bn"] = any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    return Detector(model, name=name, num_classes=num_classes, build_args=kwargs)
