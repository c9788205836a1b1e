"""A batch slice gives production its memory back (docs/colocation.md, "Memory"), with real
processes: a production container (cap 12 GiB) and a batch one (6000 MiB held) on one fake
GPU of 16 GiB whose memory they share (the fake driver's `timeline`), each under the real
limiter. Production grows into its reservation 512 MiB at a time. The agent's monitor and
evictor (every 100 ms, as NVML lists the processes) kill the batch container's processes,
evict its pod through the API server stand-in and post an Event, before production runs
short: no production allocation fails. Without the evictor, one does."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiClient

from agent.cgroups import ProcessTable
from agent.eviction import REASON, BatchEvictor, through_api
from agent.kube import EventReporter
from agent.monitor import Monitor
from agent.usage import ProcessUsage
from deviceplugin.grants import Grant
from deviceplugin.regions import set_up
from gpulet.api.resources import GPU_RESOURCE
from gpulet.api.share import GpuShare
from gpulet.kube.calls import CoreCalls
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.objects import container, pod_object
from tests.fakes.cuda import fake_uuid, timeline_processes
from tests.limiter_harness import Container, build_limiter, build_nvml, fake_nvml_config
from tests.nodes import shipped
from tests.procfs import run_in

GPU = fake_uuid(0)
TOTAL_MIB = 16384
PROD_CAP, BATCH_CAP, BATCH_HELD = 12288, 6144, 6000
STEP_MIB, STEPS = 512, 20  # production from 2048 MiB to its cap, one step every 300 ms
NODE = "gpu-a"
_NODE = shipped("pcie-4gpu")
#: The node as the evictor sees it: one GPU, the fake driver's, with its memory.
TOPO = replace(_NODE, gpus=(replace(_NODE.gpus[0], uuid=GPU, memory_mib=TOTAL_MIB),))


@pytest.fixture(scope="module")
def limiter_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_limiter(tmp_path_factory.mktemp("limiter"))


@pytest.fixture(scope="module")
def nvml_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = build_nvml(tmp_path_factory.mktemp("nvml"))
    (directory / "nvml.conf").write_text(fake_nvml_config([GPU], TOTAL_MIB))
    return directory


class TimelineUsage:
    """NVML's process list on the fake GPU: every live process sharing its memory."""

    def __init__(self, timeline: Path) -> None:
        self.timeline = timeline

    def sample(self) -> list[ProcessUsage]:
        if not self.timeline.exists():
            return []
        return [
            ProcessUsage(GPU, pid, -(-held // (1 << 20)), None)
            for pid, device, held in timeline_processes(self.timeline)
            if device == 0
        ]


@pytest.fixture
def api() -> Iterator[ApiServerStandIn]:
    with ApiServerStandIn() as server:
        yield server


def running_pod(api: ApiServerStandIn, name: str, cid: str, **ask: Any) -> dict[str, Any]:
    pod = pod_object(name, container("main", gpus=1, **ask))
    pod["spec"]["nodeName"] = NODE
    stored = api.create_pod(pod)
    stored["status"] = {
        "phase": "Running",
        "containerStatuses": [{"name": "main", "containerID": f"containerd://{cid}"}],
    }
    api.update_pod(stored)
    return stored


@pytest.mark.parametrize("evicting", [True, False], ids=["evictor", "no-evictor"])
def test_production_grows_into_its_reservation_and_batch_makes_way(  # noqa: PLR0917
    tmp_path: Path,
    api: ApiServerStandIn,
    limiter_lib: Path,
    fake_cuda_dir: Path,
    cuda_client: Path,
    nvml_dir: Path,
    evicting: bool,
) -> None:
    timeline, proc, ready = tmp_path / "gpu0", tmp_path / "proc", tmp_path / "ready"
    proc.mkdir()
    prod_cid, batch_cid = "a" * 64, "b" * 64
    prod_pod = running_pod(api, "prod", prod_cid, core=50, memory=PROD_CAP)
    batch_pod = running_pod(api, "batch", batch_cid, batch_core=10, batch_memory=BATCH_CAP)
    shares = {
        "prod": GpuShare(GPU, 50, PROD_CAP, index=0),
        "batch": GpuShare(GPU, 10, BATCH_CAP, index=0, batch=True),
    }
    uids = {"prod": prod_pod["metadata"]["uid"], "batch": batch_pod["metadata"]["uid"]}
    grants: list[Grant] = []
    boxes: dict[str, Container] = {}
    for name, share in shares.items():
        directory = tmp_path / "regions" / name
        set_up(directory, (share,))
        grants.append(Grant(GPU_RESOURCE, (f"{GPU}::0{len(grants)}",), (share,),
                            pod_uid=uids[name], container="main", region_dir=str(directory),
                            granted_at=float(len(grants))))  # fmt: skip
        boxes[name] = Container(
            region_dir=directory,
            limiter=limiter_lib,
            cuda_dir=fake_cuda_dir,
            nvml_dir=nvml_dir,
            client=cuda_client,
            fake_config=f"total_mib={TOTAL_MIB},timeline={timeline}",
        )
    core = CoreCalls(ApiClient(api.configuration()))
    pods = {p["metadata"]["uid"]: p for p in (prod_pod, batch_pod)}
    monitor = Monitor(
        TimelineUsage(timeline),
        ProcessTable(proc),
        lambda: grants,
        lambda: [api.get_pod("default", p["metadata"]["name"]) or {} for p in pods.values()],
        enforce="on",
    )
    evictor = BatchEvictor(
        TOPO, through_api(core, EventReporter(core, NODE), pods.get, kill=monitor.enforcing)
    )
    batch = boxes["batch"].start("runtime", [f"alloc {BATCH_HELD}", f"touch {ready}", "hold 60"])
    run_in(proc, batch.pid, uids["batch"], batch_cid)
    stop = threading.Event()

    def agent() -> None:
        while not stop.wait(0.1):
            monitor.tick()
            if evicting:
                evictor.observe(monitor.latest, grants)

    loop = threading.Thread(target=agent, daemon=True)
    try:
        boxes["prod"].lines("runtime", [f"wait-file {ready}"], timeout=30)
        loop.start()
        grow = [f"alloc {PROD_CAP - STEPS * STEP_MIB}"]
        for _ in range(STEPS):
            grow += ["hold 0.3", f"alloc {STEP_MIB}"]
        production = boxes["prod"].start("runtime", grow)
        run_in(proc, production.pid, uids["prod"], prod_cid)
        out, err = production.communicate(timeout=60)
    finally:
        stop.set()
        if loop.is_alive():
            loop.join(timeout=5)
        batch.kill()
        batch.wait()
    allocations = [line for line in out.splitlines() if line.startswith("alloc")]
    assert len(allocations) == STEPS + 1, err
    failed = [line for line in allocations if not line.endswith(" ok")]
    evictions = [p for m, p in api.requests if m == "POST" and p.endswith("/eviction")]
    if not evicting:
        # The control: the GPU runs out while production is still within its reservation.
        assert failed and failed[0] == f"alloc {STEP_MIB} err 2", allocations
        assert evictions == []
        return
    assert failed == [], allocations
    assert batch.returncode == -9  # killed by the agent, not by the test's cleanup
    assert evictions == ["/api/v1/namespaces/default/pods/batch/eviction"]
    (event,) = [e for e in api.events() if e.get("reason") == REASON]
    assert event["involvedObject"]["name"] == "batch"
    assert "under its watermark" in event["message"]
    assert api.get_pod("default", "prod") is not None
