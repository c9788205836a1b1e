"""Placement latency: p50/p99 of one `Placer.place` call, per request size, half the node busy.

Two ways of being half busy, each with its own kind of request:
  slices  every GPU carries slices using 30-70% of its core and memory, every NIC half its
          slots; requests are slices (10% core, 2048 MiB) of 1..N GPUs, with as many NICs
          (up to the node's count) and without NICs.
  whole   half the GPUs (chosen at random) are held whole; requests are whole GPUs, 1..N,
          with as many NICs; sizes above the free count measure the time to say no.
Every policy (best-effort, restricted, single-numa) is timed. Each state is placed
`--repeat` times (the engine keeps nothing between calls, so every call does the same work).
Each cell prints, over its states:
  p50 us / p99 us   wall clock of the first call: what a caller sees, preemption included;
  cpu p99           thread CPU time of the first call;
  state p99         the fastest of the repeats: the engine's own cost for that state, without
                    what the hypervisor of a shared VM adds (steal shows up as CPU time too).
The summary line per node is the worst of each over all sizes and policies.

Run: .venv/bin/python bench/placement.py [--states 200] [--repeat 3] [--nodes dgx-h100,pcie-16gpu]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.nodes

from gpulet.placement import (
    Capacity,
    GpuUsage,
    NodeState,
    Placer,
    Request,
    TopologyPolicy,
)
from gpulet.topology import Topology
from tests.nodes import shipped

CAP = Capacity(gpu_slots=100, nic_slots=100)


def slice_state(topo: Topology, rng: random.Random) -> NodeState:
    gpus = {
        g.index: GpuUsage(
            slots=rng.randint(1, 10),
            core=rng.randint(30, 70),
            memory_mib=g.memory_mib * rng.randint(30, 70) // 100,
        )
        for g in topo.gpus
    }
    return NodeState(gpus, {n.key: CAP.nic_slots // 2 for n in topo.nics})


def whole_state(topo: Topology, rng: random.Random) -> NodeState:
    busy = rng.sample([g.index for g in topo.gpus], len(topo.gpus) // 2)
    gpus = {i: GpuUsage(CAP.gpu_slots, 100, 0, True) for i in busy}
    return NodeState(gpus, {n.key: rng.choice([0, 50]) for n in topo.nics})


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(name: str, states: int, repeat: int, seed: int) -> float:
    topo = shipped(name)
    placer = Placer(topo, CAP)
    n_gpus, n_nics = len(topo.gpus), len(topo.nics)
    rng = random.Random(seed)
    print(
        f"\n{name}: {n_gpus} GPUs, {n_nics} NICs, {len(topo.numa_nodes)} NUMA nodes;"
        f" tree search: {placer.hierarchical}; {states} random states per cell"
    )
    print(
        f"{'busy':7}{'policy':13}{'gpus':>5}{'nics':>5}{'fits':>6}"
        f"{'p50 us':>9}{'p99 us':>9}{'cpu p99':>9}{'state p99':>10}"
    )
    worst = worst_cpu = worst_state = 0.0
    for busy, make_state in (("slices", slice_state), ("whole", whole_state)):
        pool = [make_state(topo, rng) for _ in range(states)]
        for policy in TopologyPolicy:
            for k in range(1, n_gpus + 1):
                for rdma in sorted({0, min(k, n_nics)}):
                    if policy is TopologyPolicy.RESTRICTED and not rdma:
                        continue
                    req = Request(gpus=k, rdma=rdma, topology=policy)
                    if busy == "slices":
                        req = Request(k, core=10, memory_mib=2048, rdma=rdma, topology=policy)
                    wall: list[float] = []
                    cpu: list[float] = []
                    own: list[float] = []
                    fits = 0
                    for state in pool:
                        times = []
                        for attempt in range(repeat):
                            w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
                            result = placer.place(req, state)
                            times.append((time.thread_time_ns() - c0) / 1000)
                            if not attempt:
                                wall.append((time.perf_counter_ns() - w0) / 1000)
                                cpu.append(times[0])
                                fits += result.fits
                        own.append(min(times))
                    p50, p99 = statistics.median(wall), percentile(wall, 99)
                    cpu99, own99 = percentile(cpu, 99), percentile(own, 99)
                    worst, worst_cpu = max(worst, p99), max(worst_cpu, cpu99)
                    worst_state = max(worst_state, own99)
                    print(
                        f"{busy:7}{policy.value:13}{k:>5}{rdma:>5}{fits:>6}"
                        f"{p50:>9.0f}{p99:>9.0f}{cpu99:>9.0f}{own99:>10.0f}"
                    )
    print(
        f"{name}: worst p99 over all sizes and policies: {worst / 1000:.2f} ms wall,"
        f" {worst_cpu / 1000:.2f} ms thread CPU time,"
        f" {worst_state / 1000:.2f} ms per state (fastest of {repeat})"
    )
    return worst


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--states", type=int, default=200, help="random node states per cell")
    ap.add_argument("--nodes", default="dgx-h100,pcie-16gpu")
    ap.add_argument("--repeat", type=int, default=3, help="calls per state (>= 1)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    print(
        f"gpulet placement benchmark  python {platform.python_version()}  {platform.machine()}"
        f"  {cpu_model()}  {os.cpu_count()} cores"
    )
    for name in args.nodes.split(","):
        run(name, args.states, max(1, args.repeat), args.seed)


if __name__ == "__main__":
    main()
