"""Reader for the Penn-Fudan pedestrian database, with a cross-check of its boxes against its masks.

Penn-Fudan (Liming Wang, Jianbo Shi, Gang Song, I-fan Shen, "Object Detection Combining Recognition
and Segmentation", ACCV 2007; the dataset of torchvision's detection fine-tuning tutorial) is laid out
as::

    PNGImages/<stem>.png          the photos
    Annotation/<stem>.txt         "PASCAL Annotation Version 1.00" text files, one per image
    PedMasks/<stem>_mask.png      instance masks: pixel value = object index (1, 2, ...), 0 = background
    train.txt, val.txt            image stems of each split (not in the authors' download: write them)

An annotation file holds lines such as::

    Image size (X x Y x C) : 559 x 536 x 3
    Objects with ground truth : 2 { "PASpersonWalking" "PASpersonWalking" }
    Bounding box for object 1 "PASpersonWalking" (Xmin, Ymin) - (Xmax, Ymax) : (160, 182) - (302, 431)

Boxes are 1-based inclusive pixel indices (top-left pixel ``(1, 1)``), read exactly as the Pascal VOC
reader reads VOC boxes (:func:`det_toolkit.train.data.voc.parse_voc`): ``[xmin - 1, ymin - 1, xmax,
ymax]``, continuous ``xyxy`` pixels. Every object (``PASpersonWalking``, ``PASpersonStanding``) is
class ``person``. Samples, validation (clipping, skipping) and the :class:`DataReport` are those of
:mod:`det_toolkit.train.data.samples`; problems name the file and the object
(``FudanPed00001.txt:object 2``) or the line (``FudanPed00001.txt:line 11``).

Mask cross-check: the torchvision tutorial derives each box from its mask instead of reading the
annotation. :func:`mask_boxes` computes those boxes (the tightest box around the pixels of each
instance, in the same continuous convention) and :class:`MaskCheck` compares them coordinate by
coordinate with the annotated boxes; differences over a tolerance are reported. torch-free.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from det_toolkit.train.config import ConfigError
from det_toolkit.train.data.samples import DataReport, Sample, at, make_sample, read_image_size

ANNOTATION_DIR = "Annotation"
IMAGE_DIR = "PNGImages"
MASK_DIR = "PedMasks"
#: the one class: every Penn-Fudan object is a pedestrian
CLASS_NAMES = ("person",)
#: split lists ``<root>/<split>.txt`` (image stems); both required
SPLITS = ("train", "val")
#: default tolerance of the mask cross-check, pixels (max absolute coordinate difference)
MASK_TOL = 3.0
#: the dataset's source and terms, for the header of converted datasets
CITATION = ("Penn-Fudan pedestrians: Liming Wang, Jianbo Shi, Gang Song, I-fan Shen, \"Object Detection Combining "
            "Recognition and Segmentation\", ACCV 2007.\nCopyright stays with the authors; for research only: do "
            "not redistribute (the authors' download: https://www.cis.upenn.edu/~jshi/ped_html/).")

_NUM = r"\s*(-?\d+(?:\.\d*)?)\s*"
_BOX = re.compile(rf'^Bounding box for object\s+(\d+)\s+"([^"]*)"\s*\(Xmin, Ymin\)\s*-\s*\(Xmax, Ymax\)\s*:'
                  rf"\s*\({_NUM},{_NUM}\)\s*-\s*\({_NUM},{_NUM}\)\s*$")
_SIZE = re.compile(r"^Image size \(X x Y x C\)\s*:\s*(\d+)\s*x\s*(\d+)")
_COUNT = re.compile(r"^Objects with ground truth\s*:\s*(\d+)")
_FILENAME = re.compile(r'^Image filename\s*:\s*"([^"]*)"')


def is_pennfudan(root: Path) -> bool:
    """Whether ``root`` has Penn-Fudan's ``Annotation/``, ``PNGImages/`` and ``PedMasks/`` folders."""
    return all((root / d).is_dir() for d in (ANNOTATION_DIR, IMAGE_DIR, MASK_DIR))


def one_based_to_xyxy(xmin: float, ymin: float, xmax: float, ymax: float) -> list[float]:
    """1-based inclusive pixel indices ``(xmin, ymin, xmax, ymax)`` -> continuous ``xyxy`` pixels
    ``[xmin - 1, ymin - 1, xmax, ymax]``: the conversion of the VOC reader
    (:func:`det_toolkit.train.data.voc.parse_voc`, Detectron2's convention)."""
    return [xmin - 1, ymin - 1, xmax, ymax]


@dataclass
class PedAnnotation:
    """One parsed annotation file.

    Attributes:
        file: the ``.txt`` file.
        image_name: base name of the ``Image filename`` line (``None`` if absent).
        size: ``(width, height)`` of the ``Image size`` line (``None`` if absent).
        declared: the ``Objects with ground truth`` count (``None`` if absent).
        objects: ``(object index, label, xyxy)`` per parsed box line: the file's 1-based object index,
            its label (``PASpersonWalking``) and the box as continuous ``xyxy`` pixels
            (:func:`one_based_to_xyxy`), in file order.
        malformed: 1-based line numbers of ``Bounding box`` lines that do not parse.
    """

    file: Path
    image_name: str | None = None
    size: tuple[int, int] | None = None
    declared: int | None = None
    objects: list[tuple[int, str, list[float]]] = field(default_factory=list)
    malformed: list[int] = field(default_factory=list)


def parse_annotation(file: Path) -> PedAnnotation:
    """Parse a Penn-Fudan annotation file; lines other than the four kinds read here are ignored.

    Raises:
        OSError / UnicodeDecodeError: the file cannot be read.
    """
    ann = PedAnnotation(file)
    for lineno, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if line.startswith("Bounding box"):
            m = _BOX.match(line)
            if m is None:
                ann.malformed.append(lineno)
                continue
            xmin, ymin, xmax, ymax = (float(v) for v in m.group(3, 4, 5, 6))
            ann.objects.append((int(m.group(1)), m.group(2), one_based_to_xyxy(xmin, ymin, xmax, ymax)))
        elif m := _SIZE.match(line):
            ann.size = (int(m.group(1)), int(m.group(2)))
        elif m := _COUNT.match(line):
            ann.declared = int(m.group(1))
        elif m := _FILENAME.match(line):
            ann.image_name = Path(m.group(1)).name
    return ann


def mask_boxes(mask: np.ndarray) -> dict[int, list[float]]:
    """The box of every instance of an instance mask.

    Args:
        mask: integer ``[H, W]`` array, pixel value = instance id, 0 = background.

    Returns:
        instance id -> continuous ``xyxy`` pixels ``[x_min, y_min, x_max + 1, y_max + 1]`` over the
        pixel indices of that id (the tightest box holding its pixels; torchvision's
        ``masks_to_boxes`` gives ``[x_min, y_min, x_max, y_max]``, the last pixel's index). Ids
        without pixels are absent.
    """
    slices = ndimage.find_objects(np.asarray(mask, dtype=np.int64))
    return {i: [float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)]
            for i, sl in enumerate(slices, 1) if sl is not None}


@dataclass(frozen=True)
class MaskCheck:
    """One annotated box compared with the box of its instance in the mask.

    Attributes:
        annotation: the annotation file.
        index: the object's 1-based index in the file (= its pixel value in the mask).
        box: the annotated box, continuous ``xyxy`` pixels.
        mask_box: the mask instance's box (:func:`mask_boxes`), ``None`` if no pixel has this index.
    """

    annotation: Path
    index: int
    box: tuple[float, float, float, float]
    mask_box: tuple[float, float, float, float] | None

    @property
    def diff(self) -> float:
        """Largest absolute difference of the four coordinates, pixels (``inf`` without mask pixels)."""
        if self.mask_box is None:
            return math.inf
        return max(abs(a - b) for a, b in zip(self.box, self.mask_box))

    def describe(self) -> str:
        """One line: file, object index, both boxes and the difference."""
        if self.mask_box is None:
            return f"{self.annotation.name} object {self.index}: no mask pixels with value {self.index}"
        fmt = ", ".join
        return (f"{self.annotation.name} object {self.index}: annotation [{fmt(f'{v:g}' for v in self.box)}] "
                f"vs mask [{fmt(f'{v:g}' for v in self.mask_box)}]: {self.diff:g} px")


@dataclass
class PennFudanSplit:
    """One split read by :func:`read_pennfudan`.

    Attributes:
        samples: the usable images (boxes ``float32 [M, 4]`` xyxy, labels all 0 = ``person``).
        report: every problem, with its file (and object or line).
        checks: one :class:`MaskCheck` per annotated object whose mask could be read.
    """

    samples: list[Sample]
    report: DataReport
    checks: list[MaskCheck]


def split_stems(root: Path, split: str) -> list[str]:
    """The image stems listed in ``<root>/<split>.txt`` (blank lines and ``#`` comments skipped).

    Raises:
        ConfigError: the list file does not exist.
    """
    path = root / f"{split}.txt"
    if not path.is_file():
        raise ConfigError(f"{root}: Penn-Fudan split list {path.name} not found: write the image stems of "
                          f"each split ({', '.join(f'{s}.txt' for s in SPLITS)}, one stem such as "
                          "FudanPed00001 per line)")
    lines = (ln.strip() for ln in path.read_text(encoding="utf-8").splitlines())
    return [Path(ln).stem for ln in lines if ln and not ln.startswith("#")]


def _read_mask(path: Path, size: tuple[int, int], report: DataReport) -> np.ndarray | None:
    """The mask as an integer array, or ``None`` (reported) when missing, unreadable or of another size."""
    if not path.is_file():
        report.add(path, "missing mask file", "boxes not cross-checked")
        return None
    try:
        with Image.open(path) as im:
            mask = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        report.add(path, f"unreadable mask ({type(e).__name__})", "boxes not cross-checked")
        return None
    if mask.ndim != 2 or (mask.shape[1], mask.shape[0]) != size:
        report.add(path, f"mask size {mask.shape[1::-1]} is not the image's {size}", "boxes not cross-checked")
        return None
    return mask


def read_pennfudan(root: Path, split: str, mask_tol: float = MASK_TOL) -> PennFudanSplit:
    """Read one split of a Penn-Fudan folder and cross-check its boxes against the masks.

    Per listed stem: ``PNGImages/<stem>.png`` (missing or unreadable: image skipped),
    ``Annotation/<stem>.txt`` (missing: image kept as background; unreadable: image skipped), each
    ``Bounding box`` line one ``person`` box (a line that does not parse: box skipped; a box outside
    the image: clipped or skipped as the other readers do), ``PedMasks/<stem>_mask.png`` for the
    cross-check. A box whose coordinates differ from its mask instance's box by more than
    ``mask_tol`` pixels, or whose index has no mask pixel, is reported (the annotated box is kept).

    Args:
        root: the dataset folder.
        split: ``train`` or ``val`` (read from ``<root>/<split>.txt``).
        mask_tol: cross-check tolerance in pixels (>= 0).

    Returns:
        :class:`PennFudanSplit`; ``report.n_images``/``n_boxes`` count what was kept.

    Raises:
        ConfigError: no split list.
        ValueError: negative ``mask_tol``.
    """
    if mask_tol < 0:
        raise ValueError(f"mask tolerance must be >= 0 px, got {mask_tol}")
    report = DataReport(split=split)
    samples: list[Sample] = []
    checks: list[MaskCheck] = []
    for idx, stem in enumerate(split_stems(root, split)):
        image = root / IMAGE_DIR / f"{stem}.png"
        size = read_image_size(image, report)
        if size is None:
            continue
        w, h = size
        txt = root / ANNOTATION_DIR / f"{stem}.txt"
        ann = PedAnnotation(txt)
        if not txt.is_file():
            report.add(txt, "missing label file", "image kept as background")
        else:
            try:
                ann = parse_annotation(txt)
            except (OSError, UnicodeDecodeError) as e:  # as the VOC and YOLO readers do
                report.add(txt, f"unreadable label file ({type(e).__name__})", "image skipped")
                continue
            _report_annotation(ann, image, w, h, report)
            mask = _read_mask(root / MASK_DIR / f"{stem}_mask.png", size, report) if ann.objects else None
            if mask is not None:
                checks += _cross_check(ann, mask, mask_tol, report)
        boxes = [box for _, _, box in ann.objects]
        wheres = [at(txt, f"object {index}") for index, _, _ in ann.objects]
        samples.append(make_sample(image, w, h, boxes, [0] * len(boxes), [False] * len(boxes), report, wheres, idx))
    report.n_images = len(samples)
    report.n_boxes = int(sum(len(s.boxes) for s in samples))
    return PennFudanSplit(samples, report, checks)


def _report_annotation(ann: PedAnnotation, image: Path, w: int, h: int, report: DataReport) -> None:
    """Report the problems of a parsed annotation file other than its boxes' (those are checked by
    :func:`det_toolkit.train.data.samples.make_sample`, each named by its object)."""
    txt = ann.file
    for lineno in ann.malformed:
        report.add(at(txt, f"line {lineno}"), "malformed bounding-box line", "box skipped")
    if ann.image_name is not None and ann.image_name != image.name:
        report.add(txt, f"names image '{ann.image_name}', not {image.name}", f"read as {image.name}")
    if ann.size is not None and ann.size != (w, h):
        report.add(txt, f"image size {ann.size[0]}x{ann.size[1]} is not the image's {w}x{h}",
                   "boxes checked against the image")
    lines = len(ann.objects) + len(ann.malformed)
    if ann.declared is not None and ann.declared != lines:
        report.add(txt, f"{ann.declared} objects declared, {lines} bounding-box lines", "boxes read as found")
    if not lines:
        report.add(txt, "label file has no objects", "image kept as background")


def _cross_check(ann: PedAnnotation, mask: np.ndarray, mask_tol: float, report: DataReport) -> list[MaskCheck]:
    """Compare every annotated box of ``ann`` with its mask instance's box; report those over
    ``mask_tol`` px, objects without mask pixels and mask instances without a box."""
    found = mask_boxes(mask)
    checks = []
    for index, _, box in ann.objects:
        mb = found.get(index)
        check = MaskCheck(ann.file, index, (box[0], box[1], box[2], box[3]),
                          None if mb is None else (mb[0], mb[1], mb[2], mb[3]))
        checks.append(check)
        if mb is None:
            report.add(at(ann.file, f"object {index}"), "no mask pixels for this object", "box kept")
        elif check.diff > mask_tol:
            report.add(at(ann.file, f"object {index}"), f"box differs from its mask's box by > {mask_tol:g} px",
                       "box kept")
    for index in sorted(set(found) - {i for i, _, _ in ann.objects}):
        report.add(at(ann.file, f"object {index}"), "mask instance without an annotated box", "ignored")
    return checks
