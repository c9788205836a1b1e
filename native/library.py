"""Where the limiter's LD_PRELOAD library lives once `make native` has built it."""

from __future__ import annotations

from pathlib import Path

#: native/lib/libgpulet-limiter.so, next to this package.
LIBRARY = Path(__file__).resolve().parent / "lib" / "libgpulet-limiter.so"


class LibraryMissingError(Exception):
    """The limiter library has not been built."""


def library_path() -> Path:
    """The absolute path of the limiter library; LibraryMissingError when it is not built."""
    if not LIBRARY.is_file():
        raise LibraryMissingError(f"the limiter library {LIBRARY} is not built: run `make native`")
    return LIBRARY
