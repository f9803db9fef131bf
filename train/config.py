"""Typed configuration: dataclasses filled from YAML (``yaml.safe_load``) and CLI flags.

Values are checked and coerced by their field types and unknown keys are errors that suggest the
nearest valid key, all by :func:`det_toolkit.runtime.config_utils.from_dict` (shared with det-run's
tracker config); every error names the file or flag and the key.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from det_toolkit.runtime.config_utils import ConfigError, FieldError, from_dict, load_yaml_mapping, nearest, suggest
from det_toolkit.runtime.device import format_device, parse_device, usable_cpus
from det_toolkit.runtime.preprocess import MAX_IMGSZ

__all__ = ["ConfigError", "DataConfig", "TrainConfig", "from_dict", "load_data_config", "load_train_config",
           "expand_env"]

log = logging.getLogger(__name__)

_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(value: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in ``value``."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)


#: Keys other tools write into data YAMLs (Roboflow's ``roboflow:`` block, Ultralytics' ``download:``
#: script, dataset metadata); :func:`load_data_config` ignores them with one note.
FOREIGN_DATA_KEYS = frozenset({"roboflow", "download", "license", "url", "author", "version", "date",
                               "description", "info", "channels", "kpt_shape", "flip_idx", "minival"})


@dataclass
class DataConfig:
    """A dataset described by one YAML file (or detected from a dataset folder, see
    :func:`load_data_config`).

    Attributes:
        path: dataset root; ``${VAR:-default}`` is expanded; a relative path resolves against the
            YAML file's folder; empty or absent: the YAML file's folder.
        train / val / test: a split, resolved against ``path`` (:meth:`split_path`): a directory of
            images, a ``.txt`` list of image stems or image paths, a list of those (Ultralytics), or
            (COCO) a ``.json`` annotation file.
        format: ``coco``, ``voc``, ``yolo`` or ``auto`` (detected from the split and label files).
        names: class names in label order. Required for YOLO; for VOC the order of the names defines
            the label ids (any ``<name>`` not listed is reported); for COCO optional (default: the
            categories sorted by id, an unused super-category dropped).
        nc: number of classes (Ultralytics); checked against ``names``; alone it names the classes
            ``class_0 .. class_{nc-1}`` (Ultralytics' rule).
        images: image folder under ``path`` (list-file splits).
        labels: label folder under ``path`` (VOC ``.xml`` / YOLO ``.txt``), mirroring ``images``;
            default ``annotations`` for VOC and ``labels`` for YOLO. Images outside ``images`` find
            their label by Ultralytics' rule: the last ``images`` folder of the path replaced by it.
        source: the file (or folder) this config came from, for messages.

    Raises:
        FieldError: a bad ``format``, ``nc`` that disagrees with ``names``, duplicate names.
    """

    path: str
    train: str | list[str]
    val: str | list[str]
    test: str | list[str] | None = None
    format: str = "auto"
    names: list[str] = field(default_factory=list)
    nc: int | None = None
    images: str = "images"
    labels: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.format not in ("auto", "coco", "voc", "yolo"):
            raise FieldError("format", f"'{self.format}' is not one of auto, coco, voc, yolo")
        if self.nc is not None:
            if self.nc < 1:
                raise FieldError("nc", f"must be >= 1, got {self.nc}")
            if self.names and self.nc != len(self.names):
                raise FieldError("nc", f"nc: {self.nc} but names lists {len(self.names)} classes "
                                       f"{self.names}")
            if not self.names:
                self.names = [f"class_{i}" for i in range(self.nc)]
        for split in ("train", "val", "test"):  # one entry: a plain string, as every reader takes
            value = getattr(self, split)
            if isinstance(value, list) and len(value) == 1:
                setattr(self, split, value[0])
        dups = sorted({n for n in self.names if self.names.count(n) > 1})
        if dups:
            raise FieldError("names", f"duplicate class names {dups}")

    @property
    def root(self) -> Path:
        """The dataset root as an absolute path."""
        return Path(self.path)

    def split(self, name: str) -> str | list[str]:
        """The split spec for ``train``/``val``/``test``; raises :class:`ConfigError` if unset."""
        value = getattr(self, name, None)
        if not value:
            raise ConfigError(f"{self.source}: split '{name}' is not defined")
        return value

    def split_path(self, spec: str) -> Path:
        """Where split entry ``spec`` is: ``root / spec``; when that does not exist and ``spec``
        starts with ``../``, ``root / spec[3:]`` (Ultralytics' ``check_det_dataset`` rule, which makes
        Roboflow's ``train: ../train/images`` work with the YAML inside the dataset folder)."""
        p = Path(spec).expanduser()
        if p.is_absolute():
            return p
        full = Path(os.path.normpath(self.root / p))
        if not full.exists() and spec.startswith("../"):
            alt = self.root / spec[3:]
            if alt.exists():
                return alt
        return full

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints and ``args.yaml``)."""
        return dataclasses.asdict(self)


def _names_list(names: Any, source: str) -> Any:
    """Ultralytics' ``names: {0: a, 1: b}`` as a list; ids must be 0..n-1 (any order)."""
    if not isinstance(names, dict):
        return names
    try:
        ids = {int(k): v for k, v in names.items()}
    except (TypeError, ValueError) as e:
        bad = next(k for k in names if not str(k).strip().lstrip("-").isdigit())
        raise ConfigError(f"{source}: names: class ids must be integers, got {bad!r}") from e
    n = len(ids)
    if sorted(ids) != list(range(n)):
        raise ConfigError(f"{source}: names: class ids must be 0..{n - 1} without gaps, got "
                          f"{', '.join(str(i) for i in sorted(ids))}")
    return [ids[i] for i in range(n)]


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return expand_env(value)
    if isinstance(value, list):
        return [expand_env(v) if isinstance(v, str) else v for v in value]
    return value


def load_data_config(path: str | Path) -> DataConfig:
    """Read a data YAML, or detect the layout of a dataset folder.

    A YAML file: environment variables are expanded, ``path`` resolves against the file's folder
    (absent or empty: the file's folder), ``names`` may be a list or an id->name mapping with ids
    0..n-1, ``nc`` is checked against ``names``, a ``validation`` key is read as ``val``
    (Ultralytics). Keys other tools add (:data:`FOREIGN_DATA_KEYS`, and any unknown key that is not a
    near-miss of a valid one) are ignored with one logged note; a near-miss (``nmaes``) is an error.

    A folder: see :func:`det_toolkit.train.data.layouts.folder_config` (its ``data.yaml``, a Roboflow
    COCO export, a CVAT/COCO ``annotations/*.json`` + ``images/`` export, a Pascal VOC/CVAT VOC
    folder).

    Raises:
        FileNotFoundError: no such file or folder.
        ConfigError: YAML syntax error (file:line), not a mapping, unknown key, bad value, an
            unrecognised folder layout.
    """
    path = Path(path)
    if path.is_dir():
        from det_toolkit.train.data.layouts import folder_config  # layouts imports this module

        return folder_config(path)
    if not path.is_file():
        raise FileNotFoundError(f"data config not found: {path}")
    d = load_yaml_mapping(path)
    if "val" not in d and "validation" in d:
        d["val"] = d.pop("validation")
        log.warning("%s: reading 'validation' as 'val'", path)
    valid = [f.name for f in dataclasses.fields(DataConfig) if f.name != "source"]
    ignored = []
    for k in (k for k in d if k not in valid):
        if k not in FOREIGN_DATA_KEYS and nearest(k, valid):
            raise ConfigError(f"{path}: unknown key '{k}'{suggest(k, valid)}")
        ignored.append(k)
    if ignored:
        log.warning("%s: ignoring keys det-toolkit does not use: %s", path, ", ".join(ignored))
    d = {k: _expand(v) for k, v in d.items() if k not in ignored}
    if d.get("path") in (None, ""):
        d["path"] = "."
    if isinstance(d["path"], str):
        root = Path(d["path"]).expanduser()
        d["path"] = str(root if root.is_absolute() else (path.parent / root).resolve())
    if d.get("names") is not None:
        d["names"] = _names_list(d["names"], str(path))
    else:
        d.pop("names", None)
    d["source"] = str(path)
    return from_dict(DataConfig, d, str(path))


def default_workers() -> int:
    """DataLoader worker processes when none are given: 0 (augment in the training process) on a
    machine that gives this process 2 CPUs or fewer, else 2.

    Worker processes are forked again every epoch (the shuffle is re-seeded per epoch so that
    ``--resume`` is exact) and, on 2 CPUs, compete with the training threads for both cores; the
    measurement is in ``docs/performance.md`` (training, DataLoader workers).
    """
    return 0 if usable_cpus() <= 2 else 2


#: :class:`TrainConfig` keys whose value ``0`` means "chosen from the training data when the run starts"
AUTO_KEYS = ("epochs", "imgsz")


@dataclass
class TrainConfig:
    """Everything ``det-train`` needs; saved as ``args.yaml`` in the run folder and in checkpoints.

    Learning rate is per SGD step at ``batch`` images; warm-up is linear from
    ``warmup_factor * lr`` over ``warmup_epochs``, then (``scheduler``) cosine decay to
    ``lr * lrf`` at the last iteration, a step decay by ``lr_gamma`` at the ``lr_step`` epochs, or
    PyTorch's one-cycle policy (its own warm-up); all per iteration, as torchvision's references.
    ``ema`` keeps an exponential moving average of the weights (decay ramped as
    ``ema_decay * (1 - exp(-updates / ema_tau))``, Ultralytics' ModelEMA), which is then what is
    evaluated and saved. ``patience`` > 0 stops after that many epochs without a better mAP;
    ``save_period`` > 0 also keeps ``weights/epoch<N>.pt``; ``l1`` adds ``l1 * sum(|w|)`` to the loss.
    ``cache`` decodes the images into RAM once, up to ``cache_mib`` MiB (:meth:`cache_budget`: ``auto``
    = half the memory available when the run starts, ``0`` = no cache), the training split first.
    ``data`` is made absolute when a run starts (:func:`det_toolkit.train.trainer.fit`), so that
    ``--resume`` works from any folder.

    ``epochs`` and ``imgsz`` of ``0`` (the defaults) are chosen from the training split when a run
    starts (:func:`det_toolkit.train.run_data.choose_recipe`: epochs from its size, imgsz from its box
    sizes) and printed; any other value, from a flag, ``--cfg`` or the API, is used as given. The run's
    saved config (``args.yaml``, checkpoints' ``train_args``) holds the values used, and ``from_data``
    lists which of them the data chose (set by the trainer; a value given in it is replaced).
    """

    data: str = ""
    model: str = "fasterrcnn_mobilenet_v2_fpn"
    weights_init: str = "auto"
    imgsz: int = 0
    epochs: int = 0
    batch: int = 4
    workers: int = field(default_factory=default_workers)
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    warmup_factor: float = 0.001
    lrf: float = 0.05
    clip_grad: float = 10.0
    scheduler: str = "cosine"
    lr_step: str = ""
    lr_gamma: float = 0.1
    l1: float = 0.0
    ema: bool = True
    ema_decay: float = 0.9999
    ema_tau: float = 200.0
    patience: int = 0
    save_period: int = 0
    aug: str = "default"
    aug_set: str = ""
    show_aug: int = 0
    amp: bool = True
    amp_dtype: str = "fp16"
    trainable_layers: int = 3
    freeze: int = 0
    anchors: str = "auto"
    attention: str = "none"
    class_weights: str = ""
    rpn_pre_nms_test: int = 0
    rpn_post_nms_test: int = 0
    rpn_post_nms_train: int = 0
    roi_batch: int = 0
    max_det: int = 0
    device: str = "auto"
    sync_bn: bool = False
    seed: int = 0
    cache: bool = True
    cache_mib: str = "auto"
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    resume: str = ""
    verbose: bool = False
    from_data: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        checks = {
            "optimizer": (self.optimizer, ("sgd", "adamw")),
            "amp_dtype": (self.amp_dtype, ("fp16", "bf16")),
            "aug": (self.aug, ("none", "light", "default", "strong")),
            "scheduler": (self.scheduler, ("cosine", "step", "onecycle")),
            "anchors": (self.anchors, ("default", "auto")),
            "attention": (self.attention, ("none", "cbam")),
        }
        for key, (val, ok) in checks.items():
            if val not in ok:
                raise FieldError(key, f"'{val}' is not one of {', '.join(ok)}")
        for key in ("imgsz", "epochs"):  # 0: chosen from the data when the run starts
            if getattr(self, key) < 0:
                raise FieldError(key, f"must be >= 1, got {getattr(self, key)}")
        for key, low in (("batch", 1), ("workers", 0), ("patience", 0),
                         ("save_period", 0), ("show_aug", 0), ("trainable_layers", 0), ("freeze", 0),
                         ("rpn_pre_nms_test", 0), ("rpn_post_nms_test", 0), ("rpn_post_nms_train", 0),
                         ("roi_batch", 0), ("max_det", 0), ("momentum", 0), ("weight_decay", 0),
                         ("warmup_epochs", 0), ("warmup_factor", 0), ("lrf", 0), ("clip_grad", 0),
                         ("lr_gamma", 0), ("l1", 0), ("ema_decay", 0), ("ema_tau", 0)):
            if getattr(self, key) < low:
                raise FieldError(key, f"must be >= {low}, got {getattr(self, key)}")
        if self.lr <= 0:
            raise FieldError("lr", f"must be > 0, got {self.lr}")
        try:  # the --device forms of every command (det-run, det-eval, ...)
            self.device = format_device(*parse_device(self.device))
        except ValueError as e:
            raise FieldError("device", str(e)) from e
        if self.imgsz > MAX_IMGSZ:
            raise FieldError("imgsz", f"must be <= {MAX_IMGSZ}, got {self.imgsz}")
        if self.imgsz % 32:
            raise FieldError("imgsz", f"must be a multiple of 32 (the FPN stride), got {self.imgsz}")
        unknown = sorted(set(self.from_data) - set(AUTO_KEYS))
        if unknown:
            raise FieldError("from_data", f"{unknown} are not among the keys chosen from the data: "
                                          f"{', '.join(AUTO_KEYS)}")
        self.cache_budget()
        self.class_weight_values()
        if self.scheduler == "step" and not self.milestones():
            raise FieldError("lr_step", "the step scheduler needs --lr-step (lr_step:), the epochs at "
                                        "which to decay, e.g. 8,11")

    def model_kwargs(self) -> dict[str, Any]:
        """Builder keyword arguments set by flags (0 = keep the model's own default)."""
        names = {"rpn_pre_nms_test": "rpn_pre_nms_top_n_test",
                 "rpn_post_nms_test": "rpn_post_nms_top_n_test",
                 "rpn_post_nms_train": "rpn_post_nms_top_n_train",
                 "roi_batch": "box_batch_size_per_image", "max_det": "box_detections_per_img"}
        kw: dict[str, Any] = {"trainable_layers": self.trainable_layers}
        if self.attention != "none":
            kw["attention"] = self.attention
        kw.update({arg: getattr(self, k) for k, arg in names.items() if getattr(self, k)})
        return kw

    def milestones(self) -> list[int]:
        """``lr_step`` ("8,11") as epochs ``[8, 11]``; raises :class:`ConfigError` if malformed."""
        try:
            return [int(v) for v in self.lr_step.replace(" ", "").split(",") if v]
        except ValueError as e:
            raise FieldError("lr_step", f"expected comma-separated epochs such as 8,11, got "
                                        f"'{self.lr_step}'") from e

    def cache_budget(self) -> float | None:
        """``cache_mib`` in MiB: ``None`` for ``auto`` (the trainer takes half the available memory).

        Raises:
            FieldError: neither ``auto`` nor a finite number ``>= 0``.
        """
        if self.cache_mib.strip().lower() == "auto":
            return None
        try:
            mib = float(self.cache_mib)
        except ValueError:
            mib = math.nan
        if not (math.isfinite(mib) and mib >= 0):
            raise FieldError("cache_mib", f"expected auto or a number of MiB >= 0, got '{self.cache_mib}'")
        return mib

    def class_weight_values(self) -> list[float] | None:
        """``class_weights`` as numbers (``"1,2.5"`` -> ``[1.0, 2.5]``); ``None`` for ``""`` and ``auto``.
        Their count is checked against the classes when the model is built.

        Raises:
            FieldError: not ``auto`` nor comma-separated positive numbers.
        """
        if self.class_weights in ("", "auto"):
            return None
        try:
            values = [float(v) for v in self.class_weights.split(",")]
        except ValueError:
            values = []
        if not values or not all(math.isfinite(v) and v > 0 for v in values):
            raise FieldError("class_weights", f"expected auto or comma-separated positive numbers such as 1,2.5, "
                                              f"got '{self.class_weights}'")
        return values

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields."""
        return dataclasses.asdict(self)


def load_train_config(recipe: str | Path | None, flags: Mapping[str, Any]) -> TrainConfig:
    """det-train's options: the ``--cfg`` YAML recipe (if any), overridden by the flags typed.

    Args:
        recipe: path of a YAML mapping of :class:`TrainConfig` keys, or ``None``.
        flags: values of the flags given on the command line (not click's defaults), by field name.

    A recipe value that a flag overrides is checked too (``epochs: many`` with ``--epochs 1`` is an
    error, not a recipe that silently works until the flag is dropped): each such value is checked in
    place of the flag's, and only an error about that key counts (``scheduler: step`` overridden by
    ``--scheduler cosine`` does not need ``lr_step``).

    Raises:
        FileNotFoundError: no such recipe file.
        ConfigError: YAML syntax error (``recipe.yaml:3: invalid YAML: ...``), unknown key, a bad
            value: ``recipe.yaml: lr: expected a number, got 'abc'`` for a recipe key,
            ``--imgsz: must be >= 1, got -3`` for a flag.
    """
    recipe_values: dict[str, Any] = load_yaml_mapping(recipe) if recipe else {}
    source = str(recipe) if recipe else "command line"
    values = {**recipe_values, **flags}
    cfg = from_dict(TrainConfig, values, source, flags=set(flags))
    for key in sorted(set(recipe_values) & set(flags)):
        try:
            from_dict(TrainConfig, {**values, key: recipe_values[key]}, source, flags=set(flags) - {key})
        except ConfigError as e:
            if isinstance(e.__cause__, FieldError) and e.__cause__.key == key:
                raise
    return cfg
