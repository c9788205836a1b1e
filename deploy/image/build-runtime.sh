#!/usr/bin/env bash
# Builds gpulet's runtime into PREFIX: a virtualenv with gpulet and its runtime dependencies
# only (no test extras), the generated kubelet API modules, the region's extension and the
# limiter library. The image's Containerfile runs it; so does tests/unit/test_image_build.py,
# on a copy of the tree.
#
#   deploy/image/build-runtime.sh SRC PREFIX
#
# SRC is a source tree this script may write build outputs into. Needs python3 (with venv and
# its headers), a C compiler and make.
set -euo pipefail

src=$(cd "${1:?usage: build-runtime.sh SRC PREFIX}" && pwd)
prefix=${2:?usage: build-runtime.sh SRC PREFIX}
python=${PYTHON:-python3}

"$python" -m venv "$prefix"
prefix=$(cd "$prefix" && pwd)
pip=("$prefix/bin/pip" --disable-pip-version-check --no-input --quiet)

# The package and its runtime dependencies first: generating the API modules (grpcio-tools)
# and building the extension (cffi) need two of them.
"${pip[@]}" install "$src"
"$prefix/bin/python" "$src/deviceplugin/api/generate.py"
"$prefix/bin/python" "$src/native/build_region.py"
make --no-print-directory -C "$src" native/lib/libgpulet-limiter.so
# Again, now that the build outputs are in the tree, so the installed package has them.
"${pip[@]}" install --no-deps --force-reinstall "$src"

# What the DaemonSet and the extender run must be there and import, from the install alone
# (not from a source tree in the working directory).
cd /
"$prefix/bin/gpulet" --help >/dev/null
"$prefix/bin/python" -I - "$prefix" <<'EOF'
import sys
from pathlib import Path

import deviceplugin.api.deviceplugin_v1beta1_pb2_grpc
import native.region  # noqa: F401
from native import library_path

for module in (deviceplugin.api.deviceplugin_v1beta1_pb2_grpc, native.region):
    assert Path(module.__file__).is_relative_to(sys.argv[1]), f"{module.__file__} is not installed"
print(f"build-runtime: limiter at {library_path()}")
EOF
