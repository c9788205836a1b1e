"""gpulet's build steps that pyproject.toml cannot declare; everything else is declared there.

`pip install .`, `pip wheel .`, `python -m build` and the editable install (`./dev`) all run
these, through setuptools' own build backend:

- build_py also generates kubelet's gRPC modules and stubs (deviceplugin/api/generate.py);
- build_ext builds the region's cffi extension (`cffi_modules`, against the limited API, so the
  wheel is tagged abi3) and compiles the limiter library (native/build_limiter.py);
- bdist_wheel tags the wheel `cp311-abi3-<platform>` when the extension uses the limited API.

An editable install writes the outputs into the source tree, where the code finds them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# The oldest Python the wheel's abi3 extension is for: pyproject.toml's requires-python.
ABI3_FLOOR = "cp311"


def _load(relative: str) -> ModuleType:
    """A build script by its path, without importing the package it sits in."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPy(build_py):
    def run(self) -> None:
        super().run()
        generate = _load("deviceplugin/api/generate.py")
        out = ROOT if self.editable_mode else Path(self.build_lib)
        try:
            generate.generate(out)
        except generate.GenerateError as e:
            sys.exit(f"gpulet build: {e}")


class BuildExt(build_ext):
    def run(self) -> None:
        super().run()
        limiter = _load("native/build_limiter.py")
        out = (ROOT if self.inplace else Path(self.build_lib)).joinpath(*limiter.PACKAGE_PATH)
        try:
            limiter.build(out)
        except RuntimeError as e:  # no compiler, or it failed
            sys.exit(f"gpulet build: the limiter library: {e}")


class BdistWheel(bdist_wheel):
    def finalize_options(self) -> None:
        extensions = self.distribution.ext_modules or []
        if extensions and all(getattr(ext, "py_limited_api", False) for ext in extensions):
            self.py_limited_api = ABI3_FLOOR
        super().finalize_options()


setup(
    cffi_modules=["native/build_region.py:ffibuilder"],
    cmdclass={"build_py": BuildPy, "build_ext": BuildExt, "bdist_wheel": BdistWheel},
)
