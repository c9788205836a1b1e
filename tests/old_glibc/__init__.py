"""Another glibc laid out under a directory (tests/old_glibc/fetch.sh makes one), to build
test programs against and to start them with, so that the limiter built here can be
preloaded into a process of an older glibc, as it is in a container of an older image."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

#: The oldest glibc the limiter supports: CentOS 7's, the manylinux2014 baseline.
FLOOR = (2, 17)
#: Where tests find the layout: a directory made by tests/old_glibc/fetch.sh.
ENV = "GPULET_OLD_GLIBC"
_MULTIARCH = "x86_64-linux-gnu"


def needed_glibc_versions(library: Path) -> set[tuple[int, ...]]:
    """The GLIBC_x.y[.z] versions a shared object's version-needs section asks for (readelf,
    from binutils)."""
    out = subprocess.run(
        ["readelf", "--version-info", "--wide", str(library)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    needs = out.split("Version needs section", 1)
    if len(needs) != 2:
        raise AssertionError(f"{library} has no version-needs section:\n{out}")
    found = re.findall(r"Name: GLIBC_([\d.]+)", needs[1])
    return {tuple(int(p) for p in version.split(".")) for version in found}


@dataclass(frozen=True)
class OldGlibc:
    root: Path

    @classmethod
    def from_env(cls) -> OldGlibc | None:
        value = os.environ.get(ENV)
        return cls(Path(value)) if value else None

    @property
    def libs(self) -> Path:
        return self.root / "lib" / _MULTIARCH

    @property
    def ld_so(self) -> Path:
        return self.libs / "ld-linux-x86-64.so.2"

    def version(self) -> tuple[int, int]:
        """glibc's version, as its libc.so.6 says when its own loader runs it (the loader's
        --version came in 2.33)."""
        libc = self.libs / "libc.so.6"
        command = [*self.loader(()), str(libc)]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        m = re.search(r"version (\d+)\.(\d+)", out)
        if not m:
            raise RuntimeError(f"{libc}: no version in {out!r}")
        return int(m[1]), int(m[2])

    def compiler_flags(self) -> list[str]:
        """For the host's gcc: headers, start files and libraries from this glibc."""
        usr = self.root / "usr" / "lib" / _MULTIARCH
        return [f"--sysroot={self.root}", f"-B{usr}/", f"-L{usr}", f"-L{self.libs}"]

    def loader(self, lib_dirs: Sequence[Path]) -> list[str]:
        """The command prefix that starts a program on this glibc, finding `lib_dirs` too."""
        path = ":".join(str(d) for d in (self.libs, *lib_dirs))
        return [str(self.ld_so), "--library-path", path]

    @contextmanager
    def compiling(self) -> Iterator[None]:
        """$CC as the host's compiler against this glibc, for as long as the block runs."""
        before = os.environ.get("CC")
        os.environ["CC"] = " ".join([before or "cc", *self.compiler_flags()])
        try:
            yield
        finally:
            if before is None:
                del os.environ["CC"]
            else:
                os.environ["CC"] = before
