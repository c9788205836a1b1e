"""A clean copy of the source tree: what a fresh clone (or `docker build`'s context) holds,
without the build outputs an editable install wrote into this one."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def source_files() -> list[str]:
    """The tracked files and the new ones git does not ignore."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    return [name for name in out.decode().split("\0") if name and (ROOT / name).is_file()]


def copy_source_tree(dst: Path) -> Path:
    """Copies the source files into `dst` (skips the test outside a git checkout)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of the source files")
    for name in source_files():
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, dst / name)
    return dst


def outside_env() -> dict[str, str]:
    """This environment without what ties a process to the tests' virtualenv and tree."""
    return {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}


def run_outside(
    argv: list[str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Runs `argv` in `cwd` with outside_env(), its output captured as text."""
    return subprocess.run(
        argv,
        cwd=cwd,
        env=outside_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
