"""The image's runtime, as deploy/image/Containerfile builds it: deploy/image/build-runtime.sh
on a copy of the tree, into a fresh virtualenv with the runtime dependencies only, installed
from deploy/image/requirements.lock with their hashes checked. What the image then holds must
run the product (the demo's whole path) without the test extras and without the source tree,
and be exactly what the lock pins."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from tests.needs import readelf
from tests.old_glibc import FLOOR, needed_glibc_versions
from tests.source_tree import copy_source_tree, outside_env
from tests.unit.test_image_pins import LOCK, parse_lock

ROOT = Path(__file__).resolve().parents[2]
BUILD_RUNTIME = ROOT / "deploy" / "image" / "build-runtime.sh"


def _build_runtime(src: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    env = outside_env()
    # The same Python as the tests', from outside their virtualenv, as the image's is.
    env["PYTHON"] = getattr(sys, "_base_executable", sys.executable)
    return subprocess.run(
        [str(src / "deploy/image/build-runtime.sh"), str(src), str(prefix)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("image")
    src, prefix = copy_source_tree(base / "src"), base / "opt-gpulet"
    proc = _build_runtime(src, prefix)
    assert proc.returncode == 0, f"build-runtime.sh failed:\n{proc.stdout}\n{proc.stderr}"
    shutil.rmtree(src)  # the image has no source tree either
    return prefix


def _site_packages(prefix: Path) -> Path:
    (site,) = prefix.glob("lib/python3*/site-packages")
    return site


def test_the_runtime_runs_the_demo_from_the_install_alone(runtime: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(runtime / "bin" / "gpulet"), "demo"],
        cwd=tmp_path,
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "NVIDIA_VISIBLE_DEVICES" in proc.stdout
    assert "does not fit" in proc.stdout


def test_the_runtime_has_no_test_extras_and_no_build_requirements(runtime: Path) -> None:
    site = _site_packages(runtime)
    for package in (
        *("pytest", "hypothesis", "mypy", "kubernetes_validate", "helm_python"),
        *("grpc_tools", "mypy_protobuf", "setuptools"),
    ):
        assert not (site / package).exists(), f"the image would carry {package}"


def test_the_shipped_limiter_loads_on_old_glibc(runtime: Path) -> None:
    readelf()
    library = _site_packages(runtime) / "native" / "lib" / "libgpulet-limiter.so"
    assert max(needed_glibc_versions(library)) <= FLOOR


def test_the_runtime_holds_exactly_what_the_lock_pins(runtime: Path) -> None:
    pins, _ = parse_lock(LOCK.read_text())
    installed: dict[str, str] = {
        canonicalize_name(dist.metadata["Name"]): dist.version
        for dist in metadata.distributions(path=[str(_site_packages(runtime))])
    }
    # pip comes with the virtualenv (from the base image's Python), gpulet from the tree.
    del installed["pip"], installed["gpulet"]
    assert installed == {name: pin.version for name, pin in pins.items()}


def test_the_build_fails_on_a_lock_that_misses_a_dependency(tmp_path: Path) -> None:
    """The lock with kubernetes but none of what kubernetes needs: pip must refuse, not resolve
    the rest from the index."""
    (kubernetes,) = re.findall(r"^kubernetes==.*?(?=^\S)", LOCK.read_text(), re.M | re.S)
    src = tmp_path / "src"
    (src / "deploy" / "image").mkdir(parents=True)
    shutil.copy2(BUILD_RUNTIME, src / "deploy" / "image" / "build-runtime.sh")
    (src / "deploy" / "image" / "requirements.lock").write_text(kubernetes)
    proc = _build_runtime(src, tmp_path / "prefix")
    assert proc.returncode != 0
    assert "--require-hashes mode" in proc.stderr, proc.stderr
    assert not list((tmp_path / "prefix").glob("lib/python3*/site-packages/kubernetes"))
