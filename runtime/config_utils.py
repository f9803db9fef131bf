"""Typed configuration dataclasses filled from YAML files and CLI flags: one mechanism for all of them.

:func:`from_dict` builds any config dataclass (det-train's ``TrainConfig`` and ``DataConfig``, det-run's
``TrackerConfig``) from a mapping: unknown keys are errors that suggest the nearest valid key, and every
value is checked and coerced against its field's type hint by :func:`coerce` (PyYAML reads ``1e-3`` as
the string ``'1e-3'``; it becomes a float; ``"12"`` an int for an ``int`` field; ``1.5`` for an ``int``
field, ``abc`` for a ``float`` one, a list where a scalar belongs or ``null`` for a required value are
errors). Every error names its source: ``recipe.yaml: lr: expected a number, got 'abc'``, or the flag,
``--imgsz: must be >= 1, got -3``. :func:`load_yaml_mapping` reads a YAML file with a one-line error
(file and line) on a syntax error.

Torch-free (standard library + PyYAML), in the runtime layer so that both ``runtime`` and ``train`` use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration file or flag is invalid; the message names the source (file or flag) and the key."""


class FieldError(ConfigError):
    """The value of one config key is invalid; :func:`from_dict` prefixes the source it came from.

    Raised by :func:`coerce` and by config dataclasses' ``__post_init__`` checks.

    Attributes:
        key: the config key (field name).
        problem: what is wrong, e.g. ``"must be >= 1, got -3"``.
    """

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def nearest(key: str, valid: Collection[str]) -> str | None:
    """The valid key ``key`` is most likely a typo of (``difflib`` ratio >= 0.5), or ``None``."""
    near = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.5)
    return near[0] if near else None


def suggest(key: str, valid: Collection[str]) -> str:
    """`` (did you mean 'X'?)`` for the :func:`nearest` valid key, else the list of valid keys."""
    near = nearest(key, valid)
    return f" (did you mean '{near}'?)" if near else f" (valid keys: {', '.join(valid)})"


def show(value: Any) -> str:
    """A config value as a user wrote it in YAML: ``'abc'``, ``1.5``, ``null``, ``true``, ``a list [1, 2]``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return f"a list {list(value)!r}"
    if isinstance(value, Mapping):
        return f"a mapping {dict(value)!r}"
    return repr(value)


_EXPECT = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}


def _expected(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join("null" if a is type(None) else _expected(a) for a in args)
    if origin is list:
        return f"a list of {_expected(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return _EXPECT.get(tp, getattr(tp, "__name__", str(tp)))


def _scalar(value: Any, tp: type) -> Any:
    """Coerce one scalar to ``tp`` (``int``, ``float``, ``bool``, ``str``); raises ``ValueError``."""
    if isinstance(value, (list, tuple, Mapping)) or value is None:
        raise ValueError
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError
    if isinstance(value, bool):  # True is an int to Python, never a number to a user
        raise ValueError
    if tp is str:
        if isinstance(value, (str, int, float)):
            return str(value)
        raise ValueError
    if tp is float:
        out = float(value.strip() if isinstance(value, str) else value)
        if not math.isfinite(out):
            raise ValueError
        return out
    if tp is int:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                value = float(value.strip())
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError
    return value


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type hint ``tp`` and convert it.

    Supported hints: ``int``, ``float``, ``bool``, ``str``, ``list[X]``, unions of these and ``None``
    (``X | None``), ``Any``. Conversions: numeric strings to ``int``/``float`` (``'1e-3'`` -> ``0.001``),
    integral floats to ``int`` (``12.0`` -> ``12``), numbers to ``str``, ``true/false/yes/no/on/off/1/0``
    to ``bool``. Never converted: ``bool`` to a number, a non-integral float to ``int``, a list or
    mapping to a scalar, ``null`` to anything but an optional field, NaN/inf to a number.

    Raises:
        FieldError: ``key: expected <type>, got <value>``.
    """
    if tp is Any:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    try:
        if origin in (typing.Union, types.UnionType):
            if value is None and type(None) in args:
                return None
            for a in (a for a in args if a is not type(None)):
                try:
                    return coerce(value, a, key)
                except FieldError:
                    continue
            raise ValueError
        if origin is list or tp is list:
            if not isinstance(value, (list, tuple)):
                raise ValueError
            item = args[0] if args else Any
            return [coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return _scalar(value, tp)
    except (ValueError, TypeError, OverflowError):
        pass
    raise FieldError(key, f"expected {_expected(tp)}, got {show(value)}")


def from_dict(cls: type[T], d: Mapping[str, Any], source: str, flags: Collection[str] = ()) -> T:
    """Build config dataclass ``cls`` from ``d`` with every value checked and coerced by its field's type.

    Args:
        cls: a dataclass whose field annotations :func:`coerce` supports.
        d: values by field name (a YAML mapping, CLI flags, or both merged).
        source: where ``d`` came from, for messages (a file path, ``"command line"``).
        flags: keys of ``d`` that came from command-line flags: their errors name the flag
            (``--imgsz``) instead of ``source``.

    Raises:
        ConfigError: ``<source>: unknown key 'X' (did you mean 'Y'?)``, ``<source>: missing required
            key 'X'``, ``<source>: X: expected a number, got 'abc'``, or a ``__post_init__`` check
            (:class:`FieldError`) prefixed the same way.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]

    def where(key: str) -> str:
        return f"--{key.replace('_', '-')}" if key in flags else f"{source}: {key}"

    for k in d:
        if k not in fields:
            raise ConfigError(f"{source}: unknown key '{k}'{suggest(str(k), list(fields))}")
    missing = [n for n, f in fields.items() if n not in d and f.init and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing required key '{missing[0]}'")
    kw = {}
    for k, v in d.items():
        try:
            kw[k] = coerce(v, hints[k], k)
        except FieldError as e:
            raise ConfigError(f"{where(k)}: {e.problem}") from e
    try:
        return cls(**kw)
    except FieldError as e:
        raise ConfigError(f"{where(e.key)}: {e.problem}") from e


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file (``yaml.safe_load``) that must hold a mapping; an empty file gives ``{}``.

    Raises:
        FileNotFoundError: no such file.
        ConfigError: a YAML syntax error, in one line with the file and the line number
            (``recipe.yaml:3: invalid YAML: mapping values are not allowed here``), a file that is
            not UTF-8 text, or a document that is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from e
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: invalid YAML: {e.problem or e.context}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {show(data)}")
    return {str(k): v for k, v in data.items()}
