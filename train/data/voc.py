"""Pascal VOC XML (labelImg) labels: one XML file per image, read into a :class:`Sample`.

VOC coordinates are 1-based inclusive pixel indices: ``<bndbox>`` ``xmin ymin xmax ymax`` becomes
``[xmin - 1, ymin - 1, xmax, ymax]`` (Detectron2's convention) in the readers' box convention
(:mod:`det_toolkit.train.data.samples`). An object with an unknown class name or a missing or
non-numeric coordinate is skipped and reported; ``difficult`` objects are kept as crowd boxes.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from det_toolkit.train.data.samples import DataReport, Sample, at, make_sample


def parse_voc(xml_file: Path, names: list[str], w: int, h: int, image: Path, report: DataReport,
              image_id: int) -> Sample | None:
    """Read one labelImg/Pascal VOC XML file into a :class:`Sample` of ``image`` (displayed size
    ``w x h``; labels index ``names``); ``None`` (image skipped, reported) if the XML is unreadable.
    A bad object is skipped and reported by its number (``file.xml:object 3``)."""
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
    return make_sample(image, w, h, boxes, labels, crowd, report, wheres, image_id)


def voc_class_names(root: Path, xml_dir: Path) -> list[str]:
    """Class names of a VOC folder ``root``: CVAT's ``labelmap.txt`` (``name:color:parts:actions``
    lines, without ``background``), else every ``<object><name>`` in the XML files of ``xml_dir``,
    sorted; ``[]`` when there are none. Unreadable XML files are passed over (the reader reports
    them)."""
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
