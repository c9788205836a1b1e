"""The compute backstop against a tenant that zeroes its limiter's pacing clock, on the fake
GPU, with real processes in real cgroups (no GPU needed; root and a cgroup freezer are).

Each container has a 30% share of the fake GPU and a workload under the limiter that launches
1 ms kernels as fast as it is let. A tampering tenant zeroes `pace_ns` and `throttled_ns` in
its region from a second process, and keeps the agent's feedback saying 30%. The agent's
monitor samples a fake NVML (the workload's busy time on the fake GPU) every second. Printed:
each container's GPU-side utilisation per 10 s window (from its first launch) and per second,
the largest frozen fraction and how many freezes were written, for

1. the tampering tenant, enforcement off (`--enforce=report`): reported, not held;
2. the tampering tenant and an honest one side by side, enforcement on: the first held to its
   share, the second never frozen.

Run (as root): .venv/bin/python bench/compute_backstop.py [--seconds 40] [--cgroup 2|1]
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fakes live in tests/

from tests.backstop_harness import Outcome, Run, Tenant, build, run, tidy, usable_versions


def show(title: str, result: Run) -> None:
    print(f"\n{title}")
    for o in result.outcomes.values():
        caught = result.over_share(o.name)
        verdict = (
            f"over-share at {caught[0].mean_percent:.1f}% ({caught[0].action})"
            if caught
            else "never over its share"
        )
        print(
            f"  {o.name:9s} windows {_fmt(o.windows)}  max frozen {o.max_frozen:.2f}, "
            f"{o.freezes} freezes; {verdict}"
        )
        print(f"  {'':9s} per second {_fmt(o.per_second, 0)}")


def _fmt(values: list[float], digits: int = 1) -> str:
    return "[" + " ".join(f"{v:.{digits}f}" for v in values) + "]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=40)
    ap.add_argument("--cgroup", type=int, choices=(1, 2), help="default: v2 where usable")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the figures say what the agent's log would
    versions = usable_versions()
    if not versions or (args.cgroup and args.cgroup not in versions):
        raise SystemExit("no usable cgroup freezer here (root and a writable cgroup mount)")
    version = args.cgroup or versions[0]
    work = Path(tempfile.mkdtemp(prefix="gpulet-backstop-"))
    print(
        f"compute backstop benchmark  python {platform.python_version()}  "
        f"{platform.machine()}  cgroup v{version}; share 30%, tolerance 10 points over 10 s"
    )
    try:
        built = build(work / "build")
        started = time.monotonic()
        off = run(
            work / "off",
            [Tenant("tampered", tamper=True)],
            seconds=args.seconds,
            enforce=False,
            version=version,
            built=built,
        )
        show("1. tampering, enforcement off (report only)", off)
        on = run(
            work / "on",
            [Tenant("tampered", tamper=True), Tenant("honest", tamper=False)],
            seconds=args.seconds,
            enforce=True,
            version=version,
            built=built,
        )
        show("2. tampering and honest side by side, enforcement on", on)
        held: Outcome = on.outcomes["tampered"]
        worst = max(held.windows[1:], default=float("nan"))
        print(
            f"\nwith enforcement the tampering container's worst 10 s window after the first: "
            f"{worst:.1f}% (limit 40); the honest one was frozen "
            f"{on.outcomes['honest'].freezes} times; {time.monotonic() - started:.0f} s"
        )
    finally:
        tidy(work)


if __name__ == "__main__":
    main()
