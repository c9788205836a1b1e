"""Generates the gRPC Python modules (and typed stubs) from this folder's .proto files.

Run from the repository root: `python deviceplugin/api/generate.py` (the Makefile's `proto`
target does). The generated `*_pb2.py`, `*_pb2.pyi`, `*_pb2_grpc.py` and `*_pb2_grpc.pyi`
are build outputs, ignored by git.
"""

from __future__ import annotations

import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ("deviceplugin_v1beta1.proto", "podresources_v1.proto")


def main() -> int:
    # mypy-protobuf's plugins sit beside this interpreter (the virtualenv's bin/). They come
    # with the test extras: a runtime-only install (the image) gets the modules, no stubs.
    bindir = Path(sys.executable).parent
    stubs: list[str] = []
    for kind in ("mypy", "mypy_grpc"):
        plugin = bindir / f"protoc-gen-{kind}"
        if plugin.exists():
            stubs += [f"--plugin=protoc-gen-{kind}={plugin}", f"--{kind}_out={ROOT}"]
    for name in PROTOS:
        args = [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={ROOT}",
            f"--grpc_python_out={ROOT}",
            *stubs,
            str(ROOT / "deviceplugin" / "api" / name),
        ]
        if protoc.main(args) != 0:
            print(f"generate: protoc failed for {name}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
