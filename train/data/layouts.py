"""Dataset folder layouts: the :class:`DataConfig` of a folder passed as ``--data DIR``
(:func:`folder_config`), for the exports of Ultralytics, Roboflow, CVAT and Pascal VOC."""

from __future__ import annotations

import logging
from pathlib import Path

from det_toolkit.train.config import ConfigError, DataConfig, load_data_config
from det_toolkit.train.data.voc import voc_class_names

log = logging.getLogger(__name__)

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
        names = voc_class_names(root, root / "Annotations")
        if not names:
            raise ConfigError(f"{root}: no class names: no labelmap.txt and no <object><name> in Annotations/")
        return config("Pascal VOC folder", train, have.get("val"), test=have.get("test"), format="voc",
                      images="JPEGImages", labels="Annotations", names=names)
    raise ConfigError(
        f"{root}: not a dataset layout det-train knows. Expected one of: a data YAML (data.yaml); "
        "train/_annotations.coco.json (Roboflow COCO); annotations/*.json + images/ (CVAT/COCO); "
        "Annotations/ + JPEGImages/ (Pascal VOC). Or pass a data YAML with --data")
