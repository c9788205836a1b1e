"""The in-container limiter and its shared accounting region.

`native.region` is the region's Python API (over the cffi extension `native._region`, built
by `make native`); `library_path()` finds the limiter's LD_PRELOAD library. This package
imports nothing else of gpulet."""

from native.library import LibraryMissingError, library_path

__all__ = ["LibraryMissingError", "library_path"]
