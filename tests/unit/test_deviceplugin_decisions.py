"""The device plugin's decisions (`deviceplugin.decisions`) on their own, table by table: what
an Allocate grants, or the refusal kubelet shows, from plain values (an in-memory `Ledger`, a
`StaticPodSource`, a `DeviceHealth`), with no lock, no file and no gRPC."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from deviceplugin.assignment import (
    Assignment,
    ContainerAssignment,
    ContainerRequest,
    PendingPod,
    StaticPodSource,
    dump_assignment,
)
from deviceplugin.decisions import AllocateError, Decider, Decision
from deviceplugin.devicehealth import DeviceHealth
from deviceplugin.grants import GpuShare, Grant
from deviceplugin.ids import device_id
from deviceplugin.inventory import Inventory
from deviceplugin.ledger import Ledger
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.topology import Topology
from tests.nodes import shipped

A100 = shipped("dgx-a100")
#: The same node with port mlx5_5 not ACTIVE.
DOWN = Topology.build(
    A100.node,
    A100.gpus,
    [replace(n, state="DOWN") if n.key == "mlx5_5" else n for n in A100.nics],
    A100.numa_nodes,
)
NODE = "node-7"
MEM = A100.gpus[0].memory_mib
LIB = Path("/opt/gpulet/libgpulet-limiter.so")
BEHIND = "; the scheduler extender's view of this node is behind the agent's"


def uuid(index: int) -> str:
    return A100.gpus[index].uuid


def gid(index: int, slot: int = 0) -> str:
    return device_id(uuid(index), slot)


def slice_of(index: int, core: int = 40, memory: int = 10240) -> GpuShare:
    return GpuShare(uuid(index), core, memory, False, index=index)


def whole(index: int) -> GpuShare:
    return GpuShare(uuid(index), 100, MEM, True, index=index)


def held(
    *gpus: GpuShare, ids: Sequence[str] = (), nics: Sequence[str] = (), pod: str | None = "a"
) -> Grant:
    """A grant already in the ledger (of pod `pod`'s container 'main'; None: standalone)."""
    resource = RDMA_RESOURCE if nics else GPU_RESOURCE
    return Grant(
        resource,
        tuple(ids) or (f"held-{pod}-{len(gpus)}-{len(nics)}::99",),
        gpus,
        tuple(nics),
        pod,
        None if pod is None else "main",
    )


def pod(
    uid: str = "u",
    *gpus: GpuShare,
    nics: tuple[str, ...] = (),
    request: ContainerRequest | None = None,
    node: str = NODE,
    text: str | None = "",
    problem: str | None = None,
) -> PendingPod:
    """Pod `uid` waiting with one container 'main', assigned `gpus` and `nics` on `node`;
    asking what it is assigned unless `request` says otherwise. `text` None: no annotation."""
    if text == "":
        entry = ContainerAssignment("main", tuple(replace(g, index=-1) for g in gpus), nics)
        text = dump_assignment(Assignment(node, (entry,)))
    if request is None:
        sliced = gpus and not gpus[0].exclusive
        core, memory = (gpus[0].core, gpus[0].memory_mib) if sliced else (None, None)
        request = ContainerRequest("main", len(gpus), len(nics), core, memory)
    return PendingPod(uid, "team", f"job-{uid}", NODE, 1.0, (request,), text, problem)


@dataclass
class Case:
    resource: str
    ids: list[str]
    #: Pending pods; None: standalone (no PodSource).
    pods: list[PendingPod] | None = None
    granted: list[Grant] = field(default_factory=list)
    sick_gpus: tuple[int, ...] = ()
    sick_nics: tuple[str, ...] = ()
    topo: Topology = A100
    config: dict[str, object] = field(default_factory=dict)


@pytest.fixture
def region_root(tmp_path: Path) -> Iterator[Path]:
    """Where regions would go: it must stay empty, for deciding writes nothing."""
    root = tmp_path / "containers"
    root.mkdir()
    yield root
    assert list(root.iterdir()) == []
    assert [p.name for p in tmp_path.iterdir()] == ["containers"]


def decide(case: Case, region_root: Path) -> Decision:
    base: dict[str, object] = {
        "node_name": NODE,
        "region_root": region_root,
        "limiter_host_path": LIB,
        "preload_host_path": LIB.with_name("preload"),
    }
    config = PluginConfig(**{**base, **case.config})  # type: ignore[arg-type]
    inventory = Inventory.of(case.topo, config)
    health = DeviceHealth(inventory)
    for index in case.sick_gpus:
        health.set_gpu(index, False, "XID 79")
    for key in case.sick_nics:
        health.set_nic(key, False)
    pods = None if case.pods is None else StaticPodSource(case.pods)
    return Decider(inventory, health, Ledger(case.granted), pods).decide(case.resource, case.ids)


# ---- refused -----------------------------------------------------------------------------------

REFUSED = [
    # -- the IDs themselves --
    pytest.param(
        Case("nvidia.com/gpu", [gid(0)]), "unknown resource 'nvidia.com/gpu'", id="unknown-resource"
    ),
    pytest.param(
        Case(GPU_RESOURCE, []), f"kubelet asked for no {GPU_RESOURCE} device", id="no-ids"
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0), gid(0)]),
        f"kubelet listed a {GPU_RESOURCE} device ID twice: ['{gid(0)}', '{gid(0)}']",
        id="duplicate",
    ),
    pytest.param(
        Case(GPU_RESOURCE, ["junk"]),
        "unknown device ID 'junk': device ID 'junk' is not OWNER::SLOT",
        id="not-an-id",
    ),
    pytest.param(
        Case(GPU_RESOURCE, ["GPU-nope::00"]),
        "unknown device ID 'GPU-nope::00': node dgx-a100 has no GPU GPU-nope that it shares",
        id="unknown-gpu",
    ),
    pytest.param(
        Case(RDMA_RESOURCE, ["mlx5_99::00"]),
        "unknown device ID 'mlx5_99::00': node dgx-a100 has no RDMA port mlx5_99",
        id="unknown-port",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(2, 10)], config={"gpu_slots": 10}),
        f"unknown device ID '{gid(2, 10)}': GPU2 ({uuid(2)}) has 10 slots (00..09)",
        id="slot-out-of-range",
    ),
    pytest.param(
        Case(RDMA_RESOURCE, ["mlx5_0::05"], config={"rdma_slots": 5}),
        "unknown device ID 'mlx5_0::05': RDMA port mlx5_0 has 5 slots (00..04)",
        id="port-slot-out-of-range",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(2, 3)], sick_gpus=(2,)),
        f"device ID '{gid(2, 3)}' is on GPU2 ({uuid(2)}), which is unhealthy (XID 79)",
        id="unhealthy-gpu",
    ),
    pytest.param(
        Case(RDMA_RESOURCE, ["mlx5_3::00"], sick_nics=("mlx5_3",)),
        "device ID 'mlx5_3::00' is on RDMA port mlx5_3, which is unhealthy (marked unhealthy)",
        id="unhealthy-port",
    ),
    pytest.param(
        Case(RDMA_RESOURCE, ["mlx5_5::00"], topo=DOWN),
        "device ID 'mlx5_5::00' is on RDMA port mlx5_5, which is unhealthy (port DOWN)",
        id="port-down",
    ),
    # -- standalone --
    pytest.param(
        Case(GPU_RESOURCE, [gid(0, 0), gid(0, 1)]),
        f"device IDs '{gid(0, 0)}' and '{gid(0, 1)}' are slots of the same GPU {uuid(0)}; each "
        f"{GPU_RESOURCE} is a different GPU (kubelet picks such IDs itself when fewer than 2 "
        "GPUs are free)",
        id="standalone-two-slots-of-one-gpu",
    ),
    pytest.param(
        Case(RDMA_RESOURCE, ["mlx5_0::00", "mlx5_0::01"]),
        "device IDs 'mlx5_0::00' and 'mlx5_0::01' are slots of the same RDMA port mlx5_0",
        id="standalone-two-slots-of-one-port",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(1), gid(3, 42)], granted=[held(whole(3), ids=[gid(3)], pod=None)]),
        f"GPU3 ({uuid(3)}) is held whole by another container; kubelet offered its slot "
        f"{gid(3, 42)} because it counts slots, not GPUs. Fewer than 2 whole GPUs are free on "
        "node dgx-a100",
        id="standalone-gpu-held-whole",
    ),
    # -- with pods: which pod, and its assignment --
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[]),
        f"no pod bound to node {NODE} waits for 1 {GPU_RESOURCE}: the agent has not seen the pod "
        "yet, or it was scheduled without the gpulet scheduler extender",
        id="no-pending-pod",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[pod("u", slice_of(1)), pod("v", slice_of(2))]),
        "cannot tell which pod kubelet is admitting: team/job-u, team/job-v were created at the "
        "same time",
        id="ambiguous-pods",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[pod("u", slice_of(1), text=None)]),
        "pod team/job-u has no gpulet.io/assignment annotation: it was not scheduled through "
        "the gpulet scheduler extender",
        id="annotation-missing",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[pod("u", slice_of(1), text="{")]),
        "pod team/job-u: gpulet.io/assignment",
        id="annotation-unreadable",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[pod("u", slice_of(1), node="node-9")]),
        "pod team/job-u's gpulet.io/assignment is for node 'node-9', but this is node 'node-7'",
        id="annotation-for-another-node",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(0)],
            pods=[pod("u", slice_of(1), text=dump_assignment(Assignment(NODE, ())))],
        ),
        "pod team/job-u's gpulet.io/assignment has nothing for container 'main'",
        id="no-entry",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[pod("u", slice_of(1), problem="cannot read it")]),
        "cannot read it",
        id="unreadable-request",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(0)],
            pods=[
                pod("u", slice_of(1, core=100), request=ContainerRequest("main", 1, 0, 10, 10240))
            ],
        ),
        "pod team/job-u container 'main': gpulet.io/assignment does not match the container's "
        "request (gpulet.io/gpu: 1, gpulet.io/gpu-core: 10, gpulet.io/gpu-memory: 10240): GPU "
        f'{uuid(1)} has "core": 100, not 10',
        id="entry-asks-more-core",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(0)],
            pods=[pod("u", whole(1), request=ContainerRequest("main", 1, 0, 10, 1024))],
        ),
        "pod team/job-u container 'main': gpulet.io/assignment does not match the container's "
        "request (gpulet.io/gpu: 1, gpulet.io/gpu-core: 10, gpulet.io/gpu-memory: 1024): "
        f'GPU {uuid(1)} has "exclusive": true (a whole GPU), but the container asks a slice',
        id="entry-whole-for-a-slice",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(0)],
            pods=[pod("u", slice_of(1), request=ContainerRequest("main", 1))],
        ),
        "pod team/job-u container 'main': gpulet.io/assignment does not match the container's "
        f'request (gpulet.io/gpu: 1): GPU {uuid(1)} has "exclusive": false (a slice), but the '
        "container asks whole GPUs",
        id="entry-slice-for-whole",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[pod("bad/uid", slice_of(1))]),
        "pod team/job-bad/uid container 'main': 'bad/uid' cannot name a directory",
        id="uid-not-a-directory-name",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[pod("u", slice_of(1))], sick_gpus=(1,)),
        f"pod team/job-u container 'main': assigned GPU1 ({uuid(1)}) is unhealthy (XID 79)",
        id="assigned-gpu-unhealthy",
    ),
    pytest.param(
        Case(RDMA_RESOURCE, ["mlx5_0::00"], pods=[pod("u", nics=("mlx5_5",))], topo=DOWN),
        "pod team/job-u container 'main': assigned RDMA port mlx5_5 is unhealthy (port DOWN)",
        id="assigned-port-down",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(0)],
            pods=[pod("u", slice_of(1))],
            config={"limiter_host_path": None, "preload_host_path": None},
        ),
        "pod team/job-u container 'main' gets a slice of GPU1 (40% core, 10240 MiB), but this "
        "agent runs without the limiter",
        id="slice-without-limiter",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(0)],
            pods=[pod("u", slice_of(2))],
            granted=[held(slice_of(1), ids=[gid(0)])],
        ),
        "device ID of pod team/job-u container 'main' is still granted to pod a container 'main' "
        "in the agent's ledger",
        id="id-of-another-live-pod",
    ),
    # -- with pods: the room check, one case per `Short` --
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[pod("u", slice_of(1))], granted=[held(whole(1))]),
        f"pod team/job-u container 'main': GPU1 is held whole by pod a container 'main'{BEHIND}",
        id="short-held-whole",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE, [gid(0)], pods=[pod("u", whole(1))], granted=[held(slice_of(1), pod=None)]
        ),
        "pod team/job-u container 'main': the assignment gives GPU1 whole, but a standalone "
        f"container has a slice of it{BEHIND}",
        id="short-in-use",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(0)],
            pods=[pod("u", slice_of(1, core=10))],
            granted=[held(slice_of(1, core=10), pod="a"), held(slice_of(1, core=10), pod="b")],
            config={"gpu_slots": 2},
        ),
        f"pod team/job-u container 'main': all 2 slots of GPU1 are granted{BEHIND}",
        id="short-slots",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(0)],
            pods=[pod("u", slice_of(2, core=40))],
            granted=[held(slice_of(2, core=70))],
        ),
        "pod team/job-u container 'main': the assignment gives 40% of GPU2's core, but 70% is "
        f"already granted (pod a container 'main'){BEHIND}",
        id="short-core",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(0)],
            pods=[pod("u", slice_of(2, core=10, memory=40000))],
            granted=[held(slice_of(2, core=10, memory=50000))],
        ),
        f"pod team/job-u container 'main': the assignment gives 40000 MiB of GPU2, but 50000 of "
        f"its {MEM} MiB are already granted (pod a container 'main'){BEHIND}",
        id="short-memory",
    ),
    pytest.param(
        Case(
            RDMA_RESOURCE,
            ["mlx5_0::00"],
            pods=[pod("u", nics=("mlx5_2",))],
            granted=[held(nics=["mlx5_2"], ids=["mlx5_2::00"])],
            config={"rdma_slots": 1},
        ),
        "pod team/job-u container 'main': all 1 slots of RDMA port mlx5_2 are granted (pod a "
        f"container 'main'){BEHIND}",
        id="rdma-port-full",
    ),
]


@pytest.mark.parametrize(("case", "message"), REFUSED)
def test_refused(case: Case, message: str, region_root: Path) -> None:
    with pytest.raises(AllocateError) as refused:
        decide(case, region_root)
    assert str(refused.value).startswith(message)


# ---- granted -----------------------------------------------------------------------------------

INIT_THEN_MAIN = PendingPod(
    "u",
    "team",
    "job-u",
    NODE,
    1.0,
    (
        ContainerRequest("init", gpus=1, core=20, memory_mib=2048),
        ContainerRequest("main", gpus=1, core=40, memory_mib=4096),
    ),
    dump_assignment(
        Assignment(
            NODE,
            (
                ContainerAssignment("init", (GpuShare(uuid(4), 20, 2048),)),
                ContainerAssignment("main", (GpuShare(uuid(5), 40, 4096),)),
            ),
        )
    ),
)
INIT_GRANT = Grant(GPU_RESOURCE, (gid(0),), (slice_of(4, 20, 2048),), (), "u", "init")
STANDALONE_OLD = held(whole(0), ids=[gid(0)], pod=None)


GRANTED = [
    pytest.param(
        Case(GPU_RESOURCE, [gid(5, 7), gid(2, 3)]),
        Decision(
            GPU_RESOURCE, (gid(5, 7), gid(2, 3)), (whole(2), whole(5)), (), None, None, (), False
        ),
        id="standalone-whole-gpus-by-index",
    ),
    pytest.param(
        Case(RDMA_RESOURCE, ["mlx5_7::00", "mlx5_6::04"]),
        Decision(
            RDMA_RESOURCE,
            ("mlx5_7::00", "mlx5_6::04"),
            (),
            ("mlx5_6", "mlx5_7"),
            None,
            None,
            (),
            False,
        ),
        id="standalone-ports-in-node-order",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], granted=[STANDALONE_OLD]),
        Decision(GPU_RESOURCE, (gid(0),), (whole(0),), (), None, None, (STANDALONE_OLD,), False),
        id="standalone-reuse-supersedes",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0, 7), gid(0, 8)], pods=[pod("u", slice_of(3), slice_of(5))]),
        Decision(
            GPU_RESOURCE,
            (gid(0, 7), gid(0, 8)),
            (slice_of(3), slice_of(5)),
            (),
            "u",
            "main",
            (),
            True,
        ),
        id="assigned-slices-whatever-ids",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE, [gid(0)], pods=[pod("u", whole(6), request=ContainerRequest("main", 1))]
        ),
        Decision(GPU_RESOURCE, (gid(0),), (whole(6),), (), "u", "main", (), True),
        id="assigned-whole",
    ),
    pytest.param(
        Case(
            GPU_RESOURCE,
            [gid(1)],
            pods=[pod("u", slice_of(1, core=30))],
            granted=[held(slice_of(1, core=70))],
        ),
        Decision(GPU_RESOURCE, (gid(1),), (slice_of(1, core=30),), (), "u", "main", (), True),
        id="assigned-slice-fills-the-gpu",
    ),
    pytest.param(
        Case(
            RDMA_RESOURCE,
            ["mlx5_0::00"],
            pods=[pod("u", nics=("mlx5_2",))],
            config={"rdma_slots": 2},
            granted=[held(nics=["mlx5_2"], ids=["mlx5_2::00"])],
        ),
        Decision(RDMA_RESOURCE, ("mlx5_0::00",), (), ("mlx5_2",), "u", "main", (), True),
        id="assigned-port-last-slot",
    ),
    pytest.param(
        Case(GPU_RESOURCE, [gid(0)], pods=[INIT_THEN_MAIN], granted=[INIT_GRANT]),
        Decision(
            GPU_RESOURCE, (gid(0),), (slice_of(5, 40, 4096),), (), "u", "main", (INIT_GRANT,), True
        ),
        id="assigned-init-container-ids-reused",
    ),
]


@pytest.mark.parametrize(("case", "expected"), GRANTED)
def test_granted(case: Case, expected: Decision, region_root: Path) -> None:
    assert decide(case, region_root) == expected


def test_deciding_needs_neither_grpc_nor_the_region_library() -> None:
    """Deciding is importable, and run, where no gRPC or cffi is loaded."""
    code = (
        "import sys; import deviceplugin.decisions, deviceplugin.devicehealth, "
        "deviceplugin.ledger; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('grpc', 'cffi', '_cffi_backend', 'native')))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


class _Behind(StaticPodSource):
    """A pod source whose view is behind kubelet's until it is refreshed; counts refreshes."""

    def __init__(self, later: Sequence[PendingPod], now: Sequence[PendingPod] = ()) -> None:
        super().__init__(now)
        self.later = list(later)
        self.refreshes = 0

    def refresh(self) -> None:
        self.refreshes += 1
        for p in self.later:
            self.add(p)


def decider(pods: _Behind, region_root: Path) -> Decider:
    config = PluginConfig(
        node_name=NODE,
        region_root=region_root,
        limiter_host_path=LIB,
        preload_host_path=LIB.with_name("preload"),
    )
    inventory = Inventory.of(A100, config)
    return Decider(inventory, DeviceHealth(inventory), Ledger(), pods)


def test_a_pod_the_agent_has_not_seen_yet_is_found_after_one_refresh(region_root: Path) -> None:
    pods = _Behind(later=[pod("u", whole(3))])
    decision = decider(pods, region_root).decide(GPU_RESOURCE, [gid(0)])
    assert (decision.pod_uid, decision.gpus) == ("u", (whole(3),))
    assert pods.refreshes == 1


def test_a_pod_the_agent_has_seen_needs_no_refresh(region_root: Path) -> None:
    """A refresh asks the API server: an Allocate the agent can answer makes none."""
    pods = _Behind(later=[], now=[pod("u", whole(3))])
    assert decider(pods, region_root).decide(GPU_RESOURCE, [gid(0)]).pod_uid == "u"
    assert pods.refreshes == 0
