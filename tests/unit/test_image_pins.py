"""What the image pulls is pinned: its base image by digest (deploy/image/Containerfile) and its
Python distributions by two locks that must agree with pyproject.toml: deploy/image/
requirements.lock (the runtime dependencies) and build-requirements.lock (the build-system
requirements). No network: the locks are read, not installed (tests/unit/test_image_build.py
installs them)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "deploy" / "image" / "requirements.lock"
BUILD_LOCK = ROOT / "deploy" / "image" / "build-requirements.lock"
CONTAINERFILE = ROOT / "deploy" / "image" / "Containerfile"
PYPROJECT = ROOT / "pyproject.toml"

HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")
# name[:port][/path]:tag@sha256:<64 hex>; the tag stays so that a reader knows what it is.
PINNED_IMAGE = re.compile(r"[^\s@]+:[\w][\w.-]{0,127}@sha256:[0-9a-f]{64}")
# The interpreters the image is built for (docs/image.md): CPython 3.11 on Linux.
TARGETS = [
    {
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "python_version": "3.11",
        "python_full_version": "3.11.0",
        "os_name": "posix",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": machine,
    }
    for machine in ("x86_64", "aarch64")
]
# How uv (`make lock`) marks a pin wanted by a root: pyproject.toml's [project] dependencies,
# or the build-system requirements it reads from a requirements file (`-r FILE`).
VIA_PROJECT = "gpulet (pyproject.toml)"


@dataclass
class Pin:
    name: str
    version: str
    line: int
    hashes: list[str] = field(default_factory=list)
    # uv's annotations: the lock's packages (or roots) that want this one.
    via: list[str] = field(default_factory=list)


def parse_lock(text: str) -> tuple[dict[str, Pin], list[str]]:
    """The lock's pins by canonical name, and what in it is not `name==version --hash=...`."""
    pins: dict[str, Pin] = {}
    problems: list[str] = []
    lines = text.splitlines()
    current: Pin | None = None
    i = 0
    while i < len(lines):
        number, line = i + 1, lines[i]
        i += 1
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            # "    # via a" or "    # via" then "    #   a" lines: annotations of the pin above.
            if current is not None and line[0].isspace():
                comment = stripped.lstrip("#").strip()
                if comment == "via" or comment.startswith("via "):
                    comment = comment.removeprefix("via").strip()
                if comment:
                    current.via.append(comment)
            continue
        logical = line
        while logical.rstrip().endswith("\\") and i < len(lines):
            logical = logical.rstrip()[:-1] + " " + lines[i]
            i += 1
        requirement, _, options = logical.partition(" --")
        tokens = ("--" + options).split() if options else []
        current = None
        try:
            req = Requirement(requirement.strip())
        except InvalidRequirement as e:
            problems.append(f"line {number}: not a requirement: {requirement.strip()!r} ({e})")
            continue
        specs = list(req.specifier)
        if req.url or len(specs) != 1 or specs[0].operator != "==" or "*" in specs[0].version:
            problems.append(f"line {number}: {req} is not pinned with == to one version")
            continue
        name = canonicalize_name(req.name)
        if name in pins:
            problems.append(f"line {number}: {name} is pinned twice")
        current = pins[name] = Pin(name, specs[0].version, number)
        for token in tokens:
            if HASH.fullmatch(token):
                current.hashes.append(token.removeprefix("--hash="))
            else:
                problems.append(f"line {number}: {name}: {token!r} is not --hash=sha256:<64 hex>")
    return pins, problems


def _wanted(req: Requirement) -> bool:
    return req.marker is None or any(req.marker.evaluate(env) for env in TARGETS)


def _is_root(via: str) -> bool:
    return via == VIA_PROJECT or via.startswith("-r ")


def lock_problems(roots: list[str], lock_text: str) -> list[str]:
    """Where a lock and its roots (pyproject.toml's runtime dependencies, or its build-system
    requirements) disagree: a root without a pin, or with one outside its range; a pin without
    a hash; a pin no root needs (a test extra, say, or one left from a dependency since
    dropped)."""
    pins, problems = parse_lock(lock_text)
    wanted = [req for req in map(Requirement, roots) if _wanted(req)]
    for req in wanted:
        pin = pins.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req}: no pin in the lock (run `make lock`)")
        elif not req.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{req}: the lock pins {pin.name}=={pin.version}, outside the range")
    for pin in pins.values():
        if not pin.hashes:
            problems.append(f"{pin.name}=={pin.version}: no --hash=sha256:")

    root_names = {canonicalize_name(r.name) for r in map(Requirement, roots)}
    reached: set[str] = set()
    for pin in pins.values():
        if any(map(_is_root, pin.via)):
            if pin.name in root_names:
                reached.add(pin.name)
            else:
                problems.append(f"{pin.name}: pinned as a root, which it is not")
    # Then whatever a reached pin's package wants, as the annotations say.
    frontier = set(reached)
    while frontier:
        frontier = {
            pin.name
            for pin in pins.values()
            if pin.name not in reached and frontier.intersection(map(canonicalize_name, pin.via))
        }
        reached |= frontier
    for name in sorted(pins.keys() - reached):
        problems.append(f"{name}: nothing the lock is for needs it")
    return problems


def _pyproject() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def _runtime() -> list[str]:
    return list(_pyproject()["project"]["dependencies"])


def _build() -> list[str]:
    return list(_pyproject()["build-system"]["requires"])


@pytest.mark.parametrize(("roots", "lock"), [(_runtime, LOCK), (_build, BUILD_LOCK)])
def test_each_lock_agrees_with_pyproject(roots: Any, lock: Path) -> None:
    assert lock_problems(roots(), lock.read_text()) == []


def test_the_runtime_lock_holds_no_test_extra_and_no_build_requirement() -> None:
    pyproject = _pyproject()
    runtime = {canonicalize_name(Requirement(r).name) for r in _runtime()}
    pins, _ = parse_lock(LOCK.read_text())
    others = [*pyproject["project"]["optional-dependencies"]["test"], *_build()]
    for r in others:
        name = canonicalize_name(Requirement(r).name)
        assert name in runtime or name not in pins, f"the runtime lock pins {name}"
    assert "grpcio-tools" not in pins


def _without_hashes(text: str, name: str) -> str:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{name}=="))
    out = [lines[start].removesuffix(" \\")]
    rest = lines[start + 1 :]
    while rest and rest[0].lstrip().startswith("--hash"):
        rest = rest[1:]
    return "\n".join([*lines[:start], *out, *rest]) + "\n"


def _replaced(roots: list[str], name: str, new: str | None) -> list[str]:
    kept = [r for r in roots if canonicalize_name(Requirement(r).name) != name]
    return [*kept, new] if new else kept


ORPHAN = "pytest==8.0.0 \\\n    --hash=sha256:" + "0" * 64 + "\n"


@pytest.mark.parametrize(
    ("roots", "lock", "change", "expected"),
    [
        pytest.param(
            _runtime,
            LOCK,
            lambda r, lock: ([*r, "left-pad>=1"], lock),
            "left-pad>=1: no pin in the lock",
            id="a dependency without a pin",
        ),
        pytest.param(
            _runtime,
            LOCK,
            lambda r, lock: (_replaced(r, "grpcio", "grpcio>=99"), lock),
            "grpcio>=99: the lock pins grpcio==",
            id="a pin outside the range",
        ),
        pytest.param(
            _runtime,
            LOCK,
            lambda r, lock: (r, _without_hashes(lock, "cffi")),
            "cffi==",
            id="a pin without a hash",
        ),
        pytest.param(
            _runtime,
            LOCK,
            lambda r, lock: (r, lock + ORPHAN),
            "pytest: nothing the lock is for needs it",
            id="a pin nothing needs",
        ),
        pytest.param(
            _runtime,
            LOCK,
            lambda r, lock: (r, lock.replace("click==", "click>=", 1)),
            "is not pinned with == to one version",
            id="a range instead of a pin",
        ),
        pytest.param(
            _runtime,
            LOCK,
            lambda r, lock: (_replaced(r, "prometheus-client", None), lock),
            "prometheus-client: pinned as a root, which it is not",
            id="a pin left from a dropped dependency",
        ),
        pytest.param(
            _build,
            BUILD_LOCK,
            lambda r, lock: ([*r, "flit-core>=3"], lock),
            "flit-core>=3: no pin in the lock",
            id="a build requirement without a pin",
        ),
        pytest.param(
            _build,
            BUILD_LOCK,
            lambda r, lock: (_replaced(r, "grpcio-tools", "grpcio-tools==1.85.1"), lock),
            "grpcio-tools==1.85.1: the lock pins grpcio-tools==",
            id="a generator pin the build lock does not follow",
        ),
    ],
)
def test_a_disagreement_is_found(roots: Any, lock: Path, change: Any, expected: str) -> None:
    changed_roots, changed_lock = change(roots(), lock.read_text())
    problems = lock_problems(changed_roots, changed_lock)
    assert any(expected in p for p in problems), problems


def test_a_dependency_for_another_platform_needs_no_pin() -> None:
    roots = [*_runtime(), "pywin32>=300; sys_platform == 'win32'"]
    assert lock_problems(roots, LOCK.read_text()) == []


def _instructions(text: str) -> list[tuple[str, str]]:
    """The Containerfile's instructions, continuations joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    return out


def _bases(text: str) -> tuple[list[str], dict[str, str]]:
    """Each FROM's image with ARG defaults substituted, and the image ARGs (those a FROM uses or
    named *IMAGE) with their defaults."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    bases: list[str] = []
    image_args: dict[str, str] = {}
    for keyword, rest in _instructions(text):
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            args[name] = default.strip("\"'")
            if name.upper().endswith("IMAGE"):
                image_args[name] = args[name]
        elif keyword == "FROM":
            words = [w for w in rest.split() if not w.startswith("--")]
            image = words[0]
            if len(words) >= 3 and words[1].upper() == "AS":
                stages.add(words[2])
            for name in re.findall(r"\$\{?(\w+)\}?", image):
                image_args[name] = args.get(name, "")
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m[1], ""), image)
            if image not in stages:
                bases.append(image)
    return bases, image_args


def test_every_base_image_is_pinned_by_digest() -> None:
    bases, image_args = _bases(CONTAINERFILE.read_text())
    assert bases, "no FROM in the Containerfile"
    for image in [*bases, *image_args.values()]:
        assert PINNED_IMAGE.fullmatch(image), f"{image!r} is not name:tag@sha256:<64 hex>"


def test_both_stages_run_on_the_same_base() -> None:
    """The runtime's virtualenv, built in the first stage, runs on the second stage's
    interpreter: the same image, so the same interpreter."""
    bases, _ = _bases(CONTAINERFILE.read_text())
    assert len(set(bases)) == 1, bases


@pytest.mark.parametrize(
    "containerfile",
    [
        "FROM python:3.11-slim-bookworm\n",
        "ARG PYTHON_IMAGE=python:3.11-slim-bookworm\nFROM ${PYTHON_IMAGE}\n",
        "FROM python@sha256:" + "a" * 64 + "\n",  # no tag: the reader cannot tell what it is
        "FROM python:3.11-slim-bookworm@sha256:" + "a" * 63 + "\n",
        "FROM --platform=$BUILDPLATFORM python:3.11 AS build\nFROM build\n",
        "ARG BASE_IMAGE=debian:12\nFROM python:3.11@sha256:" + "a" * 64 + "\n",
    ],
)
def test_an_unpinned_base_is_found(containerfile: str) -> None:
    bases, image_args = _bases(containerfile)
    assert not all(PINNED_IMAGE.fullmatch(i) for i in [*bases, *image_args.values()])
