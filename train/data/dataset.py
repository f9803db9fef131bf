"""The training/validation dataset: decoded, resized images (optionally cached in RAM) with
box-aware augmentation from ``torchvision.transforms.v2``.

Images are decoded with PIL (EXIF orientation applied; grayscale/palette/RGBA -> RGB) and resized so
the longest side is ``imgsz`` with :func:`runtime.preprocess.resize_longest`, the same function the
runtime's letterbox uses, so validation sees frames exactly as ``det-run`` does.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from runtime.preprocess import resize_longest
from train.data.formats import Sample

log = logging.getLogger(__name__)

#: augmentation presets: scale-jitter range of the longest side (relative to ``imgsz``), flip prob.
AUG_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"scale": None, "hflip": 0.0, "photometric": 0.0},
    "light": {"scale": (0.6, 1.0), "hflip": 0.5, "photometric": 0.0},
    "default": {"scale": (0.5, 1.0), "hflip": 0.5, "photometric": 0.5},
}


def load_rgb(path: str) -> np.ndarray:
    """Decode an image as ``uint8 [H, W, 3]`` RGB with EXIF orientation applied.

    Raises:
        OSError / PIL.UnidentifiedImageError: unreadable or truncated file.
    """
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.array(im.convert("RGB"))  # writable: torch.from_numpy needs it


def build_transforms(aug: str, imgsz: int) -> v2.Compose | None:
    """The ``torchvision.transforms.v2`` pipeline for preset ``aug`` (``None`` for ``"none"``).

    Inputs are ``tv_tensors.Image`` uint8 ``[3, H, W]`` already at longest side ``imgsz`` and
    ``tv_tensors.BoundingBoxes`` ``XYXY``; boxes follow every geometric op and are sanitized
    (degenerate boxes removed together with their labels).
    """
    p = AUG_PRESETS[aug]
    ops: list[Any] = []
    if p["photometric"]:
        ops.append(v2.RandomPhotometricDistort(p=p["photometric"]))
    if p["hflip"]:
        ops.append(v2.RandomHorizontalFlip(p["hflip"]))
    if p["scale"]:
        ops.append(v2.ScaleJitter((imgsz, imgsz), scale_range=p["scale"]))
    if not ops:
        return None
    ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)]
    return v2.Compose(ops)


class DetectionDataset(Dataset):
    """Samples -> ``(image float32 [3, H, W] in [0, 1], target)`` with longest side ``<= imgsz``.

    ``target``: ``boxes`` float32 ``[M, 4]`` ``xyxy`` pixels of the returned image, ``labels`` int64
    ``[M]`` 0-based, ``image_id`` int, ``scale`` float (returned px per original px before
    augmentation), ``index`` int. Crowd/difficult boxes are dropped for training
    (``train=True``) and kept for evaluation through the samples themselves.

    An image that fails to decode is reported once and yields ``None``; :func:`collate` drops it, so
    a corrupt file never ends an epoch.

    Args:
        samples: from :func:`train.data.formats.read_split`.
        imgsz: longest side in pixels.
        aug: a key of :data:`AUG_PRESETS` (use ``"none"`` for validation).
        cache: decode and resize every image once, up front, into RAM (threads).
    """

    def __init__(self, samples: list[Sample], imgsz: int, aug: str = "none", cache: bool = True,
                 train: bool = False) -> None:
        self.samples = samples
        self.imgsz = imgsz
        self.train = train
        self.transforms = build_transforms(aug, imgsz)
        self.bad: set[int] = set()
        self._cache: list[tuple[np.ndarray, float] | None] | None = None
        if cache:
            with ThreadPoolExecutor(4) as ex:
                self._cache = list(ex.map(self._load, range(len(samples))))

    def _load(self, i: int) -> tuple[np.ndarray, float] | None:
        try:
            return resize_longest(load_rgb(str(self.samples[i].image)), self.imgsz)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for corrupt files
            if i not in self.bad:
                self.bad.add(i)
                log.warning("%s: unreadable image (%s), skipped", self.samples[i].image, e)
            return None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        item = self._cache[i] if self._cache is not None else self._load(i)
        if item is None:
            return None
        img, scale = item
        s = self.samples[i]
        keep = ~s.iscrowd if self.train else np.ones(len(s.boxes), dtype=bool)
        boxes = torch.from_numpy(s.boxes[keep] * scale)
        labels = torch.from_numpy(s.labels[keep])
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        if self.transforms is not None:
            bb = tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=image.shape[-2:])
            image, out = self.transforms(image, {"boxes": bb, "labels": labels})
            boxes, labels = out["boxes"].as_subclass(torch.Tensor), out["labels"]
        target = {"boxes": boxes.float().reshape(-1, 4), "labels": labels.long(),
                  "image_id": s.image_id, "scale": scale, "index": i}
        return image.as_subclass(torch.Tensor).float().div_(255.0), target


def collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Batch as lists (images differ in size); drops ``None`` items from unreadable images."""
    batch = [b for b in batch if b is not None]
    return [b[0] for b in batch], [b[1] for b in batch]
