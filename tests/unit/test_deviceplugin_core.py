"""The device plugin's decisions: standalone whole GPUs, assignments followed exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from deviceplugin.assignment import (
    Assignment,
    ContainerAssignment,
    ContainerRequest,
    GpuShare,
    PendingPod,
    StaticPodSource,
    dump_assignment,
)
from deviceplugin.core import AllocateError, DevicePluginCore
from deviceplugin.ids import device_id, parse
from deviceplugin.ledger import Ledger
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.topology import Topology
from native.region import DeviceLimit, Limits, read_limits
from tests.nodes import shipped

A100 = shipped("dgx-a100")
NODE = "node-7"
LIB = Path("/opt/gpulet/libgpulet-limiter.so")


def config(tmp: Path, **kw: object) -> PluginConfig:
    base: dict[str, object] = {
        "node_name": NODE,
        "region_root": tmp / "containers",
        "dev_root": "/dev",
    }
    return PluginConfig(**{**base, **kw})  # type: ignore[arg-type]


def free_ids(core: DevicePluginCore, resource: str) -> list[str]:
    """What kubelet offers: healthy IDs it has not allocated (ours are a superset)."""
    taken = {d for g in core.grants() for d in g.device_ids if g.resource == resource}
    return [d.id for d in core.devices(resource) if d.healthy and d.id not in taken]


def gpus_of(ids: list[str], topo: Topology = A100) -> list[int]:
    index = {g.uuid: g.index for g in topo.gpus}
    return [index[parse(i)[0]] for i in ids]


# ---- standalone ------------------------------------------------------------------------


def test_standalone_two_whole_gpus_behind_one_switch(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint.json"
    core = DevicePluginCore(A100, config(tmp_path), Ledger(), checkpoint=checkpoint)
    ids = core.preferred(GPU_RESOURCE, free_ids(core, GPU_RESOURCE), [], 2)
    assert len(ids) == 2
    a, b = gpus_of(ids)
    assert a != b and A100.gpus[a].switch == A100.gpus[b].switch is not None

    got = core.allocate(GPU_RESOURCE, ids)
    ga, gb = A100.gpus[a], A100.gpus[b]
    assert [d.container_path for d in got.devices] == [
        f"/dev/nvidia{ga.minor}",
        f"/dev/nvidia{gb.minor}",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
    ]
    assert got.envs["NVIDIA_VISIBLE_DEVICES"] == f"{ga.uuid},{gb.uuid}"
    assert got.envs["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    region = tmp_path / "containers" / "standalone" / ids[0].replace("::", "-")
    assert [(m.container_path, m.host_path, m.read_only) for m in got.mounts] == [
        ("/run/gpulet", str(region), False),
        ("/run/gpulet/limits", str(region / "limits"), True),
    ]
    assert read_limits(region / "limits") == Limits(
        (DeviceLimit(ga.uuid, ga.memory_mib, 100), DeviceLimit(gb.uuid, gb.memory_mib, 100))
    )
    (grant,) = core.grants()
    assert grant.pod_uid is None and all(s.exclusive for s in grant.gpus)
    assert Ledger.load(checkpoint).grants() == core.grants()


def test_standalone_never_hands_out_a_gpu_twice(tmp_path: Path) -> None:
    core = DevicePluginCore(A100, config(tmp_path), Ledger())
    seen: list[int] = []
    for _ in range(4):
        ids = core.preferred(GPU_RESOURCE, free_ids(core, GPU_RESOURCE), [], 2)
        pair = gpus_of(ids)
        assert A100.gpus[pair[0]].switch == A100.gpus[pair[1]].switch
        assert not set(pair) & set(seen)
        seen += pair
        core.allocate(GPU_RESOURCE, ids)
    assert sorted(seen) == list(range(8))
    # Kubelet still counts 792 free slots; we have no whole GPU left.
    assert core.preferred(GPU_RESOURCE, free_ids(core, GPU_RESOURCE), [], 1) == []
    other_slot = device_id(A100.gpus[3].uuid, 42)
    with pytest.raises(AllocateError) as err:
        core.allocate(GPU_RESOURCE, [other_slot])
    assert str(err.value).startswith(
        f"GPU3 ({A100.gpus[3].uuid}) is held whole by another container; kubelet offered its "
        f"slot {other_slot} because it counts slots, not GPUs"
    )


def test_standalone_refuses_two_slots_of_one_gpu(tmp_path: Path) -> None:
    core = DevicePluginCore(A100, config(tmp_path), Ledger())
    uuid = A100.gpus[0].uuid
    with pytest.raises(AllocateError, match="are slots of the same GPU"):
        core.allocate(GPU_RESOURCE, [f"{uuid}::00", f"{uuid}::01"])
    assert core.grants() == ()


def test_unknown_and_unhealthy_ids(tmp_path: Path) -> None:
    core = DevicePluginCore(A100, config(tmp_path, gpu_slots=10), Ledger())
    gpu = A100.gpus[2]
    with pytest.raises(AllocateError, match="unknown device ID 'GPU-nope::00': node dgx-a100"):
        core.allocate(GPU_RESOURCE, ["GPU-nope::00"])
    with pytest.raises(AllocateError, match="unknown device ID 'junk': device ID 'junk' is not"):
        core.allocate(GPU_RESOURCE, ["junk"])
    with pytest.raises(AllocateError, match=r"GPU2 \(.*\) has 10 slots \(00..09\)"):
        core.allocate(GPU_RESOURCE, [f"{gpu.uuid}::10"])
    with pytest.raises(AllocateError, match=r"unknown resource 'nvidia\.com/gpu'"):
        core.allocate("nvidia.com/gpu", [f"{gpu.uuid}::00"])
    with pytest.raises(AllocateError, match="no RDMA port mlx5_99"):
        core.allocate(RDMA_RESOURCE, ["mlx5_99::00"])

    assert core.set_gpu_health(2, False, "XID 79")
    assert not core.set_gpu_health(2, False, "XID 79")
    assert core.unhealthy_gpus() == {2}
    assert sum(not d.healthy for d in core.devices(GPU_RESOURCE)) == 10
    with pytest.raises(AllocateError) as err:
        core.allocate(GPU_RESOURCE, [f"{gpu.uuid}::03"])
    assert str(err.value) == (
        f"device ID '{gpu.uuid}::03' is on GPU2 ({gpu.uuid}), which is unhealthy (XID 79)"
    )
    assert 2 not in gpus_of(core.preferred(GPU_RESOURCE, free_ids(core, GPU_RESOURCE), [], 8))
    assert core.set_gpu_health(2, True) and core.unhealthy_gpus() == frozenset()

    assert core.set_nic_health("mlx5_3", False)
    assert core.unhealthy_nics() == {"mlx5_3"}
    with pytest.raises(AllocateError, match=r"RDMA port mlx5_3, which is unhealthy \(marked"):
        core.allocate(RDMA_RESOURCE, ["mlx5_3::00"])
    with pytest.raises(ValueError, match="no GPU9"):
        core.set_gpu_health(9, False)
    assert core.grants() == ()


def test_standalone_rdma_follows_the_latest_gpus(tmp_path: Path) -> None:
    core = DevicePluginCore(A100, config(tmp_path), Ledger())
    gpus = [device_id(A100.gpus[i].uuid, 0) for i in (4, 5)]
    core.allocate(GPU_RESOURCE, gpus)
    ids = core.preferred(RDMA_RESOURCE, free_ids(core, RDMA_RESOURCE), [], 2)
    assert sorted(parse(i)[0] for i in ids) == ["mlx5_6", "mlx5_7"]  # behind GPU4/5's switch
    got = core.allocate(RDMA_RESOURCE, ids)
    assert got.envs == {"NCCL_IB_HCA": "=mlx5_6,mlx5_7"}
    assert [d.container_path for d in got.devices] == [
        "/dev/infiniband/uverbs6",
        "/dev/infiniband/uverbs7",
        "/dev/infiniband/rdma_cm",
    ]
    assert got.mounts == ()
    # With no GPU grant to follow, the engine's order.
    fresh = DevicePluginCore(A100, config(tmp_path), Ledger())
    assert fresh.preferred(RDMA_RESOURCE, free_ids(fresh, RDMA_RESOURCE), [], 1) == ["mlx5_0::00"]


def test_a_port_with_no_verbs_device_is_refused_and_nothing_is_granted(tmp_path: Path) -> None:
    nics = [replace(n, uverbs=None) if n.name == "mlx5_6" else n for n in A100.nics]
    topo = Topology.build(A100.node, A100.gpus, nics, A100.numa_nodes)
    core = DevicePluginCore(topo, config(tmp_path), Ledger())
    with pytest.raises(AllocateError, match=r"RDMA device mlx5_6 .* has no verbs device"):
        core.allocate(RDMA_RESOURCE, ["mlx5_6::00"])
    assert core.grants() == ()
    assert core.allocate(RDMA_RESOURCE, ["mlx5_7::00"]).envs == {"NCCL_IB_HCA": "=mlx5_7"}


def test_preferred_keeps_to_what_kubelet_offers(tmp_path: Path) -> None:
    core = DevicePluginCore(A100, config(tmp_path, gpu_slots=4), Ledger())
    offered = free_ids(core, GPU_RESOURCE)
    # GPU0 is missing a slot in kubelet's books: it is not whole, so it is not chosen.
    offered.remove(device_id(A100.gpus[0].uuid, 3))
    must = [device_id(A100.gpus[6].uuid, 2)]
    got = core.preferred(GPU_RESOURCE, [*offered, "junk", "GPU-x::00"], must, 2)
    assert got[0] == must[0] and len(got) == 2
    assert set(got) <= {*offered, *must}
    assert 0 not in gpus_of(got)


def test_standalone_kubelet_reuse_supersedes(tmp_path: Path) -> None:
    """Kubelet hands out an ID we hold only when its container finished (an init container
    whose devices it reuses): the old grant goes."""
    core = DevicePluginCore(A100, config(tmp_path), Ledger())
    ids = [device_id(A100.gpus[0].uuid, 0), device_id(A100.gpus[1].uuid, 0)]
    core.allocate(GPU_RESOURCE, ids)
    core.allocate(GPU_RESOURCE, ids[:1])
    (grant,) = core.grants()
    assert grant.device_ids == tuple(ids[:1])
    assert (tmp_path / "containers" / "standalone" / ids[0].replace("::", "-")).is_dir()


def test_reconcile_removes_regions(tmp_path: Path) -> None:
    core = DevicePluginCore(A100, config(tmp_path), Ledger(), checkpoint=tmp_path / "c.json")
    first = [device_id(A100.gpus[0].uuid, 0)]
    second = [device_id(A100.gpus[1].uuid, 0)]
    core.allocate(GPU_RESOURCE, first)
    core.allocate(GPU_RESOURCE, second)
    dropped = core.reconcile({GPU_RESOURCE: set(second)})
    assert [g.device_ids for g in dropped] == [tuple(first)]
    root = tmp_path / "containers" / "standalone"
    assert sorted(p.name for p in root.iterdir()) == [second[0].replace("::", "-")]
    assert Ledger.load(tmp_path / "c.json").grants() == core.grants()


def test_checkpoint_failure_undoes_the_grant(tmp_path: Path) -> None:
    bad = tmp_path / "missing-dir" / "c.json"
    core = DevicePluginCore(A100, config(tmp_path), Ledger(), checkpoint=bad)
    with pytest.raises(AllocateError, match="cannot write the checkpoint"):
        core.allocate(GPU_RESOURCE, [device_id(A100.gpus[0].uuid, 0)])
    assert core.grants() == ()
    assert not (tmp_path / "containers" / "standalone").exists()


# ---- with an assignment ----------------------------------------------------------------


def assigned(
    uid: str,
    *,
    gpus: tuple[int, ...] = (),
    nics: tuple[str, ...] = (),
    core: int = 40,
    memory: int = 10240,
    node: str = NODE,
    created: float = 100.0,
    whole: bool = False,
) -> PendingPod:
    shares = tuple(
        GpuShare(
            A100.gpus[i].uuid,
            100 if whole else core,
            A100.gpus[i].memory_mib if whole else memory,
            whole,
        )
        for i in gpus
    )
    text = dump_assignment(Assignment(node, (ContainerAssignment("main", shares, nics, (1,)),)))
    # What the pod's resources ask: the slice (or whole GPUs) its assignment gives.
    request = ContainerRequest(
        "main", len(gpus), len(nics), None if whole else core, None if whole else memory
    )
    return PendingPod(uid, "team", f"job-{uid}", NODE, created, (request,), text)


def with_pods(
    tmp: Path, *pods: PendingPod, **kw: object
) -> tuple[DevicePluginCore, StaticPodSource]:
    source = StaticPodSource(pods)
    cfg = config(tmp, limiter_host_path=LIB, preload_host_path=tmp / "preload", **kw)
    return DevicePluginCore(A100, cfg, Ledger(), pods=source), source


def test_assignment_followed_exactly(tmp_path: Path) -> None:
    pod = assigned("uid-1", gpus=(3, 5), nics=("mlx5_2", "mlx5_7"))
    core, _ = with_pods(tmp_path, pod)
    g3, g5 = A100.gpus[3], A100.gpus[5]
    assert gpus_of(core.preferred(GPU_RESOURCE, free_ids(core, GPU_RESOURCE), [], 2)) == [3, 5]

    # Kubelet may pick any two slots; the container gets GPU3 and GPU5 all the same.
    picked = [device_id(A100.gpus[0].uuid, 7), device_id(A100.gpus[0].uuid, 8)]
    got = core.allocate(GPU_RESOURCE, picked)
    assert [d.container_path for d in got.devices][:2] == [
        f"/dev/nvidia{g3.minor}",
        f"/dev/nvidia{g5.minor}",
    ]
    assert [d.container_path for d in got.devices if "nvidia" in d.container_path][2:] == [
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
    ]
    assert got.envs["NVIDIA_VISIBLE_DEVICES"] == f"{g3.uuid},{g5.uuid}"
    region = tmp_path / "containers" / "uid-1" / "main"
    assert got.envs["GPULET_REGION_DIR"] == "/run/gpulet"
    assert [(m.container_path, m.host_path, m.read_only) for m in got.mounts] == [
        ("/run/gpulet", str(region), False),
        ("/run/gpulet/limits", str(region / "limits"), True),
        (str(LIB), str(LIB), True),
        ("/etc/ld.so.preload", str(tmp_path / "preload"), True),
    ]
    assert read_limits(region / "limits") == Limits(
        (DeviceLimit(g3.uuid, 10240, 40), DeviceLimit(g5.uuid, 10240, 40))
    )
    (grant,) = core.grants()
    assert (grant.pod_uid, grant.container, grant.device_ids) == ("uid-1", "main", tuple(picked))

    # Then its RDMA ports: the assignment's, whatever kubelet picked.
    assert sorted(core.preferred(RDMA_RESOURCE, free_ids(core, RDMA_RESOURCE), [], 2)) == [
        "mlx5_2::00",
        "mlx5_7::00",
    ]
    nics = core.allocate(RDMA_RESOURCE, ["mlx5_0::05", "mlx5_1::05"])
    assert nics.envs == {"NCCL_IB_HCA": "=mlx5_2,mlx5_7"}

    # Fully allocated: another call finds no pod.
    with pytest.raises(AllocateError, match=f"no pod bound to node {NODE} waits for 2"):
        core.allocate(
            GPU_RESOURCE, [device_id(A100.gpus[1].uuid, 0), device_id(A100.gpus[2].uuid, 0)]
        )

    released = core.release_pod("uid-1")
    assert len(released) == 2 and core.grants() == ()
    assert not (tmp_path / "containers" / "uid-1").exists()


def test_assignment_for_another_node(tmp_path: Path) -> None:
    core, _ = with_pods(tmp_path, assigned("u", gpus=(1,), node="node-9"))
    with pytest.raises(AllocateError) as err:
        core.allocate(GPU_RESOURCE, [device_id(A100.gpus[1].uuid, 0)])
    assert str(err.value) == (
        "pod team/job-u's gpulet.io/assignment is for node 'node-9', but this is node 'node-7'"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "pod team/job-u has no gpulet.io/assignment annotation"),
        (
            '{"version": 1, "node": "node-7", "containers": {"main": {"gpus": [{"uuid": "GPU-1",'
            ' "core": 150, "memory_mib": 1, "exclusive": false}], "nics": [], "numa": []}}}',
            'pod team/job-u: gpulet.io/assignment: container "main": core 150 is not in 1..100',
        ),
        (
            '{"version": 1, "node": "node-7", "containers": {}}',
            "pod team/job-u's gpulet.io/assignment has nothing for container 'main'",
        ),
        (
            '{"version": 1, "node": "node-7", "containers": {"main": {"gpus": [{"uuid": "GPU-1",'
            ' "core": 15, "memory_mib": 1, "exclusive": false}], "nics": [], "numa": []}}}',
            "pod team/job-u container 'main': gpulet.io/assignment does not match the "
            "container's request (gpulet.io/gpu: 1, gpulet.io/gpu-core: 40, gpulet.io/gpu-memory: "
            '10240): "uuid" GPU-1 is not a GPU this node shares',
        ),
    ],
)
def test_assignments_that_cannot_be_followed(
    tmp_path: Path, text: str | None, message: str
) -> None:
    pod = assigned("u", gpus=(1,))
    pod = PendingPod(pod.uid, pod.namespace, pod.name, pod.node, 1.0, pod.containers, text)
    core, _ = with_pods(tmp_path, pod)
    with pytest.raises(AllocateError) as err:
        core.allocate(GPU_RESOURCE, [device_id(A100.gpus[1].uuid, 0)])
    assert str(err.value).startswith(message)
    assert core.grants() == ()


def test_ambiguous_pods_are_refused(tmp_path: Path) -> None:
    core, _ = with_pods(tmp_path, assigned("a", gpus=(1,)), assigned("b", gpus=(2,)))
    with pytest.raises(AllocateError, match="cannot tell which pod kubelet is admitting"):
        core.allocate(GPU_RESOURCE, [device_id(A100.gpus[1].uuid, 0)])
    # Advisory: no preference, no error.
    assert len(core.preferred(GPU_RESOURCE, free_ids(core, GPU_RESOURCE), [], 1)) == 1


def test_oldest_pod_first(tmp_path: Path) -> None:
    core, source = with_pods(
        tmp_path, assigned("new", gpus=(1,), created=200), assigned("old", gpus=(2,), created=100)
    )
    got = core.allocate(GPU_RESOURCE, [device_id(A100.gpus[7].uuid, 0)])
    assert got.envs["NVIDIA_VISIBLE_DEVICES"] == A100.gpus[2].uuid
    source.remove("old")
    got = core.allocate(GPU_RESOURCE, [device_id(A100.gpus[7].uuid, 1)])
    assert got.envs["NVIDIA_VISIBLE_DEVICES"] == A100.gpus[1].uuid


def test_over_commit_and_unenforceable_slices_refused(tmp_path: Path) -> None:
    core, source = with_pods(tmp_path, assigned("a", gpus=(1,), whole=True, created=1))
    core.allocate(GPU_RESOURCE, [device_id(A100.gpus[1].uuid, 0)])
    source.add(assigned("b", gpus=(1,), created=2))
    with pytest.raises(AllocateError) as err:
        core.allocate(GPU_RESOURCE, [device_id(A100.gpus[1].uuid, 1)])
    assert str(err.value) == (
        "pod team/job-b container 'main': GPU1 is held whole by pod a container 'main'; the "
        "scheduler extender's view of this node is behind the agent's"
    )
    source.remove("b")
    source.add(assigned("c", gpus=(2,), core=70, created=3))
    source.add(assigned("d", gpus=(2,), core=40, created=4))
    core.allocate(GPU_RESOURCE, [device_id(A100.gpus[2].uuid, 0)])
    with pytest.raises(AllocateError, match=r"gives 40% of GPU2's core, but 70% is already"):
        core.allocate(GPU_RESOURCE, [device_id(A100.gpus[2].uuid, 1)])

    bare = DevicePluginCore(
        A100, config(tmp_path), Ledger(), pods=StaticPodSource([assigned("e", gpus=(3,))])
    )
    with pytest.raises(AllocateError, match="runs without the limiter"):
        bare.allocate(GPU_RESOURCE, [device_id(A100.gpus[3].uuid, 0)])


def test_init_container_devices_reused(tmp_path: Path) -> None:
    """kubelet admits the pod by allocating every container, init containers first, and
    gives the app container the init container's device IDs before the init container has
    run (found against kubelet's own device manager, tests/e2e): the init container keeps
    its share and its region until the pod ends; the app container gets its own."""
    first, second = A100.gpus[4], A100.gpus[5]
    text = dump_assignment(
        Assignment(
            NODE,
            (
                ContainerAssignment("init", (GpuShare(first.uuid, 20, 2048),)),
                ContainerAssignment("main", (GpuShare(second.uuid, 40, 4096),)),
            ),
        )
    )
    containers = (
        ContainerRequest("init", gpus=1, core=20, memory_mib=2048),
        ContainerRequest("main", gpus=1, core=40, memory_mib=4096),
    )
    pod = PendingPod("u", "team", "job", NODE, 1.0, containers, text)
    core, _ = with_pods(tmp_path, pod)
    slot = device_id(first.uuid, 0)
    core.allocate(GPU_RESOURCE, [slot])
    core.allocate(GPU_RESOURCE, [slot])  # kubelet reuses the init container's device
    grants = {g.container: g for g in core.grants()}
    assert grants["init"].spent and grants["main"].device_ids == (slot,)
    init_region = tmp_path / "containers" / "u" / "init"
    assert init_region.is_dir()  # it has yet to run
    assert [(g.uuid, g.core, g.memory_mib) for g in grants["init"].gpus] == [(first.uuid, 20, 2048)]
    assert [(g.uuid, g.core) for g in grants["main"].gpus] == [(second.uuid, 40)]
    # Both shares count on the node, as the extender counts them.
    state = core.node_state()
    assert (state.gpu(4).core, state.gpu(5).core) == (20, 40)
    with pytest.raises(AllocateError, match="no pod bound"):
        core.allocate(GPU_RESOURCE, [device_id(first.uuid, 1)])
    core.release_pod("u")
    assert not init_region.exists()


def test_an_app_container_may_not_take_what_its_init_container_holds(tmp_path: Path) -> None:
    g = A100.gpus[4]
    whole = (GpuShare(g.uuid, 100, g.memory_mib, True),)
    text = dump_assignment(
        Assignment(NODE, (ContainerAssignment("init", whole), ContainerAssignment("main", whole)))
    )
    containers = (ContainerRequest("init", gpus=1), ContainerRequest("main", gpus=1))
    core, _ = with_pods(tmp_path, PendingPod("u", "team", "job", NODE, 1.0, containers, text))
    slot = device_id(g.uuid, 0)
    core.allocate(GPU_RESOURCE, [slot])
    with pytest.raises(AllocateError, match="GPU4 is held whole by pod u container 'init'"):
        core.allocate(GPU_RESOURCE, [slot])


def test_a_device_id_of_another_live_pod_is_refused(tmp_path: Path) -> None:
    core, source = with_pods(tmp_path, assigned("a", gpus=(1,), created=1))
    slot = device_id(A100.gpus[0].uuid, 0)
    core.allocate(GPU_RESOURCE, [slot])
    source.add(assigned("b", gpus=(2,), created=2))
    with pytest.raises(AllocateError, match="is still granted to pod a container 'main'"):
        core.allocate(GPU_RESOURCE, [slot])


def test_pods_need_a_node_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="node_name"):
        DevicePluginCore(A100, config(tmp_path, node_name=""), Ledger(), pods=StaticPodSource())


def test_checkpoint_is_json_with_the_grant(tmp_path: Path) -> None:
    pod = assigned("u", gpus=(6,))
    core = DevicePluginCore(
        A100,
        config(tmp_path, limiter_host_path=LIB, preload_host_path=tmp_path / "p"),
        Ledger(),
        pods=StaticPodSource([pod]),
        checkpoint=tmp_path / "c.json",
        clock=lambda: 1234.5,
    )
    core.allocate(GPU_RESOURCE, [device_id(A100.gpus[0].uuid, 9)])
    doc = json.loads((tmp_path / "c.json").read_text())
    (grant,) = doc["grants"]
    assert grant["pod_uid"] == "u" and grant["granted_at"] == 1234.5
    assert grant["gpus"] == [
        {"uuid": A100.gpus[6].uuid, "index": 6, "core": 40, "memory_mib": 10240, "exclusive": False}
    ]
