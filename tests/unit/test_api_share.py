"""The shared counting's exact figures (gpulet/api/share.py): what a share charges its GPU, and
what a refusal says is short, needed and free (the numbers a FailedScheduling event and the
device plugin's refusals show). Written against the mutants `make mutate` found alive."""

from __future__ import annotations

import pytest

from gpulet.api.share import GpuShare, GpuUsage, Idle, Short, Shortfall, shortfall, shortfall_of

SLOTS = 4
MEMORY = 80_000


def of(
    use: GpuUsage, core: int = 10, memory: int = 1000, exclusive: bool = False
) -> Shortfall | None:
    return shortfall_of(
        use, core, memory, exclusive=exclusive, slots_per_gpu=SLOTS, gpu_memory_mib=MEMORY
    )


@pytest.mark.parametrize(
    ("use", "core", "memory", "exclusive", "expected"),
    [
        (GpuUsage(whole=1), 10, 1000, False, Shortfall(Short.HELD_WHOLE, 1, 0)),
        (GpuUsage(1, 10, 1000), 100, MEMORY, True, Shortfall(Short.IN_USE, 1, 0)),
        (GpuUsage(SLOTS, 40, 4000), 10, 1000, False, Shortfall(Short.SLOTS, 1, 0)),
        # More slots given out than the GPU has (it was over-committed): none free, not fewer.
        (GpuUsage(SLOTS + 1, 40, 4000), 10, 1000, False, Shortfall(Short.SLOTS, 1, 0)),
        (GpuUsage(1, 70, 1000), 40, 1000, False, Shortfall(Short.CORE, 40, 30)),
        (GpuUsage(1, 110, 1000), 10, 1000, False, Shortfall(Short.CORE, 10, 0)),
        (GpuUsage(1, 10, MEMORY - 500), 10, 1000, False, Shortfall(Short.MEMORY, 1000, 500)),
        (GpuUsage(1, 10, MEMORY + 500), 10, 1000, False, Shortfall(Short.MEMORY, 1000, 0)),
    ],
)
def test_a_refusal_names_what_is_short_and_the_exact_figures(
    use: GpuUsage, core: int, memory: int, exclusive: bool, expected: Shortfall
) -> None:
    assert of(use, core, memory, exclusive) == expected


def test_the_last_percent_of_compute_and_the_last_mib_can_be_given_out() -> None:
    assert of(GpuUsage(1, 90, 1000), core=10) is None
    assert of(GpuUsage(1, 90, 1000), core=11) == Shortfall(Short.CORE, 11, 10)
    assert of(GpuUsage(1, 10, MEMORY - 1000), memory=1000) is None
    assert of(GpuUsage(), memory=1) is None
    assert of(GpuUsage(), memory=0) == Shortfall(Short.MEMORY, 0, MEMORY)


def test_shortfall_takes_the_shares_exclusivity() -> None:
    """A whole GPU asked of a GPU with a slice out is refused as in use."""
    whole = GpuShare.held_whole("GPU-a", MEMORY)
    assert shortfall(GpuUsage(1, 10, 1000), whole, SLOTS, MEMORY) == Shortfall(Short.IN_USE, 1, 0)
    assert shortfall(GpuUsage(), whole, SLOTS, MEMORY) is None


def test_a_slice_charges_one_slot_and_holds_nothing_whole() -> None:
    charge = GpuShare("GPU-a", 30, 2000).charge(SLOTS, MEMORY)
    assert charge == GpuUsage(1, 30, 2000, 0)
    assert not charge.exclusive


def test_a_whole_gpu_charges_every_slot_all_compute_and_the_larger_memory() -> None:
    whole = GpuShare.held_whole("GPU-a", 40_000, index=2)
    assert whole == GpuShare("GPU-a", 100, 40_000, exclusive=True, index=2)
    assert whole.charge(SLOTS, MEMORY) == GpuUsage(SLOTS, 100, MEMORY, 1)
    assert whole.charge(SLOTS) == GpuUsage(SLOTS, 100, 40_000, 1)
    assert GpuShare.held_whole("GPU-a", 40_000).index == -1


def test_a_share_on_its_gpu_and_back_by_uuid() -> None:
    """On its node's GPU a whole GPU holds all of that GPU's memory, a slice keeps its own;
    named by UUID again, only the index goes."""
    whole = GpuShare.held_whole("GPU-a", 40_000)
    on = whole.on_gpu(3, MEMORY)
    assert on == GpuShare("GPU-a", 100, MEMORY, exclusive=True, index=3)
    assert on.by_uuid() == GpuShare("GPU-a", 100, MEMORY, exclusive=True, index=-1)
    piece = GpuShare("GPU-b", 20, 1000).on_gpu(1, MEMORY)
    assert piece == GpuShare("GPU-b", 20, 1000, index=1)
    assert piece.by_uuid() == GpuShare("GPU-b", 20, 1000)


@pytest.mark.parametrize(
    ("short", "text"),
    [
        (Shortfall(Short.SLOTS, 1, 0), "no free slot"),
        (Shortfall(Short.CORE, 40, 30), "30 percent core free"),
        (Shortfall(Short.MEMORY, 1000, 500), "500 MiB free"),
        (Shortfall(Short.HELD_WHOLE, 1, 0), "held whole"),
        (Shortfall(Short.IN_USE, 1, 0), "in use"),
    ],
)
def test_the_reason_shown_per_gpu(short: Shortfall, text: str) -> None:
    assert str(short) == text


def batch_of(
    use: GpuUsage, core: int = 10, memory: int = 1000, idle: Idle | None = None
) -> Shortfall | None:
    return shortfall_of(
        use,
        core,
        memory,
        exclusive=False,
        slots_per_gpu=SLOTS,
        gpu_memory_mib=MEMORY,
        batch=True,
        idle=idle,
    )


ROOM = Idle(40, 8000)


@pytest.mark.parametrize(
    ("use", "core", "memory", "idle", "expected"),
    [
        # A slot is needed, as for any slice; the node (no `idle`) checks only that.
        (GpuUsage(SLOTS), 10, 1000, None, Shortfall(Short.SLOTS, 1, 0)),
        (GpuUsage(SLOTS - 1), 10, 1000, None, None),
        (GpuUsage(SLOTS + 1), 10, 1000, ROOM, Shortfall(Short.SLOTS, 1, 0)),
        # Production's reservations are not what batch is held to: the room is.
        (GpuUsage(1, 100, MEMORY), 40, 8000, ROOM, None),
        (GpuUsage(2, batch=1, batch_core=30, batch_memory_mib=1), 20, 1, ROOM,
         Shortfall(Short.IDLE_CORE, 20, 10)),
        (GpuUsage(2, batch=1, batch_core=50), 20, 1, ROOM, Shortfall(Short.IDLE_CORE, 20, 0)),
        (GpuUsage(2, batch=1, batch_core=1, batch_memory_mib=7000), 1, 1001, ROOM,
         Shortfall(Short.IDLE_MEMORY, 1001, 1000)),
        (GpuUsage(2, batch=1, batch_memory_mib=9000), 1, 1, ROOM,
         Shortfall(Short.IDLE_MEMORY, 1, 0)),
        # The last MiB of the room can be given; no MiB at all cannot.
        (GpuUsage(2, batch=1, batch_memory_mib=7999), 1, 1, ROOM, None),
        (GpuUsage(), 1, 0, ROOM, Shortfall(Short.IDLE_MEMORY, 0, 8000)),
    ],
)  # fmt: skip
def test_a_batch_share_is_held_to_a_slot_and_the_room_with_the_exact_figures(
    use: GpuUsage, core: int, memory: int, idle: Idle | None, expected: Shortfall | None
) -> None:
    assert batch_of(use, core, memory, idle) == expected
