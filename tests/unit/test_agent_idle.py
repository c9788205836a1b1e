"""What each GPU's production leaves idle (agent.idle): production's peak over the window,
batch slices' own use left out, less the margins; published after a whole window, then at
most once a minute and only on a change of more than 5% of a GPU."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.idle import (
    CORE_MARGIN,
    MEMORY_MARGIN_PERMILLE,
    MIN_INTERVAL_S,
    WINDOW_S,
    IdleMeter,
    Production,
    aggregates,
    moved,
    production,
    room,
)
from agent.monitor import ContainerGpu, Sample
from deviceplugin.grants import Grant
from gpulet.api.resources import BATCH_CORE_RESOURCE, BATCH_MEMORY_RESOURCE, GPU_RESOURCE
from gpulet.api.share import GpuShare, Idle
from tests.nodes import shipped
from tests.strategies import examples

TOPO = shipped("pcie-4gpu")
G0, G1 = TOPO.gpus[0], TOPO.gpus[1]
MEMORY = G0.memory_mib
MARGIN_MIB = MEMORY * MEMORY_MARGIN_PERMILLE // 1000


def grant(pod: str, share: GpuShare) -> Grant:
    return Grant(GPU_RESOURCE, (f"x::{pod}",), (share,), pod_uid=pod, container="main")


PROD = grant("prod", GpuShare(G0.uuid, 50, 20000, index=0))
BATCH = grant("batch", GpuShare(G0.uuid, 10, 8000, index=0, batch=True))


def sample(prod_util: int, prod_mib: int, batch_util: int = 0, batch_mib: int = 0) -> Sample:
    """GPU0 with a production container and a batch one, and 512 MiB of a process no
    container owns."""
    return Sample(
        containers=[
            ContainerGpu("prod", "main", G0.uuid, prod_mib, 20000, 50, prod_util, (1,)),
            ContainerGpu("batch", "main", G0.uuid, batch_mib, 8000, 10, batch_util, (2,)),
        ],
        gpu_used_mib={G0.uuid: prod_mib + batch_mib + 512},
        gpu_util={G0.uuid: min(100, prod_util + batch_util)},
    )


def test_production_is_what_the_gpu_used_less_batch_slices_own() -> None:
    used = production(sample(30, 6000, batch_util=65, batch_mib=7000), [PROD, BATCH])
    assert used[G0.uuid] == Production(30.0, 6512)  # the unowned process counts as production


def test_the_room_is_what_the_peak_leaves_less_the_margins() -> None:
    assert room(MEMORY, Production(30.4, 6512)) == Idle(
        100 - 31 - CORE_MARGIN, MEMORY - 6512 - MARGIN_MIB
    )
    assert room(MEMORY, Production(100.0, MEMORY)) == Idle(0, 0)


def publishing(**kw: Any) -> tuple[IdleMeter, list[dict[int, Idle]]]:
    published: list[dict[int, Idle]] = []
    return IdleMeter(TOPO, lambda idle: published.append(dict(idle)), **kw), published


def test_nothing_is_published_before_a_whole_window_then_the_peak_of_it_is() -> None:
    meter, published = publishing()
    meter.observe(sample(80, 6000), [PROD, BATCH], 0.0)  # production's peak, early on
    for t in range(1, int(WINDOW_S)):
        meter.observe(sample(20, 4000, batch_util=70), [PROD, BATCH], float(t))
    assert published == []
    meter.observe(sample(20, 4000), [PROD, BATCH], WINDOW_S)
    (first,) = published
    assert first[0] == Idle(100 - 80 - CORE_MARGIN, MEMORY - 6512 - MARGIN_MIB)
    # Every GPU without processes is idle but for the margins.
    assert first[1] == Idle(100 - CORE_MARGIN, G1.memory_mib - MARGIN_MIB)
    assert aggregates(first)[BATCH_CORE_RESOURCE] == sum(i.core for i in first.values())
    assert aggregates(first)[BATCH_MEMORY_RESOURCE] == sum(i.memory_mib for i in first.values())


def test_at_most_once_a_minute_and_only_on_a_change_of_more_than_five_percent() -> None:
    meter, published = publishing()
    t = 0.0
    while t <= WINDOW_S:
        meter.observe(sample(20, 4000), [PROD], t)
        t += 1.0
    assert len(published) == 1
    while t <= 2 * WINDOW_S + MIN_INTERVAL_S:  # the old peak ages out; production busier
        meter.observe(sample(24, 4000), [PROD], t)  # 4 points more: not a change
        t += 1.0
    assert len(published) == 1
    meter.observe(sample(90, 4000), [PROD], t)  # a change, long after the last: published
    assert len(published) == 2 and published[1][0].core == 0
    meter.observe(sample(10, 70000), [PROD], t + 1.0)
    assert len(published) == 2  # within a minute of the last
    meter.observe(sample(10, 70000), [PROD], t + MIN_INTERVAL_S)
    assert len(published) == 3 and published[2][0].memory_mib == 0


def test_a_gpu_held_whole_or_out_of_service_has_no_room() -> None:
    whole = grant("train", GpuShare.held_whole(G1.uuid, G1.memory_mib, 1))
    meter, published = publishing(window_s=0.0, unavailable=lambda: {2})
    meter.observe(Sample(), [whole], 0.0)
    (idle,) = published
    assert idle[1] == Idle(0, 0) and idle[2] == Idle(0, 0) and idle[3].core > 0


@given(
    st.lists(st.tuples(st.integers(0, 100), st.integers(0, MEMORY)), min_size=1, max_size=20),
)
@settings(max_examples=examples(100))
def test_the_room_never_counts_on_what_production_used_in_the_window(
    uses: list[tuple[int, int]],
) -> None:
    """Whatever production did in the window, batch's room plus production's busiest
    moment plus the margin never exceeds the GPU."""
    meter, published = publishing(window_s=float(len(uses) - 1))
    for t, (util, mib) in enumerate(uses):
        meter.observe(sample(util, mib), [PROD], float(t))
    (idle,) = published
    peak_util = max(u for u, _ in uses)
    peak_mib = max(m for _, m in uses) + 512
    assert idle[0].core + peak_util + CORE_MARGIN <= 100 or idle[0].core == 0
    assert idle[0].memory_mib + peak_mib + MARGIN_MIB <= MEMORY or idle[0].memory_mib == 0


def test_moved_is_per_gpu_and_relative_to_the_gpu() -> None:
    memory = {0: 1000, 1: 1000}
    base = {0: Idle(50, 500), 1: Idle(50, 500)}
    assert not moved(base, {0: Idle(55, 550), 1: Idle(45, 450)}, memory)
    assert moved(base, {0: Idle(56, 500), 1: Idle(50, 500)}, memory)
    assert moved(base, {0: Idle(50, 500), 1: Idle(50, 449)}, memory)
