"""Figures for the real-Kubernetes test rig (tests/kube, docs/e2e.md): the kubebox build, the
control plane's warm start, and the end-to-end suite.

- build: `make kubebox`'s work. With --cold, into empty Go module and build caches and an
  empty kubebox cache (every module comes from the Go module proxy): the first build on a
  fresh machine. Without it, the build this tree's caches give (a reuse takes ~0 s).
- start: the control plane (etcd, kube-apiserver until /readyz, kube-controller-manager until
  the default service account exists) started and stopped --starts times; each start timed.
- suite: `pytest tests/e2e` once, wall time (cluster start included).

Run: .venv/bin/python bench/kubebox.py [--cold] [--release 1.31] [--starts 5] [--no-suite]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.kube.build import build, kubernetes_release  # noqa: E402
from tests.kube.cluster import ControlPlane  # noqa: E402


def timed_build(release: str, cold: bool) -> tuple[Path, float]:
    saved = {k: os.environ.get(k) for k in ("GOMODCACHE", "GOCACHE", "GPULET_KUBEBOX_CACHE")}
    scratch = Path(tempfile.mkdtemp(prefix="kubebox-cold-")) if cold else None
    try:
        if scratch is not None:
            for k, sub in (
                ("GOMODCACHE", "mod"),
                ("GOCACHE", "cache"),
                ("GPULET_KUBEBOX_CACHE", "kb"),
            ):
                os.environ[k] = str(scratch / sub)
        began = time.monotonic()
        binary = build(release=release)
        took = time.monotonic() - began
        if scratch is not None:  # keep the binary, not the caches
            kept = Path(tempfile.mkdtemp(prefix="kubebox-")) / "kubebox"
            shutil.copy2(binary, kept)
            binary = kept
        return binary, took
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if scratch is not None:
            subprocess.run(["chmod", "-R", "u+w", str(scratch)], check=False)
            shutil.rmtree(scratch, ignore_errors=True)


def timed_starts(binary: Path, count: int) -> list[float]:
    times = []
    for _ in range(count):
        directory = Path(tempfile.mkdtemp(prefix="gk"))
        cp = ControlPlane(binary, directory)
        try:
            cp.start()
            times.append(cp.started_s)
        finally:
            cp.stop()
            shutil.rmtree(directory, ignore_errors=True)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", action="store_true", help="build into empty caches")
    parser.add_argument("--release", default="current", choices=["current", "1.31"])
    parser.add_argument("--starts", type=int, default=5)
    parser.add_argument("--no-suite", action="store_true")
    args = parser.parse_args()
    print(f"machine: {platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"kubernetes: {kubernetes_release(args.release)}")
    binary, took = timed_build(args.release, args.cold)
    print(f"build ({'cold' if args.cold else 'this tree'}): {took:.1f} s ({binary})")
    starts = timed_starts(binary, args.starts)
    print(
        f"control plane warm start: median {statistics.median(starts):.2f} s, "
        f"max {max(starts):.2f} s over {len(starts)}"
    )
    if not args.no_suite:
        env = dict(os.environ, GPULET_KUBEBOX_RELEASE=args.release)
        began = time.monotonic()
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "tests/e2e"],
            cwd=ROOT,
            env=env,
            check=False,
            capture_output=True,
            text=True,
        )
        summary = (result.stdout.strip().splitlines() or [""])[-1]
        print(f"end-to-end suite: {time.monotonic() - began:.1f} s ({summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
