"""YOLO txt labels: one text file per image, a ``class cx cy w h`` line per box, normalised to the
image size; read into a :class:`Sample` in absolute ``xyxy`` pixels (the readers' convention,
:mod:`det_toolkit.train.data.samples`).

A line that is not ``class cx cy w h`` numbers (4 or 6+ fields, a segment polygon, a non-integer or
out-of-range class, NaN/inf, a size <= 0) is skipped and reported with its line number.
"""

from __future__ import annotations

import math
from pathlib import Path

from det_toolkit.train.data.samples import DataReport, Sample, at, make_sample


def _yolo_line(parts: list[str], n_classes: int) -> tuple[int, float, float, float, float] | str:
    """``(class, cx, cy, w, h)`` of one YOLO label line split on whitespace, or what is wrong with it."""
    if len(parts) != 5:
        if len(parts) >= 7 and len(parts) % 2:
            return ("segment polygon, not a box (YOLO segmentation format; det-toolkit reads "
                    "'class cx cy w h' boxes: convert the segments to boxes)")
        if len(parts) == 6:
            return "6 fields (need 5: class cx cy w h; a prediction file with a score column?)"
        return f"malformed line: {len(parts)} field{'s' * (len(parts) != 1)} (need 5: class cx cy w h)"
    try:
        cls_f, cx, cy, bw, bh = (float(v) for v in parts)
    except ValueError:
        return "non-numeric value (need 5 numbers: class cx cy w h)"
    if not math.isfinite(cls_f) or cls_f != int(cls_f):
        return f"class id '{parts[0]}' is not an integer"
    cls = int(cls_f)
    if not 0 <= cls < n_classes:
        return f"class id {cls} out of range 0..{n_classes - 1}"
    if not all(math.isfinite(v) for v in (cx, cy, bw, bh)):
        return "non-finite box coordinate"
    if bw <= 0 or bh <= 0:
        return "box width or height <= 0"
    return cls, cx, cy, bw, bh


def parse_yolo(txt_file: Path, n_classes: int, w: int, h: int, image: Path, report: DataReport,
               image_id: int) -> Sample | None:
    """Read one YOLO txt file (``class cx cy w h`` normalised, one box per line) into a
    :class:`Sample` of ``image`` (displayed size ``w x h``); ``None`` (image skipped, reported) when
    the file cannot be read as UTF-8 text. A bad line is skipped and reported with its line number
    (:func:`_yolo_line`)."""
    try:
        text = txt_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        report.add(txt_file, f"unreadable label file ({type(e).__name__})", "image skipped")
        return None
    boxes, labels, wheres = [], [], []
    lines = [(n, ln.split()) for n, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        report.add(txt_file, "empty label file", "image kept as background")
    for n, parts in lines:
        where = at(txt_file, f"line {n}")
        got = _yolo_line(parts, n_classes)
        if isinstance(got, str):
            report.add(where, got, "box skipped")
            continue
        cls, cx, cy, bw, bh = got
        boxes.append([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h])
        labels.append(cls)
        wheres.append(where)
    return make_sample(image, w, h, boxes, labels, [False] * len(labels), report, wheres, image_id)
