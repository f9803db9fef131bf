"""Readers for COCO JSON, Pascal VOC XML (labelImg) and YOLO txt, with validation.

Every reader returns :class:`Sample` objects in one convention: boxes ``float32 [M, 4]`` ``xyxy`` in
absolute, continuous pixel coordinates of the image *as displayed* (EXIF orientation applied), labels
``int64 [M]`` 0-based indices into the class names.

Conversions: COCO ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``; VOC 1-based inclusive pixel indices
-> ``[xmin - 1, ymin - 1, xmax, ymax]`` (Detectron2's convention); YOLO normalised ``cx cy w h`` ->
absolute ``xyxy``.

Every problem is recorded in a :class:`DataReport` with its file (and line, object or record
where it has one) and what was done; one bad record never drops more than itself:

* a whole file that cannot be used is an error (:class:`DatasetError`): a COCO JSON that does not
  parse, lacks ``images``/``categories`` lists, has categories without an integer ``id`` and a string
  ``name``, or repeats an image or category id (the annotations would be ambiguous);
* an image that cannot be read (missing, unreadable header, truncated PNG/BMP/WebP) or whose label
  file cannot be read is skipped and counted; a truncated JPEG is kept, decoded with grey bottom
  rows, and counted (the policy of :func:`det_toolkit.runtime.sources.truncated_image`);
* one bad record is skipped and counted: a YOLO line that is not ``class cx cy w h`` numbers (4 or
  6+ fields, a segment polygon, a non-integer or out-of-range class, NaN/inf, a size <= 0), a VOC
  object with an unknown class name or a missing/non-numeric coordinate, a COCO image record without
  ``file_name`` or integer ``id``, a COCO annotation whose ``image_id`` names no image, whose
  ``category_id`` is not a category (or not in ``names``), whose ``bbox`` is not 4 numbers or whose
  ``iscrowd`` is not 0/1; degenerate and fully outside boxes are skipped, partly outside ones clipped.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from det_toolkit.runtime.files import IMAGE_SUFFIXES
from det_toolkit.runtime.sources import truncated_image
from det_toolkit.train.config import ConfigError, DataConfig, load_data_config

#: boxes at most this many pixels past the border are clipped without a report (float rounding of
#: normalised YOLO coordinates, labelImg's off-by-one at the right/bottom edge)
EDGE_TOL = 1.0
#: the annotation formats read here and written by det-label (:mod:`det_toolkit.train.data.writers`)
FORMATS = ("voc", "yolo", "coco")
#: per list-file format: the default label folder under the dataset root (``DataConfig.labels``
#: unset) and the label file suffix; the writers lay datasets out the same way
LABEL_DIRS = {"voc": "annotations", "yolo": "labels"}
LABEL_SUFFIXES = {"voc": ".xml", "yolo": ".txt"}

log = logging.getLogger(__name__)


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


#: :class:`DataReport` problems of truncated images, and what was done (see :func:`truncated_image`)
TRUNCATED_JPEG = ("truncated JPEG", "decoded, missing bottom rows grey")


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


def _sample(image: Path, w: int, h: int, boxes: list[list[float]], labels: list[int],
            crowd: list[bool], report: DataReport, wheres: list[str], image_id: int) -> Sample:
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    lab = np.asarray(labels, dtype=np.int64)
    cr = np.asarray(crowd, dtype=bool)
    b, lab, cr = _fix_boxes(b, lab, cr, w, h, wheres, report)
    return Sample(image=image, width=w, height=h, boxes=b, labels=lab, iscrowd=cr, image_id=image_id)


def _read_image_size(image: Path, report: DataReport) -> tuple[int, int] | None:
    """The image's displayed size, or ``None`` (reported) when it is missing, unreadable or a
    truncated file that does not decode; a truncated JPEG is reported and kept."""
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


def parse_voc(xml_file: Path, names: list[str], w: int, h: int, image: Path, report: DataReport,
              image_id: int) -> Sample | None:
    """Read one labelImg/Pascal VOC XML file into a :class:`Sample` (``None`` if unreadable)."""
    try:
        root = ET.parse(xml_file).getroot()
    except (ET.ParseError, OSError) as e:
        report.add(xml_file, f"unreadable label file ({e.__class__.__name__})", "image skipped")
        return None
    boxes, labels, crowd, wheres = [], [], [], []
    objects = root.findall("object")
    if not objects:
        report.add(xml_file, "label file has no objects", "image kept as background")
    for k, obj in enumerate(objects, 1):
        where = at(xml_file, f"object {k}")
        name = (obj.findtext("name") or "").strip()
        if name not in names:
            report.add(where, f"unknown class name '{name}'", "box skipped")
            continue
        bb = obj.find("bndbox")
        if bb is None:
            report.add(where, "object without <bndbox>", "box skipped")
            continue
        try:
            xmin, ymin, xmax, ymax = (float((bb.findtext(t) or "").strip())
                                      for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            report.add(where, "malformed <bndbox> (missing or non-numeric coordinate)", "box skipped")
            continue
        boxes.append([xmin - 1, ymin - 1, xmax, ymax])
        labels.append(names.index(name))
        crowd.append((obj.findtext("difficult") or "0").strip() == "1")
        wheres.append(where)
    return _sample(image, w, h, boxes, labels, crowd, report, wheres, image_id)


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
    """Read one YOLO txt file (``class cx cy w h`` normalised, one box per line); ``None`` (image
    skipped, reported) when the file cannot be read as UTF-8 text. A bad line is skipped and
    reported with its line number (:func:`_yolo_line`)."""
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
    return _sample(image, w, h, boxes, labels, [False] * len(labels), report, wheres, image_id)


def _unused_supercategories(cats: list[dict], anns: list[dict]) -> list[dict]:
    """Categories that only group others (their name is another category's ``supercategory``) and
    have no annotation: Roboflow's COCO exports add the dataset's name as such a category 0."""
    used = {a.get("category_id") for a in anns}
    parents = {c.get("supercategory") for c in cats if c.get("supercategory") != c.get("name")}
    return [c for c in cats if c["name"] in parents and c["id"] not in used]


def _is_int(v: Any) -> bool:
    """An integer JSON value (``bool`` is not)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    """A real JSON number (``bool`` is not)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _coco_tables(json_file: Path) -> tuple[list[dict], list[Any], list[Any]]:
    """``(categories sorted by id, images, annotations)`` of a COCO JSON, checked for what makes the
    whole file unusable.

    Raises:
        DatasetError: unreadable or not JSON; ``images``/``categories`` missing or not lists; a
            category without an integer ``id`` and a string ``name``; a repeated category id or name.
    """
    try:
        d = json.loads(json_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{json_file}: not a COCO detection file ({type(e).__name__}: {e})") from e
    if not isinstance(d, dict):
        raise DatasetError(f"{json_file}: not a COCO detection file (a JSON {type(d).__name__}, not an object)")
    for key in ("images", "categories", "annotations"):
        if key == "annotations" and key not in d:
            continue
        if not isinstance(d.get(key), list):
            got = "missing" if key not in d else f"a {type(d[key]).__name__}"
            raise DatasetError(f"{json_file}: not a COCO detection file ('{key}' must be a list, got {got})")
    for i, c in enumerate(d["categories"]):
        if not (isinstance(c, dict) and _is_int(c.get("id")) and isinstance(c.get("name"), str)):
            raise DatasetError(f"{json_file}: categories[{i}]: needs an integer 'id' and a string 'name', "
                               f"got {c!r}")
    cats = sorted(d["categories"], key=lambda c: c["id"])
    for key in ("id", "name"):
        dups = sorted((v for v, n in Counter(c[key] for c in cats).items() if n > 1), key=str)
        if dups:
            raise DatasetError(f"{json_file}: categories: repeated {key} {dups} (which one do annotations mean?)")
    return cats, d["images"], d.get("annotations", [])


def _coco_image_records(json_file: Path, images: list[Any], report: DataReport) -> list[tuple[int, str]]:
    """``(id, file_name)`` of every usable image record; a record without an integer ``id`` or a
    string ``file_name`` is skipped and reported.

    Raises:
        DatasetError: two records share an id (their annotations would be ambiguous).
    """
    out: list[tuple[int, str]] = []
    for i, im in enumerate(images):
        where = at(json_file, f"images[{i}]")
        if not isinstance(im, dict) or not _is_int(im.get("id")):
            report.add(where, "image record without an integer 'id'", "image skipped")
        elif not isinstance(im.get("file_name"), str) or not im["file_name"]:
            report.add(where, "image record without 'file_name'", "image skipped")
        else:
            out.append((int(im["id"]), im["file_name"]))
    dups = sorted(i for i, n in Counter(i for i, _ in out).items() if n > 1)
    if dups:
        raise DatasetError(f"{json_file}: images: repeated id {dups[:10]} (which image do its annotations mean?)")
    return out


def _coco_box(json_file: Path, a: Any, index: int, label_of: dict[int, int], cat_name: dict[int, str],
              image_ids: set[int], report: DataReport) -> tuple[int, list[float], int, bool, str] | None:
    """``(image id, xyxy box, label, crowd, where)`` of annotation ``a`` (the ``index``-th), or
    ``None`` when it is unusable (reported, box skipped)."""
    if not isinstance(a, dict):
        report.add(at(json_file, f"annotations[{index}]"), "annotation is not an object", "box skipped")
        return None
    where = at(json_file, f"annotation {a['id']}" if _is_int(a.get("id")) else f"annotations[{index}]")
    iid, cid, bbox, crowd = a.get("image_id"), a.get("category_id"), a.get("bbox"), a.get("iscrowd", 0)
    problem = None
    if not _is_int(iid) or iid not in image_ids:
        problem = "image_id names no (usable) image record"
    elif not _is_int(cid) or cid not in cat_name:
        problem = f"unknown category id {cid!r}"
    elif cid not in label_of:
        problem = f"category '{cat_name[cid]}' is not in names"
    elif not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
        problem = "bbox is not a list of 4 numbers [x, y, w, h]"
    elif crowd not in (0, 1):  # True/False compare equal to 1/0
        problem = "iscrowd is not 0 or 1"
    if problem is not None:
        report.add(where, problem, "box skipped")
        return None
    x, y, bw, bh = (float(v) for v in bbox)
    return int(iid), [x, y, x + bw, y + bh], label_of[cid], bool(crowd), where


def read_coco(json_file: Path, cfg: DataConfig, report: DataReport
              ) -> tuple[list[Sample], list[str], list[int]]:
    """Read a COCO detection JSON: returns samples, class names and their category ids.

    Category ids need not start at 0 or be contiguous: label ``i`` is category ``category_ids[i]``.
    With ``cfg.names`` set, categories are matched by name in that order (annotations of other
    categories are skipped and counted); otherwise every category sorted by id, except a
    super-category that only groups the others and has no annotations (Roboflow's category 0, named
    after the dataset): it is dropped and the report says so. ``file_name`` is looked up under
    ``<root>/<images>``, ``<root>/<images>/<subset>`` (CVAT: ``instances_<subset>.json``), ``<root>``,
    the JSON's folder and ``images/`` beside the JSON's folder. Bad records are skipped and reported
    (module docstring).

    Raises:
        DatasetError: a file that cannot be used as a whole (:func:`_coco_tables`,
            :func:`_coco_image_records`), or ``cfg.names`` naming no category.
    """
    cats, images, raw_anns = _coco_tables(json_file)
    by_name = {c["name"]: c["id"] for c in cats}
    if cfg.names:
        missing = [n for n in cfg.names if n not in by_name]
        if missing:
            raise DatasetError(f"{json_file}: names {missing} have no category (have {list(by_name)})")
        names = list(cfg.names)
    else:
        dropped = _unused_supercategories(cats, [a for a in raw_anns if isinstance(a, dict)])
        for c in dropped:
            report.add(json_file, f"category {c['id']} '{c['name']}' is the super-category of the "
                                  "others and has no boxes", "category dropped")
        names = [c["name"] for c in cats if c not in dropped]
    cat_ids = [by_name[n] for n in names]
    label_of = {cid: i for i, cid in enumerate(cat_ids)}
    records = _coco_image_records(json_file, images, report)
    image_ids = {i for i, _ in records}
    cat_name = {c["id"]: c["name"] for c in cats}
    per_image: dict[int, list[tuple[list[float], int, bool, str]]] = {}
    for k, a in enumerate(raw_anns):
        box = _coco_box(json_file, a, k, label_of, cat_name, image_ids, report)
        if box is not None:
            per_image.setdefault(box[0], []).append(box[1:])
    subset = json_file.stem.removeprefix("instances_")
    dirs = [cfg.root / cfg.images, cfg.root / cfg.images / subset, cfg.root, json_file.parent,
            json_file.parent.parent / "images", json_file.parent.parent / "images" / subset]
    samples = []
    for image_id, file_name in records:
        fn = Path(file_name)
        cands = [dr / fn for dr in dirs]
        path = next((c for c in cands if c.is_file()), cands[0])
        size = _read_image_size(path, report)
        if size is None:
            continue
        anns = per_image.get(image_id, [])
        if not anns:
            report.add(path, "no annotations", "image kept as background")
        boxes, labels, crowd, wheres = (list(col) for col in zip(*anns)) if anns else ([], [], [], [])
        samples.append(_sample(path, *size, boxes, labels, crowd, report, wheres, image_id))
    return samples, names, cat_ids


def _specs(spec: str | list[str]) -> list[str]:
    return [spec] if isinstance(spec, str) else list(spec)


def list_split_images(cfg: DataConfig, spec: str | list[str]) -> list[Path]:
    """Image paths of a split: a directory (all images below it, sorted), a ``.txt`` list file, or a
    list of those (concatenated), each resolved by :meth:`DataConfig.split_path`.

    List-file lines are image stems (looked up as ``<root>/<images>/<stem>.<ext>``) or image paths:
    absolute, ``./x.jpg`` relative to the list file's folder (Ultralytics), else relative to the
    root, else to ``<root>/<images>``.

    Raises:
        ConfigError: a split entry that does not exist.
    """
    out: list[Path] = []
    for entry in _specs(spec):
        p = cfg.split_path(entry)
        if p.is_dir():
            out += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
            continue
        if not p.is_file():
            raise ConfigError(f"{cfg.source}: split '{entry}' not found at {p}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{cfg.source}: split '{entry}': {p} is not a text list of images "
                              f"(not UTF-8: {e.reason} at byte {e.start})") from e
        for ln in text.splitlines():
            ln = ln.strip()
            if not ln or ln.startswith("#"):
                continue
            q = Path(ln)
            if q.suffix.lower() in IMAGE_SUFFIXES:
                if ln.startswith("./"):
                    out.append(p.parent / ln[2:])
                else:
                    out.append(q if q.is_absolute() else (cfg.root / q if (cfg.root / q).exists()
                                                         else cfg.root / cfg.images / q))
                continue
            found = [cfg.root / cfg.images / f"{ln}{e}" for e in IMAGE_SUFFIXES
                     if (cfg.root / cfg.images / f"{ln}{e}").is_file()]
            out.append(found[0] if found else cfg.root / cfg.images / f"{ln}.jpg")
    return out


def label_path(cfg: DataConfig, image: Path, fmt: str) -> Path:
    """Label file of ``image``: ``<root>/<labels>/<path relative to images>.(xml|txt)``.

    Falls back to replacing the last ``images`` folder in the path by the label folder
    (Ultralytics' ``images/`` -> ``labels/`` layout).
    """
    labels_dir = cfg.labels or LABEL_DIRS[fmt]
    suffix = LABEL_SUFFIXES[fmt]
    try:
        rel = image.relative_to(cfg.root / cfg.images)
        cand = cfg.root / labels_dir / rel.with_suffix(suffix)
        if cand.exists():
            return cand
    except ValueError:
        cand = None
    parts = list(image.parts)
    if "images" in parts:
        i = len(parts) - 1 - parts[::-1].index("images")
        parts[i] = labels_dir
        alt = Path(*parts).with_suffix(suffix)
        if alt.exists() or cand is None:
            return alt
    return cand if cand is not None else image.with_suffix(suffix)


def detect_format(cfg: DataConfig) -> str:
    """Resolve ``cfg.format == "auto"``: ``coco`` for ``.json`` splits, else ``voc``/``yolo`` by which
    label files exist for the first training images (:func:`label_path`), else by a label folder
    holding ``.xml``/``.txt`` files under the root.

    Raises:
        ConfigError: no label files found either way.
    """
    if cfg.format != "auto":
        return cfg.format
    specs = _specs(cfg.split("train"))
    if all(s.endswith(".json") for s in specs):
        return "coco"
    try:
        probe = list_split_images(cfg, specs)[:50]
    except ConfigError:
        probe = []
    for fmt in ("voc", "yolo"):
        if any(label_path(cfg, im, fmt).is_file() for im in probe):
            return fmt
    for fmt, sub, ext in (("voc", cfg.labels or "annotations", ".xml"),
                          ("yolo", cfg.labels or "labels", ".txt")):
        d = cfg.root / sub
        if d.is_dir() and next(d.rglob(f"*{ext}"), None) is not None:
            return fmt
    raise ConfigError(f"{cfg.source}: cannot detect the annotation format under {cfg.root} (no label "
                      f"files found for the training images); set 'format: coco|voc|yolo'")


def read_split(cfg: DataConfig, split: str) -> tuple[list[Sample], list[str], list[int], DataReport]:
    """Read and validate one split.

    Returns:
        ``(samples, class_names, category_ids, report)``; ``category_ids[i]`` is the id COCO
        evaluation uses for label ``i`` (COCO: the file's ids; VOC: ``1..C``; YOLO: ``0..C-1``).

    Raises:
        ConfigError: bad split spec or missing ``names`` for VOC/YOLO.
        DatasetError: unreadable COCO file.
    """
    fmt = detect_format(cfg)
    spec = cfg.split(split)
    report = DataReport(split=split)
    if fmt == "coco":
        if not isinstance(spec, str):
            raise ConfigError(f"{cfg.source}: {split}: a COCO split is one .json file, got a list {spec}")
        samples, names, cat_ids = read_coco(cfg.split_path(spec), cfg, report)
    else:
        if not cfg.names:
            raise ConfigError(f"{cfg.source}: list the class names under 'names:' ({fmt} format)")
        names = list(cfg.names)
        cat_ids = list(range(1, len(names) + 1)) if fmt == "voc" else list(range(len(names)))
        samples = []
        for idx, image in enumerate(list_split_images(cfg, spec)):
            size = _read_image_size(image, report)
            if size is None:
                continue
            lf = label_path(cfg, image, fmt)
            if not lf.is_file():
                report.add(lf, "missing label file", "image kept as background")
                s = _sample(image, *size, [], [], [], report, [], idx)
            elif fmt == "voc":
                s = parse_voc(lf, names, *size, image, report, idx)
            else:
                s = parse_yolo(lf, len(names), *size, image, report, idx)
            if s is not None:
                samples.append(s)
    report.n_images = len(samples)
    report.n_boxes = int(sum(len(s.boxes) for s in samples))
    return samples, names, cat_ids, report


def require_labels(samples: list[Sample], report: DataReport, cfg: DataConfig) -> None:
    """Raise :class:`DatasetError` when a split has no valid box at all; its one-line message names
    the config, the split and the report's most frequent problems (the full table is
    :meth:`DataReport.table`)."""
    if not any(len(s.boxes) for s in samples):
        top = "; ".join(f"{n} x {p}: {a}" for (p, a), n in report.counts().most_common(3))
        raise DatasetError(f"{cfg.source}: split '{report.split}' has no valid boxes ({report.n_images} usable "
                           f"images{'; ' + top if top else ''})")


#: Data YAML names looked for in a dataset folder (Ultralytics / Roboflow / CVAT "Ultralytics YOLO" exports).
DATA_YAML_NAMES = ("data.yaml", "data.yml", "dataset.yaml", "dataset.yml")


def _subset_file(files: list[Path], *keys: str) -> Path | None:
    """The annotation file of a subset: its stem without ``instances_`` equal to one of ``keys``, else
    starting with it, else containing it (``instances_train2017.json`` for ``train``); keys in order."""
    def subset(f: Path) -> str:
        return f.stem.lower().removeprefix("instances_")

    for match in (str.__eq__, str.startswith, str.__contains__):
        for key in keys:
            hit = sorted(f for f in files if match(subset(f), key))
            if hit:
                return hit[0]
    return None


def _voc_names(root: Path, xml_dir: Path) -> list[str]:
    """Class names of a VOC folder: CVAT's ``labelmap.txt`` (``name:color:parts:actions`` lines, without
    ``background``), else every ``<object><name>`` in the XML files, sorted."""
    labelmap = root / "labelmap.txt"
    if labelmap.is_file():
        names = [ln.split(":")[0].strip() for ln in labelmap.read_text(encoding="utf-8").splitlines()
                 if ln.strip() and not ln.lstrip().startswith("#")]
        names = [n for n in names if n and n != "background"]
        if names:
            return names
    found: set[str] = set()
    for xml in xml_dir.glob("*.xml"):
        try:
            found.update((o.findtext("name") or "").strip() for o in ET.parse(xml).getroot().iter("object"))
        except (ET.ParseError, OSError):
            continue  # reported by the reader
    return sorted(n for n in found if n)


def folder_config(root: Path) -> DataConfig:
    """A :class:`DataConfig` for a dataset folder passed as ``--data DIR``, by its layout:

    1. a data YAML at the top (``data.yaml``, ``dataset.yaml`` or a single ``*.yaml``): that file
       (Ultralytics, Roboflow "YOLOv5/v8/v11" exports, CVAT "Ultralytics YOLO" exports);
    2. ``train/_annotations.coco.json`` (+ ``valid/`` or ``val/``, ``test/``): a Roboflow COCO export,
       images beside each JSON;
    3. ``annotations/*.json`` + ``images/``: CVAT's COCO export (``instances_default.json``, or
       ``instances_train.json``/``instances_val.json`` per subset) and COCO itself;
    4. ``Annotations/*.xml`` + ``JPEGImages/``: Pascal VOC and CVAT's VOC export; splits from
       ``ImageSets/Main/{train,val,test,trainval,default}.txt``, class names from CVAT's
       ``labelmap.txt`` or else from the XML files (sorted).

    With no validation subset (CVAT's single ``default`` subset), validation runs on the training
    images, with a logged warning: its mAP is then no estimate of accuracy on new images.

    Raises:
        ConfigError: none of these layouts, or several data YAMLs and none named ``data.yaml``.
    """
    root = root.resolve()
    yamls = [root / n for n in DATA_YAML_NAMES if (root / n).is_file()]
    if not yamls:
        yamls = sorted([*root.glob("*.yaml"), *root.glob("*.yml")])
        if len(yamls) > 1:
            raise ConfigError(f"{root}: several data YAMLs ({', '.join(y.name for y in yamls)}); "
                              "pass one of them with --data")
    if yamls:
        log.info("%s: reading %s", root, yamls[0].name)
        return load_data_config(yamls[0])

    def config(kind: str, train: str, val: str | None, **kw: object) -> DataConfig:
        if val is None:
            log.warning("%s (%s): no validation subset; validating on the training images (that mAP "
                        "says little about new images: export a validation subset)", root, kind)
            val = train
        log.info("%s: %s, train %s, val %s", root, kind, train, val)
        return DataConfig(path=str(root), train=train, val=val, source=f"{root} ({kind})", **kw)  # type: ignore[arg-type]

    rf = "_annotations.coco.json"
    if (root / "train" / rf).is_file():
        val = next((f"{d}/{rf}" for d in ("valid", "val") if (root / d / rf).is_file()), None)
        test = f"test/{rf}" if (root / "test" / rf).is_file() else None
        return config("Roboflow COCO export", f"train/{rf}", val, test=test, format="coco")
    jsons = sorted((root / "annotations").glob("*.json")) if (root / "annotations").is_dir() else []
    if jsons and (root / "images").is_dir():
        jsons = [j for j in jsons if j.stem.startswith("instances_")] or jsons  # not COCO's captions_*.json
        train = _subset_file(jsons, "train", "default") or (jsons[0] if len(jsons) == 1 else None)
        if train is None:
            raise ConfigError(f"{root}: which of annotations/{{{', '.join(j.name for j in jsons)}}} is the "
                              "training set? Name it instances_train.json, or write a data YAML")
        val, test = _subset_file(jsons, "val"), _subset_file(jsons, "test")
        if val == train:
            val = None
        return config("COCO export (annotations/*.json + images/)", f"annotations/{train.name}",
                      val and f"annotations/{val.name}", test=test and f"annotations/{test.name}",
                      format="coco")
    if (root / "Annotations").is_dir() and (root / "JPEGImages").is_dir():
        sets = root / "ImageSets" / "Main"
        have = {n: f"ImageSets/Main/{n}.txt" for n in ("train", "val", "test", "trainval", "default")
                if (sets / f"{n}.txt").is_file()}
        train = have.get("train") or have.get("trainval") or have.get("default") or "JPEGImages"
        names = _voc_names(root, root / "Annotations")
        if not names:
            raise ConfigError(f"{root}: no class names: no labelmap.txt and no <object><name> in Annotations/")
        return config("Pascal VOC folder", train, have.get("val"), test=have.get("test"), format="voc",
                      images="JPEGImages", labels="Annotations", names=names)
    raise ConfigError(
        f"{root}: not a dataset layout det-train knows. Expected one of: a data YAML (data.yaml); "
        "train/_annotations.coco.json (Roboflow COCO); annotations/*.json + images/ (CVAT/COCO); "
        "Annotations/ + JPEGImages/ (Pascal VOC). Or pass a data YAML with --data")
