# Targets behind ./dev. The virtualenv lives in .venv and is rebuilt when pyproject.toml changes.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# The C parts: the limiter library (LD_PRELOAD) and the region's cffi extension.
CC            ?= cc
NATIVE_CFLAGS := -std=c11 -D_GNU_SOURCE -O2 -g -fPIC -Wall -Wextra -Werror -fvisibility=hidden
LIMITER_SRC   := $(wildcard native/limiter/*.c)
LIMITER_HDR   := $(wildcard native/limiter/*.h)
LIMITER       := native/lib/libgpulet-limiter.so
# Named by soname so they stay needed: before glibc 2.34 the symbol versions that
# native/limiter/glibc_compat.h binds to live in them (since 2.34 they are stubs).
LIMITER_LIBS  := -Wl,--no-as-needed -l:libdl.so.2 -l:libpthread.so.0
REGION_EXT    := native/.region-ext-built

.PHONY: help install native proto kubebox e2e-oldest demo test lint typecheck unit bench clean

help:
	@echo "targets: demo (run gpulet on a simulated node), test (lint + types + all tests), e2e-oldest (the end-to-end tests on Kubernetes 1.31), bench, clean"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

$(LIMITER): $(LIMITER_SRC) $(LIMITER_HDR)
	@mkdir -p native/lib
	$(CC) $(NATIVE_CFLAGS) -shared -o $@ $(LIMITER_SRC) $(LIMITER_LIBS)

$(REGION_EXT): $(STAMP) native/build_region.py native/limiter/region.c native/limiter/region.h
	$(BIN)/python native/build_region.py
	@touch $@

native: $(LIMITER) $(REGION_EXT)

# The kubelet APIs' Python modules, generated from deviceplugin/api/*.proto.
PROTO_OUT := deviceplugin/api/deviceplugin_v1beta1_pb2.py deviceplugin/api/podresources_v1_pb2.py
$(PROTO_OUT) &: $(STAMP) $(wildcard deviceplugin/api/*.proto) deviceplugin/api/generate.py
	$(BIN)/python deviceplugin/api/generate.py

proto: $(PROTO_OUT)

install: $(STAMP) native proto

demo: install
	$(BIN)/gpulet demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The real Kubernetes components the end-to-end tests run (tests/kube): built from the Go
# module proxy once per version into ~/.cache/gpulet/kubebox, reused while it exists.
kubebox: install
	$(BIN)/python -m tests.kube.build

unit: install kubebox
	$(BIN)/pytest

# The longer run: the end-to-end suite against the oldest Kubernetes release gpulet claims.
e2e-oldest: install
	GPULET_KUBEBOX_RELEASE=1.31 $(BIN)/python -m tests.kube.build
	GPULET_KUBEBOX_RELEASE=1.31 $(BIN)/pytest tests/e2e

test: lint typecheck unit

bench: install
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/limiter_overhead.py
	$(BIN)/python bench/device_plugin_latency.py
	$(BIN)/python bench/extender_latency.py
	$(BIN)/python bench/api_footprint.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -rf native/lib native/_region.*.so native/_region.c native/_region.o $(REGION_EXT)
	rm -f deviceplugin/api/*_pb2*.py deviceplugin/api/*_pb2*.pyi

# deploy/image/requirements.lock, all the image installs from PyPI (deploy/image/build-runtime.sh
# installs it with --require-hashes): pyproject.toml's runtime dependencies (not the test extra)
# and its build-system requirements, transitive ones included, each pinned with == and the
# sha256 of every wheel and sdist of that version, resolved by uv for CPython 3.11 on Linux.
# Pins the lock holds are kept while pyproject.toml still allows them: move them with
# `make lock LOCK_ARGS=--upgrade` (all) or `make lock LOCK_ARGS='--upgrade-package grpcio'`.
# It then checks that every pin has a hashed wheel for x86_64 and aarch64. uv (pinned below)
# lives in a throwaway virtualenv under build/lock; needs PyPI. See docs/image.md.
UV_VERSION := 0.13.9
LOCK_ARGS  ?=
LOCK_DIR   := build/lock

.PHONY: lock
lock:
	test -x $(LOCK_DIR)/bin/python || $(PYTHON) -m venv $(LOCK_DIR)
	$(LOCK_DIR)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(LOCK_DIR)/bin/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" >$(LOCK_DIR)/build-system.txt
	$(LOCK_DIR)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	    --python-platform linux --custom-compile-command 'make lock' $(LOCK_ARGS) \
	    -o deploy/image/requirements.lock pyproject.toml $(LOCK_DIR)/build-system.txt
	for arch in x86_64 aarch64; do \
	    $(LOCK_DIR)/bin/pip download -q --disable-pip-version-check -d $(LOCK_DIR)/wheels-$$arch \
	        --require-hashes --only-binary :all: --no-deps --python-version 3.11 \
	        --implementation cp --abi cp311 --abi abi3 --abi none \
	        $$(for v in 2_17 2_28 2_31 2_34 2_36; do echo --platform manylinux_$${v}_$$arch; done) \
	        --platform manylinux2014_$$arch -r deploy/image/requirements.lock || exit 1; \
	done
	rm -rf $(LOCK_DIR)/wheels-x86_64 $(LOCK_DIR)/wheels-aarch64
