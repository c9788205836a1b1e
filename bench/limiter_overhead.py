"""The limiter's CPU cost per driver call, over the fake driver (no GPU needed).

Times the test client's launch loop (`launch N 1`, never waiting for the fake GPU, so what
is measured is the call path) and an allocate/free loop, each without the preload and with it
(limits at 100% core, so launches take the unthrottled path), best of `--repeat` runs. The
difference is what the limiter adds to each call on this CPU. On a GPU, bench/gpu_limiter.py
measures the same against the real driver.

Run: .venv/bin/python bench/limiter_overhead.py [--launches 1000000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fakes live in tests/

from native.region import DeviceLimit, Limits, setup
from tests.fakes.cuda import build_cuda_client, build_fake_cuda, fake_uuid
from tests.limiter_harness import (
    Container,
    build_limiter,
    build_nvml,
    fake_nvml_config,
)


def timed(box: Container, commands: list[str], preload: bool) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        box.command("runtime", commands), env=box.env(preload), capture_output=True, check=False
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0 or b" err " in proc.stdout:
        raise SystemExit(f"client failed: {proc.stdout.decode()}{proc.stderr.decode()}")
    return elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--launches", type=int, default=1_000_000)
    ap.add_argument("--allocs", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpulet-overhead-"))
    for name in ("cuda", "client", "limiter", "nvml"):
        (work / name).mkdir()
    nvml = build_nvml(work / "nvml")
    (nvml / "nvml.conf").write_text(fake_nvml_config([fake_uuid(0)], 16384))
    box = Container(
        region_dir=work / "region",
        limiter=build_limiter(work / "limiter"),
        cuda_dir=build_fake_cuda(work / "cuda"),
        nvml_dir=nvml,
        client=build_cuda_client(work / "client"),
        fake_config="granularity=4096",
    )
    setup(box.region_dir, Limits((DeviceLimit(fake_uuid(0), 16000, 100),)))
    print(f"gpulet limiter overhead  python {platform.python_version()}  {platform.machine()}")
    empty = ["info"]
    # 1 us kernels: the fake's timeline runs ahead on its own; no sync, so the client's
    # time is the call path alone.
    launches = [f"launch {args.launches} 1"]
    allocs = ["alloc-bytes 4096", "free"] * args.allocs
    for name, commands, count in (
        ("launch", launches, args.launches),
        ("alloc+free", allocs, args.allocs),
    ):
        per_call = {}
        for preload in (False, True):
            base = min(timed(box, empty, preload) for _ in range(args.repeat))
            best = min(timed(box, commands, preload) for _ in range(args.repeat))
            per_call[preload] = (best - base) / count * 1e9
        print(
            f"{name:11} without {per_call[False]:8.0f} ns/call  with {per_call[True]:8.0f} ns/call"
            f"  limiter adds {per_call[True] - per_call[False]:6.0f} ns"
        )


if __name__ == "__main__":
    main()
