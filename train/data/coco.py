"""COCO detection JSON: one file per split (``images``, ``categories``, ``annotations``), read into
:class:`Sample` objects in the readers' box convention (:mod:`det_toolkit.train.data.samples`).

``bbox`` ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``. A whole file that cannot be used is a
:class:`DatasetError`: a JSON that does not parse, lacks ``images``/``categories`` lists, has
categories without an integer ``id`` and a string ``name``, or repeats an image or category id (the
annotations would be ambiguous). One bad record is skipped and reported: an image record without
``file_name`` or integer ``id``, an annotation whose ``image_id`` names no image, whose
``category_id`` is not a category (or not in ``names``), whose ``bbox`` is not 4 numbers or whose
``iscrowd`` is not 0/1.
"""

from __future__ import annotations

import json
import numbers
from collections import Counter
from pathlib import Path
from typing import Any

from det_toolkit.train.config import DataConfig
from det_toolkit.train.data.samples import DataReport, DatasetError, Sample, at, make_sample, read_image_size


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
        size = read_image_size(path, report)
        if size is None:
            continue
        anns = per_image.get(image_id, [])
        if not anns:
            report.add(path, "no annotations", "image kept as background")
        boxes, labels, crowd, wheres = (list(col) for col in zip(*anns)) if anns else ([], [], [], [])
        samples.append(make_sample(path, *size, boxes, labels, crowd, report, wheres, image_id))
    return samples, names, cat_ids
