"""How a GPU's use is counted (`gpulet.api.share`), and the two books that count it: the
device plugin's ledger (what the node granted) and the extender's cluster view (what it
placed) agree, share for share, for any stream of grants and releases."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from deviceplugin.grants import Grant
from deviceplugin.ledger import Ledger
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.api.assignment import Assignment, ContainerAssignment, dump_assignment
from gpulet.api.share import GpuShare, GpuUsage, Idle, Short, shortfall
from gpulet.placement import Capacity
from gpulet.topology.document import dumps
from scorer.cluster import ClusterView
from tests.nodes import shipped
from tests.strategies import examples

TOPO = shipped("dgx-a100")
NODE = TOPO.node
GPUS = TOPO.gpus
NICS = [n.key for n in TOPO.nics]

usages = st.builds(
    GpuUsage,
    slots=st.integers(0, 200),
    core=st.integers(0, 200),
    memory_mib=st.integers(0, 1 << 20),
    whole=st.integers(0, 3),
    batch=st.integers(0, 5),
    batch_core=st.integers(0, 300),
    batch_memory_mib=st.integers(0, 1 << 20),
)


@st.composite
def shares(draw: st.DrawFn, memory_mib: int = 81920) -> GpuShare:
    kind = draw(st.sampled_from(["whole", "slice", "batch"]))
    if kind == "whole":
        return GpuShare("GPU-x", 100, memory_mib, exclusive=True)
    core, memory = draw(st.integers(1, 100)), draw(st.integers(1, memory_mib))
    return GpuShare("GPU-x", core, memory, batch=kind == "batch")


@given(usages, usages)
@settings(max_examples=examples(200))
def test_minus_undoes_plus(a: GpuUsage, b: GpuUsage) -> None:
    assert a.plus(b).minus(b) == a
    assert a.plus(b) == b.plus(a)


idles = st.builds(Idle, core=st.integers(0, 100), memory_mib=st.integers(0, 81920))


@given(st.lists(shares(), max_size=8), st.integers(1, 100), idles)
@settings(max_examples=examples(300))
def test_what_fits_never_overcommits(given_out: list[GpuShare], slots: int, idle: Idle) -> None:
    """Shares taken one by one while `shortfall` says they fit never add up to more than the
    GPU has: its slots, 100 percent of its core, its memory; and a whole share alone. Batch
    shares add up to no more than what is idle, and are not counted in the reservations."""
    memory = 81920
    use = GpuUsage()
    holders: list[GpuShare] = []
    for share in given_out:
        short = shortfall(use, share, slots, memory, idle)
        if short is None:
            use = use.plus(share.charge(slots, memory))
            holders.append(share)
        else:
            assert short.free < short.needed or short.short in (Short.HELD_WHOLE, Short.IN_USE)
    assert use.slots <= slots or use.whole == 1
    assert use.core <= 100 and use.memory_mib <= memory
    if any(s.exclusive for s in holders):
        # A whole share alone among production ones (batch slices it takes back: evicted).
        production = [s for s in holders if not s.batch]
        assert production == [next(s for s in holders if s.exclusive)]
        assert all(s.batch for s in holders[: holders.index(production[0])])
    batch = [s for s in holders if s.batch]
    assert use.batch == len(batch)
    assert use.batch_core == sum(s.core for s in batch) <= idle.core
    assert use.batch_memory_mib == sum(s.memory_mib for s in batch) <= idle.memory_mib
    production = [s for s in holders if not s.batch]
    assert use.core == sum(s.core for s in production)


@dataclass(frozen=True)
class Container:
    """One container's GPUs and ports: the ledger's grant and the extender's assignment."""

    uid: str
    shares: tuple[GpuShare, ...]
    nics: tuple[str, ...]


@st.composite
def containers(draw: st.DrawFn, uid: str) -> Container:
    picked = draw(st.lists(st.sampled_from(GPUS), min_size=0, max_size=3, unique=True))
    whole = draw(st.booleans())
    batch = not whole and draw(st.booleans())
    gpu_shares = tuple(
        GpuShare(g.uuid, 100, g.memory_mib, exclusive=True, index=g.index)
        if whole
        else GpuShare(
            g.uuid,
            draw(st.integers(1, 100)),
            draw(st.integers(1, g.memory_mib)),
            index=g.index,
            batch=batch,
        )
        for g in picked
    )
    nics = tuple(draw(st.lists(st.sampled_from(NICS), max_size=2, unique=True)))
    return Container(uid, gpu_shares, nics)


@st.composite
def streams(draw: st.DrawFn) -> list[tuple[str, Container]]:
    """Grants and releases: an over-commit is allowed (both books must show it alike)."""
    live: list[Container] = []
    out: list[tuple[str, Container]] = []
    for n in range(draw(st.integers(1, 25))):
        if live and draw(st.integers(0, 2)) == 0:
            gone = live.pop(draw(st.integers(0, len(live) - 1)))
            out.append(("release", gone))
        else:
            c = draw(containers(f"pod-{n}"))
            live.append(c)
            out.append(("grant", c))
    return out


def _grants(c: Container) -> list[Grant]:
    out = []
    if c.shares:
        ids = tuple(f"{s.uuid}::{c.uid}" for s in c.shares)
        out.append(Grant(GPU_RESOURCE, ids, c.shares, pod_uid=c.uid, container="main"))
    if c.nics:
        ids = tuple(f"{k}::{c.uid}" for k in c.nics)
        out.append(Grant(RDMA_RESOURCE, ids, nics=c.nics, pod_uid=c.uid, container="main"))
    return out


def _assignment(c: Container) -> str:
    # The annotation names GPUs by UUID only.
    gpus = tuple(s.by_uuid() for s in c.shares)
    return dump_assignment(Assignment(NODE, (ContainerAssignment("main", gpus, c.nics),)))


@given(streams(), st.sampled_from([1, 7, 100]))
@settings(max_examples=examples(150), deadline=None)
def test_the_ledger_and_the_extenders_view_agree(
    stream: list[tuple[str, Container]], slots: int
) -> None:
    config = PluginConfig(gpu_slots=slots, rdma_slots=100)
    ledger = Ledger()
    view = ClusterView(Capacity(gpu_slots=slots, nic_slots=100), stale_after=0)
    view.set_node(NODE, dumps(TOPO))
    for n, (op, c) in enumerate(stream):
        if op == "grant":
            for g in _grants(c):
                ledger.add(g)
            view.set_pod(c.uid, NODE, _assignment(c))
        else:
            ledger.remove_pod(c.uid)
            view.remove_pod(c.uid)
        if n % 3 == 0:  # the ledger's tally is built on first use, then kept: read it midway
            ledger.node_state(TOPO, config)
        mine, theirs = ledger.node_state(TOPO, config), view.state(NODE)
        assert dict(mine.gpus) == dict(theirs.gpus), f"after {op} {c.uid}"
        assert dict(mine.nic_slots) == dict(theirs.nic_slots), f"after {op} {c.uid}"
