"""Generates kubelet's gRPC Python modules and their typed stubs from this folder's .proto files.

The build backend (setup.py) runs it: into the wheel, or into this folder for an editable
install. The generated `*_pb2.py`, `*_pb2_grpc.py` and their `.pyi` stubs are build outputs,
ignored by git. Needs grpcio-tools and mypy-protobuf, which are build requirements only.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

API_DIR = Path(__file__).resolve().parent
ROOT = API_DIR.parents[1]
PROTOS = ("deviceplugin_v1beta1.proto", "podresources_v1.proto")
# What the generated modules check when imported: grpcio and protobuf at least as new as the
# generator that wrote them.
GRPC_FLOOR = re.compile(r"^GRPC_GENERATED_VERSION = '([^']+)'", re.M)
PROTOBUF_FLOOR = re.compile(
    r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
    r"(\d+),\s*(\d+),\s*(\d+),\s*'([^']*)'"
)


class GenerateError(Exception):
    """protoc failed, or a stub plugin is missing."""


def _plugin(kind: str) -> Path:
    """mypy-protobuf's protoc plugin: beside this interpreter (a virtualenv's bin/), else on
    the PATH (where pip puts an isolated build environment's scripts)."""
    beside = Path(sys.executable).parent / f"protoc-gen-{kind}"
    found = beside if beside.exists() else shutil.which(f"protoc-gen-{kind}")
    if found is None:
        raise GenerateError(f"no protoc-gen-{kind} (mypy-protobuf, a build requirement)")
    return Path(found)


def generate(out_root: Path) -> list[Path]:
    """Writes the modules and stubs under `out_root` (as `deviceplugin/api/...`); returns them."""
    from grpc_tools import protoc  # noqa: PLC0415 - a build requirement, absent at runtime

    api_out = out_root / "deviceplugin" / "api"
    api_out.mkdir(parents=True, exist_ok=True)
    plugins = [f"--plugin=protoc-gen-{k}={_plugin(k)}" for k in ("mypy", "mypy_grpc")]
    for name in PROTOS:
        args = [
            "protoc",
            f"-I{ROOT}",
            f"--python_out={out_root}",
            f"--grpc_python_out={out_root}",
            f"--mypy_out={out_root}",
            f"--mypy_grpc_out={out_root}",
            *plugins,
            str(API_DIR / name),
        ]
        if protoc.main(args) != 0:
            raise GenerateError(f"protoc failed for {name}")
    return sorted(api_out.glob("*_pb2*.py*"))


def runtime_floors(api_out: Path) -> dict[str, str]:
    """The oldest grpcio and protobuf the generated modules in `api_out` accept, from the checks
    the generator wrote into them."""
    floors: dict[str, str] = {}
    for module in sorted(api_out.glob("*_pb2*.py")):
        text = module.read_text()
        if grpc := GRPC_FLOOR.search(text):
            floors["grpcio"] = grpc[1]
        if proto := PROTOBUF_FLOOR.search(text):
            floors["protobuf"] = "{}.{}.{}{}".format(*proto.groups())
    return floors
