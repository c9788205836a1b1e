"""What some tests need from the machine: a C compiler, its ASan runtime, binutils' readelf.
Where one is missing those tests skip, except under GPULET_REQUIRE_ALL=1 (`./dev test`, and so
CI), where they fail: a run that skipped them would be green without having checked the C
code, its sanitizers or what the shipped library asks of glibc."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from native.build_limiter import compiler as _compiler

REQUIRE_ALL = "GPULET_REQUIRE_ALL"


def need(ok: bool, what: str) -> None:
    """Go on if `ok`; else skip the test with `what`, or fail it under GPULET_REQUIRE_ALL=1."""
    if ok:
        return
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{what} ({REQUIRE_ALL}=1: nothing may be skipped for want of it)", False)
    pytest.skip(what)


def c_compiler() -> list[str]:
    """The C compiler command ($CC, else cc)."""
    command = _compiler()
    need(command is not None, "no C compiler ($CC, else cc) on PATH")
    assert command is not None
    return command


def asan_runtime() -> str:
    """The path of the C compiler's ASan runtime (which must come first in LD_PRELOAD)."""
    command = c_compiler()
    proc = subprocess.run(
        [*command, "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
    )
    path = proc.stdout.strip()
    need(Path(path).is_absolute(), f"{command[0]} has no ASan runtime (libasan.so)")
    return path


def readelf() -> str:
    path = shutil.which("readelf")
    need(path is not None, "no readelf (binutils)")
    assert path is not None
    return path
