"""Typed configuration: dataclasses filled from YAML (``yaml.safe_load``) and CLI flags.

An unknown key is an error that names the file and suggests the nearest valid key.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or flag is invalid; the message names the source and the key."""


def _suggest(key: str, valid: list[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{near[0]}'?)" if near else f" (valid keys: {', '.join(valid)})"


def from_dict(cls: type[T], d: dict[str, Any], source: str) -> T:
    """Build dataclass ``cls`` from ``d``; unknown keys raise :class:`ConfigError` with a suggestion."""
    valid = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    for k in d:
        if k not in valid:
            raise ConfigError(f"{source}: unknown key '{k}'{_suggest(k, valid)}")
    try:
        return cls(**d)
    except TypeError as e:
        raise ConfigError(f"{source}: {e}") from e


_ENV = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def expand_env(value: str) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` in ``value``."""
    return _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), value)


@dataclass
class DataConfig:
    """A dataset described by one YAML file.

    Attributes:
        path: dataset root; ``${VAR:-default}`` is expanded; a relative path resolves against the
            YAML file's folder.
        train / val / test: a split: a ``.txt`` list of image stems or relative paths, a directory of
            images, or (COCO) a ``.json`` annotation file.
        format: ``coco``, ``voc``, ``yolo`` or ``auto`` (detected from the split and label files).
        names: class names in label order. Required for YOLO; for VOC the order of the names defines
            the label ids (any ``<name>`` not listed is reported); for COCO optional (default: the
            categories sorted by id).
        images: image folder under ``path`` (list-file splits).
        labels: label folder under ``path`` (VOC ``.xml`` / YOLO ``.txt``), mirroring ``images``;
            default ``annotations`` for VOC and ``labels`` for YOLO.
    """

    path: str
    train: str
    val: str
    test: str | None = None
    format: str = "auto"
    names: list[str] = field(default_factory=list)
    images: str = "images"
    labels: str | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.format not in ("auto", "coco", "voc", "yolo"):
            raise ConfigError(f"{self.source or 'data config'}: format '{self.format}' is not one of "
                              f"auto, coco, voc, yolo")

    @property
    def root(self) -> Path:
        """The dataset root as an absolute path."""
        return Path(self.path)

    def split(self, name: str) -> str:
        """The split spec for ``train``/``val``/``test``; raises :class:`ConfigError` if unset."""
        value = getattr(self, name, None)
        if not value:
            raise ConfigError(f"{self.source}: split '{name}' is not defined")
        return value

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints and ``args.yaml``)."""
        return dataclasses.asdict(self)


def load_data_config(path: str | Path) -> DataConfig:
    """Read a data YAML, expand environment variables and resolve ``path`` against the file.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: not a mapping, unknown key, bad value.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data config not found: {path}")
    with open(path, encoding="utf-8") as f:
        d = yaml.safe_load(f)
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(d).__name__}")
    d = {k: expand_env(v) if isinstance(v, str) else v for k, v in d.items()}
    if "path" not in d:
        d["path"] = "."
    root = Path(d["path"]).expanduser()
    if not root.is_absolute():
        root = (path.parent / root).resolve()
    d["path"] = str(root)
    if isinstance(d.get("names"), dict):  # Ultralytics style {0: a, 1: b}
        d["names"] = [d["names"][k] for k in sorted(d["names"])]
    d["source"] = str(path)
    return from_dict(DataConfig, d, str(path))


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
    """

    data: str = ""
    model: str = "fasterrcnn_mobilenet_v2_fpn"
    weights_init: str = "auto"
    imgsz: int = 416
    epochs: int = 20
    batch: int = 4
    workers: int = 2
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
    ema: bool = False
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
    anchors: str = "default"
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
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    resume: str = ""

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
                raise ConfigError(f"{key}='{val}' is not one of {', '.join(ok)}")
        for key in ("imgsz", "epochs", "batch"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.scheduler == "step" and not self.milestones():
            raise ConfigError("--scheduler step needs --lr-step, e.g. --lr-step 8,11 (epochs)")
        if self.imgsz % 32:
            raise ConfigError(f"imgsz must be a multiple of 32 (the FPN stride), got {self.imgsz}")

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
            raise ConfigError(f"lr_step='{self.lr_step}' must be comma-separated epochs") from e

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of all fields."""
        return dataclasses.asdict(self)


def increment_path(path: str | Path, exist_ok: bool = False) -> Path:
    """``runs/train/exp`` -> the first of ``exp, exp2, exp3, ...`` that does not exist yet
    (Ultralytics' convention); with ``exist_ok`` the path itself."""
    path = Path(path)
    if exist_ok or not path.exists():
        return path
    n = 2
    while Path(f"{path}{n}").exists():
        n += 1
    return Path(f"{path}{n}")
