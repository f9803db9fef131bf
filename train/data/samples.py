"""What every dataset reader returns and reports: :class:`Sample`, :class:`DataReport`, and the checks
the COCO (:mod:`det_toolkit.train.data.coco`), VOC (:mod:`det_toolkit.train.data.voc`), YOLO
(:mod:`det_toolkit.train.data.yolo`) and Penn-Fudan (:mod:`det_toolkit.train.data.pennfudan`)
readers share.

Convention: boxes ``float32 [M, 4]`` ``xyxy`` in absolute, continuous pixel coordinates of the image
*as displayed* (EXIF orientation applied), labels ``int64 [M]`` 0-based indices into the class names.

Every problem is recorded in a :class:`DataReport` with its file (and line, object or record where it
has one, :func:`at`) and what was done; one bad record never drops more than itself. Here: an image
that cannot be read (missing, unreadable header, truncated PNG/BMP/WebP) is skipped and counted; a
truncated JPEG is kept, decoded with grey bottom rows, and counted (the policy of
:func:`det_toolkit.runtime.image_bytes.truncated_image`); degenerate and fully outside boxes are
skipped, partly outside ones clipped (:func:`make_sample`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from det_toolkit.runtime.image_bytes import truncated_image

#: boxes at most this many pixels past the border are clipped without a report (float rounding of
#: normalised YOLO coordinates, labelImg's off-by-one at the right/bottom edge)
EDGE_TOL = 1.0
#: :class:`DataReport` problems of truncated images, and what was done (see :func:`truncated_image`)
TRUNCATED_JPEG = ("truncated JPEG", "decoded, missing bottom rows grey")


class DatasetError(ValueError):
    """A dataset cannot be used (e.g. no valid labels at all); the message says why and where."""


@dataclass
class Sample:
    """One annotated image.

    Attributes:
        image: path of the image file.
        width / height: size in pixels after EXIF orientation.
        boxes: ``float32 [M, 4]`` ``xyxy`` absolute pixels.
        labels: ``int64 [M]`` 0-based class indices.
        iscrowd: ``bool [M]``: COCO crowd regions and VOC ``difficult`` boxes (ignored by COCO mAP).
        image_id: integer id (COCO's id, else the sample's index).
    """

    image: Path
    width: int
    height: int
    boxes: np.ndarray
    labels: np.ndarray
    iscrowd: np.ndarray
    image_id: int = 0


def at(file: Path | str, where: str) -> str:
    """``file`` with a location inside it (``labels/a.txt:line 3``, ``train.json:annotation 7``), the
    form :class:`DataReport` rows name a record by."""
    return f"{file}:{where}"


@dataclass
class DataReport:
    """Problems found while reading a split: ``(file, problem, action)`` rows and counts.

    ``file`` is the file the problem is in, with the line/object/record appended by :func:`at` where
    there is one.
    """

    split: str
    issues: list[tuple[str, str, str]] = field(default_factory=list)
    n_images: int = 0
    n_boxes: int = 0

    def add(self, file: Path | str, problem: str, action: str) -> None:
        """Record one problem with the file it came from and what was done."""
        self.issues.append((str(file), problem, action))

    def counts(self) -> Counter[tuple[str, str]]:
        """How often each ``(problem, action)`` occurred."""
        return Counter((p, a) for _, p, a in self.issues)

    def files(self, problem: str, action: str | None = None) -> list[str]:
        """The files (with location) of every row of ``problem`` (and ``action``), in reading order."""
        return [f for f, p, a in self.issues if p == problem and action in (None, a)]

    def skipped_images(self) -> list[str]:
        """Files of every row whose action is ``image skipped`` (the image left the split)."""
        return [f for f, _, a in self.issues if a == "image skipped"]

    def table(self, max_files: int = 3) -> str:
        """A human-readable summary table: per problem the count, the action and the first
        ``max_files`` files (``+N more`` after them)."""
        lines = [f"[{self.split}] {self.n_images} images, {self.n_boxes} boxes"]
        if not self.issues:
            return lines[0] + ", no problems found"
        lines.append(f"  {'count':>6}  {'problem':<44} action / files")
        for (prob, act), n in self.counts().most_common():
            ex = [Path(e).name for e in self.files(prob, act)]
            more = f" (+{len(ex) - max_files} more)" if len(ex) > max_files else ""
            lines.append(f"  {n:>6}  {prob:<44} {act}: {', '.join(ex[:max_files])}{more}")
        return "\n".join(lines)


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image after EXIF orientation, reading only the header.

    Raises:
        OSError / PIL.UnidentifiedImageError: unreadable image.
    """
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(0x0112, 1)
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _fix_boxes(boxes: np.ndarray, labels: np.ndarray, iscrowd: np.ndarray, w: int, h: int,
               wheres: list[str], report: DataReport) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Skip non-finite, degenerate and fully-outside boxes; clip partly-outside ones. ``wheres[i]``
    names box ``i`` in the report."""
    keep = np.ones(len(boxes), dtype=bool)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        file = wheres[i]
        if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
            report.add(file, "non-finite box coordinate", "box skipped")
            keep[i] = False
        elif x2 <= x1 or y2 <= y1:
            report.add(file, "degenerate box (x2<=x1 or y2<=y1)", "box skipped")
            keep[i] = False
        elif x2 <= 0 or y2 <= 0 or x1 >= w or y1 >= h:
            report.add(file, "box entirely outside the image", "box skipped")
            keep[i] = False
        elif x1 < 0 or y1 < 0 or x2 > w or y2 > h:
            cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)
            boxes[i] = (cx1, cy1, cx2, cy2)
            if max(-x1, -y1, x2 - w, y2 - h) <= EDGE_TOL:
                continue  # rounding / off-by-one at the border: clip silently
            if cx2 - cx1 < 1 or cy2 - cy1 < 1:
                report.add(file, "box under 1 px after clipping", "box skipped")
                keep[i] = False
            else:
                report.add(file, "box outside the image", "box clipped")
    return boxes[keep], labels[keep], iscrowd[keep]


def make_sample(image: Path, w: int, h: int, boxes: list[list[float]], labels: list[int],
                crowd: list[bool], report: DataReport, wheres: list[str], image_id: int) -> Sample:
    """A :class:`Sample` of ``image`` (displayed size ``w x h`` pixels) from a reader's boxes, checked.

    Args:
        boxes: ``M`` ``[x1, y1, x2, y2]`` absolute pixels; labels: ``M`` 0-based class indices;
            crowd: ``M`` flags (COCO ``iscrowd``, VOC ``difficult``); wheres: ``M`` report
            locations (:func:`at`), one per box.
        report: receives a row per box skipped or clipped: non-finite, degenerate (``x2 <= x1`` or
            ``y2 <= y1``) and fully outside boxes are skipped; partly outside ones are clipped to the
            image (silently within :data:`EDGE_TOL` pixels), and skipped if under 1 px after it.
        image_id: the sample's :attr:`Sample.image_id`.

    Returns:
        the sample with the kept boxes (``float32 [K, 4]``, ``int64 [K]`` labels, ``bool [K]`` crowd).
    """
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    lab = np.asarray(labels, dtype=np.int64)
    cr = np.asarray(crowd, dtype=bool)
    b, lab, cr = _fix_boxes(b, lab, cr, w, h, wheres, report)
    return Sample(image=image, width=w, height=h, boxes=b, labels=lab, iscrowd=cr, image_id=image_id)


def read_image_size(image: Path, report: DataReport) -> tuple[int, int] | None:
    """The displayed ``(width, height)`` of ``image`` in pixels (:func:`image_size`), checked.

    Returns ``None``, with a report row (``image skipped``), when the file is missing, unreadable or
    truncated in a format that does not decode (PNG/BMP/WebP); a truncated JPEG is reported
    (:data:`TRUNCATED_JPEG`) and its size returned (it decodes with grey bottom rows).
    """
    if not image.is_file():
        report.add(image, "missing image", "image skipped")
        return None
    kind = truncated_image(image)
    if kind not in (None, "JPEG"):
        report.add(image, f"truncated {kind} file (does not decode)", "image skipped")
        return None
    try:
        size = image_size(image)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        report.add(image, f"unreadable image ({type(e).__name__})", "image skipped")
        return None
    if kind == "JPEG":
        report.add(image, *TRUNCATED_JPEG)
    return size
