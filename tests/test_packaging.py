"""The wheel: one import package (``det_toolkit``) with every module and data file, a torch-free base
install with the extras named in the README, the LICENSE, and ``--version`` on every command."""

from __future__ import annotations

import configparser
import email
import email.message
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from det_toolkit import __version__
from det_toolkit.runtime import deps

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("det-train", "det-eval", "det-export", "det-run", "det-label", "det-bench", "det-convert")
EXTRAS = {"train", "export", "ray", "triton", "gpu", "all", "dev"}
#: Distributions only an extra may bring: the base install is the edge runtime.
HEAVY = {"torch", "torchvision", "onnx", "onnxscript", "onnxslim", "onnxconverter-common", "tensorrt",
         "onnxruntime-gpu", "matplotlib"}


def package_dirs() -> dict[str, Path]:
    """``setup.cfg``'s ``package_dir``: import package -> source folder (``det_toolkit.train`` -> ``train/``)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    pairs = [line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines()]
    return {k.strip(): ROOT / v.strip() for k, v in pairs}


def build_wheel(dest: Path) -> Path:
    """Build the project's wheel (``pip wheel --no-deps --no-build-isolation``, the current
    environment's setuptools) from a copy of the sources in ``dest/src``; returns the ``.whl`` path.

    A copy, so the build neither writes ``build/`` into the checkout nor packs stale files an
    earlier build left there, and concurrent builds do not collide.
    """
    src = dest / "src"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in sorted({p.relative_to(ROOT).parts[0] for p in package_dirs().values()}):
        shutil.copytree(ROOT / folder, src / folder, ignore=skip)
    for name in ("setup.cfg", "pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(dest / "dist"), str(src)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (dest / "dist").glob("det_toolkit-*.whl")
    return wheel


def requirements(meta: email.message.Message) -> dict[str | None, dict[str, Requirement]]:
    """``Requires-Dist`` by extra (``None``: the base install): normalised name -> requirement."""
    out: dict[str | None, dict[str, Requirement]] = {}
    for line in meta.get_all("Requires-Dist") or []:
        req = Requirement(line)
        extras = [e for e in sorted(EXTRAS) if req.marker and req.marker.evaluate({"extra": e})]
        for extra in extras or [None]:
            out.setdefault(extra, {})[canonicalize_name(req.name)] = req
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def metadata(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as z:
        return email.message_from_bytes(z.read(f"det_toolkit-{__version__}.dist-info/METADATA"))


def test_wheel_holds_one_package_with_every_module_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {n.split("/")[0] for n in names} == {"det_toolkit", f"det_toolkit-{__version__}.dist-info"}
    expected = set()
    for package, folder in package_dirs().items():
        prefix = package.replace(".", "/")
        expected |= {f"{prefix}/{p.relative_to(folder).as_posix()}" for p in folder.glob("*.py")}
    # every .py below the package folders, sub-folders included: one missing from setup.cfg's
    # `packages` (or lacking __init__.py) is absent from the wheel
    for folder in {p.relative_to(ROOT).parts[0] for p in package_dirs().values()}:
        prefix = "det_toolkit" if folder == "det_toolkit" else f"det_toolkit/{folder}"
        expected |= {f"{prefix}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*.py")
                     if "__pycache__" not in p.parts}
        expected |= {f"{prefix}/{p.relative_to(ROOT / folder).as_posix()}" for p in (ROOT / folder).rglob("*.yaml")}
    expected |= {f"det_toolkit/export/data/{p.name}" for p in (ROOT / "export" / "data").glob("*.txt")}
    assert "det_toolkit/configs/tracker/deepsort.yaml" in expected and len(expected) > 80
    assert sorted(expected - names) == []
    assert f"det_toolkit-{__version__}.dist-info/licenses/LICENSE" in names


def test_base_install_is_torch_free_and_every_extra_exists(metadata: email.message.Message) -> None:
    reqs = requirements(metadata)
    assert set(metadata.get_all("Provides-Extra")) == EXTRAS and set(reqs) == EXTRAS | {None}
    assert reqs[None] and not reqs[None].keys() & HEAVY, reqs[None].keys() & HEAVY
    assert {"onnxruntime", "opencv-python", "numpy", "deep-sort-realtime", "click"} <= reqs[None].keys()
    assert {"torch", "torchvision"} <= reqs["train"].keys() and {"torch", "onnx", "onnxslim"} <= reqs["export"].keys()
    for extra in ("train", "export", "ray", "triton"):  # [all]: everything but the GPU stack
        assert reqs[extra].keys() <= reqs["all"].keys(), extra
    assert {"onnxruntime-gpu", "tensorrt"} <= reqs["gpu"].keys()
    assert metadata["License"] == "Apache-2.0" and metadata["Requires-Python"]
    for extra in reqs.values():  # ranges in the metadata; exact pins live in constraints.txt
        for req in extra.values():
            assert req.specifier and not any(s.operator in ("==", "===") for s in req.specifier), req


def test_extra_checks_match_the_metadata(metadata: email.message.Message) -> None:
    """The modules :mod:`det_toolkit.runtime.deps` checks are the extras' distributions, and the GPU
    fix command installs the ``[gpu]`` extra's onnxruntime-gpu range (as ``make setup-gpu`` does)."""
    reqs = requirements(metadata)

    def dists(extra: deps.Extra) -> set[str]:
        return {canonicalize_name(m) for m in extra.modules}

    assert dists(deps.TRAIN) == reqs["train"].keys() and dists(deps.EXPORT) == reqs["export"].keys()
    assert dists(deps.RAY) == reqs["ray"].keys() and deps.RAY.name == "ray"
    # tritonclient's [grpc] extra brings grpcio, imported as grpc (the protobuf modules import it)
    assert reqs["triton"].keys() == {"tritonclient"} and reqs["triton"]["tritonclient"].extras == {"grpc"}
    assert set(deps.TRITON.modules) == {"tritonclient", "grpc"} and deps.TRITON.name == "triton"
    assert dists(deps.TORCH) <= reqs["train"].keys() and deps.TORCH.name == deps.TRAIN.name == "train"
    gpu = Requirement(deps.ORT_GPU_REQUIREMENT)
    assert gpu.specifier == reqs["gpu"][canonicalize_name(gpu.name)].specifier
    assert f'"{deps.ORT_GPU_REQUIREMENT}"' in deps.ORT_GPU_FIX
    assert f'pip install "{deps.ORT_GPU_REQUIREMENT}"' in (ROOT / "Makefile").read_text()


def test_constraints_pin_every_requirement(metadata: email.message.Message) -> None:
    """constraints.txt (what CI installs) pins one version of every base, train, export and dev
    requirement, inside the metadata's range; nothing of the GPU extra (left to pip on GPU machines)."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: '{line}' is not NAME==VERSION"
            pins[canonicalize_name(name)] = version.strip()
    reqs = requirements(metadata)
    for extra in (None, "train", "export", "ray", "triton", "dev"):
        for name, req in reqs[extra].items():
            assert name in pins, f"constraints.txt lacks {name}"
            assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])
    assert "det-toolkit" not in pins and not reqs["gpu"].keys() & pins.keys()


def test_every_command_has_version() -> None:
    """``det-x --version`` through each console-script target of setup.cfg (as pip's launcher calls it)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].splitlines()
                   if " = " in line)
    assert set(scripts) == set(COMMANDS)
    procs = {}
    for command, target in scripts.items():
        module, attr = target.split(":")
        code = f"import sys; from {module} import {attr}; sys.argv = [{command!r}, '--version']; sys.exit({attr}())"
        procs[command] = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
    for command, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and out.strip() == f"{command}, version {__version__}", (command, out, err)
