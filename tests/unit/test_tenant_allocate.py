"""A tenant (anyone who can create pods in their namespace) need not go through the scheduler:
a pod created with `spec.nodeName` set can carry a `gpulet.io/assignment` of its own making.
Allocate gives a container at most what the pod's own resources ask, whatever the annotation
says, and a lost checkpoint is not rebuilt from annotations that say more."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agent.kube import pending_pod
from agent.plugincore import ListedContainer, adopt
from agent.recover import recover_from_pods
from deviceplugin.assignment import (
    ANNOTATION,
    Assignment,
    ContainerAssignment,
    GpuShare,
    PendingPod,
    StaticPodSource,
    dump_assignment,
)
from deviceplugin.core import AllocateError, DevicePluginCore
from deviceplugin.ids import device_id
from deviceplugin.ledger import Ledger
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.api.resources import ALLOCATED_ANNOTATION
from gpulet.standins.kubelet import AllocateFailed
from gpulet.standins.objects import container, pod_object
from native.region import DeviceLimit, read_limits
from tests.nodes import shipped
from tests.unit import test_agent_path as path

A100 = shipped("dgx-a100")
NODE = "node-7"
LIB = Path("/opt/gpulet/libgpulet-limiter.so")
G0, G1 = A100.gpus[0].uuid, A100.gpus[1].uuid
MEM = A100.gpus[0].memory_mib
#: The same node under the Kubernetes name the assignments carry.
ON_NODE = replace(A100, node=NODE)
#: The request of the attack: a tenth of one GPU's compute and 1 GiB of its memory.
SMALL = {"gpus": 1, "core": 10, "memory": 1024}
SMALL_ASKS = "gpulet.io/gpu: 1, gpulet.io/gpu-core: 10, gpulet.io/gpu-memory: 1024"
#: A batch slice of the same size.
BATCH = {"gpus": 1, "batch_core": 10, "batch_memory": 1024}
BATCH_ASKS = "gpulet.io/gpu: 1, gpulet.io/batch-gpu-core: 10, gpulet.io/batch-gpu-memory: 1024"

#: The real agent on a simulated DGX H100, the API server and kubelet stand-ins around it.
cluster = path.cluster


def tenant_pod(
    name: str,
    ask: dict[str, Any],
    shares: tuple[GpuShare, ...],
    nics: tuple[str, ...] = (),
    *,
    node: str = NODE,
    namespace: str = "team",
) -> dict[str, Any]:
    """A pod as a tenant can create it: bound by hand, with an assignment of its own."""
    text = dump_assignment(Assignment(node, (ContainerAssignment("main", shares, nics),)))
    pod = pod_object(
        name,
        container("main", **ask),
        namespace=namespace,
        annotations={ANNOTATION: text},
        uid=f"uid-{name}",
    )
    pod["spec"]["nodeName"] = node
    return pod


def core_for(
    tmp: Path, *pods: dict[str, Any], **kw: Any
) -> tuple[DevicePluginCore, StaticPodSource]:
    """The device plugin with the pods as the agent's watch shows them."""
    source = StaticPodSource(pending(p) for p in pods)
    cfg = PluginConfig(
        node_name=NODE,
        region_root=tmp / "containers",
        limiter_host_path=LIB,
        preload_host_path=tmp / "preload",
        **kw,
    )
    return DevicePluginCore(A100, cfg, Ledger(), pods=source), source


def kubelet_ids(resource: str, count: int, first: int = 0, owner: str | None = None) -> list[str]:
    """IDs kubelet may pick: any free slots (here of GPU7 or port mlx5_11), not the assigned."""
    owner = owner or (A100.gpus[7].uuid if resource == GPU_RESOURCE else "mlx5_11")
    return [device_id(owner, first + s) for s in range(count)]


def pending(pod: dict[str, Any]) -> PendingPod:
    found = pending_pod(pod, NODE)
    assert found is not None
    return found


def gives(*gpus: GpuShare, nics: tuple[str, ...] = ()) -> ContainerAssignment:
    return ContainerAssignment("main", gpus, nics)


def refusal(asks: str, problem: str) -> str:
    return (
        f"pod team/forged container 'main': gpulet.io/assignment does not match the "
        f"container's request ({asks}): {problem}"
    )


# ---- Allocate ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ask", "given", "asks", "problem"),
    [
        pytest.param(
            SMALL,
            gives(GpuShare(G0, 100, 1024)),
            SMALL_ASKS,
            f'GPU {G0} has "core": 100, not 10',
            id="more-core",
        ),
        pytest.param(
            SMALL,
            gives(GpuShare(G0, 10, MEM)),
            SMALL_ASKS,
            f'GPU {G0} has "memory_mib": {MEM}, not 1024',
            id="more-memory",
        ),
        pytest.param(
            SMALL,
            gives(GpuShare(G0, 100, MEM, exclusive=True)),
            SMALL_ASKS,
            f'GPU {G0} has "exclusive": true (a whole GPU), but the container asks a slice',
            id="whole-for-a-slice",
        ),
        pytest.param(
            {"gpus": 1, "core": 10},
            gives(GpuShare(G0, 100, MEM, exclusive=True)),
            "gpulet.io/gpu: 1, gpulet.io/gpu-core: 10",
            f'GPU {G0} has "exclusive": true (a whole GPU), but the container asks a slice',
            id="whole-for-core-only",
        ),
        pytest.param(
            {"gpus": 1, "core": 10},
            gives(GpuShare(G0, 10, MEM + 1)),
            "gpulet.io/gpu: 1, gpulet.io/gpu-core: 10",
            f'GPU {G0} has "memory_mib": {MEM + 1}, more than its {MEM} MiB',
            id="more-memory-than-the-gpu",
        ),
        pytest.param(
            {"gpus": 1, "memory": 1024},
            gives(GpuShare(G0, 50, 1024)),
            "gpulet.io/gpu: 1, gpulet.io/gpu-memory: 1024",
            f'GPU {G0} has "core": 50, not 100 (the container names no gpulet.io/gpu-core)',
            id="core-not-asked",
        ),
        pytest.param(
            {"gpus": 1},
            gives(GpuShare(G0, 30, 8192)),
            "gpulet.io/gpu: 1",
            f'GPU {G0} has "exclusive": false (a slice), but the container asks whole GPUs',
            id="slice-for-whole",
        ),
        pytest.param(
            SMALL,
            gives(GpuShare("GPU-00000000-dead-beef", 10, 1024)),
            SMALL_ASKS,
            '"uuid" GPU-00000000-dead-beef is not a GPU this node shares',
            id="unknown-gpu",
        ),
        pytest.param(
            {**SMALL, "rdma": 1},
            gives(GpuShare(G0, 10, 1024), nics=("mlx5_99",)),
            f"{SMALL_ASKS}, gpulet.io/rdma: 1",
            "NIC mlx5_99 is not an RDMA port of this node",
            id="unknown-nic",
        ),
        pytest.param(
            {"gpus": 1},
            gives(GpuShare(G0, 100, MEM, True), GpuShare(G1, 100, MEM, True)),
            "gpulet.io/gpu: 1",
            '"gpus" has 2 entries, not 1',
            id="more-gpus",
        ),
        pytest.param(
            {**SMALL, "rdma": 1},
            gives(GpuShare(G0, 10, 1024), nics=("mlx5_0", "mlx5_1")),
            f"{SMALL_ASKS}, gpulet.io/rdma: 1",
            '"nics" has 2 entries, not 1',
            id="more-nics",
        ),
        pytest.param(
            SMALL,
            gives(GpuShare(G0, 10, 1024), nics=("mlx5_0",)),
            SMALL_ASKS,
            '"nics" has 1 entry, not 0',
            id="nics-not-asked",
        ),
        # A batch pod given a reservation: counted as nothing by the extender's books, paced
        # to a fixed share, never taken back.
        pytest.param(
            BATCH,
            gives(GpuShare(G0, 10, 1024)),
            BATCH_ASKS,
            f"GPU {G0} has a production slice, but the container asks a batch slice",
            id="reservation-for-batch",
        ),
        pytest.param(
            SMALL,
            gives(GpuShare(G0, 10, 1024, batch=True)),
            SMALL_ASKS,
            f"GPU {G0} has a batch slice, but the container asks a production slice",
            id="batch-for-a-reservation",
        ),
    ],
)
def test_an_assignment_that_gives_other_than_the_pod_asks_is_refused(
    tmp_path: Path, ask: dict[str, Any], given: ContainerAssignment, asks: str, problem: str
) -> None:
    core, _ = core_for(tmp_path, tenant_pod("forged", ask, given.gpus, given.nics))
    with pytest.raises(AllocateError) as refused:
        core.allocate(GPU_RESOURCE, kubelet_ids(GPU_RESOURCE, ask["gpus"]))
    assert str(refused.value) == refusal(asks, problem)
    assert core.grants() == ()
    assert not (tmp_path / "containers").exists()  # no limits file was written


@pytest.mark.parametrize(
    ("ask", "shares", "limits"),
    [
        pytest.param(SMALL, (GpuShare(G0, 10, 1024),), [(G0, 1024, 10)], id="slice"),
        # Memory not named: the rest of the GPU, as the extender saw it free.
        pytest.param(
            {"gpus": 1, "core": 10}, (GpuShare(G0, 10, 40000),), [(G0, 40000, 10)], id="core"
        ),
        # Core not named: 100, not paced.
        pytest.param(
            {"gpus": 1, "memory": 1024}, (GpuShare(G0, 100, 1024),), [(G0, 1024, 100)], id="mem"
        ),
        pytest.param(
            {"gpus": 2},
            (GpuShare(G0, 100, MEM, True), GpuShare(G1, 100, MEM, True)),
            [(G0, MEM, 100), (G1, MEM, 100)],
            id="whole",
        ),
        pytest.param(
            BATCH, (GpuShare(G0, 10, 1024, batch=True),), [(G0, 1024, 10, True)], id="batch"
        ),
    ],
)
def test_an_assignment_that_gives_what_the_pod_asks_is_followed(
    tmp_path: Path,
    ask: dict[str, Any],
    shares: tuple[GpuShare, ...],
    limits: list[tuple[str, int, int] | tuple[str, int, int, bool]],
) -> None:
    core, _ = core_for(tmp_path, tenant_pod("honest", ask, shares))
    got = core.allocate(GPU_RESOURCE, kubelet_ids(GPU_RESOURCE, ask["gpus"]))
    assert got.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(s.uuid for s in shares)
    written = read_limits(tmp_path / "containers" / "uid-honest" / "main" / "limits")
    assert [(d.uuid, d.memory_mib, d.core_percent, d.batch) for d in written.devices] == [
        (*limit, False)[:4] for limit in limits
    ]


def test_gpus_and_ports_that_agree_with_the_request_are_granted(tmp_path: Path) -> None:
    pod = tenant_pod("both", {**SMALL, "rdma": 1}, (GpuShare(G0, 10, 1024),), ("mlx5_2",))
    core, _ = core_for(tmp_path, pod)
    core.allocate(GPU_RESOURCE, kubelet_ids(GPU_RESOURCE, 1))
    assert core.allocate(RDMA_RESOURCE, kubelet_ids(RDMA_RESOURCE, 1)).envs == {
        "NCCL_IB_HCA": "=mlx5_2"
    }
    limits = read_limits(tmp_path / "containers" / "uid-both" / "main" / "limits")
    assert limits.devices == (DeviceLimit(G0, 1024, 10),)


def test_a_pod_whose_request_cannot_be_read_is_refused_with_why(tmp_path: Path) -> None:
    """`8Gi` of gpu-memory is a valid Kubernetes quantity that kubelet admits, but it could
    mean 8 GiB or 8 Gi MiB: the extender refuses it, and so does Allocate."""
    pod = tenant_pod("forged", {"gpus": 1, "memory": "8Gi"}, (GpuShare(G0, 100, MEM),))
    core, _ = core_for(tmp_path, pod)
    with pytest.raises(AllocateError) as refused:
        core.allocate(GPU_RESOURCE, kubelet_ids(GPU_RESOURCE, 1))
    assert str(refused.value) == (
        "pod team/forged container 'main': gpulet.io/gpu-memory must be a whole number "
        "(MiB of each GPU), got '8Gi'"
    )
    assert core.grants() == ()


def test_devices_already_held_are_refused_naming_the_holder(tmp_path: Path) -> None:
    first = tenant_pod("first", {**SMALL, "rdma": 1}, (GpuShare(G1, 10, 1024),), ("mlx5_2",))
    core, source = core_for(tmp_path, first, rdma_slots=1)
    core.allocate(GPU_RESOURCE, kubelet_ids(GPU_RESOURCE, 1))
    core.allocate(RDMA_RESOURCE, kubelet_ids(RDMA_RESOURCE, 1))
    source.remove("uid-first")  # admitted
    whole = tenant_pod("whole", {"gpus": 1}, (GpuShare(G1, 100, MEM, True),))
    source.add(pending(whole))
    with pytest.raises(AllocateError) as refused:
        core.allocate(GPU_RESOURCE, kubelet_ids(GPU_RESOURCE, 1, first=1))
    assert str(refused.value) == (
        "pod team/whole container 'main': the assignment gives GPU1 whole, but pod uid-first "
        "container 'main' has a slice of it; the scheduler extender's view of this node is "
        "behind the agent's"
    )
    source.remove("uid-whole")
    port = tenant_pod("port", {**SMALL, "rdma": 1}, (GpuShare(G0, 10, 1024),), ("mlx5_2",))
    source.add(pending(port))
    core.allocate(GPU_RESOURCE, kubelet_ids(GPU_RESOURCE, 1, first=2))
    with pytest.raises(AllocateError) as refused:
        core.allocate(RDMA_RESOURCE, kubelet_ids(RDMA_RESOURCE, 1, owner="mlx5_10"))
    assert str(refused.value) == (
        "pod team/port container 'main': all 1 slots of RDMA port mlx5_2 are granted (pod "
        "uid-first container 'main'); the scheduler extender's view of this node is behind "
        "the agent's"
    )


# ---- recovery after a lost checkpoint ------------------------------------------------------


def allocated(pod: dict[str, Any], ids: list[str]) -> dict[str, Any]:
    """`pod` with the agent's record of what kubelet gave its container `main`."""
    record = {"version": 1, "containers": {"main": {GPU_RESOURCE: ids}}}
    pod["metadata"]["annotations"][ALLOCATED_ANNOTATION] = json.dumps(record)
    return pod


def test_an_honest_pod_is_recovered_as_the_slice_it_asked(tmp_path: Path) -> None:
    ids = kubelet_ids(GPU_RESOURCE, 1)
    pod = allocated(tenant_pod("honest", SMALL, (GpuShare(G0, 10, 1024),)), ids)
    ledger = Ledger()
    config = PluginConfig(node_name=NODE, region_root=tmp_path)
    assert recover_from_pods(ledger, [pod], ON_NODE, config) == 1
    (grant,) = ledger.grants()
    assert (grant.pod_uid, grant.device_ids) == ("uid-honest", tuple(ids))
    assert grant.gpus == (GpuShare(G0, 10, 1024, False, index=0),)


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        pytest.param(
            tenant_pod("forged", SMALL, (GpuShare(G0, 100, MEM),)),
            f'GPU {G0} has "core": 100, not 10',
            id="bigger-slice",
        ),
        pytest.param(
            tenant_pod("forged", SMALL, (GpuShare(G0, 100, MEM, True),)),
            '"exclusive": true (a whole GPU), but the container asks a slice',
            id="whole",
        ),
        pytest.param(
            tenant_pod("forged", {"gpus": 1, "memory": "8Gi"}, (GpuShare(G0, 100, MEM),)),
            "gpulet.io/gpu-memory must be a whole number",
            id="unreadable-request",
        ),
    ],
)
def test_a_forged_pod_is_not_recovered_from_its_annotations(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, pod: dict[str, Any], reason: str
) -> None:
    """Not as the slice it names: kubelet's List then says which IDs it holds, and those
    GPUs are held whole (and by no pod) until the pod ends."""
    ids = kubelet_ids(GPU_RESOURCE, 1)
    ledger = Ledger()
    config = PluginConfig(node_name=NODE, region_root=tmp_path)
    with caplog.at_level(logging.WARNING, logger="gpulet.agent"):
        assert recover_from_pods(ledger, [allocated(pod, ids)], ON_NODE, config) == 0
    assert ledger.grants() == ()
    (line,) = [r.getMessage() for r in caplog.records if "not-recovered" in r.getMessage()]
    assert line.startswith("event=not-recovered pod_uid=uid-forged reason=")
    assert reason in line
    assert adopt(ledger, A100, [{GPU_RESOURCE: ids}]) == 1
    (held,) = ledger.grants()
    gpu7 = A100.gpus[7]
    assert held.pod_uid is None
    assert held.gpus == (GpuShare(gpu7.uuid, 100, gpu7.memory_mib, True, index=7),)


def listing(pod: dict[str, Any], ids: list[str], container_name: str = "main") -> ListedContainer:
    """kubelet's pod-resources List entry: `pod`'s container holds `ids`."""
    meta = pod["metadata"]
    return ListedContainer(
        meta["namespace"], meta["name"], container_name, {GPU_RESOURCE: tuple(ids)}
    )


def test_a_record_kubelet_confirms_is_recovered(tmp_path: Path) -> None:
    ids = kubelet_ids(GPU_RESOURCE, 1)
    pod = allocated(tenant_pod("honest", SMALL, (GpuShare(G0, 10, 1024),)), ids)
    ledger = Ledger()
    config = PluginConfig(node_name=NODE, region_root=tmp_path)
    assert recover_from_pods(ledger, [pod], ON_NODE, config, [listing(pod, ids)]) == 1
    (grant,) = ledger.grants()
    assert grant.gpus == (GpuShare(G0, 10, 1024, False, index=0),)


@pytest.mark.parametrize("holder", ["other-pod", "other-container", "nobody"])
def test_a_record_claiming_ids_kubelet_gives_another_is_not_recovered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, holder: str
) -> None:
    """An honest-looking assignment whose record names device IDs that kubelet's List shows
    held by someone else (or by no one) is not rebuilt: the IDs' real holder keeps them."""
    ids = kubelet_ids(GPU_RESOURCE, 1)
    forged = allocated(tenant_pod("forged", SMALL, (GpuShare(G0, 10, 1024),)), ids)
    victim = tenant_pod("victim", SMALL, (GpuShare(G1, 10, 1024),))
    listed = {
        "other-pod": [listing(victim, ids)],
        "other-container": [listing(forged, ids, container_name="sidecar")],
        "nobody": [],
    }[holder]
    ledger = Ledger()
    config = PluginConfig(node_name=NODE, region_root=tmp_path)
    with caplog.at_level(logging.WARNING, logger="gpulet.agent"):
        assert recover_from_pods(ledger, [forged], ON_NODE, config, listed) == 0
    assert ledger.grants() == ()
    (line,) = [r.getMessage() for r in caplog.records if "not-recovered" in r.getMessage()]
    assert f"records {GPU_RESOURCE} {ids[0]}, which kubelet's pod-resources List" in line


# ---- end to end, as a tenant would ---------------------------------------------------------


@pytest.mark.parametrize("exclusive", [False, True], ids=["all-memory", "exclusive"])
def test_a_forged_pod_gets_a_refusal_never_a_gpu(cluster: path.Cluster, exclusive: bool) -> None:
    """`kubectl apply` of a pod with spec.nodeName and an assignment of its own: the agent
    refuses it, and no limits file on the node gives it more than it asked."""
    gpu = cluster.agent.core.topo.gpus[0]
    share = GpuShare(gpu.uuid, 100, gpu.memory_mib, exclusive)
    pod = tenant_pod("forged", SMALL, (share,), node=path.NODE, namespace="default")
    stored = cluster.api.create_pod(pod)
    with pytest.raises(AllocateFailed) as refused:
        path.admit(cluster, stored)
    what = '"exclusive": true (a whole GPU)' if exclusive else '"core": 100, not 10'
    assert f"does not match the container's request ({SMALL_ASKS}): GPU {gpu.uuid} has {what}" in (
        refused.value.details
    )
    assert cluster.agent.core.grants() == ()
    for limits in (cluster.root / "regions").rglob("limits"):
        for device in read_limits(limits).devices:
            assert device.memory_mib <= 1024 and device.core_percent <= 10
    assert not list((cluster.root / "regions").rglob("limits"))


def test_a_forged_assignment_is_not_recovered_after_a_lost_checkpoint(
    cluster: path.Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A pod scheduled honestly as a slice; its owner then rewrites its assignment (their own
    pod's annotations are theirs to edit) to the whole GPU's memory and core. The agent loses
    its checkpoint and restarts: the pod is not rebuilt as the bigger slice."""
    honest = pod_object("edited", container("main", gpus=1, core=30, memory=8192))
    pod = path.schedule(cluster, honest)
    path.admit(cluster, pod)
    uid = pod["metadata"]["uid"]

    def recorded() -> bool:
        stored = cluster.api.get_pod("default", "edited") or {}
        return ALLOCATED_ANNOTATION in stored.get("metadata", {}).get("annotations", {})

    path.wait_for(recorded)
    stored = cluster.api.get_pod("default", "edited")
    assert stored is not None
    (share,) = path.assigned(stored).gpus
    memory = next(g.memory_mib for g in cluster.agent.core.topo.gpus if g.uuid == share.uuid)
    bigger = Assignment(
        path.NODE, (ContainerAssignment("main", (GpuShare(share.uuid, 100, memory),)),)
    )
    text = dump_assignment(bigger)
    stored["metadata"]["annotations"][ANNOTATION] = text
    cluster.api.update_pod(stored)

    def seen() -> bool:
        watched = cluster.agent.pods.pod(uid) or {}
        return bool(watched.get("metadata", {}).get("annotations", {}).get(ANNOTATION) == text)

    path.wait_for(seen)
    cluster.agent.stop()
    for lost in cluster.state.glob("checkpoint.json*"):
        lost.unlink()
    with caplog.at_level(logging.WARNING, logger="gpulet.agent"):
        cluster.agent = cluster.start_agent()
    assert any(
        r.getMessage().startswith(f"event=not-recovered pod_uid={uid} reason=")
        for r in caplog.records
    )
    grants = cluster.agent.core.grants()
    assert not [g for g in grants if g.pod_uid == uid]  # not rebuilt from the annotations
    # Held all the same, from kubelet's List: its GPU whole, so nothing else is placed there.
    (held,) = grants
    assert held.pod_uid is None and all(s.exclusive for s in held.gpus)
