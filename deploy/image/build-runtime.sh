#!/usr/bin/env bash
# Builds gpulet's runtime into PREFIX: a virtualenv with gpulet's wheel and its runtime
# dependencies only (no test extras, no build requirements). The image's Containerfile runs it;
# so does tests/unit/test_image_build.py, on a copy of the tree.
#
#   deploy/image/build-runtime.sh SRC PREFIX
#
# SRC is a source tree this script may write build outputs into. Needs python3 (with venv and
# its headers), a C compiler, and PyPI (or an index mirroring it).
#
# Every third-party distribution comes from a lock: exact versions, wheels only, each checked
# against the lock's sha256 hashes (`make lock` regenerates them; docs/image.md). Nothing is
# resolved at build time: a dependency a lock lacks fails the build.
#
# 1. The runtime virtualenv with deploy/image/requirements.lock.
# 2. A throwaway build environment with deploy/image/build-requirements.lock (setuptools, cffi,
#    the pinned grpcio-tools, mypy-protobuf), in which gpulet's wheel is built by its own build
#    backend, as `pip install .` builds it, but without build isolation (which would fetch
#    unpinned build requirements from the index).
# 3. That wheel into the runtime, without dependencies: pip check fails the build if
#    pyproject.toml names one the lock does not pin.
set -euo pipefail

src=$(cd "${1:?usage: build-runtime.sh SRC PREFIX}" && pwd)
prefix=${2:?usage: build-runtime.sh SRC PREFIX}
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
quiet=(--disable-pip-version-check --no-input --quiet)

"$python" -m venv "$prefix"
prefix=$(cd "$prefix" && pwd)
pip=("$prefix/bin/pip" "${quiet[@]}")
# Python 3.11's venv puts a setuptools beside pip (ensurepip); the runtime needs none.
"${pip[@]}" uninstall -y setuptools
# In hash-checking mode pip refuses any distribution not pinned with == and hashed in the
# lock, transitive ones included.
"${pip[@]}" install --require-hashes --only-binary :all: -r "$src/deploy/image/requirements.lock"

"$python" -m venv "$work/build-env"
"$work/build-env/bin/pip" "${quiet[@]}" install --require-hashes --only-binary :all: \
    -r "$src/deploy/image/build-requirements.lock"
"$work/build-env/bin/pip" "${quiet[@]}" wheel --no-deps --no-build-isolation \
    --check-build-dependencies -w "$work/wheel" "$src"

"${pip[@]}" install --no-deps "$work"/wheel/gpulet-*.whl
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
