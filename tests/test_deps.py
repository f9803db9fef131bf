"""Optional dependencies and devices: the one-line "needs the [extra]" stop of det-train/det-export/
det-bench and of .pt weights without PyTorch, ``--device cuda:N`` parsing, and the messages of a
CUDA request that ONNX Runtime cannot serve (its provider list and the installed distributions are
faked here: the tests check the message logic, never a GPU result)."""

from __future__ import annotations

import configparser
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from det_toolkit.runtime.backends import BackendError
from det_toolkit.runtime.backends import onnx_backend as ob
from det_toolkit.runtime.deps import (
    EXPORT,
    ORT_GPU_FIX,
    TRAIN,
    Extra,
    MissingExtraError,
    missing_modules,
    require_extra,
)
from det_toolkit.runtime.device import DEVICE, parse_device
from tests.conftest import make_synthetic

ROOT = Path(__file__).resolve().parents[1]
#: ``python -c`` prefix: torch and torchvision cannot be imported (an edge box without them).
BLOCK_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {"torch", "torchvision"}:
            raise ImportError(f"{name} is blocked: edge box without torch")
sys.meta_path.insert(0, NoTorch())
"""


def console_script(command: str) -> tuple[str, str]:
    """``(module, attribute)`` of ``command``'s console script in setup.cfg."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].splitlines()
                   if " = " in line)
    module, _, attr = scripts[command].partition(":")
    return module, attr


def launch_code(command: str) -> str:
    """Python source that runs ``command``'s console-script target as pip's launcher does."""
    module, attr = console_script(command)
    return f"sys.argv[0] = {command!r}\nfrom {module} import {attr}\nsys.exit({attr}())\n"


def run_blocked(code: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run ``code`` after :data:`BLOCK_TORCH` in a fresh interpreter with ``sys.argv[1:] = args``."""
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code, *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_require_extra() -> None:
    require_extra(TRAIN, "det-train")  # this environment has every extra
    assert missing_modules(["json", "no_such_module_xyz"]) == ["no_such_module_xyz"]
    with pytest.raises(MissingExtraError) as e:
        require_extra(Extra("x", "Nothing", ("json", "no_such_module_xyz")), "det-x")
    assert str(e.value) == 'det-x needs Nothing: pip install "det-toolkit[x]" (missing: no_such_module_xyz)'


@pytest.mark.parametrize(("command", "args", "extra"), [
    ("det-train", ["--data", "x.yaml"], TRAIN),
    ("det-export", ["x.pt"], EXPORT),
    ("det-bench", ["--data", "x.yaml", "--models", "m"], EXPORT),
])
def test_commands_stop_with_one_line_without_torch(command: str, args: list[str], extra: Extra) -> None:
    """As the console scripts run them; nothing heavy is imported before the check."""
    proc = run_blocked(launch_code(command), *args)
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f'Error: {command} needs {extra.provides}: pip install "det-toolkit[{extra.name}]" '
        "(missing: torch, torchvision)"]


def test_pt_weights_without_torch_name_the_train_extra(tmp_path: Path) -> None:
    """load_backend (det-run, det-eval, det-label teachers) of a .pt without PyTorch: a BackendError
    naming [train], raised before anything imports torch."""
    (tmp_path / "best.pt").write_bytes(b"not read")
    proc = run_blocked("from det_toolkit.runtime.backends import load_backend\n"
                       "try:\n    load_backend(sys.argv[1])\n"
                       "except Exception as e:\n    print(type(e).__name__, e)\n", str(tmp_path / "best.pt"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ('BackendError best.pt (a PyTorch checkpoint) needs PyTorch: pip install '
                                   '"det-toolkit[train]" (missing: torch, torchvision); or give its .onnx export')


def test_det_eval_pt_without_torch_names_the_train_extra(tmp_path: Path) -> None:
    """det-eval of a .pt in an install without PyTorch: one error line naming [train]."""
    data = make_synthetic(tmp_path / "d", n_train=1, n_val=1)
    (tmp_path / "best.pt").write_bytes(b"not read")
    proc = run_blocked(launch_code("det-eval"), "--weights", str(tmp_path / "best.pt"), "--data", str(data),
                       "--project", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert 'needs PyTorch: pip install "det-toolkit[train]"' in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_parse_device() -> None:
    assert parse_device("auto") == ("auto", None) and parse_device(" CPU ") == ("cpu", None)
    assert parse_device("cuda") == ("cuda", None) and parse_device("cuda:1") == ("cuda", 1)
    for bad in ("gpu", "cuda:", "cuda:x", "cuda:-1", "cpu:0", "mps", ""):
        with pytest.raises(ValueError, match="use auto, cpu, cuda or cuda:N"):
            parse_device(bad)

    @click.command()
    @click.option("--device", type=DEVICE, default="auto")
    def cmd(device: str) -> None:
        click.echo(device)

    assert CliRunner().invoke(cmd, ["--device", "CUDA:2"]).output == "cuda:2\n"
    result = CliRunner().invoke(cmd, ["--device", "gpu"])
    assert result.exit_code == 2 and "Invalid value for '--device': unknown device 'gpu'" in result.output


def test_det_run_device_flag_is_checked_at_the_boundary(tmp_path: Path) -> None:
    from det_toolkit.runtime.cli import main

    result = CliRunner().invoke(main, ["x.jpg", "--weights", str(tmp_path / "m.onnx"), "--device", "cuda:one"])
    assert result.exit_code == 2 and "unknown device 'cuda:one'" in result.output
    assert "[auto|cpu|cuda|cuda:N]" in CliRunner().invoke(main, ["--help"]).output


def fake_installed(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str],
                   providers: list[str]) -> None:
    """Pretend ONNX Runtime lists ``providers`` and only the distributions in ``versions`` are installed."""
    def version(name: str) -> str:
        if name in versions:
            return versions[name]
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", version)
    monkeypatch.setattr(ob.ort, "get_available_providers", lambda: list(providers))


CPU_ONLY = [ob.CPU_EP]


@pytest.mark.parametrize(("versions", "reason"), [
    ({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.32.0"}, "both installed and share the 'onnxruntime' module"),
    ({"onnxruntime": "1.32.0"}, "only the CPU build onnxruntime 1.32.0 is installed"),
    ({"onnxruntime-gpu": "1.32.0"}, "although onnxruntime-gpu 1.32.0 is installed"),
])
def test_cuda_request_explains_the_missing_provider(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str],
                                                    reason: str) -> None:
    fake_installed(monkeypatch, versions, CPU_ONLY)
    for device in ("cuda", "cuda:1"):
        with pytest.raises(BackendError) as e:
            ob.providers_for(device)
        msg = str(e.value)
        assert msg.startswith(f"--device {device}: onnxruntime offers no CUDAExecutionProvider "
                              "(available: CPUExecutionProvider)")
        assert reason in msg and ORT_GPU_FIX in msg and msg.endswith("or use --device cpu"), msg
        assert "\n" not in msg
    assert ob.providers_for("auto") == [ob.CPU_EP] and ob.providers_for("cpu") == [ob.CPU_EP]


def test_cuda_provider_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the provider list handed to ONNX Runtime (no session is made): ``cuda:N`` -> device_id N."""
    fake_installed(monkeypatch, {"onnxruntime-gpu": "1.32.0"}, [ob.CUDA_EP, ob.CPU_EP])
    assert ob.providers_for("cuda:1") == [(ob.CUDA_EP, {"device_id": "1"}), ob.CPU_EP]
    assert ob.providers_for("cuda") == ob.providers_for("auto") == [ob.CUDA_EP, ob.CPU_EP]
    assert ob.providers_for("cpu") == [ob.CPU_EP]
    with pytest.raises(BackendError, match="unknown device 'gpu'"):
        ob.providers_for("gpu")


def test_cpu_machine_reports_its_real_state() -> None:
    """On this machine (CPU build of ONNX Runtime only, as constraints.txt installs), ``cuda`` fails
    with the CPU-only reason and the fix command."""
    if ob.CUDA_EP in ob.ort.get_available_providers():
        pytest.skip("ONNX Runtime offers CUDA here")
    with pytest.raises(BackendError, match="only the CPU build onnxruntime .* is installed") as e:
        ob.providers_for("cuda")
    assert ORT_GPU_FIX in str(e.value)
