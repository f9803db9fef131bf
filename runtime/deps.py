"""Optional dependencies: which pip extra a command needs, checked before anything heavy is imported.

The base install (``pip install det-toolkit``) is the edge runtime and has no PyTorch; training and
export come with the ``[train]`` and ``[export]`` extras (``setup.cfg``'s ``extras_require``), the
CUDA execution provider of ONNX Runtime with ``[gpu]``. Commands that need an extra call
:func:`require_extra` first, so a missing one is one line naming the ``pip install`` to run, not an
``ImportError`` traceback from deep inside a module. Nothing here imports the packages it checks.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass

#: The requirement of the ``[gpu]`` extra that provides ONNX Runtime's CUDA execution provider.
ORT_GPU_REQUIREMENT = "onnxruntime-gpu>=1.20,<2"
#: The one command that leaves the GPU build of ONNX Runtime as the only owner of the
#: ``onnxruntime`` module (``onnxruntime`` and ``onnxruntime-gpu`` install the same files; whichever
#: was installed last wins, and reinstalling either leaves a mix). ``make setup-gpu`` runs it.
ORT_GPU_FIX = f'pip uninstall -y onnxruntime onnxruntime-gpu && pip install "{ORT_GPU_REQUIREMENT}"'


@dataclass(frozen=True)
class Extra:
    """A pip extra of det-toolkit.

    Attributes:
        name: the extra, as in ``pip install "det-toolkit[name]"``.
        provides: what it brings, in words, for messages (``"PyTorch"``).
        modules: top-level import names of the extra's distributions (``onnxconverter-common`` ->
            ``onnxconverter_common``); ``tests/test_packaging.py`` checks them against the wheel's
            ``Requires-Dist``.
    """

    name: str
    provides: str
    modules: tuple[str, ...]

    @property
    def install(self) -> str:
        """The pip command that installs this extra."""
        return f'pip install "det-toolkit[{self.name}]"'


#: det-train (the training loop, its plots).
TRAIN = Extra("train", "PyTorch", ("torch", "torchvision", "matplotlib"))
#: Running ``.pt`` checkpoints (det-run, det-eval, det-label teachers): part of ``[train]``.
TORCH = Extra("train", "PyTorch", ("torch", "torchvision"))
#: det-export and det-bench (exports checkpoints, then measures them).
EXPORT = Extra("export", "PyTorch and ONNX",
               ("torch", "torchvision", "matplotlib", "onnx", "onnxscript", "onnxslim", "onnxconverter_common"))
#: det-run / det-label ``--ray`` (Ray Core and Ray Data; torch-free).
RAY = Extra("ray", "Ray", ("ray",))
#: det-export ``--triton`` (tritonclient's ``ModelConfig`` protobuf; ``grpc`` is the ``grpcio`` distribution).
TRITON = Extra("triton", "tritonclient's ModelConfig protobuf", ("tritonclient", "grpc"))


class MissingExtraError(ImportError):
    """A command needs an extra that is not installed; the message is one line naming the fix."""


def missing_modules(modules: Iterable[str]) -> list[str]:
    """The names in ``modules`` that cannot be imported here, found with
    :func:`importlib.util.find_spec` (nothing is imported). A module whose lookup raises (e.g. one
    blocked by an import hook) counts as missing."""
    missing = []
    for name in modules:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


def require_extra(extra: Extra, command: str) -> None:
    """Check that every module of ``extra`` is installed before ``command`` imports them.

    Raises:
        MissingExtraError: one or more are missing; the one-line message names the command, what
            it needs and the install command, e.g. ``det-train needs PyTorch: pip install
            "det-toolkit[train]" (missing: torch, torchvision)``.
    """
    missing = missing_modules(extra.modules)
    if missing:
        raise MissingExtraError(f"{command} needs {extra.provides}: {extra.install} "
                                f"(missing: {', '.join(missing)})")


def installed_version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (a pip name), or ``None`` when not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def cuda_provider_problem(available: list[str]) -> str:
    """Why ONNX Runtime offers no ``CUDAExecutionProvider``, and the fix, as one message.

    Reads which of the distributions ``onnxruntime`` (CPU build) and ``onnxruntime-gpu`` are
    installed (:mod:`importlib.metadata`); both own the ``onnxruntime`` module, so with both
    installed the CPU build can shadow the GPU one.

    Args:
        available: ``onnxruntime.get_available_providers()``, quoted in the message.
    """
    cpu, gpu = installed_version("onnxruntime"), installed_version("onnxruntime-gpu")
    head = f"onnxruntime offers no CUDAExecutionProvider (available: {', '.join(available) or 'none'})"
    if cpu and gpu:
        return (f"{head}: onnxruntime {cpu} (CPU build) and onnxruntime-gpu {gpu} are both installed and "
                f"share the 'onnxruntime' module, so the CPU build shadows the GPU one; keep only the GPU "
                f"build: {ORT_GPU_FIX}")
    if gpu:
        return (f"{head}, although onnxruntime-gpu {gpu} is installed: check the NVIDIA driver and the "
                f"CUDA/cuDNN versions this onnxruntime-gpu release needs (ONNX Runtime's CUDA execution "
                f"provider requirements), or reinstall it: {ORT_GPU_FIX}")
    if cpu:
        return f"{head}: only the CPU build onnxruntime {cpu} is installed; install the GPU build: {ORT_GPU_FIX}"
    return f"{head}: neither onnxruntime nor onnxruntime-gpu is installed as a package; {ORT_GPU_FIX}"
