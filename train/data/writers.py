"""Dataset writers: Pascal VOC XML (labelImg), YOLO txt and COCO JSON, the formats
:mod:`det_toolkit.train.data.formats` reads, with its folder layout and constants.

Used by ``det-label`` (:mod:`det_toolkit.train.label`) and ``det-convert``
(:mod:`det_toolkit.train.convert`). The images must already be saved as ``<root>/images/<stem><suffix>``
(det-label: JPG frames); :func:`write_dataset` (a train/val tail split) and :func:`write_splits` (any
train/val/test splits) add the labels, the split lists and a ``data.yaml`` that
:func:`det_toolkit.train.config.load_data_config` reads::

    images/                 the images
    annotations/<stem>.xml  voc: labelImg-compatible Pascal VOC, 1-based inclusive integer pixels
    labels/<stem>.txt       yolo: class cx cy w h normalised (plus labels/classes.txt for labelImg)
    annotations/train.json  coco: one file per split, category ids 1..C, bbox [x, y, w, h] pixels
    train.txt, val.txt      voc: image stems; yolo: ./images/<file> paths (test.txt, test.json if given)
    data.yaml               the data config (same schema as configs/raccoon.yaml)
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from det_toolkit.runtime.predictor import Detections
from det_toolkit.runtime.writers import YoloTxtWriter
from det_toolkit.train.data.formats import FORMATS, LABEL_DIRS, LABEL_SUFFIXES

#: image folder under the dataset root (``DataConfig.images``' default)
IMAGES_DIR = "images"
#: folder of the COCO JSON files under the dataset root
COCO_DIR = "annotations"
#: the split names a data YAML holds (:class:`det_toolkit.train.config.DataConfig`)
SPLITS = ("train", "val", "test")


@dataclass
class LabelledFrame:
    """One saved frame and the teacher's boxes on it.

    Attributes:
        stem: file stem (``images/<stem><suffix>``).
        index: 0-based frame index in the source (image position for folders).
        width / height: frame size in pixels.
        dets: boxes float32 ``[K, 4]`` ``xyxy`` absolute pixels, scores ``[K]``, labels int64 ``[K]``.
        suffix: the image file's suffix (det-label saves JPG; det-convert keeps the source's).
        difficult: bool ``[K]``: boxes ignored by the mAP (VOC ``difficult``, COCO ``iscrowd``; the
            readers' ``Sample.iscrowd``); ``None``: none.
    """

    stem: str
    index: int
    width: int
    height: int
    dets: Detections
    suffix: str = ".jpg"
    difficult: np.ndarray | None = None

    @property
    def file_name(self) -> str:
        """The image's file name under ``images/``."""
        return f"{self.stem}{self.suffix}"

    def difficult_flags(self) -> list[bool]:
        """``difficult`` as a list of ``len(dets)`` bools."""
        return [False] * len(self.dets) if self.difficult is None else [bool(v) for v in self.difficult]


def voc_xml(frame: LabelledFrame, class_names: Sequence[str], folder: str = "images",
            path: Path | None = None) -> str:
    """A labelImg-style Pascal VOC XML annotation of ``frame``.

    Continuous ``xyxy`` boxes become 1-based inclusive integer pixels
    ``xmin = round(x1) + 1, ymin = round(y1) + 1, xmax = round(x2), ymax = round(y2)`` (the inverse of
    the ``[xmin - 1, ymin - 1, xmax, ymax]`` reading in :func:`det_toolkit.train.data.voc.parse_voc`);
    ``truncated`` is 1 for boxes touching the frame border, ``difficult`` from ``frame.difficult``.
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = folder
    ET.SubElement(root, "filename").text = frame.file_name
    if path is not None:
        ET.SubElement(root, "path").text = str(path)
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "det-label"
    size = ET.SubElement(root, "size")
    for k, v in (("width", frame.width), ("height", frame.height), ("depth", 3)):
        ET.SubElement(size, k).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for (x1, y1, x2, y2), c, diff in zip(frame.dets.boxes.tolist(), frame.dets.labels.tolist(),
                                         frame.difficult_flags()):
        xmin, ymin = min(max(round(x1) + 1, 1), frame.width), min(max(round(y1) + 1, 1), frame.height)
        xmax, ymax = max(min(round(x2), frame.width), xmin), max(min(round(y2), frame.height), ymin)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = class_names[c]
        ET.SubElement(obj, "pose").text = "Unspecified"
        edge = xmin <= 1 or ymin <= 1 or xmax >= frame.width or ymax >= frame.height
        ET.SubElement(obj, "truncated").text = "1" if edge else "0"
        ET.SubElement(obj, "difficult").text = "1" if diff else "0"
        bb = ET.SubElement(obj, "bndbox")
        for k, v in (("xmin", xmin), ("ymin", ymin), ("xmax", xmax), ("ymax", ymax)):
            ET.SubElement(bb, k).text = str(v)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def coco_dataset(frames: Sequence[LabelledFrame], class_names: Sequence[str],
                 description: str = "auto-labelled by det-label") -> dict:
    """A COCO detection ground-truth dict for ``frames``.

    Image ids are ``1..N`` in order, annotation ids ``1..M``, category ids ``1..C`` (label ``i`` is
    category ``i + 1``); ``bbox`` is ``[x, y, w, h]`` in pixels (2 decimals), ``area = w * h``,
    ``iscrowd`` from ``frame.difficult`` (else 0); ``file_name`` is relative to ``images/``;
    ``description`` goes to ``info``.
    """
    images, anns = [], []
    for image_id, f in enumerate(frames, 1):
        images.append({"id": image_id, "file_name": f.file_name, "width": f.width, "height": f.height,
                       "frame_index": f.index})
        for (x1, y1, x2, y2), c, crowd in zip(f.dets.boxes.tolist(), f.dets.labels.tolist(), f.difficult_flags()):
            bw, bh = round(x2 - x1, 2), round(y2 - y1, 2)
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": c + 1,
                         "bbox": [round(x1, 2), round(y1, 2), bw, bh], "area": round(bw * bh, 2),
                         "iscrowd": int(crowd)})
    return {"info": {"description": description}, "images": images,
            "annotations": anns,
            "categories": [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(class_names)]}


def write_dataset(out: Path, fmt: str, frames: Sequence[LabelledFrame], n_val: int,
                  class_names: Sequence[str], header: str = "") -> Path:
    """Write the labels, split lists and ``data.yaml`` for frames already saved under ``out/images``,
    the last ``n_val`` frames forming the val split (:func:`write_splits`).

    Args:
        out: dataset root.
        fmt: ``voc``, ``yolo`` or ``coco``.
        frames: the labelled frames in source order.
        n_val: how many of the last ``frames`` form the val split.
        class_names: the dataset's classes (label ``i`` is ``class_names[i]``).
        header: comment lines written at the top of ``data.yaml`` (without ``#``).

    Returns:
        The ``data.yaml`` path.

    Raises:
        ValueError: unknown ``fmt``.
    """
    splits = {"train": list(frames[:len(frames) - n_val]), "val": list(frames[len(frames) - n_val:])}
    return write_splits(out, fmt, splits, class_names, header)


def write_splits(out: Path, fmt: str, splits: Mapping[str, Sequence[LabelledFrame]], class_names: Sequence[str],
                 header: str = "", description: str = "auto-labelled by det-label") -> Path:
    """Write the labels, split lists and ``data.yaml`` for frames already saved under ``out/images``.

    Args:
        out: dataset root.
        fmt: ``voc``, ``yolo`` or ``coco``.
        splits: split name (``train``, ``val``, ``test``) -> its frames, in order; a frame (same stem)
            may be in several splits: its label file is written once.
        class_names: the dataset's classes (label ``i`` is ``class_names[i]``), in this order in
            ``data.yaml`` and (category ids ``1..C``) the COCO files.
        header: comment lines written at the top of ``data.yaml`` (without ``#``).
        description: the COCO files' ``info.description``.

    Returns:
        The ``data.yaml`` path.

    Raises:
        ValueError: unknown ``fmt`` or split name.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format '{fmt}' is not one of {', '.join(FORMATS)}")
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"split names {bad} are not among {', '.join(SPLITS)}")
    frames = list({f.stem: f for fs in splits.values() for f in fs}.values())
    data: dict = {"path": ".", "format": fmt}
    if fmt == "voc":
        labels = out / LABEL_DIRS["voc"]
        labels.mkdir(parents=True, exist_ok=True)
        for f in frames:
            (labels / f"{f.stem}{LABEL_SUFFIXES['voc']}").write_text(
                voc_xml(f, class_names, IMAGES_DIR, (out / IMAGES_DIR / f.file_name).resolve()), encoding="utf-8")
        for split, fs in splits.items():
            (out / f"{split}.txt").write_text("".join(f"{f.stem}\n" for f in fs), encoding="utf-8")
        data.update({s: f"{s}.txt" for s in splits}, images=IMAGES_DIR, labels=LABEL_DIRS["voc"])
    elif fmt == "yolo":
        labels = out / LABEL_DIRS["yolo"]
        writer = YoloTxtWriter(labels, is_video=False, stem="")
        for f in frames:
            writer.write(f.index, f.file_name, (f.height, f.width), f.dets)
        (labels / "classes.txt").write_text("".join(f"{n}\n" for n in class_names), encoding="utf-8")
        for split, fs in splits.items():  # "./" paths: Ultralytics resolves them against the list file
            (out / f"{split}.txt").write_text("".join(f"./{IMAGES_DIR}/{f.file_name}\n" for f in fs),
                                              encoding="utf-8")
        data.update({s: f"{s}.txt" for s in splits}, images=IMAGES_DIR, labels=LABEL_DIRS["yolo"])
    else:
        (out / COCO_DIR).mkdir(parents=True, exist_ok=True)
        for split, fs in splits.items():
            (out / COCO_DIR / f"{split}.json").write_text(
                json.dumps(coco_dataset(fs, class_names, description)) + "\n", encoding="utf-8")
        data.update({s: f"{COCO_DIR}/{s}.json" for s in splits}, images=IMAGES_DIR)
    data["names"] = list(class_names)
    path = out / "data.yaml"
    comments = "".join(f"# {ln}\n" for ln in header.splitlines())
    path.write_text(comments + yaml.safe_dump(data, sort_keys=False, default_flow_style=None),
                    encoding="utf-8")
    return path
