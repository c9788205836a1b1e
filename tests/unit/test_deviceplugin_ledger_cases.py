"""The device plugin's ledger and checkpoint, case by case (deviceplugin/ledger.py,
deviceplugin/checkpoint.py): what the tally charges, what reconcile keeps, the checkpoint's
file modes and what a damaged checkpoint is reported as. Written against the mutants `make
mutate` found alive (docs/mutation.md); the ledger's properties are
tests/unit/test_deviceplugin_ledger.py."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from deviceplugin import checkpoint
from deviceplugin.checkpoint import CheckpointError
from deviceplugin.grants import Grant
from deviceplugin.ledger import Ledger
from deviceplugin.resources import GPU_RESOURCE, PluginConfig
from gpulet.api.share import GpuShare, GpuUsage
from tests.nodes import shipped

TOPO = shipped("dgx-a100")
G0 = TOPO.gpus[0]


def slice_grant(pod: str, slot: int = 0, granted_at: float = 0.0) -> Grant:
    return Grant(
        GPU_RESOURCE,
        (f"{G0.uuid}::{slot:02d}",),
        (GpuShare(G0.uuid, 10, 1000, index=0),),
        pod_uid=pod,
        container="main",
        granted_at=granted_at,
    )


# ---- the tally -----------------------------------------------------------------------------


def test_a_whole_gpu_charges_all_of_the_gpus_memory_and_the_configured_slots() -> None:
    """A whole GPU recorded with less memory than the GPU has (an older grant) still holds
    all of it; its slots follow the configuration the state is asked for."""
    whole = Grant(
        GPU_RESOURCE,
        (f"{G0.uuid}::00",),
        (GpuShare(G0.uuid, 100, 1000, True, index=0),),
        pod_uid="p",
    )
    ledger = Ledger([whole])
    assert ledger.node_state(TOPO, PluginConfig(gpu_slots=4)).gpus == {
        0: GpuUsage(4, 100, G0.memory_mib, 1)
    }
    assert ledger.node_state(TOPO, PluginConfig(gpu_slots=7)).gpus == {
        0: GpuUsage(7, 100, G0.memory_mib, 1)
    }


# ---- reconcile -----------------------------------------------------------------------------


def test_a_grant_made_at_the_lists_time_is_judged_by_that_list() -> None:
    """Only grants made after the list are kept whatever it says."""
    ledger = Ledger([slice_grant("p", granted_at=100.0)])
    assert ledger.reconcile({}, listed_at=100.0) == [slice_grant("p", granted_at=100.0)]


def test_a_spent_grant_stays_while_its_pod_holds_anything_else() -> None:
    live = slice_grant("p", slot=1)
    spent = slice_grant("p", slot=0).spend()
    ledger = Ledger([spent, live])
    assert ledger.reconcile({GPU_RESOURCE: set(live.device_ids)}) == []
    assert set(ledger.grants()) == {spent, live}
    assert ledger.reconcile({}) == [live, spent]


# ---- the checkpoint's files -----------------------------------------------------------------


@pytest.fixture
def no_umask() -> Iterator[None]:
    """The modes the checkpoint asks for, unmasked."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.usefixtures("no_umask")
def test_the_snapshot_and_its_journal_are_private(tmp_path: Path) -> None:
    """They name every pod's devices: owner read and write only."""
    path = tmp_path / "ledger.json"
    ledger = Ledger([slice_grant("p")])
    ledger.save(path)
    ledger.add(slice_grant("q", slot=1))
    ledger.save(path)
    for written in (path, checkpoint.journal_path(path)):
        assert stat.S_IMODE(written.stat().st_mode) == 0o600, written


# ---- a damaged checkpoint: what it is reported as ------------------------------------------


def grant_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(checkpoint.grant_json(slice_grant("p")))
    doc["nics"] = ["mlx5_0"]
    return doc


def snapshot(tmp_path: Path, grants: object, generation: str | None = "g1") -> Path:
    path = tmp_path / "ledger.json"
    doc: dict[str, object] = {"version": checkpoint.VERSION, "grants": grants}
    if generation is not None:
        doc["generation"] = generation
    path.write_text(json.dumps(doc))
    return path


def damaged_as(path: Path) -> str:
    with pytest.raises(CheckpointError) as caught:
        checkpoint.read(path)
    message = str(caught.value)
    assert message.startswith(f"checkpoint {path} cannot be read (")
    assert message.endswith(", and what was granted must be rebuilt from kubelet's pod resources")
    return message


def broken(field: str, value: object, inner: str | None = None) -> list[dict[str, Any]]:
    doc = grant_doc()
    if inner is None:
        doc[field] = value
    else:
        doc[field][0][inner] = value
    return [doc]


@pytest.mark.parametrize(
    ("grants", "problem"),
    [
        (5, "grants has the wrong type (int)"),
        ([5], "a grant has the wrong type (int)"),
        (broken("resource", 5), "resource has the wrong type (int)"),
        (broken("device_ids", "x"), "ids has the wrong type (str)"),
        (broken("device_ids", [5]), "a device ID has the wrong type (int)"),
        (broken("gpus", {}), "gpus has the wrong type (dict)"),
        (broken("gpus", 5, "uuid"), "uuid has the wrong type (int)"),
        (broken("gpus", "5", "core"), "core has the wrong type (str)"),
        (broken("gpus", True, "memory_mib"), "memory_mib has the wrong type (bool)"),
        (broken("gpus", 1, "exclusive"), "exclusive has the wrong type (int)"),
        (broken("gpus", 0.5, "index"), "index has the wrong type (float)"),
        (broken("nics", "mlx5_0"), "nics has the wrong type (str)"),
        (broken("nics", [0]), "a NIC has the wrong type (int)"),
        (broken("pod_uid", 5), "pod_uid has the wrong type (int)"),
        (broken("container", 5), "container has the wrong type (int)"),
        (broken("region_dir", 5), "region_dir has the wrong type (int)"),
        (broken("granted_at", "now"), "granted_at has the wrong type (str)"),
        ([{k: v for k, v in grant_doc().items() if k != "resource"}], "missing field 'resource'"),
    ],
)
def test_a_damaged_snapshot_names_what_is_wrong(
    tmp_path: Path, grants: object, problem: str
) -> None:
    assert f"({problem});" in damaged_as(snapshot(tmp_path, grants))


def test_a_snapshot_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("[]")
    assert "(not a JSON object);" in damaged_as(path)


def journal(path: Path, *lines: str) -> None:
    checkpoint.journal_path(path).write_text("".join(line + "\n" for line in lines))


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        (["[]"], "line 1 does not name the snapshot's generation"),
        (['{"other": 1}'], "line 1 does not name the snapshot's generation"),
        (['{"generation": "g1"}', '{"add": {}, "remove": {}}'], "line 2 is neither"),
        (['{"generation": "g1"}', '{"move": {}}'], "line 2 is neither an add nor a remove"),
    ],
)
def test_a_damaged_journal_names_its_line(tmp_path: Path, lines: list[str], problem: str) -> None:
    path = snapshot(tmp_path, [grant_doc()])
    journal(path, *lines)
    assert f"(its journal: {problem}" in damaged_as(path)


def test_a_snapshot_without_a_generation_ignores_any_journal(tmp_path: Path) -> None:
    """A snapshot from before journals: whatever journal lies beside it is not its own."""
    path = snapshot(tmp_path, [grant_doc()], generation=None)
    journal(path, "not json")
    stored = checkpoint.read(path)
    assert stored is not None and stored.changes == [] and len(stored.grants) == 1


def test_damaged_checkpoints_are_kept_by_utc_time_and_never_overwritten(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three damaged in the same second: each kept under its own name."""
    noon = time.struct_time((2026, 12, 6, 12, 0, 0, 6, 340, 0))
    monkeypatch.setattr(time, "gmtime", lambda *_: noon)
    for _ in range(3):
        damaged_as(snapshot(tmp_path, 5))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ledger.json.corrupt-20261206T120000Z",
        "ledger.json.corrupt-20261206T120000Z-2",
        "ledger.json.corrupt-20261206T120000Z-3",
    ]
