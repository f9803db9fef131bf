"""The training/validation dataset: decoded, resized images (optionally cached in RAM) with
box-aware augmentation from ``torchvision.transforms.v2``.

Images are decoded with PIL (EXIF orientation applied; grayscale/palette/RGBA -> RGB) and resized so
the longest side is ``imgsz`` with :func:`det_toolkit.runtime.preprocess.resize_longest`, the same function the
runtime's letterbox uses, so validation sees frames exactly as ``det-run`` does.
"""

from __future__ import annotations

import difflib
import logging
import random
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from det_toolkit.runtime.draw import draw_boxes
from det_toolkit.runtime.meta import PAD_VALUE
from det_toolkit.runtime.preprocess import resize_longest
from det_toolkit.train.data.images import load_rgb
from det_toolkit.train.data.samples import Sample

log = logging.getLogger(__name__)

#: Augmentation presets. Keys: ``scale`` (longest-side jitter range relative to ``imgsz``, or
#: None), ``hflip``/``vflip``/``photometric``/``grayscale``/``mosaic`` (probabilities), ``rotate``
#: (max degrees of a random affine, 0 = off), ``noise`` (std of Gaussian noise on [0, 1] pixels,
#: applied with probability 0.5; 0 = off).
AUG_KEYS = ("scale", "hflip", "vflip", "rotate", "photometric", "noise", "grayscale", "mosaic")
AUG_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"scale": None, "hflip": 0.0, "vflip": 0.0, "rotate": 0.0, "photometric": 0.0,
             "noise": 0.0, "grayscale": 0.0, "mosaic": 0.0},
    "light": {"scale": (0.6, 1.0), "hflip": 0.5, "vflip": 0.0, "rotate": 0.0, "photometric": 0.0,
              "noise": 0.0, "grayscale": 0.0, "mosaic": 0.0},
    "default": {"scale": (0.5, 1.0), "hflip": 0.5, "vflip": 0.0, "rotate": 0.0, "photometric": 0.5,
                "noise": 0.0, "grayscale": 0.0, "mosaic": 0.0},
    "strong": {"scale": (0.4, 1.0), "hflip": 0.5, "vflip": 0.1, "rotate": 10.0, "photometric": 0.8,
               "noise": 0.03, "grayscale": 0.1, "mosaic": 0.5},
}


def aug_params(preset: str, overrides: str = "") -> dict[str, Any]:
    """Preset ``preset`` with ``overrides`` such as ``"mosaic=0.3,rotate=5,scale=0.5:1.2"``.

    Raises:
        ValueError: unknown preset or key (the nearest key is suggested) or a malformed value.
    """
    if preset not in AUG_PRESETS:
        raise ValueError(f"unknown augmentation preset '{preset}' (one of {', '.join(AUG_PRESETS)})")
    p = dict(AUG_PRESETS[preset])
    for item in (t.strip() for t in overrides.split(",") if t.strip()):
        key, _, val = item.partition("=")
        key = key.strip()
        if key not in AUG_KEYS:
            near = difflib.get_close_matches(key, AUG_KEYS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f" (keys: {', '.join(AUG_KEYS)})"
            raise ValueError(f"unknown augmentation key '{key}'{hint}")
        try:
            if key == "scale":
                p[key] = None if val in ("", "none", "0") else tuple(float(v) for v in val.split(":"))
                if p[key] is not None and len(p[key]) != 2:
                    raise ValueError
            else:
                p[key] = float(val)
        except ValueError as e:
            raise ValueError(f"bad augmentation value '{item}' (e.g. scale=0.5:1.0, mosaic=0.5)") from e
    return p


def build_transforms(p: dict[str, Any], imgsz: int) -> v2.Compose | None:
    """The ``torchvision.transforms.v2`` pipeline for augmentation parameters ``p``
    (:func:`aug_params`); ``None`` when nothing is enabled.

    Inputs are ``tv_tensors.Image`` uint8 ``[3, H, W]`` at longest side ``<= imgsz`` and
    ``tv_tensors.BoundingBoxes`` ``XYXY``; boxes follow every geometric op (a rotated box becomes
    the enclosing axis-aligned box) and are clamped and sanitized at the end (degenerate boxes
    removed together with their labels).
    """
    ops: list[Any] = []
    if p["photometric"]:
        ops.append(v2.RandomPhotometricDistort(p=p["photometric"]))
    if p["grayscale"]:
        ops.append(v2.RandomGrayscale(p["grayscale"]))
    if p["hflip"]:
        ops.append(v2.RandomHorizontalFlip(p["hflip"]))
    if p["vflip"]:
        ops.append(v2.RandomVerticalFlip(p["vflip"]))
    if p["rotate"]:
        ops.append(v2.RandomAffine(degrees=p["rotate"], fill=list(PAD_VALUE)))
    if p["scale"]:
        ops.append(v2.ScaleJitter((imgsz, imgsz), scale_range=tuple(p["scale"])))
    if p["noise"]:
        ops += [v2.ToDtype(torch.float32, scale=True),
                v2.RandomApply([v2.GaussianNoise(sigma=p["noise"])], p=0.5),
                v2.ToDtype(torch.uint8, scale=True)]
    if not ops:
        return None
    ops += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0)]
    return v2.Compose(ops)


def mosaic(items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], imgsz: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combine 4 images into one ``imgsz x imgsz`` canvas (Bochkovskiy et al. 2020, YOLOv4).

    Args:
        items: 4 ``(image uint8 [H, W, 3], boxes float32 [M, 4] xyxy px, labels int64 [M])``.
        imgsz: canvas side in pixels.

    Returns:
        ``(canvas uint8 [imgsz, imgsz, 3], boxes float32 [K, 4] xyxy px, labels int64 [K])``; each
        image is scaled to fit its quadrant around a random centre and placed against the centre;
        boxes follow (and are clipped to their quadrant).
    """
    canvas = np.empty((imgsz, imgsz, 3), dtype=np.uint8)
    canvas[:] = PAD_VALUE
    cx, cy = (int(random.uniform(0.3, 0.7) * imgsz) for _ in range(2))
    cells = [(0, 0, cx, cy), (cx, 0, imgsz, cy), (0, cy, cx, imgsz), (cx, cy, imgsz, imgsz)]
    all_boxes, all_labels = [], []
    for (img, boxes, labels), (x1, y1, x2, y2) in zip(items, cells):
        cw, ch = x2 - x1, y2 - y1
        h, w = img.shape[:2]
        s = min(cw / w, ch / h)
        nw, nh = max(1, int(w * s)), max(1, int(h * s))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        ox = x2 - nw if x1 == 0 else x1  # push towards the centre
        oy = y2 - nh if y1 == 0 else y1
        canvas[oy:oy + nh, ox:ox + nw] = img
        b = boxes * s + np.array([ox, oy, ox, oy], dtype=np.float32)
        all_boxes.append(b)
        all_labels.append(labels)
    return (canvas, np.concatenate(all_boxes).astype(np.float32).reshape(-1, 4),
            np.concatenate(all_labels).astype(np.int64))


def cached_bytes(sample: Sample, imgsz: int) -> int:
    """Bytes one sample takes in the cache: uint8 RGB with its longest side resized to ``imgsz``
    (:func:`det_toolkit.runtime.preprocess.resize_longest`), from the size its reader recorded."""
    scale = imgsz / max(sample.width, sample.height, 1)
    return max(1, round(sample.height * scale)) * max(1, round(sample.width * scale)) * 3


def cache_mib_needed(samples: list[Sample], imgsz: int) -> float:
    """MiB the whole cache of ``samples`` at ``imgsz`` would take (decoding nothing)."""
    return sum(cached_bytes(s, imgsz) for s in samples) / 2**20


def cache_fits(samples: list[Sample], imgsz: int, budget_mib: float | None) -> int:
    """How many leading ``samples`` fit a cache of ``budget_mib`` MiB (``None``: all)."""
    if budget_mib is None:
        return len(samples)
    total, budget = 0, budget_mib * 2**20
    for n, s in enumerate(samples):
        total += cached_bytes(s, imgsz)
        if total > budget:
            return n
    return len(samples)


def available_mib() -> float | None:
    """Memory available to new allocations (Linux ``MemAvailable``) in MiB; ``None`` if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class DetectionDataset(Dataset):
    """Samples -> ``(image float32 [3, H, W] in [0, 1], target)`` with longest side ``<= imgsz``.

    ``target``: ``boxes`` float32 ``[M, 4]`` ``xyxy`` pixels of the returned image, ``labels`` int64
    ``[M]`` 0-based, ``image_id`` int, ``scale`` float (returned px per original px before
    augmentation), ``index`` int. Crowd/difficult boxes are dropped for training
    (``train=True``) and kept for evaluation through the samples themselves.

    An image that fails to decode is reported once and yields ``None``; :func:`collate` drops it, so
    a corrupt file never ends an epoch.

    Args:
        samples: from :func:`det_toolkit.train.data.formats.read_split`.
        imgsz: longest side in pixels.
        aug: a key of :data:`AUG_PRESETS` (``"none"`` for validation) or :func:`aug_params` output;
            mosaic (training only) combines the item with 3 random others before the transforms.
        cache: decode and resize images once, up front, into RAM (threads), as many as fit
            ``cache_mib``; the rest are read from disk every epoch.
        cache_mib: RAM budget of the cache in MiB (the estimate of :func:`cache_mib_needed`, taken
            in sample order); ``None``: no limit.

    Attributes:
        cached: how many images are held in RAM.
    """

    def __init__(self, samples: list[Sample], imgsz: int, aug: str | dict[str, Any] = "none",
                 cache: bool = True, train: bool = False, cache_mib: float | None = None) -> None:
        self.samples = samples
        self.imgsz = imgsz
        self.train = train
        self.aug = aug_params(aug) if isinstance(aug, str) else dict(aug)
        self.transforms = build_transforms(self.aug, imgsz)
        self.bad: set[int] = set()
        self._cache: list[tuple[np.ndarray, float] | None] | None = None
        self.cached = cache_fits(samples, imgsz, cache_mib) if cache else 0
        if self.cached:
            with ThreadPoolExecutor(4) as ex:
                self._cache = list(ex.map(self._load, range(self.cached)))

    def _load(self, i: int) -> tuple[np.ndarray, float] | None:
        try:
            return resize_longest(load_rgb(str(self.samples[i].image)), self.imgsz)
        except (OSError, ValueError, SyntaxError) as e:  # PIL raises these for corrupt files
            if i not in self.bad:
                self.bad.add(i)
                log.warning("%s: unreadable image (%s), skipped", self.samples[i].image, e)
            return None

    def readable(self, i: int) -> bool:
        """Whether image ``i`` decodes: known for a cached image, decoded now for another (an
        undecodable one joins :attr:`bad`, with its warning). Consumes no random numbers."""
        return (self._cache[i] if i < self.cached else self._load(i)) is not None  # type: ignore[index]

    def _item(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, float] | None:
        """``(image uint8 [H, W, 3], boxes float32 [M, 4] xyxy px of it, labels, scale)``."""
        item = self._cache[i] if i < self.cached else self._load(i)  # type: ignore[index]
        if item is None:
            return None
        img, scale = item
        s = self.samples[i]
        keep = ~s.iscrowd if self.train else np.ones(len(s.boxes), dtype=bool)
        return img, s.boxes[keep] * scale, s.labels[keep], scale

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        item = self._item(i)
        if item is None:
            return None
        img, boxes, labels, scale = item
        if self.train and self.aug["mosaic"] and random.random() < self.aug["mosaic"]:
            others = [self._item(random.randrange(len(self))) for _ in range(3)]
            if all(o is not None for o in others):
                img, boxes, labels = mosaic([(img, boxes, labels)] + [o[:3] for o in others],
                                            self.imgsz)
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
        boxes_t, labels_t = torch.from_numpy(np.asarray(boxes, np.float32)), torch.from_numpy(labels)
        if self.transforms is not None:
            bb = tv_tensors.BoundingBoxes(boxes_t, format="XYXY", canvas_size=image.shape[-2:])
            image, out = self.transforms(image, {"boxes": bb, "labels": labels_t})
            boxes_t, labels_t = out["boxes"].as_subclass(torch.Tensor), out["labels"]
        target = {"boxes": boxes_t.float().reshape(-1, 4), "labels": labels_t.long(),
                  "image_id": self.samples[i].image_id, "scale": scale, "index": i}
        return image.as_subclass(torch.Tensor).float().div_(255.0), target


def draw_sample(image: torch.Tensor, target: dict[str, Any], class_names: list[str]) -> np.ndarray:
    """Render a dataset item (``image`` float32 ``[3, H, W]`` RGB in [0, 1], ``target`` of
    :class:`DetectionDataset`) with its boxes and class names (:func:`det_toolkit.runtime.draw.draw_boxes`),
    as a new BGR ``uint8 [H, W, 3]`` image."""
    img = cv2.cvtColor((image.permute(1, 2, 0).numpy() * 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
    draw_boxes(img, target["boxes"].numpy(), target["labels"].numpy(), class_names)
    return img


def collate(batch: list[Any]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """Batch as lists (images differ in size); drops ``None`` items from unreadable images."""
    batch = [b for b in batch if b is not None]
    return [b[0] for b in batch], [b[1] for b in batch]
