"""What the extender's preempt verb costs per candidate node (`scorer.preemption.victims_for`).

A DGX H100 filled with small slices (1-GPU pods of 5% compute and 1 GiB, with random
priorities below the preemptor's), and a pending pod of higher priority: 8 whole GPUs, or
one GPU's 60%. kube-scheduler's proposal is taken as empty, the worst case: the extender
searches victim sets, smallest first, until its budget (`SEARCH_BUDGET` tries), then adds
pods greedily. Prints, per number of slices on the node, the time one node takes (p50 and
worst of the runs) and the number of victims reported.

    .venv/bin/python bench/preemption.py [--runs N] [--slices 25,50,100,200] [--budget N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from dataclasses import replace

from agent.simnode import open_simulated
from gpulet.api.assignment import dump_assignment, parse_assignment
from gpulet.placement import Capacity, Placer
from gpulet.placement.podspec import pod_ask
from gpulet.standins.objects import container, pod_object
from scorer.cluster import Holder, NodeInfo, tally
from scorer.decide import Decision, decide
from scorer.preemption import SEARCH_BUDGET, victims_for

CAPACITY = Capacity(gpu_slots=100, nic_slots=8)


def scene(slices: int, seed: int) -> tuple[NodeInfo, list[Holder]]:
    rng = random.Random(seed)
    topo = replace(open_simulated("dgx-h100").topology(), node="n")
    info = NodeInfo("n", topo, Placer(topo, CAPACITY), CAPACITY)
    holders: list[Holder] = []
    for n in range(slices):
        ask = pod_ask(pod_object(f"s{n}", container(gpus=1, core=5, memory=1024), uid=f"u{n}"))
        placed = decide(info, tally(info, (h.assignment for h in holders)), ask)
        if not isinstance(placed, Decision):
            break
        assignment = parse_assignment(dump_assignment(placed.assignment))
        holders.append(Holder(f"u{n}", assignment, rng.randint(0, 3), float(n)))
    return info, holders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", default="25,50,100,200")
    parser.add_argument(
        "--budget",
        type=int,
        default=SEARCH_BUDGET,
        help="tries per node (the verb gives "
        "each of n candidates node_budget(n): 2000 up to 10 nodes, 200 for 100)",
    )
    args = parser.parse_args()
    asks = {
        "8 whole GPUs": container(gpus=8),
        "1 GPU, 60% and 8 GiB": container(gpus=1, core=60, memory=8192),
    }
    print(f"{'pending pod':<22} {'slices':>6} {'p50 ms':>9} {'max ms':>9} {'victims':>8}")
    for label, spec in asks.items():
        ask = pod_ask(pod_object("pending", spec, uid="pending"))
        for slices in (int(s) for s in args.slices.split(",")):
            times: list[float] = []
            victims: list[str] | None = None
            for run in range(args.runs):
                info, holders = scene(slices, run)
                start = time.perf_counter()
                victims = victims_for(info, holders, ask, 10, (), budget=args.budget)
                times.append((time.perf_counter() - start) * 1000)
            count = "-" if victims is None else str(len(victims))
            median, worst = statistics.median(times), max(times)
            print(f"{label:<22} {slices:>6} {median:>9.1f} {worst:>9.1f} {count:>8}")


if __name__ == "__main__":
    main()
