"""Extender latency and throughput, over real HTTP to `gpulet scorer` in a process of its own.

The cluster: N simulated dgx-h100 nodes (8 GPUs, 8 NICs) each about half full: every GPU is
idle, held whole, or carries 1-3 slices (random, seeded), and NICs carry 0-3 pods.

- Cold: for each pod shape, the first filter + prioritize of that shape against all N nodes
  (every node decided).
- Stream: a stream of pods of mixed shapes (an inference slice, 1, 2 and 8 whole GPUs, and
  4 GPUs + 4 NICs `restricted`), each filtered, prioritized and bound to its best node, as
  kube-scheduler would: p50/p99 of filter + prioritize, and pods bound per second.
- Both request forms: names only (`nodeCacheCapable: true`) at every N, and full Node objects
  (`nodeCacheCapable: false`), a few pods at each N (each request carries every Node).
- `--feasible K`: each request names K nodes, not all N, in a window that moves on by K each
  pod. That is what kube-scheduler sends an extender once `percentageOfNodesToScore` has cut
  its search short (by default about 10% of a 5,000-node cluster), starting where the previous
  pod's search stopped.

Run: .venv/bin/python bench/extender_latency.py [--nodes 1000 5000] [--pods 300] [--object-pods 10]
     [--feasible K]
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import multiprocessing as mp
import platform
import random
import socket
import statistics
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.nodes

from gpulet.api.assignment import Assignment, ContainerAssignment, dump_assignment
from gpulet.api.share import GpuShare
from gpulet.api.stamps import stamp
from gpulet.standins.objects import container, node_object, pod_object
from scorer.app import tune_gc
from scorer.cluster import ClusterView
from scorer.extender import Extender
from scorer.server import ExtenderServer
from scorer.wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    HostPriorityList,
    NodeList,
)
from tests.nodes import shipped

SHAPES = {
    "slice 1 GPU 30% 8 GiB": lambda: [container(gpus=1, core=30, memory=8192)],
    "1 whole GPU": lambda: [container(gpus=1)],
    "2 whole GPUs": lambda: [container(gpus=2)],
    "4 GPUs + 4 NICs restricted": lambda: [container(gpus=4, rdma=4)],
    "8 whole GPUs": lambda: [container(gpus=8)],
}
RESTRICTED = {"gpulet.io/topology-policy": "restricted"}


def build_cluster(n: int, seed: int) -> tuple[ClusterView, list[dict[str, Any]]]:
    """N half-full dgx-h100 nodes; also their Node objects. Each carries a heartbeat, which
    the extender judges on every request as in production; the limit is a day, so that no
    node goes quiet during a run."""
    topo = shipped("dgx-h100")
    rng = random.Random(seed)
    view = ClusterView(stale_after=24 * 3600)
    objects = []
    uid = 0
    beat = stamp(time.time())
    for i in range(n):
        name = f"gpu-node-{i:05d}"
        obj = node_object(name, topo, heartbeat=beat)
        objects.append(obj)
        view.set_node_object(obj)
        for gpu in topo.gpus:
            roll = rng.random()
            shares: list[GpuShare] = []
            if roll < 0.25:
                shares = [GpuShare(gpu.uuid, 100, gpu.memory_mib, True)]
            elif roll < 0.5:
                shares = [GpuShare(gpu.uuid, 20, 10_000, False)] * rng.randint(1, 3)
            for share in shares:
                nics = tuple(rng.sample([k.key for k in topo.nics], rng.randint(0, 1)))
                assignment = Assignment(name, (ContainerAssignment("main", (share,), nics),))
                view.set_pod(f"pod-{uid}", name, dump_assignment(assignment))
                uid += 1
    return view, objects


def serve(n: int, seed: int, conn: Connection) -> None:
    """The extender's process: build the cluster, freeze it out of GC (as the extender does
    once synced), tune the collector as the extender does, serve until told to stop."""
    view, _ = build_cluster(n, seed)
    server = ExtenderServer(Extender(view), "127.0.0.1", 0)
    gc.collect()
    gc.freeze()
    tune_gc()  # as Scorer.start does
    server.start()
    conn.send(server.port)
    conn.recv()
    server.stop()


class Client:
    def __init__(self, port: int) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.conn.connect()
        # As kube-scheduler's Go client does: no Nagle delay on the request's last segment.
        self.conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def post(self, verb: str, body: bytes) -> Any:
        self.conn.request("POST", f"/{verb}", body, {"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{verb}: HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data)


def one_pod(
    client: Client, shape: str, n: int, nodes: NodeList | tuple[str, ...]
) -> tuple[float, dict[str, Any], str | None]:
    """Filter + prioritize one new pod of `shape` on `nodes` (Node objects, or names): the
    milliseconds, the pod, its best node."""
    annotations = RESTRICTED if "restricted" in shape else None
    pod = pod_object(f"p-{random.random():.12f}", *SHAPES[shape](), annotations=annotations)
    if isinstance(nodes, NodeList):
        args = ExtenderArgs(pod, nodes=nodes)
    else:
        args = ExtenderArgs(pod, node_names=nodes)
    # The answers are read with the clock stopped: kube-scheduler's own reading of them is
    # not the extender's time (the JSON decoding, as kube-scheduler's, is counted in).
    t0 = time.perf_counter()
    answer = client.post("filter", json.dumps(args.dump()).encode())
    filtered = time.perf_counter() - t0
    passed = ExtenderFilterResult.parse(answer)
    args = ExtenderArgs(pod, node_names=passed.names())
    t0 = time.perf_counter()
    answer = client.post("prioritize", json.dumps(args.dump()).encode())
    elapsed = (filtered + time.perf_counter() - t0) * 1000
    scores = HostPriorityList.parse(answer)
    best = max(scores, key=lambda s: s.score).host if scores else None
    return elapsed, pod, best


def bind(client: Client, pod: dict[str, Any], node: str) -> None:
    meta = pod["metadata"]
    args = ExtenderBindingArgs(meta["name"], "default", meta["uid"], node)
    answer = ExtenderBindingResult.parse(client.post("bind", json.dumps(args.dump()).encode()))
    if answer.error:
        raise RuntimeError(answer.error)


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


class Window:
    """The node names of each request: all N, or `feasible` of them from a rotating start."""

    def __init__(self, n: int, feasible: int) -> None:
        self._names = [f"gpu-node-{i:05d}" for i in range(n)]
        self._size = feasible if 0 < feasible < n else n
        self._start = 0

    def next(self) -> tuple[str, ...]:
        names = self._names
        chosen = tuple(names[(self._start + i) % len(names)] for i in range(self._size))
        self._start = (self._start + self._size) % len(names)
        return chosen


def run(n: int, pods: int, object_pods: int, seed: int, feasible: int = 0) -> None:
    ctx = mp.get_context("spawn")
    mine, theirs = ctx.Pipe()
    t0 = time.perf_counter()
    proc = ctx.Process(target=serve, args=(n, seed, theirs))
    proc.start()
    port = mine.recv()
    print(f"\n{n} nodes (built and served in {time.perf_counter() - t0:.1f} s)")
    client = Client(port)
    window = Window(n, feasible)
    asked = len(window.next())
    if asked < n:
        print(f"  each request names {asked} of the {n} nodes (--feasible)")
    try:
        cold: list[float] = []
        for shape in SHAPES:
            ms, _, _ = one_pod(client, shape, n, window.next())
            cold.append(ms)
            print(f"  cold, names only   {shape:28} {ms:8.1f} ms")
        rng = random.Random(seed)
        samples: list[float] = []
        started = time.perf_counter()
        for _ in range(pods):
            ms, pod, best = one_pod(client, rng.choice(list(SHAPES)), n, window.next())
            samples.append(ms)
            if best is not None:
                bind(client, pod, best)
        wall = time.perf_counter() - started
        print(
            f"  stream, names only {pods} pods: filter+prioritize p50 "
            f"{statistics.median(samples):.1f} ms  p99 {percentile(samples, 99):.1f} ms  "
            f"max {max(samples):.1f} ms;  {pods / wall:.1f} pods/s bound"
        )
        both = cold + samples
        print(
            f"  the same, counting the {len(cold)} cold pods in: p99 "
            f"{percentile(both, 99):.1f} ms over {len(both)} pods"
        )
        if object_pods:
            _, objects = build_cluster(n, seed)
            full = NodeList(tuple(objects))
            size = len(json.dumps(full.dump())) / 1e6
            samples = [
                one_pod(client, rng.choice(list(SHAPES)), n, full)[0] for _ in range(object_pods)
            ]
            print(
                f"  full Node objects ({size:.0f} MB a request) {object_pods} pods: p50 "
                f"{statistics.median(samples):.1f} ms  p99 {percentile(samples, 99):.1f} ms"
            )
    finally:
        mine.send(None)
        proc.join(timeout=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[1000, 5000])
    ap.add_argument("--pods", type=int, default=300, help="pods in the stream [300]")
    ap.add_argument(
        "--object-pods",
        type=int,
        default=20,
        help="pods sent with full Node objects, at the smallest --nodes [20; 0: skip]",
    )
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--feasible",
        type=int,
        default=0,
        help="node names per request, as kube-scheduler's cut-short search sends [0: all]",
    )
    args = ap.parse_args()
    print(f"gpulet scorer benchmark  python {platform.python_version()}  {platform.machine()}")
    for n in sorted(args.nodes):
        run(n, args.pods, args.object_pods, args.seed, args.feasible)


if __name__ == "__main__":
    main()
