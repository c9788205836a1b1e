"""Co-location on the fake GPU: a production slice and a batch slice on one GPU.

Both containers run under the real limiter, on the fake driver with one timeline shared by
both (a kernel waits for every kernel queued before it, whoever queued it: one GPU), and the
agent's co-location controller (agent.colocation) runs every 25 ms in this process, reading
their regions and writing the batch slice's share.

- production: a 50% slice running a latency-sensitive service: kernels of `--kernel-us`
  launched and waited for one by one, `--gap-us` apart (so it asks its share), in bursts of
  `--on-ms` every `--period-ms`;
- batch: a slice with a floor of `--batch-floor`% that would use the whole GPU (a launch
  loop with 25-50 ms queued).

Runs: production alone; batch alone (production idle); both. Prints production's kernels per
second of its bursts and its launch-to-completion p50/p99, the batch slice's share of the GPU
while production is idle and while it runs, and the time the batch side takes to give
compute back (from production's first launch of a burst to its first kernel whose latency is
within 10% of its p50 alone).

    .venv/bin/python bench/colocation.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the fakes live in tests/

from agent.colocation import CoLocation, Slice, by_gpu
from native.region import DeviceLimit, Limits, read_limits, setup
from tests.fakes.cuda import build_cuda_client, build_fake_cuda, fake_uuid
from tests.limiter_harness import Container, build_limiter, build_nvml, fake_nvml_config


@dataclass
class Service:
    kernels: int
    p50_us: int
    p99_us: int
    max_us: int
    #: From a burst's start to the end of its first kernel no slower than `ok_us`: median
    #: and worst over the bursts.
    room_p50_us: int
    room_max_us: int


def parse_service(lines: list[str]) -> Service:
    (line,) = [x for x in lines if x.startswith("service ")]
    fields = dict(word.split("=") for word in line.split()[1:])
    names = ("kernels", "p50_us", "p99_us", "max_us", "room_p50_us", "room_max_us")
    return Service(*(int(fields[k]) for k in names))


def busy_windows(lines: list[str]) -> list[float]:
    return [float(x.split()[2].split("=")[1]) for x in lines if x.startswith("window")][1:]


class Bench:
    def __init__(self, work: Path) -> None:
        self.work = work
        cuda = work / "cuda"
        cuda.mkdir(parents=True)
        build_fake_cuda(cuda)
        self.client = build_cuda_client(cuda)
        self.cuda = cuda
        self.limiter = build_limiter(work / "limiter")
        self.nvml = build_nvml(work / "nvml")
        (self.nvml / "nvml.conf").write_text(fake_nvml_config([fake_uuid(0)], 81559))
        self.runs = 0

    def container(self, name: str, core: int, batch: bool, timeline: Path) -> Container:
        directory = self.work / f"run{self.runs}" / name
        setup(directory, Limits((DeviceLimit(fake_uuid(0), 40960, core, batch),)))
        return Container(
            region_dir=directory,
            limiter=self.limiter,
            cuda_dir=self.cuda,
            nvml_dir=self.nvml,
            client=self.client,
            fake_config=f"devices=1,total_mib=81559,timeline={timeline}",
        )

    def run(
        self, args: argparse.Namespace, production: bool, batch: bool, ok_us: int = 0
    ) -> tuple[Service | None, list[str]]:
        self.runs += 1
        timeline = self.work / f"run{self.runs}" / "gpu0"
        timeline.parent.mkdir(parents=True)
        prod = self.container("prod", 50, False, timeline)
        back = self.container("batch", args.batch_floor, True, timeline)
        slices = by_gpu(
            Slice(name, box.region_dir, read_limits(box.region_dir / "limits"), 0)
            for name, box in (("prod", prod), ("batch", back))
        )
        interval = args.interval_ms / 1000
        controller = CoLocation(lambda: slices, active_margin_permille=args.active_margin)
        done = threading.Event()

        def control() -> None:
            while not done.wait(interval):
                controller.tick()

        thread = threading.Thread(target=control, daemon=True)
        thread.start()
        service: Service | None = None
        batch_lines: list[str] = []
        try:
            batch_proc = None
            if batch:
                batch_proc = back.start("runtime", [f"run {args.seconds + 2} {args.kernel_us}"])
                time.sleep(1.0)
            if production:
                command = (
                    f"service {args.seconds} {args.kernel_us} {args.gap_us} {args.on_ms} "
                    f"{args.period_ms} {ok_us or 2 * args.kernel_us}"
                )
                service = parse_service(prod.lines("runtime", [command], timeout=120))
            else:
                time.sleep(args.seconds)
            if batch_proc is not None:
                out, _ = batch_proc.communicate(timeout=120)
                batch_lines = out.splitlines()
        finally:
            done.set()
            thread.join()
        return service, batch_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=6)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--kernel-us", type=int, default=1000)
    parser.add_argument("--gap-us", type=int, default=1000)
    parser.add_argument("--on-ms", type=int, default=300)
    parser.add_argument("--period-ms", type=int, default=1000)
    parser.add_argument("--batch-floor", type=int, default=10)
    parser.add_argument("--interval-ms", type=float, default=25, help="the controller's period")
    parser.add_argument(
        "--active-margin", type=int, default=500, help="permille kept free while production runs"
    )
    args = parser.parse_args()
    print(f"machine: {platform.node()} {platform.machine()}, Python {platform.python_version()}")
    results = []
    with tempfile.TemporaryDirectory(prefix="gpulet-colocation-") as tmp:
        bench = Bench(Path(tmp))
        for _ in range(args.repeat):
            alone, _ = bench.run(args, production=True, batch=False)
            assert alone is not None
            _, idle_lines = bench.run(args, production=False, batch=True)
            ok_us = alone.p50_us * 11 // 10
            both, shared_lines = bench.run(args, production=True, batch=True, ok_us=ok_us)
            assert both is not None
            results.append((alone, both, busy_windows(idle_lines), busy_windows(shared_lines)))
    on_s = args.seconds * args.on_ms / args.period_ms
    for n, (alone, both, idle, shared) in enumerate(results, 1):
        print(f"run {n}:")
        print(
            f"  production alone:      {alone.kernels / on_s:6.1f} kernels/s of bursts, "
            f"p50 {alone.p50_us} us, p99 {alone.p99_us} us, max {alone.max_us} us"
        )
        print(
            f"  production with batch: {both.kernels / on_s:6.1f} kernels/s of bursts "
            f"({both.kernels / alone.kernels:.1%}), p50 {both.p50_us} us, p99 {both.p99_us} "
            f"us ({both.p99_us / alone.p99_us - 1:+.1%}), max {both.max_us} us"
        )
        print(f"  batch, production idle: GPU share {statistics.mean(idle):.3f}")
        print(
            f"  batch beside production: GPU share {statistics.mean(shared):.3f} (windows {shared})"
        )
        print(
            f"  room for production at a burst's start (first kernel within "
            f"{alone.p50_us * 11 // 10} us): median {both.room_p50_us} us, worst "
            f"{both.room_max_us} us; alone {alone.room_p50_us} / {alone.room_max_us} us"
        )
    if len(results) > 1:
        med = statistics.median
        print(
            f"median of {len(results)}: throughput "
            f"{med(b.kernels / a.kernels for a, b, _, _ in results):.1%}, p99 "
            f"{med(b.p99_us / a.p99_us - 1 for a, b, _, _ in results):+.1%}, batch idle "
            f"{med(statistics.mean(i) for _, _, i, _ in results):.3f}, room worst "
            f"{med(b.room_max_us for _, b, _, _ in results)} us"
        )


if __name__ == "__main__":
    main()
