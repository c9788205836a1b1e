"""Property: whatever kubelet asks and whatever the extender assigned, in any order, the
plugin never grants a device ID twice and never over-commits a GPU or a port."""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
from deviceplugin.ids import device_id
from deviceplugin.ledger import Ledger, node_state
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from tests.nodes import shipped
from tests.strategies import examples

TOPO = shipped("pcie-4gpu")  # 4 GPUs of 46068 MiB, 2 ports
GPU_SLOTS, RDMA_SLOTS = 3, 2
NODE = "n"


@dataclass(frozen=True)
class Allocate:
    """Kubelet allocates these slots (standalone), or admits the oldest pending pod with
    slots picked from these (with pods)."""

    gpu: bool
    slots: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Release:
    which: int


@dataclass(frozen=True)
class Health:
    gpu: int
    healthy: bool


@dataclass(frozen=True)
class Bind:
    """The extender binds a pod with this assignment (possibly a mistaken one)."""

    gpus: tuple[int, ...]
    nics: tuple[int, ...]
    whole: bool
    core: int
    memory_mib: int


def _slots(n_devices: int, n_slots: int) -> st.SearchStrategy[tuple[tuple[int, int], ...]]:
    pair = st.tuples(st.integers(0, n_devices - 1), st.integers(0, n_slots - 1))
    return st.lists(pair, min_size=1, max_size=3, unique=True).map(tuple)


def _indices(n: int) -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.integers(0, n - 1), max_size=2, unique=True).map(tuple)


Op = Allocate | Release | Health | Bind
allocations = st.one_of(
    st.builds(Allocate, st.just(True), _slots(len(TOPO.gpus), GPU_SLOTS)),
    st.builds(Allocate, st.just(False), _slots(len(TOPO.nics), RDMA_SLOTS)),
)
binds = st.builds(
    Bind,
    _indices(len(TOPO.gpus)),
    _indices(len(TOPO.nics)),
    st.booleans(),
    st.integers(1, 100),
    st.sampled_from([8000, 20000, 30000]),
)
others = st.one_of(
    st.builds(Release, st.integers(0, 20)),
    st.builds(Health, st.integers(0, len(TOPO.gpus) - 1), st.booleans()),
)
standalone_ops = st.lists(st.one_of(allocations, allocations, others), max_size=16)
#: With pods, binds and admissions are what matters; releases and health now and then.
pod_ops = st.lists(st.one_of(binds, allocations, binds, allocations, others), max_size=20)


def check(core: DevicePluginCore, ledger: Ledger, cfg: PluginConfig) -> None:
    grants = core.grants()
    # The ledger's running tally is what recounting every grant gives.
    assert ledger.node_state(TOPO, cfg) == node_state(grants, TOPO, cfg)
    held = Counter((g.resource, d) for g in grants for d in g.device_ids)
    assert all(n == 1 for n in held.values()), held
    state = node_state(grants, TOPO, cfg)
    for index, use in state.gpus.items():
        shares = [s for g in grants for s in g.gpus if s.index == index]
        if use.exclusive:
            assert len(shares) == 1, f"GPU{index} held whole and shared: {shares}"
        assert use.slots <= GPU_SLOTS
        assert use.core <= 100
        assert use.memory_mib <= TOPO.gpus[index].memory_mib
    assert all(n <= RDMA_SLOTS for n in state.nic_slots.values())


def ids_for(gpu: bool, slots: tuple[tuple[int, int], ...]) -> list[str]:
    if gpu:
        return [device_id(TOPO.gpus[i].uuid, s) for i, s in slots]
    return [device_id(TOPO.nics[i].key, s) for i, s in slots]


def admit(core: DevicePluginCore, source: StaticPodSource, op: Allocate) -> None:
    """What kubelet does with the oldest pending pod: allocate each resource of its one
    container with slots of its own choosing, stopping at a refusal (the pod fails)."""
    pending = sorted(source.pending_pods(), key=lambda p: p.created)
    if not pending:
        return
    pod = pending[0]
    (request,) = pod.containers
    try:
        for gpu, count in ((True, request.gpus), (False, request.rdma)):
            n_devices = len(TOPO.gpus) if gpu else len(TOPO.nics)
            n_slots = GPU_SLOTS if gpu else RDMA_SLOTS
            every = [(i, s) for s in range(n_slots) for i in range(n_devices)]
            mine = [(i, s) for i, s in op.slots if i < n_devices and s < n_slots]
            resource = GPU_RESOURCE if gpu else RDMA_RESOURCE
            taken = {d for g in core.grants() if g.resource == resource for d in g.device_ids}
            free = [p for p in dict.fromkeys([*mine, *every]) if ids_for(gpu, (p,))[0] not in taken]
            if count:
                core.allocate(resource, ids_for(gpu, tuple(free[:count])))
    finally:
        source.remove(pod.uid)  # admitted, or failed: no longer pending either way


def bind(source: StaticPodSource, op: Bind, n: int) -> str | None:
    shares = tuple(
        GpuShare(
            TOPO.gpus[i].uuid,
            100 if op.whole else op.core,
            TOPO.gpus[i].memory_mib if op.whole else op.memory_mib,
            op.whole,
        )
        for i in op.gpus
    )
    keys = tuple(TOPO.nics[i].key for i in op.nics)
    if not shares and not keys:
        return None
    text = dump_assignment(Assignment(NODE, (ContainerAssignment("main", shares, keys),)))
    uid = f"p{n}"
    asked = (None, None) if op.whole or not shares else (op.core, op.memory_mib)
    request = ContainerRequest("main", len(shares), len(keys), *asked)
    source.add(PendingPod(uid, "ns", uid, NODE, float(n), (request,), text))
    return uid


def run(ops: list[Op], with_pods: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cfg = PluginConfig(
            gpu_slots=GPU_SLOTS,
            rdma_slots=RDMA_SLOTS,
            node_name=NODE,
            region_root=root / "containers",
            limiter_host_path=root / "lib.so",
            preload_host_path=root / "preload",
        )
        source = StaticPodSource() if with_pods else None
        ledger = Ledger()
        ledger.journal_slack = 3  # fold the journal often
        core = DevicePluginCore(TOPO, cfg, ledger, pods=source, checkpoint=root / "c.json")
        uids: list[str] = []
        for n, op in enumerate(ops):
            try:
                if isinstance(op, Allocate) and source is not None:
                    admit(core, source, op)
                elif isinstance(op, Allocate):
                    resource = GPU_RESOURCE if op.gpu else RDMA_RESOURCE
                    core.allocate(resource, ids_for(op.gpu, op.slots))
                elif isinstance(op, Release) and source is not None and uids:
                    core.release_pod(uids[op.which % len(uids)])
                elif isinstance(op, Release) and core.grants():
                    gone = core.grants()[op.which % len(core.grants())]
                    live = {d for g in core.grants() if g != gone for d in g.device_ids}
                    core.reconcile({GPU_RESOURCE: live, RDMA_RESOURCE: live})
                elif isinstance(op, Health):
                    core.set_gpu_health(op.gpu, op.healthy, "XID 79")
                elif isinstance(op, Bind) and source is not None:
                    uid = bind(source, op, n)
                    if uid:
                        uids.append(uid)
            except AllocateError:
                pass
            check(core, ledger, cfg)
            if (root / "c.json").exists():  # what a restarted agent would read back
                assert Ledger.load(root / "c.json").grants() == core.grants()


@given(standalone_ops)
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_standalone_never_grants_twice(ops: list[Op]) -> None:
    run(ops, with_pods=False)


@given(pod_ops)
@settings(max_examples=examples(80), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_assignments_never_over_commit(ops: list[Op]) -> None:
    run(ops, with_pods=True)
