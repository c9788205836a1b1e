"""The ledger of grants: no device ID twice, the engine's view, reconcile, the checkpoint."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from deviceplugin.ledger import (
    CheckpointError,
    DoubleGrantError,
    GpuShare,
    Grant,
    Ledger,
)
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from scorer.placement import GpuUsage
from tests.nodes import shipped

TOPO = shipped("dgx-a100")
CONFIG = PluginConfig()
G0, G1 = TOPO.gpus[0], TOPO.gpus[1]


def whole(pod: str, *gpus: int, ids: tuple[str, ...] | None = None) -> Grant:
    shares = tuple(GpuShare(TOPO.gpus[i].uuid, i, 100, TOPO.gpus[i].memory_mib, True) for i in gpus)
    return Grant(
        GPU_RESOURCE,
        ids or tuple(f"{TOPO.gpus[i].uuid}::00" for i in gpus),
        shares,
        pod_uid=pod,
        container="main",
        region_dir=f"/r/{pod}/main",
        granted_at=10.0,
    )


def slice_of(pod: str, index: int, slot: int, core: int, memory: int) -> Grant:
    uuid = TOPO.gpus[index].uuid
    return Grant(
        GPU_RESOURCE,
        (f"{uuid}::{slot:02d}",),
        (GpuShare(uuid, index, core, memory, False),),
        pod_uid=pod,
        container="main",
        granted_at=10.0,
    )


def rdma(pod: str, *keys: str, slot: int = 0) -> Grant:
    return Grant(
        RDMA_RESOURCE,
        tuple(f"{k}::{slot:02d}" for k in keys),
        nics=keys,
        pod_uid=pod,
        container="main",
        granted_at=10.0,
    )


def test_double_grant_refused() -> None:
    ledger = Ledger([whole("a", 0)])
    with pytest.raises(DoubleGrantError, match=r"::00 is already granted to pod a container main"):
        ledger.add(whole("b", 0, 1))
    assert [g.pod_uid for g in ledger.grants()] == ["a"]
    ledger.add(rdma("b", "mlx5_0"))  # another resource: another ID space
    with pytest.raises(DoubleGrantError, match="twice"):
        ledger.add(Grant(GPU_RESOURCE, ("x::01", "x::01")))
    assert ledger.granted_ids(GPU_RESOURCE) == {f"{G0.uuid}::00"}
    assert ledger.granted_ids(RDMA_RESOURCE) == {"mlx5_0::00"}


def test_node_state() -> None:
    ledger = Ledger(
        [
            whole("a", 0),
            slice_of("b", 1, 0, 30, 1000),
            slice_of("c", 1, 1, 20, 500),
            rdma("b", "mlx5_0", "mlx5_1"),
            rdma("c", "mlx5_0", slot=1),
        ]
    )
    state = ledger.node_state(TOPO, CONFIG)
    assert state.gpu(0) == GpuUsage(100, 100, G0.memory_mib, exclusive=True)
    assert state.gpu(1) == GpuUsage(2, 50, 1500, exclusive=False)
    assert state.gpu(2).idle
    assert dict(state.nic_slots) == {"mlx5_0": 2, "mlx5_1": 1}


def test_remove_pod_and_holders() -> None:
    a, b = whole("a", 0), slice_of("b", 1, 0, 30, 1000)
    ledger = Ledger([a, b, rdma("a", "mlx5_0")])
    assert ledger.holders(GPU_RESOURCE, [f"{G1.uuid}::00", "nope::00", f"{G1.uuid}::00"]) == [b]
    dropped = ledger.remove_pod("a")
    assert [g.resource for g in dropped] == [GPU_RESOURCE, RDMA_RESOURCE]
    assert ledger.grants() == (b,)
    ledger.add(whole("c", 0))  # its IDs are free again
    assert ledger.remove(b) and not ledger.remove(b)


def test_reconcile() -> None:
    a, b, c = whole("a", 0, 1), whole("b", 2), rdma("c", "mlx5_0")
    late = whole("d", 3)
    late = Grant(**{**late.__dict__, "granted_at": 99.0})
    spent_b = Grant(GPU_RESOURCE, (), pod_uid="b", container="init", granted_at=5.0)
    spent_e = Grant(GPU_RESOURCE, (), pod_uid="e", container="init", granted_at=5.0)
    ledger = Ledger([a, b, c, late, spent_b, spent_e])
    # kubelet still shows one of a's IDs, none of b's, c's, or d's (made after the List).
    live = {GPU_RESOURCE: {a.device_ids[1], "somebody-elses::00"}}
    dropped = ledger.reconcile(live, listed_at=50.0)
    assert dropped == [b, c, spent_b, spent_e]
    assert ledger.grants() == (a, late)
    assert ledger.reconcile({}) == [a, late]


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    ledger = Ledger([whole("a", 0, 1), slice_of("b", 2, 3, 40, 2048), rdma("c", "mlx5_0:2")])
    ledger.add(Grant(GPU_RESOURCE, (f"{TOPO.gpus[5].uuid}::07",), (), region_dir=None))
    ledger.save(path)
    assert json.loads(path.read_text())["version"] == 1
    assert Ledger.load(path).grants() == ledger.grants()
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.json"]  # no temporary left


def test_missing_checkpoint_is_empty(tmp_path: Path) -> None:
    assert Ledger.load(tmp_path / "none.json").grants() == ()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"version": 1, "grants": [', "Expecting value"),
        (b'{"version": 7, "grants": []}', "version 7, this agent reads 1"),
        (b"[]", "not a JSON object"),
        (b'{"version": 1}', "missing field 'grants'"),
        (b'{"version": 1, "grants": [{"resource": 3}]}', "resource has the wrong type (int)"),
        (
            b'{"version": 1, "grants": [{"resource": "r", "device_ids": ["x::00"], "gpus": [],'
            b' "nics": [], "pod_uid": null, "container": null, "region_dir": null,'
            b' "granted_at": 0}, {"resource": "r", "device_ids": ["x::00"], "gpus": [],'
            b' "nics": [], "pod_uid": null, "container": null, "region_dir": null,'
            b' "granted_at": 0}]}',
            "r device ID x::00 is already granted to another container",
        ),
    ],
)
def test_damaged_checkpoint_is_kept_aside(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        Ledger.load(path)
    kept = err.value.kept
    assert kept is not None and kept.read_bytes() == content
    assert kept.name.startswith("checkpoint.json.corrupt-")
    assert not path.exists()
    message = str(err.value)
    assert problem in message
    assert f"checkpoint {path} cannot be read" in message and f"moved to {kept}" in message
    # A second damaged file on the same second is kept too, under another name.
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as again:
        Ledger.load(path)
    assert again.value.kept != kept and kept.exists()


def test_concurrent_adds_never_double_grant() -> None:
    ledger = Ledger()
    uuid = G0.uuid
    wins: list[int] = []

    def worker(n: int) -> None:
        for slot in range(50):
            try:
                ledger.add(Grant(GPU_RESOURCE, (f"{uuid}::{slot:02d}",), pod_uid=str(n)))
                wins.append(slot)
            except DoubleGrantError:
                pass

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == list(range(50))
    assert len(ledger.granted_ids(GPU_RESOURCE)) == 50
