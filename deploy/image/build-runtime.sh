#!/usr/bin/env bash
# Builds gpulet's runtime into PREFIX: a virtualenv with gpulet and its runtime dependencies
# only (no test extras), the generated kubelet API modules, the region's extension and the
# limiter library. The image's Containerfile runs it; so does tests/unit/test_image_build.py,
# on a copy of the tree.
#
#   deploy/image/build-runtime.sh SRC PREFIX
#
# SRC is a source tree this script may write build outputs into. Needs python3 (with venv and
# its headers), a C compiler, make, and PyPI (or an index mirroring it).
#
# Every third-party distribution comes from deploy/image/requirements.lock: exact versions,
# wheels only, each checked against the lock's sha256 hashes (`make lock` regenerates it;
# docs/image.md). Nothing is resolved at build time: a dependency the lock lacks fails the
# build. gpulet itself is then built from SRC with the lock's setuptools (no build isolation,
# which would fetch an unpinned one) and installed without dependencies.
set -euo pipefail

src=$(cd "${1:?usage: build-runtime.sh SRC PREFIX}" && pwd)
prefix=${2:?usage: build-runtime.sh SRC PREFIX}
python=${PYTHON:-python3}

"$python" -m venv "$prefix"
prefix=$(cd "$prefix" && pwd)
pip=("$prefix/bin/pip" --disable-pip-version-check --no-input --quiet)
lock="$src/deploy/image/requirements.lock"

# The runtime dependencies first: generating the API modules (grpcio-tools) and building the
# extension (cffi) need two of them. In hash-checking mode pip refuses any distribution not
# pinned with == and hashed in the lock, transitive ones included.
"${pip[@]}" install --require-hashes --only-binary :all: -r "$lock"
"$prefix/bin/python" "$src/deviceplugin/api/generate.py"
"$prefix/bin/python" "$src/native/build_region.py"
make --no-print-directory -C "$src" native/lib/libgpulet-limiter.so
# Then gpulet, once the build outputs are in the tree, so the installed package has them: its
# dependencies are all there already (pip check fails the build if pyproject.toml names one
# the lock does not pin), and its build backend is the lock's setuptools.
"${pip[@]}" install --no-deps --no-build-isolation --check-build-dependencies "$src"
if ! broken=$("$prefix/bin/pip" --disable-pip-version-check check); then
    echo "build-runtime: the lock lacks what gpulet needs (make lock):" >&2
    echo "$broken" >&2
    exit 1
fi

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
