"""Session set-up shared by every test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.cuda import build_cuda_client, build_fake_cuda
from tests.needs import asan_runtime, c_compiler

ROOT = Path(__file__).resolve().parent.parent
# The build backend's outputs in the tree (setup.py, through the editable install) and what
# each is built from.
BUILD_OUTPUTS = {
    "native/_region.*.so": ["native/build_region.py", "native/limiter/region.[ch]"],
    "native/lib/libgpulet-limiter.so": ["native/build_limiter.py", "native/limiter/*.[ch]"],
    "deviceplugin/api/*_pb2*.py": ["deviceplugin/api/generate.py", "deviceplugin/api/*.proto"],
}


def stale_build_outputs(root: Path) -> list[str]:
    """The build outputs under `root` that are missing or older than what they are built from."""
    stale: list[str] = []
    for output, inputs in BUILD_OUTPUTS.items():
        built = list(root.glob(output))
        newest = max(p.stat().st_mtime for pattern in inputs for p in root.glob(pattern))
        if not built or min(p.stat().st_mtime for p in built) < newest:
            stale.append(output)
    return stale


def pytest_sessionstart(session: pytest.Session) -> None:
    """The tests run the tree's code: its build outputs must be current (`make native` reruns
    the build backend's steps, as `./dev test` does)."""
    if stale := stale_build_outputs(ROOT):
        raise pytest.UsageError(
            f"build outputs missing or older than their sources: {', '.join(stale)}; "
            "run `make native`"
        )


# ---- the fake CUDA driver and its client (tests/fakes/cuda), plain and sanitized -----------


def _compiler_or_skip(sanitize: bool) -> None:
    c_compiler()
    if sanitize:
        asan_runtime()


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
