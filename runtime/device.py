"""The ``--device`` value of every command: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.

:func:`parse_device` is the one parser; backends turn its ``(kind, index)`` into their own device
objects (ONNX Runtime provider options, ``torch.device``). :data:`DEVICE` is the click type of the
options, so a bad value is a usage error naming the flag.
"""

from __future__ import annotations

import os

import click

DEVICE_FORMS = "auto, cpu, cuda or cuda:N (N = GPU index, 0-based)"


def usable_cpus() -> int:
    """Logical CPUs this process may run on: its affinity mask (a container's or ``taskset``'s
    limit), else ``os.cpu_count()``, at least 1."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_device(spec: str) -> tuple[str, int | None]:
    """Split a device spec into ``(kind, index)``.

    ``"auto"`` -> ``("auto", None)`` (CUDA when the backend offers it, else CPU), ``"cpu"`` ->
    ``("cpu", None)``, ``"cuda"`` -> ``("cuda", None)`` (the backend's default GPU), ``"cuda:1"`` ->
    ``("cuda", 1)``. Case and surrounding spaces are ignored.

    Raises:
        ValueError: any other spec (the message lists the accepted forms).
    """
    text = spec.strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return text, None
    kind, sep, index = text.partition(":")
    if kind == "cuda" and sep and index.isdigit():
        return "cuda", int(index)
    raise ValueError(f"unknown device '{spec}'; use {DEVICE_FORMS}")


def format_device(kind: str, index: int | None) -> str:
    """Inverse of :func:`parse_device`: ``("cuda", 1)`` -> ``"cuda:1"``, ``("cpu", None)`` -> ``"cpu"``."""
    return kind if index is None else f"{kind}:{index}"


class DeviceType(click.ParamType):
    """click type of ``--device``: validates with :func:`parse_device` and passes on the normalised
    spec string (``" CUDA:0"`` -> ``"cuda:0"``)."""

    name = "device"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        """Normalised spec; a bad one fails with click's usage error naming the option."""
        try:
            return format_device(*parse_device(str(value)))
        except ValueError as e:
            self.fail(str(e), param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        """``[auto|cpu|cuda|cuda:N]`` in ``--help``."""
        return "[auto|cpu|cuda|cuda:N]"


#: The ``--device`` option type (an instance: click types are used as values).
DEVICE = DeviceType()
