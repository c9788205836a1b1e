"""The limiter library where containers get it: the agent copies `libgpulet-limiter.so` into a
host directory and writes beside it the `ld.so.preload` that names it. The device plugin
bind-mounts both, read-only, into every container that gets a slice, so the host paths must
be the same inside the agent's container and out (docs/install.md)."""

from __future__ import annotations

import filecmp
import os
import shutil
from pathlib import Path

LIBRARY = "libgpulet-limiter.so"
PRELOAD = "ld.so.preload"


def install_limiter(source: Path, directory: Path) -> tuple[Path, Path]:
    """Copy `source` to `directory` (unless the same bytes are there already) and write the
    preload file naming it; (library, preload file). Each is replaced by rename, so a
    container starting meanwhile maps either the old file or the new one, whole."""
    directory.mkdir(parents=True, exist_ok=True)
    library = directory / LIBRARY
    if not (library.exists() and filecmp.cmp(source, library, shallow=False)):
        tmp = directory / f".{LIBRARY}.{os.getpid()}"
        shutil.copyfile(source, tmp)
        tmp.chmod(0o755)
        os.replace(tmp, library)
    preload = directory / PRELOAD
    text = f"{library}\n"
    if not preload.exists() or preload.read_text() != text:
        tmp = directory / f".{PRELOAD}.{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o644)
        os.replace(tmp, preload)
    return library, preload
