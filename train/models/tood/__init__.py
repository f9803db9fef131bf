"""TOOD (Feng et al., ICCV 2021): ResNet/MobileNetV2 + FPN P3-P7 + task-aligned head.

Modules: :mod:`.backbone` (ResNet with DCNv2, MobileNetV2, FPN), :mod:`.head` (T-Head),
:mod:`.assigners` (ATSS, task-aligned), :mod:`.losses` (QFL, focal, GIoU), :mod:`.model` (:class:`TOOD`).
The builders are ``train/models/tood_*.py``.
"""

from det_toolkit.train.models.tood.model import TOOD

__all__ = ["TOOD"]
