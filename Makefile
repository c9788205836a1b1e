# Targets behind ./dev. The virtualenv lives in .venv and is installed again when what gpulet is
# built from changes (BUILD_INPUTS).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# gpulet itself is built by its build backend (setup.py: the kubelet API modules, the region's
# cffi extension, the limiter library), the same build as `pip install .` and the image's; the
# editable install writes its outputs into the tree. A change to what they are built from
# installs again.
BUILD_INPUTS := pyproject.toml setup.py native/build_limiter.py native/build_region.py \
	deviceplugin/api/generate.py $(wildcard native/limiter/*.c native/limiter/*.h deviceplugin/api/*.proto)

.PHONY: help install native proto kubebox e2e-oldest demo test lint typecheck unit bench clean

help:
	@echo "targets: demo (run gpulet on a simulated node), test (lint + types + all tests), e2e-oldest (the end-to-end tests on Kubernetes 1.31), mutate (mutation testing, about 40 minutes), bench, clean"

$(STAMP): $(BUILD_INPUTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# The C parts and the generated modules: rebuilt with the install.
native proto: $(STAMP)

install: $(STAMP)

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

# The older glibc (Debian 11's 2.31) the limiter's tests run on as well, fetched once from
# Debian's archive by tests/old_glibc/fetch.sh (needs apt-get and dpkg-deb: Debian or Ubuntu).
OLD_GLIBC := $(HOME)/.cache/gpulet/glibc-2.31
$(OLD_GLIBC)/.fetched:
	rm -rf $(OLD_GLIBC)
	bash tests/old_glibc/fetch.sh $(OLD_GLIBC)
	touch $@

# GPULET_REQUIRE_ALL=1: a test that needs a C compiler, its ASan runtime, readelf or the older
# glibc fails where one is missing, instead of skipping (tests/needs.py).
unit: install kubebox $(OLD_GLIBC)/.fetched
	GPULET_REQUIRE_ALL=1 GPULET_OLD_GLIBC=$(OLD_GLIBC) $(BIN)/pytest

# The longer run: the end-to-end suite against the oldest Kubernetes release gpulet claims.
e2e-oldest: install
	GPULET_KUBEBOX_RELEASE=1.31 $(BIN)/python -m tests.kube.build
	GPULET_KUBEBOX_RELEASE=1.31 $(BIN)/pytest tests/e2e

test: lint typecheck unit

# Mutation testing (tests/mutation, docs/mutation.md): mutmut over the modules that guard an
# invariant, each against the tests that cover it, and hand-written mutants of the limiter's
# charge arithmetic against the limiter's tests. Survivors and their diffs go to
# build/mutation/survivors.md. About 40 minutes on 2 CPUs; not part of `make test`.
.PHONY: mutate
mutate: install
	$(BIN)/python -m tests.mutation.run $(MUTATE_ARGS)

bench: install
	$(BIN)/python bench/placement.py
	$(BIN)/python bench/limiter_overhead.py
	$(BIN)/python bench/device_plugin_latency.py
	$(BIN)/python bench/extender_latency.py
	$(BIN)/python bench/api_footprint.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
	rm -rf native/lib native/_region.*.so native/_region.c native/_region.o
	rm -f deviceplugin/api/*_pb2*.py deviceplugin/api/*_pb2*.pyi

# The two locks the image is built from (deploy/image/build-runtime.sh installs each with
# --require-hashes): deploy/image/requirements.lock holds pyproject.toml's runtime dependencies
# (not the test extra), deploy/image/build-requirements.lock its build-system requirements,
# transitive ones included, each pinned with == and the sha256 of every wheel and sdist of that
# version, resolved by uv for CPython 3.11 on Linux. Pins a lock holds are kept while
# pyproject.toml still allows them: move them with `make lock LOCK_ARGS=--upgrade` (all) or
# `make lock LOCK_ARGS='--upgrade-package grpcio'`. It then checks that every pin has a hashed
# wheel for x86_64 and aarch64. uv (pinned below) lives in a throwaway virtualenv under
# build/lock; needs PyPI. See docs/image.md.
UV_VERSION := 0.13.9
LOCK_ARGS  ?=
LOCK_DIR   := build/lock
LOCKS      := deploy/image/requirements.lock deploy/image/build-requirements.lock
UV_COMPILE  = $(LOCK_DIR)/bin/uv pip compile --quiet --generate-hashes --python-version 3.11 \
	--python-platform linux --custom-compile-command 'make lock' $(LOCK_ARGS)

.PHONY: lock
lock:
	test -x $(LOCK_DIR)/bin/python || $(PYTHON) -m venv $(LOCK_DIR)
	$(LOCK_DIR)/bin/pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(LOCK_DIR)/bin/python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['build-system']['requires'], sep='\n')" >$(LOCK_DIR)/build-system.txt
	$(UV_COMPILE) -o deploy/image/requirements.lock pyproject.toml
	$(UV_COMPILE) -o deploy/image/build-requirements.lock $(LOCK_DIR)/build-system.txt
	for arch in x86_64 aarch64; do for lock in $(LOCKS); do \
	    $(LOCK_DIR)/bin/pip download -q --disable-pip-version-check -d $(LOCK_DIR)/wheels-$$arch \
	        --require-hashes --only-binary :all: --no-deps --python-version 3.11 \
	        --implementation cp --abi cp311 --abi abi3 --abi none \
	        $$(for v in 2_17 2_28 2_31 2_34 2_36; do echo --platform manylinux_$${v}_$$arch; done) \
	        --platform manylinux2014_$$arch -r $$lock || exit 1; \
	done; done
	rm -rf $(LOCK_DIR)/wheels-x86_64 $(LOCK_DIR)/wheels-aarch64
