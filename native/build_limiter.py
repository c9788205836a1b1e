"""How the limiter library, native/lib/libgpulet-limiter.so, is compiled: the one place that
names its sources, flags and libraries. The build backend (setup.py) compiles it into the wheel
and, for an editable install, into native/lib/; the tests compile variants (sanitizers) from the
same command. Standard library only: it runs inside the build backend.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent / "limiter"
SONAME = "libgpulet-limiter.so"
#: Where the library sits inside the installed package (what `gpulet limiter path` prints).
PACKAGE_PATH = ("native", "lib", SONAME)
CFLAGS = (
    "-std=c11",
    "-D_GNU_SOURCE",
    "-g",
    "-fPIC",
    "-shared",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-fvisibility=hidden",
)
# Named by soname so they stay needed: before glibc 2.34 the symbol versions that
# native/limiter/glibc_compat.h binds to live in them (since 2.34 they are stubs).
LIBS = ("-Wl,--no-as-needed", "-l:libdl.so.2", "-l:libpthread.so.0")


class CompilerNotFound(RuntimeError):
    """No C compiler: neither $CC nor `cc` is on the PATH."""


def compiler() -> list[str] | None:
    """The compiler command ($CC split like a shell would, else `cc`), or None if absent."""
    command = shlex.split(os.environ.get("CC") or "cc")
    if not command or shutil.which(command[0]) is None:
        return None
    return command


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c"))


def command(out: Path, optimize: str = "-O2", extra: Sequence[str] = ()) -> list[str]:
    """The whole compiler command line that writes the library to `out`."""
    cc = compiler()
    if cc is None:
        raise CompilerNotFound("no C compiler ($CC, else cc) on PATH")
    return [
        *cc,
        *CFLAGS,
        optimize,
        *extra,
        "-o",
        str(out),
        *(str(p) for p in sources()),
        *LIBS,
    ]


def build(out: Path, optimize: str = "-O2", extra: Sequence[str] = ()) -> Path:
    """Compiles the library into `out` (replaced whole, so that a process that loaded the
    previous one keeps it); RuntimeError with the compiler's message if it fails."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    argv = command(staged, optimize, extra)
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        staged.unlink(missing_ok=True)
        raise RuntimeError(f"{shlex.join(argv)} failed:\n{proc.stderr}")
    os.replace(staged, out)
    return out
