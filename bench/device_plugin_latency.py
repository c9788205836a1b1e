"""Device-plugin latency: p50/p99 of `GetPreferredAllocation` and `Allocate` on dgx-h100, over
real gRPC on a unix socket, as kubelet calls them: from a process of its own, timed there.
First the floor: the same GetPreferredAllocation to a handler that does nothing.

- GetPreferredAllocation: whole GPUs (standalone), 1..8 of them, every slot available.
- Allocate: one container at a time, each following its assignment annotation (a slice of
  one GPU, 1% core and 256 MiB, round robin over the 8 GPUs; 200 containers live): matching
  the pod, checking the assignment, writing the container's region and limits (on tmpfs, as
  the agent does) and the checkpoint (on disk: an append to its journal).

Run: .venv/bin/python bench/device_plugin_latency.py [--samples 400] [--state-dir D]
        [--region-root D]
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import platform
import shutil
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.nodes

from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.api import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from deviceplugin.assignment import (
    Assignment,
    ContainerAssignment,
    ContainerRequest,
    GpuShare,
    PendingPod,
    StaticPodSource,
    dump_assignment,
)
from deviceplugin.core import DevicePluginCore
from deviceplugin.ledger import Ledger
from deviceplugin.resources import GPU_RESOURCE, PluginConfig
from deviceplugin.server import PluginServer
from tests.nodes import shipped


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def report(name: str, samples: list[float]) -> float:
    p99 = percentile(samples, 99)
    print(
        f"{name:34} n={len(samples):5}  p50 {statistics.median(samples):7.2f} ms"
        f"  p99 {p99:7.2f} ms  max {max(samples):7.2f} ms"
    )
    return p99


def kubelet(socket: str, conn: Connection) -> None:
    """The caller, in a process of its own as kubelet is: receives (method, serialized
    request), makes the call, answers the milliseconds it took."""
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        stub = pb_grpc.DevicePluginStub(channel)
        while (job := conn.recv()) is not None:
            method, payload = job
            if method == "pref":
                preference = pb.PreferredAllocationRequest.FromString(payload)
                t0 = time.perf_counter()
                stub.GetPreferredAllocation(preference, timeout=10)
            else:
                allocation = pb.AllocateRequest.FromString(payload)
                t0 = time.perf_counter()
                stub.Allocate(allocation, timeout=10)
            conn.send((time.perf_counter() - t0) * 1000)


class Caller:
    """Sends requests to the `kubelet` process and collects its timings."""

    def __init__(self, socket: Path) -> None:
        self.conn, theirs = mp.get_context("spawn").Pipe()
        self.proc = mp.get_context("spawn").Process(target=kubelet, args=(str(socket), theirs))
        self.proc.start()

    def call(
        self, method: str, request: pb.PreferredAllocationRequest | pb.AllocateRequest
    ) -> float:
        self.conn.send((method, request.SerializeToString()))
        elapsed: float = self.conn.recv()
        return elapsed

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=10)


class Floor(PluginServer):
    """A GetPreferredAllocation that does nothing: what gRPC itself costs here."""

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse:
        answer = pb.ContainerPreferredAllocationResponse(deviceIDs=[])
        return pb.PreferredAllocationResponse(container_responses=[answer])


def serve(core: DevicePluginCore, work: Path, name: str) -> tuple[PluginServer, Caller]:
    server = PluginServer(core, GPU_RESOURCE, work, f"{name}.sock")
    server.serve()
    return server, Caller(server.socket)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=400)
    ap.add_argument("--state-dir", help="where the checkpoint goes [default: a new dir in /tmp]")
    ap.add_argument(
        "--region-root",
        default="/dev/shm",
        help="where the containers' regions go (tmpfs, as the agent's /run/gpulet/containers)",
    )
    args = ap.parse_args()
    topo = shipped("dgx-h100")
    work = Path(tempfile.mkdtemp(prefix="dpb", dir=args.state_dir))
    regions = Path(tempfile.mkdtemp(prefix="dpb-regions", dir=args.region_root))
    lib = work / "libgpulet-limiter.so"
    lib.touch()
    preload = work / "ld.so.preload"
    preload.write_text(f"{lib}\n")
    config = PluginConfig(
        node_name=topo.node,
        region_root=regions,
        limiter_host_path=lib,
        preload_host_path=preload,
    )
    print(
        f"gpulet device-plugin benchmark  python {platform.python_version()}"
        f"  {platform.machine()}  node dgx-h100 ({len(topo.gpus)} GPUs x {config.gpu_slots} slots)"
    )
    try:
        # The floor: the same request to a handler that does nothing.
        idle = DevicePluginCore(topo, config, Ledger())
        floor_server = Floor(idle, GPU_RESOURCE, work, "floor.sock")
        floor_server.serve()
        caller = Caller(work / "floor.sock")
        offered = [f"{g.uuid}::{n:02d}" for g in topo.gpus for n in range(config.gpu_slots)]
        floor = [
            caller.call(
                "pref",
                pb.PreferredAllocationRequest(
                    container_requests=[
                        pb.ContainerPreferredAllocationRequest(
                            available_deviceIDs=offered, allocation_size=2
                        )
                    ]
                ),
            )
            for _ in range(args.samples)
        ]
        caller.close()
        floor_server.stop()

        # GetPreferredAllocation, standalone whole GPUs.
        core = DevicePluginCore(topo, config, Ledger(), checkpoint=work / "standalone.json")
        server, caller = serve(core, work, "pref")
        gc.freeze()  # as the agent does once it has started (agent.standalone.start)
        available = [d.id for d in core.devices(GPU_RESOURCE)]
        preferred: list[float] = []
        for i in range(args.samples):
            size = 1 + i % len(topo.gpus)
            ask = pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=available, allocation_size=size
            )
            preferred.append(
                caller.call("pref", pb.PreferredAllocationRequest(container_requests=[ask]))
            )
        caller.close()
        server.stop()

        # Allocate, each container following its assignment.
        pods = StaticPodSource()
        core = DevicePluginCore(
            topo, config, Ledger(), pods=pods, checkpoint=work / "assigned.json"
        )
        server, caller = serve(core, work, "alloc")
        allocate: list[float] = []
        for i in range(args.samples):
            gpu = topo.gpus[i % len(topo.gpus)]
            assignment = Assignment(
                node=topo.node,
                containers=(ContainerAssignment("main", gpus=(GpuShare(gpu.uuid, 1, 256),)),),
            )
            pods.add(
                PendingPod(
                    uid=f"uid-{i}",
                    namespace="bench",
                    name=f"pod-{i}",
                    node=topo.node,
                    created=float(i),
                    containers=(ContainerRequest("main", gpus=1, core=1, memory_mib=256),),
                    assignment_text=dump_assignment(assignment),
                )
            )
            slot = f"{gpu.uuid}::{i // len(topo.gpus) % config.gpu_slots:02d}"
            request = pb.AllocateRequest(
                container_requests=[pb.ContainerAllocateRequest(devices_ids=[slot])]
            )
            allocate.append(caller.call("alloc", request))
            pods.remove(f"uid-{i}")  # allocated: the API no longer lists it as pending
            if i >= 200:  # keep the ledger the size of a busy node: 200 live containers
                core.release_pod(f"uid-{i - 200}")
        caller.close()
        server.stop()
        report("gRPC floor (a do-nothing handler)", floor)
        p_pref = report("GetPreferredAllocation (1-8 GPUs)", preferred)
        p_alloc = report("Allocate (assigned slice)", allocate)
        print(
            f"targets: GetPreferredAllocation p99 <= 5 ms ({p_pref:.2f}),"
            f" Allocate p99 <= 10 ms ({p_alloc:.2f})"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(regions, ignore_errors=True)


if __name__ == "__main__":
    main()
