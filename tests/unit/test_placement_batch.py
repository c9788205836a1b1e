"""Batch slices in the placement engine (docs/colocation.md): placed against what the node's
agent measured idle on each GPU, never against production's reservations, and never counted
in them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gpulet.api.share import GpuShare, GpuUsage, Idle
from gpulet.placement import NodeState, NoFit, Placement, Placer, Request
from tests.nodes import shipped
from tests.strategies import examples

TOPO = shipped("dgx-a100")
PLACER = Placer(TOPO)
MEMORY = TOPO.gpus[0].memory_mib
BATCH = Request(gpus=1, core=30, memory_mib=8192, batch=True)


def _production(core: int, memory: int) -> GpuUsage:
    return GpuShare("GPU-x", core, memory).charge(100)


def _batch(core: int, memory: int) -> GpuUsage:
    return GpuShare("GPU-x", core, memory, batch=True).charge(100)


def test_a_batch_slice_goes_nowhere_without_a_measurement() -> None:
    placed = PLACER.place(BATCH, NodeState())
    assert isinstance(placed, NoFit)
    assert "0 percent idle core for batch" in placed.reason


def test_a_batch_slice_is_placed_against_idle_not_against_reservations() -> None:
    """GPU0 is fully reserved by production that leaves 60% idle; GPU1 has nothing idle
    measured. The batch slice lands on GPU0, marked batch, with its floor and its cap."""
    state = NodeState(gpus={0: _production(100, MEMORY)}, idle={0: Idle(60, 30000)})
    placed = PLACER.place(BATCH, state)
    assert isinstance(placed, Placement), placed
    (share,) = placed.gpus
    assert (share.index, share.core, share.memory_mib, share.batch) == (0, 30, 8192, True)
    assert not share.exclusive


def test_batch_slices_share_what_is_idle_between_them() -> None:
    state = NodeState(gpus={0: _batch(40, 8192)}, idle={0: Idle(60, 30000), 1: Idle(30, 8192)})
    placed = PLACER.place(BATCH, state)
    assert isinstance(placed, Placement), placed
    assert placed.gpus[0].index == 1  # 20% is left on GPU0, 30% on GPU1
    state = NodeState(gpus={0: _batch(40, 8192)}, idle={0: Idle(60, 30000)})
    refused = PLACER.place(BATCH, state)
    assert isinstance(refused, NoFit)
    assert "20 percent idle core for batch" in refused.reason


def test_batch_memory_is_held_to_the_idle_memory() -> None:
    state = NodeState(idle={0: Idle(100, 8191)})
    refused = PLACER.place(BATCH, state)
    assert isinstance(refused, NoFit)
    assert "8191 MiB idle memory for batch" in refused.reason


def test_production_takes_back_what_batch_borrowed_and_whole_gpus_are_never_shared() -> None:
    """A production slice takes a GPU's whole reservation though batch runs there; a whole
    GPU may be taken where only batch runs (its batch pods are evicted), but only where no
    idle GPU would do; batch never goes on a GPU held whole."""
    idle = {i: Idle(100, MEMORY) for i in range(8)}
    busy = {0: _batch(90, MEMORY - 1)}
    placed = PLACER.place(Request(gpus=1, core=100, memory_mib=MEMORY), NodeState(busy, idle=idle))
    assert isinstance(placed, Placement), placed
    one = PLACER.place(Request(gpus=1), NodeState(busy, idle=idle))
    assert isinstance(one, Placement) and one.gpus[0].index != 0
    every = PLACER.place(Request(gpus=8), NodeState(busy, idle=idle))
    assert isinstance(every, Placement) and len(every.gpus) == 8
    beside_production = {0: _batch(10, 1024).plus(_production(10, 1024))}
    assert isinstance(PLACER.place(Request(gpus=8), NodeState(beside_production)), NoFit)
    held = {i: GpuShare("GPU-x", 100, MEMORY, exclusive=True).charge(100) for i in range(8)}
    assert isinstance(PLACER.place(BATCH, NodeState(held, idle=idle)), NoFit)


def test_a_batch_slice_prefers_a_gpu_production_already_uses() -> None:
    """Every GPU is measured idle; GPU5 has a production slice. Batch packs onto GPU5, leaving
    untouched GPUs whole for training pods."""
    idle = {i: Idle(100, MEMORY) for i in range(8)}
    placed = PLACER.place(BATCH, NodeState({5: _production(20, 1024)}, idle=idle))
    assert isinstance(placed, Placement)
    assert placed.gpus[0].index == 5


@st.composite
def nodes(draw: st.DrawFn) -> NodeState:
    gpus: dict[int, GpuUsage] = {}
    idle: dict[int, Idle] = {}
    for g in TOPO.gpus:
        use = GpuUsage()
        for _ in range(draw(st.integers(0, 3))):
            core, memory = draw(st.integers(1, 60)), draw(st.integers(1, 20000))
            use = use.plus(
                _batch(core, memory) if draw(st.booleans()) else _production(core, memory)
            )
        if not use.idle:
            gpus[g.index] = use
        if draw(st.booleans()):
            idle[g.index] = Idle(draw(st.integers(0, 100)), draw(st.integers(0, MEMORY)))
    return NodeState(gpus, idle=idle)


@given(nodes(), st.integers(1, 3), st.integers(1, 60), st.integers(1, 40000))
@settings(max_examples=examples(200), deadline=None)
def test_batch_never_goes_past_what_is_idle_and_production_never_sees_it(
    state: NodeState, gpus: int, core: int, memory: int
) -> None:
    """Whatever the node: a batch slice's GPUs each keep the batch total within what was
    measured idle; and production is placed exactly as if batch slices took only their
    slots."""
    placed = PLACER.place(Request(gpus, core, memory, batch=True), state)
    if isinstance(placed, Placement):
        for share in placed.gpus:
            use, idle = state.gpu(share.index), state.idle_of(share.index)
            assert share.batch
            assert use.batch_core + share.core <= idle.core
            assert use.batch_memory_mib + share.memory_mib <= idle.memory_mib
    without = {i: GpuUsage(u.slots, u.core, u.memory_mib, u.whole) for i, u in state.gpus.items()}
    production = Request(gpus, core, memory)
    assert PLACER.place(production, state) == PLACER.place(production, NodeState(without))
