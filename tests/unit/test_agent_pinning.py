"""agent.pinning: kubelet's CPU manager checkpoint, the CPUs a pinned container gets, and the
cpuset files written under trees laid out as /sys/fs/cgroup is."""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cgroups import CgroupDir, ContainerRef
from agent.pinning import (
    NO_CPU_MANAGER,
    CpuManagerState,
    Pinned,
    PinningError,
    cpus_for,
    parse_cpu_manager_state,
    pin,
    pin_container,
    read_cpu_manager_state,
)
from gpulet.topology.cpulist import parse_cpulist
from tests.strategies import examples

UID = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
OTHER_UID = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"
CID = "4f9c2b7e1d3a5c6b" * 4
REF = ContainerRef(UID, CID)
NODE0 = frozenset(range(16)) | frozenset(range(32, 48))
NODE1 = frozenset(range(16, 32)) | frozenset(range(48, 64))

STATIC = {
    "policyName": "static",
    "defaultCpuSet": "0,6-63",
    "entries": {
        OTHER_UID: {"db": "1-3"},
        UID: {"sidecar": "4", "init-weights": "5"},
    },
    "checksum": 1353318690,
}


def cpus(text: str) -> frozenset[int]:
    return frozenset(parse_cpulist(text))


# --- the CPU manager checkpoint ---------------------------------------------------------


def test_static_policy_state(tmp_path: Path) -> None:
    path = tmp_path / "cpu_manager_state"
    path.write_text(json.dumps(STATIC))
    assert read_cpu_manager_state(path) == CpuManagerState(
        "static",
        frozenset({0, *range(6, 64)}),
        {
            OTHER_UID: {"db": frozenset({1, 2, 3})},
            UID: {"sidecar": frozenset({4}), "init-weights": frozenset({5})},
        },
    )


def test_none_policy_state(tmp_path: Path) -> None:
    path = tmp_path / "cpu_manager_state"
    path.write_text('{"policyName":"none","defaultCpuSet":"","checksum":1353318690}')
    assert read_cpu_manager_state(path) == CpuManagerState("none", frozenset(), {})


def test_no_checkpoint_is_the_none_policy(tmp_path: Path) -> None:
    assert read_cpu_manager_state(tmp_path / "cpu_manager_state") == NO_CPU_MANAGER


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "not valid JSON (Expecting value at line 1 column 1)"),
        ('{"policyName":"sta', "not valid JSON (Unterminated string"),
        ("[]", "not a JSON object"),
        ('{"defaultCpuSet":"0-3"}', "no policyName"),
        ('{"policyName":"static","defaultCpuSet":7}', "defaultCpuSet is not a cpulist string"),
        ('{"policyName":"static","defaultCpuSet":"0-3","entries":[]}', "entries is not an object"),
        (
            json.dumps({"policyName": "static", "defaultCpuSet": "0", "entries": {CID: "1-3"}}),
            f"entries['{CID}'] is not an object of container names (a checkpoint from before",
        ),
        (
            '{"policyName":"static","defaultCpuSet":"0","entries":{"u":{"c":"3-1"}}}',
            "entries['u']['c']: bad cpulist range '3-1'",
        ),
    ],
    ids=["empty", "truncated", "array", "no-policy", "int", "entries", "old-format", "range"],
)
def test_damaged_checkpoint_names_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "cpu_manager_state"
    path.write_text(text)
    with pytest.raises(PinningError, match=f"^{re.escape(f'{path}: {problem}')}"):
        read_cpu_manager_state(path)


def test_unreadable_checkpoint_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cpu_manager_state"
    path.mkdir()
    with pytest.raises(PinningError, match=f"^{re.escape(str(path))}: cannot read kubelet's"):
        read_cpu_manager_state(path)


# --- which CPUs ------------------------------------------------------------------------


def test_other_containers_exclusive_cpus_are_left_out() -> None:
    state = parse_cpu_manager_state(json.dumps(STATIC), "t")
    got = cpus_for(NODE0, state, UID, "train")
    assert got == NODE0 - {1, 2, 3, 4, 5}


def test_nothing_exclusive_leaves_the_whole_node() -> None:
    assert cpus_for(NODE1, NO_CPU_MANAGER, UID, "train") == NODE1


def test_kubelets_exclusive_set_wins_even_off_the_node() -> None:
    state = CpuManagerState("static", cpus("0-19,22-63"), {UID: {"train": cpus("20-21")}})
    assert cpus_for(NODE0, state, UID, "train") == {20, 21}


def test_a_container_of_the_same_name_in_another_pod_is_another_container() -> None:
    state = CpuManagerState("static", frozenset(), {OTHER_UID: {"train": cpus("0-15")}})
    assert cpus_for(NODE0, state, UID, "train") == set(range(32, 48))


def test_nothing_left_is_an_error() -> None:
    state = CpuManagerState("static", cpus("32-63"), {OTHER_UID: {"a": cpus("0-15,32-47")}})
    with pytest.raises(
        PinningError,
        match=re.escape(
            f"container 'train' of pod {UID}: every CPU of its GPUs' NUMA node(s) (0-15,32-47) "
            "is held exclusively by other containers"
        ),
    ):
        cpus_for(NODE0, state, UID, "train")


def test_a_node_without_cpus_is_an_error() -> None:
    with pytest.raises(PinningError, match=r"NUMA node\(s\) have no CPUs"):
        cpus_for(frozenset(), NO_CPU_MANAGER, UID, "train")


_cpu_sets = st.frozensets(st.integers(0, 63), max_size=12)
_containers = st.dictionaries(st.sampled_from(["train", "a", "b"]), _cpu_sets, max_size=3)


@settings(max_examples=examples(100), deadline=None)
@given(
    numa=st.frozensets(st.integers(0, 63), min_size=1),
    entries=st.dictionaries(st.sampled_from([UID, OTHER_UID]), _containers, max_size=2),
)
def test_cpus_for_properties(
    numa: frozenset[int], entries: dict[str, dict[str, frozenset[int]]]
) -> None:
    state = CpuManagerState("static", frozenset(), entries)
    own = entries.get(UID, {}).get("train")
    others = {
        cpu
        for uid, cs in entries.items()
        for name, cpuset in cs.items()
        if (uid, name) != (UID, "train")
        for cpu in cpuset
    }
    try:
        got = cpus_for(numa, state, UID, "train")
    except PinningError:
        assert own is None
        assert numa <= others
        return
    if own is not None:
        assert got == own
    else:
        assert got == numa - others
        assert got
        assert got <= numa
        assert got.isdisjoint(others)


# --- writing the cpuset -----------------------------------------------------------------


def container_dir(tmp_path: Path, version: int, parent: dict[str, str]) -> CgroupDir:
    """A container's cgroup with its pod's cgroup above it, as kubelet leaves them."""
    base = tmp_path / "sys/fs/cgroup" / ("cpuset" if version == 1 else "")
    pod = base / f"kubepods/burstable/pod{UID}"
    path = pod / CID
    path.mkdir(parents=True)
    for name, text in parent.items():
        (pod / name).write_text(f"{text}\n")
    initial = ("", "") if version == 2 else ("0-63", "0-1")  # v2: empty = the parent's
    (path / "cpuset.cpus").write_text(f"{initial[0]}\n")
    (path / "cpuset.mems").write_text(f"{initial[1]}\n")
    (path / "cpuset.cpus.effective").write_text("0-63\n")
    return CgroupDir(path, version)


V2_PARENT = {"cpuset.cpus": "", "cpuset.cpus.effective": "0-63", "cpuset.mems.effective": "0-1"}
V1_PARENT = {"cpuset.cpus": "0-63", "cpuset.mems": "0-1"}


@pytest.mark.parametrize(("version", "parent"), [(2, V2_PARENT), (1, V1_PARENT)])
def test_pin_writes_both_files_as_kubelet_formats_them(
    tmp_path: Path, version: int, parent: dict[str, str]
) -> None:
    cgroup = container_dir(tmp_path, version, parent)
    pin(cgroup, NODE1 - {17}, frozenset({1}))
    assert (cgroup.path / "cpuset.cpus").read_text() == "16,18-31,48-63"
    assert (cgroup.path / "cpuset.mems").read_text() == "1"


def test_pin_without_effective_files_in_the_parent_writes(tmp_path: Path) -> None:
    cgroup = container_dir(tmp_path, 2, {})
    pin(cgroup, NODE0, frozenset({0}))
    assert (cgroup.path / "cpuset.cpus").read_text() == "0-15,32-47"


@pytest.mark.parametrize(
    ("version", "parent", "file", "message"),
    [
        (
            2,
            {**V2_PARENT, "cpuset.cpus.effective": "0-31"},
            "cpuset.cpus.effective",
            " is 0-31: it lacks CPUs 32-47, so {dir} cannot be pinned to 0-15,32-47",
        ),
        (
            2,
            {**V2_PARENT, "cpuset.mems.effective": "1"},
            "cpuset.mems.effective",
            " is 1: it lacks memory nodes 0, so {dir} cannot be pinned to 0",
        ),
        (
            1,
            {**V1_PARENT, "cpuset.cpus": "2-63"},
            "cpuset.cpus",
            " is 2-63: it lacks CPUs 0-1, so {dir} cannot be pinned to 0-15,32-47",
        ),
        (1, {**V1_PARENT, "cpuset.mems": ""}, "cpuset.mems", " is empty: it lacks memory nodes 0"),
        (2, {**V2_PARENT, "cpuset.cpus.effective": "0-x"}, "cpuset.cpus.effective", ": bad"),
    ],
    ids=["v2-cpus", "v2-mems", "v1-cpus", "v1-mems", "v2-garbled"],
)
def test_pin_refuses_what_the_parent_does_not_allow(
    tmp_path: Path, version: int, parent: dict[str, str], file: str, message: str
) -> None:
    cgroup = container_dir(tmp_path, version, parent)
    before = (cgroup.path / "cpuset.cpus").read_text()
    expected = f"{cgroup.path.parent / file}" + message.format(dir=cgroup.path)
    with pytest.raises(PinningError, match=f"^{re.escape(expected)}"):
        pin(cgroup, NODE0, frozenset({0}))
    assert (cgroup.path / "cpuset.cpus").read_text() == before  # nothing written


def test_pin_refuses_empty_sets(tmp_path: Path) -> None:
    cgroup = container_dir(tmp_path, 2, V2_PARENT)
    with pytest.raises(PinningError, match=r"refusing to write an empty cpuset \(cpus 0-15"):
        pin(cgroup, NODE0, frozenset())


def test_a_missing_cgroup_file_is_not_created(tmp_path: Path) -> None:
    cgroup = container_dir(tmp_path, 2, V2_PARENT)
    (cgroup.path / "cpuset.cpus").unlink()  # cpuset not enabled on the container's cgroup
    with pytest.raises(
        PinningError,
        match=f"^{re.escape(str(cgroup.path / 'cpuset.cpus'))}: writing '0-15,32-47' failed: "
        r"No such file or directory \(ENOENT\); the container has exited",
    ):
        pin(cgroup, NODE0, frozenset({0}))
    assert not (cgroup.path / "cpuset.cpus").exists()


def test_a_failed_mems_write_says_the_cpus_were_written(tmp_path: Path) -> None:
    cgroup = container_dir(tmp_path, 2, V2_PARENT)
    (cgroup.path / "cpuset.mems").unlink()
    (cgroup.path / "cpuset.mems").mkdir()  # open(O_WRONLY) fails with EISDIR
    with pytest.raises(PinningError, match=r"\(EISDIR\) \(cpuset.cpus was written\)$"):
        pin(cgroup, NODE0, frozenset({0}))
    assert (cgroup.path / "cpuset.cpus").read_text() == "0-15,32-47"


def test_the_kernels_refusal_is_reported_with_the_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cgroup = container_dir(tmp_path, 1, V1_PARENT)

    def einval(fd: int, data: bytes) -> int:
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))

    monkeypatch.setattr(os, "write", einval)
    with pytest.raises(PinningError) as err:
        pin(cgroup, NODE0, frozenset({0}))
    assert str(err.value) == (
        f"{cgroup.path / 'cpuset.cpus'}: writing '0-15,32-47' failed: Invalid argument (EINVAL)"
    )


# --- pin_container ----------------------------------------------------------------------


@pytest.fixture
def node(tmp_path: Path) -> Path:
    """A cgroup v2 node (systemd driver) with the pod's container, and kubelet's checkpoint."""
    root = tmp_path / "sys/fs/cgroup"
    pod = (
        root
        / "kubepods.slice/kubepods-burstable.slice"
        / (f"kubepods-burstable-pod{UID.replace('-', '_')}.slice")
    )
    (pod / f"cri-containerd-{CID}.scope").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (pod / "cpuset.cpus.effective").write_text("0-63\n")
    (pod / "cpuset.mems.effective").write_text("0-1\n")
    for name in ("cpuset.cpus", "cpuset.mems"):
        (pod / f"cri-containerd-{CID}.scope" / name).write_text("\n")
    (tmp_path / "cpu_manager_state").write_text(json.dumps(STATIC))
    return tmp_path


def pin_train(node: Path, numa_nodes: list[int], container: str = "train") -> Pinned:
    return pin_container(
        node / "sys/fs/cgroup",
        REF,
        container,
        numa_nodes=numa_nodes,
        numa_cpus={0: sorted(NODE0), 1: sorted(NODE1)},
        cpu_manager_state=node / "cpu_manager_state",
    )


def test_pin_container(node: Path) -> None:
    got = pin_train(node, [0])
    assert got.cpus == NODE0 - {1, 2, 3, 4, 5}
    assert got.mems == {0}
    assert not got.kubelet_cpus
    assert (got.path / "cpuset.cpus").read_text() == "0,6-15,32-47"
    assert (got.path / "cpuset.mems").read_text() == "0"


def test_pin_container_on_two_nodes(node: Path) -> None:
    got = pin_train(node, [1, 0])
    assert (got.path / "cpuset.cpus").read_text() == "0,6-63"
    assert (got.path / "cpuset.mems").read_text() == "0-1"


def test_pin_container_keeps_kubelets_exclusive_cpus(node: Path) -> None:
    got = pin_train(node, [1], container="sidecar")
    assert (got.cpus, got.mems, got.kubelet_cpus) == (frozenset({4}), frozenset({1}), True)
    assert (got.path / "cpuset.cpus").read_text() == "4"
    assert (got.path / "cpuset.mems").read_text() == "1"


def test_pin_container_with_a_damaged_checkpoint_writes_nothing(node: Path) -> None:
    (node / "cpu_manager_state").write_text('{"policyName": "static", "defaultCpuSet": "0-')
    with pytest.raises(PinningError, match="cpu_manager_state: not valid JSON"):
        pin_train(node, [0])
    written = (node / "sys/fs/cgroup").glob("kubepods.slice/*/*/*/cpuset.cpus")
    assert [p.read_text() for p in written] == ["\n"]


def test_pin_container_without_its_cgroup(node: Path) -> None:
    other = ContainerRef(OTHER_UID, CID)
    with pytest.raises(PinningError, match=f"^no cgroup for pod {OTHER_UID}"):
        pin_container(
            node / "sys/fs/cgroup",
            other,
            "train",
            numa_nodes=[0],
            numa_cpus={0: NODE0},
            cpu_manager_state=node / "cpu_manager_state",
        )


@pytest.mark.parametrize(
    ("numa_nodes", "message"),
    [([], "no NUMA node given"), ([0, 3], r"NUMA node\(s\) \[3\] are not among the node's")],
)
def test_pin_container_checks_the_numa_nodes(
    node: Path, numa_nodes: list[int], message: str
) -> None:
    with pytest.raises(PinningError, match=message):
        pin_train(node, numa_nodes)
