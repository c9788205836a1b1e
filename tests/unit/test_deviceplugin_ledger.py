"""The ledger of grants: no device ID twice, the engine's view, reconcile, the checkpoint."""

from __future__ import annotations

import errno
import json
import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deviceplugin.ledger import (
    CheckpointError,
    DoubleGrantError,
    GpuShare,
    Grant,
    Ledger,
    node_state,
)
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.placement import GpuUsage
from tests.nodes import shipped
from tests.strategies import examples

TOPO = shipped("dgx-a100")
CONFIG = PluginConfig()
G0, G1 = TOPO.gpus[0], TOPO.gpus[1]


def whole(pod: str, *gpus: int, ids: tuple[str, ...] | None = None) -> Grant:
    shares = tuple(
        GpuShare(TOPO.gpus[i].uuid, 100, TOPO.gpus[i].memory_mib, True, index=i) for i in gpus
    )
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
        (GpuShare(uuid, core, memory, False, index=index),),
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


def held(ledger: Ledger, resource: str) -> set[str]:
    """The device IDs of `resource` that the ledger's grants hold."""
    return {d for g in ledger.grants() if g.resource == resource for d in g.device_ids}


def test_double_grant_refused() -> None:
    ledger = Ledger([whole("a", 0)])
    with pytest.raises(DoubleGrantError, match=r"::00 is already granted to pod a container main"):
        ledger.add(whole("b", 0, 1))
    assert [g.pod_uid for g in ledger.grants()] == ["a"]
    ledger.add(rdma("b", "mlx5_0"))  # another resource: another ID space
    with pytest.raises(DoubleGrantError, match="twice"):
        ledger.add(Grant(GPU_RESOURCE, ("x::01", "x::01")))
    assert held(ledger, GPU_RESOURCE) == {f"{G0.uuid}::00"}
    assert held(ledger, RDMA_RESOURCE) == {"mlx5_0::00"}
    assert ledger.holders(GPU_RESOURCE, [f"{G1.uuid}::00", "x::01"]) == []


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
    assert state.gpu(0) == GpuUsage(100, 100, G0.memory_mib, whole=1)
    assert state.gpu(1) == GpuUsage(2, 50, 1500, whole=0)
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
    assert len(ledger.grants()) == 50
    assert held(ledger, GPU_RESOURCE) == {f"{uuid}::{slot:02d}" for slot in range(50)}


# ---- the journal -------------------------------------------------------------------------


def journal_of(path: Path) -> list[dict[str, object]]:
    return [
        json.loads(line) for line in (path.parent / f"{path.name}.journal").read_text().splitlines()
    ]


def test_changes_after_a_snapshot_are_appended(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    a, b, c = whole("a", 0), slice_of("b", 1, 0, 30, 1000), rdma("c", "mlx5_0")
    ledger = Ledger([a])
    ledger.save(path)  # the first save writes the snapshot
    snapshot = path.read_bytes()
    ledger.add(b)
    ledger.save(path)
    ledger.add(c)
    ledger.remove(a)
    ledger.save(path)
    assert path.read_bytes() == snapshot  # untouched: the changes went to the journal
    lines = journal_of(path)
    assert lines[0] == {"generation": json.loads(snapshot)["generation"]}
    assert [next(iter(line)) for line in lines[1:]] == ["add", "add", "remove"]
    assert Ledger.load(path).grants() == ledger.grants() == (b, c)


def test_a_long_journal_is_folded_into_a_new_snapshot(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    journal = tmp_path / "checkpoint.json.journal"
    ledger = Ledger()
    ledger.journal_slack = 4
    ledger.save(path)
    generations = {json.loads(path.read_text())["generation"]}
    keep = whole("keep", 7)
    ledger.add(keep)
    for slot in range(12):  # churn: the ledger stays small, the journal would not
        grant = slice_of(f"p{slot}", slot % 7, slot, 5, 100)
        ledger.add(grant)
        ledger.save(path)
        ledger.remove(grant)
        ledger.save(path)
        generations.add(json.loads(path.read_text())["generation"])
        assert not journal.exists() or len(journal_of(path)) - 1 <= len(ledger.grants()) + 4
    assert len(generations) > 3  # folded again and again
    assert Ledger.load(path).grants() == ledger.grants()


def test_a_torn_last_line_is_a_change_that_never_happened(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    a, b = whole("a", 0), whole("b", 1)
    ledger = Ledger([a])
    ledger.save(path)
    ledger.add(b)
    ledger.save(path)
    journal = tmp_path / "checkpoint.json.journal"
    whole_text = journal.read_bytes()
    journal.write_bytes(whole_text[:-10])  # the agent died in the middle of this append
    assert Ledger.load(path).grants() == (a,)
    journal.write_bytes(whole_text)
    assert Ledger.load(path).grants() == (a, b)


def test_a_journal_from_before_the_snapshot_is_ignored(tmp_path: Path) -> None:
    """The agent died between renaming a new snapshot in and removing the old journal."""
    path = tmp_path / "checkpoint.json"
    journal = tmp_path / "checkpoint.json.journal"
    a, b = whole("a", 0), whole("b", 1)
    ledger = Ledger()
    ledger.save(path)
    ledger.add(a)
    ledger.add(b)
    ledger.save(path)
    stale = journal.read_bytes()
    ledger.journal_slack = 0
    ledger.remove(b)
    ledger.save(path)  # a new snapshot: {a}
    assert not journal.exists()
    journal.write_bytes(stale)  # as if the unlink never happened
    assert Ledger.load(path).grants() == (a,)


@pytest.mark.parametrize(
    ("journal", "problem"),
    [
        (b'{"generation": "G"}\n{"add": {"resource": 3}}\n', "resource has the wrong type"),
        (b'{"generation": "G"}\n{"move": {}}\n', "line 2 is neither an add nor a remove"),
        (b'{"generation": "G"}\nnot json\n{"add": 1}\n', "Expecting value"),
        (b"[1]\n", "line 1 does not name the snapshot's generation"),
        (b'{"generation": "G"}\n{"remove": OTHER}\n', "change 1 of the journal removes an unknown"),
        (b'{"generation": "G"}\n{"add": GRANT}\n', "already granted to pod a container main"),
    ],
)
def test_a_damaged_journal_is_kept_aside_with_its_snapshot(
    tmp_path: Path, journal: bytes, problem: str
) -> None:
    path = tmp_path / "checkpoint.json"
    a = whole("a", 0)
    Ledger([a]).save(path)
    generation = json.loads(path.read_text())["generation"]
    grant = json.dumps(json.loads(path.read_text())["grants"][0])
    other = grant.replace('"pod_uid": "a"', '"pod_uid": "zz"')
    content = (
        journal.replace(b'"G"', f'"{generation}"'.encode())
        .replace(b"GRANT", grant.encode())
        .replace(b"OTHER", other.encode())
    )
    (tmp_path / "checkpoint.json.journal").write_bytes(content)
    snapshot = path.read_bytes()
    with pytest.raises(CheckpointError) as err:
        Ledger.load(path)
    assert problem in str(err.value)
    kept = err.value.kept
    assert kept is not None and kept.read_bytes() == snapshot
    (journal_kept,) = tmp_path.glob("checkpoint.json.journal.corrupt-*")
    assert journal_kept.read_bytes() == content and str(journal_kept) in str(err.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([kept.name, journal_kept.name])


def test_a_failed_append_leaves_the_files_as_they_were(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills in the middle of an append: the journal is cut back, the caller
    undoes the change (as DevicePluginCore does), and the next save is a whole snapshot."""
    path = tmp_path / "checkpoint.json"
    a, b, c = whole("a", 0), whole("b", 1), whole("c", 2)
    ledger = Ledger([a])
    ledger.save(path)
    ledger.add(b)
    ledger.save(path)
    before = (tmp_path / "checkpoint.json.journal").read_bytes()
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    ledger.add(c)
    with pytest.raises(OSError, match="No space"):
        ledger.save(path)
    monkeypatch.undo()
    assert (tmp_path / "checkpoint.json.journal").read_bytes() == before
    assert Ledger.load(path).grants() == (a, b)
    ledger.remove(c)  # the caller undoes what it could not record
    ledger.save(path)
    assert not (tmp_path / "checkpoint.json.journal").exists()  # a snapshot, not an append
    assert Ledger.load(path).grants() == (a, b)


# ---- properties: the tally and the files always agree with the grants ---------------------

ledger_ops = st.lists(
    st.one_of(
        st.tuples(st.just("whole"), st.integers(0, 7), st.integers(0, 3)),
        st.tuples(st.just("slice"), st.integers(0, 7), st.integers(0, 3)),
        st.tuples(st.just("rdma"), st.integers(0, 7), st.integers(0, 3)),
        st.tuples(st.just("remove"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("pod"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("save"), st.just(0), st.just(0)),
        st.tuples(st.just("restart"), st.just(0), st.just(0)),
    ),
    max_size=40,
)


@given(ledger_ops, st.integers(0, 6))
@settings(max_examples=examples(150), deadline=None)
def test_tally_and_checkpoint_agree_with_the_grants(
    ops: list[tuple[str, int, int]], slack: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.json"
        ledger = Ledger()
        ledger.journal_slack = slack
        for n, (op, a, b) in enumerate(ops):
            pod = f"p{n}"
            try:
                if op == "whole":
                    ledger.add(whole(pod, a, ids=(f"{TOPO.gpus[a].uuid}::{b:02d}",)))
                elif op == "slice":
                    ledger.add(slice_of(pod, a, b, 10 + b, 100 * (b + 1)))
                elif op == "rdma":
                    ledger.add(rdma(pod, TOPO.nics[a % len(TOPO.nics)].key, slot=b))
                elif op == "remove" and ledger.grants():
                    ledger.remove(ledger.grants()[a % len(ledger.grants())])
                elif op == "pod" and ledger.grants():
                    uid = ledger.grants()[a % len(ledger.grants())].pod_uid
                    assert uid is not None
                    ledger.remove_pod(uid)
                elif op == "save":
                    ledger.save(path)
                    assert Ledger.load(path).grants() == ledger.grants()
                elif op == "restart" and path.exists():
                    ledger.save(path)
                    ledger = Ledger.load(path)
                    ledger.journal_slack = slack
            except DoubleGrantError:
                pass
            grants = ledger.grants()
            assert ledger.node_state(TOPO, CONFIG) == node_state(grants, TOPO, CONFIG)
            if grants:
                gone = grants[a % len(grants)]
                rest = [g for g in grants if g != gone]
                assert ledger.node_state(TOPO, CONFIG, excluding=[gone]) == node_state(
                    rest, TOPO, CONFIG
                )
        ledger.save(path)
        assert Ledger.load(path).grants() == ledger.grants()
