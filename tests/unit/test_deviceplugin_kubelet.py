"""The device plugins against the kubelet stand-in, over real gRPC on unix sockets, on
simulated DGX nodes: registration, device lists, allocation, kubelet and agent restarts,
health, and bad input."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest

from agent.discovery.netlink import SysfsLinkState
from agent.health import FileXidSource, SysfsPortStates
from agent.plugincore import AgentSpec, build
from agent.simnode import SimulatedNode, open_simulated
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
from deviceplugin.manager import PluginManager
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.standins.kubelet import AllocateFailed, KubeletStandIn, PodRef, StandInView
from gpulet.topology import Topology
from tests.nodes import shipped

SLOTS = 100


@dataclass
class Node:
    sim: SimulatedNode
    topo: Topology
    kubelet: KubeletStandIn
    state_dir: Path
    xid_file: Path
    manager: PluginManager | None = None

    def start_agent(self, pods: StaticPodSource | None = None) -> PluginManager:
        spec = AgentSpec(
            topo=self.topo,
            plugin_dir=self.kubelet.plugin_dir,
            state_dir=self.state_dir,
            config=PluginConfig(node_name=self.topo.node, region_root=self.state_dir / "c"),
            pod_resources_socket=self.kubelet.pod_resources_socket,
        )
        if pods is None:
            core = build(spec)
        else:
            # Slices need the limiter: its library and the preload file naming it.
            self.state_dir.mkdir(parents=True, exist_ok=True)
            lib = self.state_dir / "libgpulet-limiter.so"
            lib.touch()
            preload = self.state_dir / "ld.so.preload"
            preload.write_text(f"{lib}\n")
            config = replace(spec.config, limiter_host_path=lib, preload_host_path=preload)
            core = DevicePluginCore(
                self.topo, config, Ledger(), pods=pods, checkpoint=self.state_dir / "cp"
            )
        self.manager = PluginManager(
            core,
            self.kubelet.plugin_dir,
            FileXidSource(self.xid_file),
            SysfsPortStates(self.sim.sysfs, self.topo, SysfsLinkState(self.sim.sysfs)),
        )
        self.manager.start()
        return self.manager

    def stop_agent(self) -> None:
        if self.manager is not None:
            self.manager.stop()
            self.manager = None

    def registered(self, timeout: float = 5.0) -> bool:
        resources = [GPU_RESOURCE] + ([RDMA_RESOURCE] if self.topo.nics else [])
        return self.kubelet.wait_for(
            lambda v: all(v.devices(r) for r in resources), timeout=timeout
        )


@pytest.fixture(params=["dgx-a100", "dgx-h100"])
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    yield from _node(str(request.param))


@pytest.fixture
def a100() -> Iterator[Node]:
    yield from _node("dgx-a100")


def _node(name: str) -> Iterator[Node]:
    short = Path(tempfile.mkdtemp(prefix="kl"))  # unix socket paths must stay short
    sim = open_simulated(name)
    topo = shipped(name)
    xid = short / "xid"
    xid.touch()
    kubelet = KubeletStandIn(short / "dp", short / "pr", dial_timeout=2.0)
    kubelet.start()
    n = Node(sim, topo, kubelet, short / "state", xid)
    try:
        yield n
    finally:
        n.stop_agent()
        kubelet.stop()
        shutil.rmtree(short, ignore_errors=True)


def pod(i: int) -> PodRef:
    return PodRef(uid=f"uid-{i}", namespace="default", name=f"pod-{i}")


def gpu_of(node: Node, device_id: str) -> int:
    uuid = device_id.split("::", maxsplit=1)[0]
    return next(g.index for g in node.topo.gpus if g.uuid == uuid)


def granted_gpus(node: Node, response_envs: dict[str, str]) -> list[int]:
    uuids = response_envs["NVIDIA_VISIBLE_DEVICES"].split(",")
    return [next(g.index for g in node.topo.gpus if g.uuid == u) for u in uuids]


# ---- registration and device lists -----------------------------------------------------------


def test_both_resources_register_with_the_right_devices(node: Node) -> None:
    node.start_agent()
    assert node.registered()
    for resource in (GPU_RESOURCE, RDMA_RESOURCE):
        record = node.kubelet.registrations(resource)[-1]
        assert record.version == "v1beta1"
        assert record.plugin_options.get_preferred_allocation_available
    gpus = node.kubelet.devices(GPU_RESOURCE)
    assert len(gpus) == len(node.topo.gpus) * SLOTS
    for gpu in node.topo.gpus:
        slots = [d for i, d in gpus.items() if i.startswith(gpu.uuid + "::")]
        assert len(slots) == SLOTS
        assert all(d.numa_nodes == (gpu.numa,) and d.healthy for d in slots)
    nics = node.kubelet.devices(RDMA_RESOURCE)
    assert len(nics) == len(node.topo.nics) * SLOTS
    for nic in node.topo.nics:
        assert nics[f"{nic.key}::00"].numa_nodes == (nic.numa,)


def test_two_whole_gpus_on_dgx_a100_sit_behind_one_switch(a100: Node) -> None:
    a100.start_agent()
    assert a100.registered()
    response = a100.kubelet.allocate(pod(1), "main", GPU_RESOURCE, 2).container_responses[0]
    envs = dict(response.envs)
    chosen = granted_gpus(a100, envs)
    assert len(chosen) == 2
    first, second = (a100.topo.gpus[i] for i in chosen)
    assert first.switch is not None and first.switch == second.switch
    paths = {d.container_path for d in response.devices}
    assert {f"/dev/nvidia{first.minor}", f"/dev/nvidia{second.minor}"} <= paths
    assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"} <= paths
    assert envs["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert envs["GPULET_REGION_DIR"] == "/run/gpulet"
    region = next(m for m in response.mounts if m.container_path == "/run/gpulet")
    assert Path(region.host_path, "limits").stat().st_mode & 0o222 == 0
    # The next two whole GPUs are two others.
    again = a100.kubelet.allocate(pod(2), "main", GPU_RESOURCE, 2).container_responses[0]
    assert not set(granted_gpus(a100, dict(again.envs))) & set(chosen)


# ---- restarts ------------------------------------------------------------------------------


def test_after_a_kubelet_restart_the_plugins_register_again_within_2_s(node: Node) -> None:
    node.start_agent()
    assert node.registered()
    first = node.kubelet.allocate(pod(1), "main", GPU_RESOURCE, 1).container_responses[0]
    before = node.kubelet.devices(GPU_RESOURCE)
    restarted = node.kubelet.restart()
    assert node.kubelet.wait_for(
        lambda v: (
            v.registered_since(GPU_RESOURCE, restarted)
            and v.registered_since(RDMA_RESOURCE, restarted)
            and bool(v.devices(GPU_RESOURCE))
        ),
        timeout=2.0,
    )
    assert time.monotonic() - restarted < 2.0
    assert set(node.kubelet.devices(GPU_RESOURCE)) == set(before)
    later = node.kubelet.allocate(pod(2), "main", GPU_RESOURCE, 1).container_responses[0]
    assert granted_gpus(node, dict(later.envs)) != granted_gpus(node, dict(first.envs))


def test_an_agent_restart_neither_forgets_nor_grants_twice(node: Node) -> None:
    node.start_agent()
    assert node.registered()
    held: set[int] = set()
    for i in range(3):
        response = node.kubelet.allocate(pod(i), "main", GPU_RESOURCE, 2).container_responses[0]
        held |= set(granted_gpus(node, dict(response.envs)))
    node.stop_agent()
    restarted_at = time.monotonic()
    node.start_agent()
    assert node.kubelet.wait_for(
        lambda v: (
            v.registered_since(GPU_RESOURCE, restarted_at)
            and bool(v.devices(GPU_RESOURCE))
            and all(d.healthy for d in v.devices(GPU_RESOURCE).values())
        ),
        timeout=5.0,
    )
    response = node.kubelet.allocate(pod(9), "main", GPU_RESOURCE, 2).container_responses[0]
    assert not set(granted_gpus(node, dict(response.envs))) & held


def test_a_lost_checkpoint_is_rebuilt_from_kubelets_pod_resources(a100: Node) -> None:
    a100.start_agent()
    assert a100.registered()
    held: set[int] = set()
    for i in range(3):
        response = a100.kubelet.allocate(pod(i), "main", GPU_RESOURCE, 2).container_responses[0]
        held |= set(granted_gpus(a100, dict(response.envs)))
    a100.stop_agent()
    checkpoint = a100.state_dir / "checkpoint.json"
    checkpoint.write_text('{"version": 1, "grants": [')  # torn
    restarted_at = time.monotonic()
    a100.start_agent()
    assert a100.kubelet.wait_for(
        lambda v: (
            v.registered_since(GPU_RESOURCE, restarted_at)
            and all(d.healthy for d in v.devices(GPU_RESOURCE).values())
        ),
        timeout=5.0,
    )
    assert list(a100.state_dir.glob("checkpoint.json.corrupt-*")), "the damaged file was lost"
    response = a100.kubelet.allocate(pod(9), "main", GPU_RESOURCE, 2).container_responses[0]
    assert not set(granted_gpus(a100, dict(response.envs))) & held
    # Kubelet's preference is advisory: even asked for a free slot of a held GPU by name,
    # the plugin refuses it.
    taken = a100.topo.gpus[min(held)].uuid
    with pytest.raises(AllocateFailed) as refused:
        a100.kubelet.allocate_ids(pod(10), "main", GPU_RESOURCE, [f"{taken}::42"])
    assert "held" in refused.value.details or "granted" in refused.value.details


# ---- health --------------------------------------------------------------------------------


def _health(view: StandInView, resource: str, prefix: str) -> set[bool]:
    return {d.healthy for i, d in view.devices(resource).items() if i.startswith(prefix)}


def test_xid_79_makes_a_gpus_slots_unhealthy_within_1_s(node: Node) -> None:
    node.start_agent()
    assert node.registered()
    gpu = node.topo.gpus[3]
    start = time.monotonic()
    with node.xid_file.open("a") as f:
        f.write("3 79\n")
    assert node.kubelet.wait_for(
        lambda v: _health(v, GPU_RESOURCE, gpu.uuid) == {False}, timeout=1.0
    )
    assert time.monotonic() - start < 1.0
    others = node.kubelet.devices(GPU_RESOURCE)
    assert all(d.healthy for i, d in others.items() if not i.startswith(gpu.uuid))
    with node.xid_file.open("a") as f:
        f.write("3 recovered\n")
    assert node.kubelet.wait_for(lambda v: _health(v, GPU_RESOURCE, gpu.uuid) == {True}, 2.0)


def test_an_application_xid_leaves_the_gpu_healthy(a100: Node) -> None:
    a100.start_agent()
    assert a100.registered()
    messages = a100.kubelet.messages(GPU_RESOURCE)
    with a100.xid_file.open("a") as f:
        f.write("2 13\n")
    time.sleep(0.6)
    assert a100.kubelet.messages(GPU_RESOURCE) == messages
    assert _health(a100.kubelet.view(), GPU_RESOURCE, a100.topo.gpus[2].uuid) == {True}


def test_a_port_going_down_makes_its_slots_unhealthy(a100: Node) -> None:
    a100.start_agent()
    assert a100.registered()
    nic = a100.topo.nics[0]
    state = a100.sim.sysfs / "class/infiniband" / nic.name / "ports" / str(nic.port) / "state"
    state.resolve().write_text("1: DOWN\n")
    assert a100.kubelet.wait_for(
        lambda v: _health(v, RDMA_RESOURCE, nic.key + "::") == {False}, timeout=3.0
    )
    state.resolve().write_text("4: ACTIVE\n")
    assert a100.kubelet.wait_for(
        lambda v: _health(v, RDMA_RESOURCE, nic.key + "::") == {True}, timeout=3.0
    )


# ---- bad input -----------------------------------------------------------------------------


def test_unknown_and_unhealthy_ids_are_refused_and_the_plugin_keeps_serving(a100: Node) -> None:
    a100.start_agent()
    assert a100.registered()
    with pytest.raises(AllocateFailed) as unknown:
        a100.kubelet.allocate_ids(pod(1), "main", GPU_RESOURCE, ["GPU-nope::00"])
    assert unknown.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert "GPU-nope::00" in unknown.value.details
    with a100.xid_file.open("a") as f:
        f.write("5 79\n")
    bad = a100.topo.gpus[5].uuid
    assert a100.kubelet.wait_for(lambda v: _health(v, GPU_RESOURCE, bad) == {False}, 1.0)
    with pytest.raises(AllocateFailed) as unhealthy:
        a100.kubelet.allocate_ids(pod(2), "main", GPU_RESOURCE, [f"{bad}::00"])
    assert "unhealthy" in unhealthy.value.details
    assert "79" in unhealthy.value.details
    ok = a100.kubelet.allocate(pod(3), "main", GPU_RESOURCE, 1).container_responses[0]
    assert granted_gpus(a100, dict(ok.envs)) != [5]


def _pending(topo: Topology, node_name: str, annotation: str) -> PendingPod:
    return PendingPod(
        uid="uid-a",
        namespace="default",
        name="trainer",
        node=node_name,
        created=1.0,
        containers=(ContainerRequest("main", gpus=2, core=30, memory_mib=8192),),
        assignment_text=annotation,
    )


def _assignment(topo: Topology, node_name: str, gpus: list[int]) -> str:
    return dump_assignment(
        Assignment(
            node=node_name,
            containers=(
                ContainerAssignment(
                    "main",
                    gpus=tuple(
                        GpuShare(topo.gpus[i].uuid, 30, 8192, exclusive=False) for i in gpus
                    ),
                ),
            ),
        )
    )


def test_an_assignment_is_followed_exactly(a100: Node) -> None:
    pods = StaticPodSource(
        [_pending(a100.topo, a100.topo.node, _assignment(a100.topo, a100.topo.node, [3, 5]))]
    )
    a100.start_agent(pods)
    assert a100.registered()
    # Whatever slots kubelet picks (here GPU0's), the container gets GPU3 and GPU5.
    ids = [f"{a100.topo.gpus[0].uuid}::{s:02d}" for s in (0, 1)]
    try:
        response = a100.kubelet.allocate_ids(pod(1), "main", GPU_RESOURCE, ids)
    except AllocateFailed as e:
        pytest.fail(e.details)
    container = response.container_responses[0]
    envs = dict(container.envs)
    assert granted_gpus(a100, envs) == [3, 5]
    paths = {d.container_path for d in container.devices}
    minors = {f"/dev/nvidia{a100.topo.gpus[i].minor}" for i in (3, 5)}
    assert minors <= paths
    assert f"/dev/nvidia{a100.topo.gpus[0].minor}" not in paths
    mounts = {m.container_path: m for m in container.mounts}
    assert mounts["/etc/ld.so.preload"].read_only
    region = Path(mounts["/run/gpulet"].host_path)
    limits = (region / "limits").read_text()
    assert f"device {a100.topo.gpus[3].uuid} 8192 30" in limits
    assert f"device {a100.topo.gpus[5].uuid} 8192 30" in limits


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ("{not json", "gpulet.io/assignment"),
        ("OTHER_NODE", "other-node"),
    ],
)
def test_a_bad_assignment_is_refused_with_a_message(
    a100: Node, annotation: str, message: str
) -> None:
    if annotation == "OTHER_NODE":
        annotation = _assignment(a100.topo, "other-node", [3, 5])
    pods = StaticPodSource([_pending(a100.topo, a100.topo.node, annotation)])
    a100.start_agent(pods)
    assert a100.registered()
    ids = [f"{a100.topo.gpus[0].uuid}::{s:02d}" for s in (0, 1)]
    with pytest.raises(AllocateFailed) as refused:
        a100.kubelet.allocate_ids(pod(1), "main", GPU_RESOURCE, ids)
    assert message in refused.value.details
