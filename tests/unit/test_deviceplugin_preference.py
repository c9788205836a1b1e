"""What GetPreferredAllocation proposes without an assignment, as pure functions over a
shipped node: whole GPUs by the engine, ports near the container's GPUs."""

from __future__ import annotations

from deviceplugin.preference import ports, whole_gpus
from gpulet.placement import GpuUsage, NodeState, Placer
from tests.nodes import shipped

A100 = shipped("dgx-a100")
PLACER = Placer(A100)
GPUS = {g.uuid: g for g in A100.gpus}
SLOTS = 4


def offered(*indexes: int, slots: int = SLOTS) -> dict[str, list[str]]:
    return {
        g.uuid: [f"{g.uuid}::{s:02d}" for s in range(slots)]
        for g in A100.gpus
        if g.index in indexes
    }


def indexes(uuids: list[str]) -> list[int]:
    return [GPUS[u].index for u in uuids]


def pick(
    size: int,
    offer: dict[str, list[str]],
    state: NodeState | None = None,
    sick: frozenset[int] = frozenset(),
    must: tuple[str, ...] = (),
) -> list[int]:
    return indexes(
        whole_gpus(
            PLACER,
            GPUS,
            state or NodeState(),
            size=size,
            offered=offer,
            slots_per_gpu=SLOTS,
            sick=sick,
            must=must,
        )
    )


def test_two_gpus_come_from_behind_one_switch() -> None:
    assert pick(2, offered(*range(8)))[:2] == [0, 1]


def test_gpus_held_sick_or_partly_offered_are_not_proposed() -> None:
    offer = {**offered(0, 1, 2, 3, 4, 5), **offered(6, 7, slots=SLOTS - 1)}
    held = NodeState(gpus={0: GpuUsage(whole=1)})
    got = pick(2, offer, held, sick=frozenset({2}))
    assert 0 not in got and 2 not in got and 6 not in got and 7 not in got
    assert got[:2] == [4, 5]  # GPU1's partner is held and GPU3's is sick: the next whole pair


def test_must_include_comes_first() -> None:
    assert pick(2, offered(*range(8)), must=(A100.gpus[5].uuid,))[0] == 5


def test_ports_near_the_containers_gpus() -> None:
    usable = {n.key for n in A100.nics}
    got = ports(PLACER, {}, size=2, usable=usable, near={4, 5}, must=())
    assert got[:2] == ["mlx5_6", "mlx5_7"]  # behind GPU4/5's switch


def test_ports_without_gpus_go_by_load_and_skip_the_unusable() -> None:
    usable = {n.key for n in A100.nics} - {"mlx5_0"}
    got = ports(PLACER, {"mlx5_1": 3}, size=1, usable=usable, near=set(), must=())
    assert "mlx5_0" not in got
    assert got[0] != "mlx5_1"  # the loaded port is not the first choice
    assert set(got) == usable
