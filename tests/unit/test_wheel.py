"""gpulet as a user installs it: `pip install .` from a clean copy of the tree into a fresh
virtualenv, through the standard build backend (setup.py's steps: the kubelet API modules, the
region's extension, the limiter library), then run from outside any source tree. Needs a C
compiler and PyPI (or a mirror), as such an install does."""

from __future__ import annotations

import email.parser
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from deviceplugin.api.generate import runtime_floors
from tests.source_tree import ROOT, copy_source_tree, outside_env, run_outside

UUID = "GPU-8b0b9d22-4d8e-8e2a-3f1c-5b6a9e0d7c41"
# ELF e_machine of what this machine runs.
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    src = copy_source_tree(base / "src")
    prefix = base / "venv"
    python = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([python, "-m", "venv", str(prefix)], check=True, env=outside_env())
    pip = [str(prefix / "bin" / "pip"), "--disable-pip-version-check"]
    proc = run_outside([*pip, "install", str(src)], base, timeout=600)
    assert proc.returncode == 0, f"pip install . failed:\n{proc.stdout}\n{proc.stderr}"
    shutil.rmtree(src)  # nothing may come from the tree it was built from
    return prefix


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_outside([str(venv / "bin" / "gpulet"), *args], cwd)


def _dist_info(venv: Path) -> Path:
    (info,) = venv.glob("lib/python3*/site-packages/gpulet-*.dist-info")
    return info


def _elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", f"{path} is not an ELF file"
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def test_the_demo_runs_from_outside_the_tree(venv: Path, tmp_path: Path) -> None:
    proc = _run(venv, tmp_path, "demo")
    assert proc.returncode == 0, proc.stderr
    assert "NVIDIA_VISIBLE_DEVICES" in proc.stdout
    assert "does not fit" in proc.stdout


def test_the_limiter_library_and_setup_come_with_the_install(venv: Path, tmp_path: Path) -> None:
    path = _run(venv, tmp_path, "limiter", "path")
    assert path.returncode == 0, path.stderr
    library = Path(path.stdout.strip())
    assert library.is_relative_to(venv), library
    assert _elf_machine(library) == ELF_MACHINE[platform.machine()]

    box = tmp_path / "box"
    setup = _run(venv, tmp_path, "limiter", "setup", str(box), "--device", f"{UUID}:4096:30")
    assert setup.returncode == 0, setup.stderr
    usage = _run(venv, tmp_path, "limiter", "usage", str(box), "--json")
    assert usage.returncode == 0, usage.stderr
    assert UUID in usage.stdout


def test_the_wheel_is_tagged_for_what_it_holds(venv: Path) -> None:
    """Not `py3-none-any`: it holds an abi3 extension and a native library for this platform."""
    wheel = email.parser.Parser().parsestr((_dist_info(venv) / "WHEEL").read_text())
    assert wheel["Root-Is-Purelib"] == "false"
    (tag,) = wheel.get_all("Tag") or []
    machine = platform.machine()
    assert re.fullmatch(rf"cp3\d+-abi3-(linux|manylinux\w*)_{machine}", tag), tag
    site = _dist_info(venv).parent
    (extension,) = (site / "native").glob("_region*.so")
    assert extension.name == "_region.abi3.so"
    for binary in (extension, site / "native" / "lib" / "libgpulet-limiter.so"):
        assert _elf_machine(binary) == ELF_MACHINE[machine], binary
    generated = sorted(p.name for p in (site / "deviceplugin" / "api").glob("*_pb2*"))
    assert "deviceplugin_v1beta1_pb2_grpc.py" in generated
    assert "podresources_v1_pb2.pyi" in generated


def test_no_code_generator_is_a_runtime_requirement(venv: Path, tmp_path: Path) -> None:
    proc = run_outside([str(venv / "bin" / "pip"), "show", "gpulet"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    (requires,) = [line for line in proc.stdout.splitlines() if line.startswith("Requires:")]
    names = {canonicalize_name(n.strip()) for n in requires.removeprefix("Requires:").split(",")}
    assert "grpcio" in names
    assert not names & {"grpcio-tools", "mypy-protobuf", "setuptools", "wheel"}, names


def test_the_runtime_floors_are_the_generators() -> None:
    """The generated modules refuse a grpcio or protobuf older than their generator: the
    runtime requirements must not allow one (a pinned generator moved alone fails here)."""
    with (ROOT / "pyproject.toml").open("rb") as f:
        dependencies = [Requirement(r) for r in tomllib.load(f)["project"]["dependencies"]]
    floors = runtime_floors(ROOT / "deviceplugin" / "api")
    assert set(floors) == {"grpcio", "protobuf"}, floors
    for name, floor in floors.items():
        (req,) = [r for r in dependencies if canonicalize_name(r.name) == name]
        lowest = [Version(s.version) for s in req.specifier if s.operator in (">=", "==")]
        assert lowest and min(lowest) >= Version(floor), f"{req}: the modules need {floor}"
