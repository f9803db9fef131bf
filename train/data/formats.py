"""Reading a dataset split in any of the supported formats: COCO JSON (:mod:`det_toolkit.train.data.coco`),
Pascal VOC XML (labelImg, :mod:`det_toolkit.train.data.voc`) and YOLO txt
(:mod:`det_toolkit.train.data.yolo`), with validation (:func:`read_split`); which format a dataset
is in (:func:`detect_format`); the images of a split (:func:`list_split_images`) and their label
files (:func:`label_path`). A dataset *folder* is turned into a config by
:func:`det_toolkit.train.data.layouts.folder_config`.

Every reader returns :class:`~det_toolkit.train.data.samples.Sample` objects in one convention:
boxes ``float32 [M, 4]`` ``xyxy`` in absolute, continuous pixel coordinates of the image *as
displayed* (EXIF orientation applied), labels ``int64 [M]`` 0-based indices into the class names.
Conversions: COCO ``[x, y, w, h]`` -> ``[x, y, x + w, y + h]``; VOC 1-based inclusive pixel indices
-> ``[xmin - 1, ymin - 1, xmax, ymax]`` (Detectron2's convention); YOLO normalised ``cx cy w h`` ->
absolute ``xyxy``.

Every problem is recorded in a :class:`~det_toolkit.train.data.samples.DataReport` with its file
(and line, object or record where it has one) and what was done; one bad record never drops more
than itself. A whole file that cannot be used is a
:class:`~det_toolkit.train.data.samples.DatasetError`; an image that cannot be read, or whose label
file cannot be read, is skipped and counted; a truncated JPEG is kept and counted; one bad record
(YOLO line, VOC object, COCO image record or annotation) is skipped and counted; degenerate and
fully outside boxes are skipped, partly outside ones clipped. The per-format rules are in each
reader's module.
"""

from __future__ import annotations

from pathlib import Path

from det_toolkit.runtime.files import IMAGE_SUFFIXES
from det_toolkit.train.config import ConfigError, DataConfig
from det_toolkit.train.data.coco import read_coco
from det_toolkit.train.data.samples import DataReport, DatasetError, Sample, make_sample, read_image_size
from det_toolkit.train.data.voc import parse_voc
from det_toolkit.train.data.yolo import parse_yolo

#: the annotation formats read here and written by det-label (:mod:`det_toolkit.train.data.writers`)
FORMATS = ("voc", "yolo", "coco")
#: per list-file format: the default label folder under the dataset root (``DataConfig.labels``
#: unset) and the label file suffix; the writers lay datasets out the same way
LABEL_DIRS = {"voc": "annotations", "yolo": "labels"}
LABEL_SUFFIXES = {"voc": ".xml", "yolo": ".txt"}


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
            size = read_image_size(image, report)
            if size is None:
                continue
            lf = label_path(cfg, image, fmt)
            if not lf.is_file():
                report.add(lf, "missing label file", "image kept as background")
                s = make_sample(image, *size, [], [], [], report, [], idx)
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
