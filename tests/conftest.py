"""Session set-up shared by every test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fakes.cuda import build_cuda_client, build_fake_cuda, sanitizers_available
from tests.fakes.nvml import c_compiler

ROOT = Path(__file__).resolve().parent.parent
REGION_SOURCES = [
    ROOT / "native" / "build_region.py",
    ROOT / "native" / "limiter" / "region.c",
    ROOT / "native" / "limiter" / "region.h",
]


def _region_extension_stale() -> bool:
    built = list((ROOT / "native").glob("_region.*.so"))
    newest_source = max(p.stat().st_mtime for p in REGION_SOURCES)
    return not built or min(p.stat().st_mtime for p in built) < newest_source


def pytest_sessionstart(session: pytest.Session) -> None:
    """Build native._region (as `make native` does) when it is missing or older than its
    sources, before any test module imports it."""
    if not _region_extension_stale():
        return
    proc = subprocess.run(
        [sys.executable, str(ROOT / "native" / "build_region.py")],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise pytest.UsageError(f"building native/_region failed:\n{proc.stdout}{proc.stderr}")


# ---- the fake CUDA driver and its client (tests/fakes/cuda), plain and sanitized -----------


def _compiler_or_skip(sanitize: bool) -> None:
    if c_compiler() is None:
        pytest.skip("no C compiler ($CC, else cc) on PATH")
    if sanitize and not sanitizers_available():
        pytest.skip("the C compiler has no libasan.so")


@pytest.fixture(scope="session")
def fake_cuda_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the fake libcuda.so.1."""
    _compiler_or_skip(False)
    return build_fake_cuda(tmp_path_factory.mktemp("fake-cuda"))


@pytest.fixture(scope="session")
def cuda_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _compiler_or_skip(False)
    return build_cuda_client(tmp_path_factory.mktemp("cuda-client"))


@pytest.fixture(scope="session")
def fake_cuda_asan_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _compiler_or_skip(True)
    return build_fake_cuda(tmp_path_factory.mktemp("fake-cuda-asan"), sanitize=True)


@pytest.fixture(scope="session")
def cuda_client_asan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _compiler_or_skip(True)
    return build_cuda_client(tmp_path_factory.mktemp("cuda-client-asan"), sanitize=True)
