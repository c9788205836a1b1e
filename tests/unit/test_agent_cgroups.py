"""agent.cgroups: container refs from /proc/<pid>/cgroup, and containers' cgroup directories
under trees laid out as /proc and /sys/fs/cgroup are."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.cgroups import (
    CgroupDir,
    CgroupError,
    ContainerRef,
    ProcessTable,
    cgroup_version,
    container_id_of,
    container_of,
    find_container_cgroup,
)

UID = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
U_ = UID.replace("-", "_")
CID = "4f9c2b7e1d3a5c6b" * 4
SANDBOX = "9d0e1f2a3b4c5d6e" * 4
OTHER_UID = "7a6b5c4d-3e2f-4a1b-9c8d-7e6f5a4b3c2d"
STATIC_UID = "6b1d0c8e2f3a4b5c6d7e8f9a0b1c2d3e"  # a static pod's config hash
REF = ContainerRef(UID, CID)

#: Container cgroups as kubelet and the runtimes lay them out, relative to the hierarchy.
LAYOUTS = {
    "systemd-guaranteed-containerd": f"kubepods.slice/kubepods-pod{U_}.slice/"
    f"cri-containerd-{CID}.scope",
    "systemd-burstable-crio": f"kubepods.slice/kubepods-burstable.slice/"
    f"kubepods-burstable-pod{U_}.slice/crio-{CID}.scope",
    "systemd-besteffort-docker": f"kubepods.slice/kubepods-besteffort.slice/"
    f"kubepods-besteffort-pod{U_}.slice/docker-{CID}.scope",
    "cgroupfs-guaranteed-containerd": f"kubepods/pod{UID}/{CID}",
    "cgroupfs-burstable-crio": f"kubepods/burstable/pod{UID}/crio-{CID}",
    "cgroupfs-besteffort-docker": f"kubepods/besteffort/pod{UID}/{CID}",
    "kind-systemd-burstable": f"kubelet.slice/kubelet-kubepods.slice/"
    f"kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{U_}.slice/"
    f"cri-containerd-{CID}.scope",
    "cgroupfs-under-cgroup-root": f"kubelet/kubepods/burstable/pod{UID}/{CID}",
}


def v1_text(path: str) -> str:
    """/proc/<pid>/cgroup of a process in `path` on a cgroup v1 (hybrid) node."""
    return (
        f"12:blkio:/{path}\n11:cpuset:/{path}\n10:hugetlb:/{path}\n9:memory:/{path}\n"
        f"8:pids:/{path}\n7:devices:/{path}\n6:cpu,cpuacct:/{path}\n5:net_cls,net_prio:/{path}\n"
        f"4:perf_event:/{path}\n3:freezer:/{path}\n2:rdma:/\n1:name=systemd:/{path}\n0::/\n"
    )


# --- container_of: parsing /proc/<pid>/cgroup -------------------------------------------


@pytest.mark.parametrize("path", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_v2_line_of_every_layout(path: str) -> None:
    assert container_of(f"0::/{path}\n") == REF


@pytest.mark.parametrize("path", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_v1_lines_of_every_layout(path: str) -> None:
    assert container_of(v1_text(path)) == REF


@pytest.mark.parametrize(
    "text",
    [
        # a cgroup namespace shows paths relative to its own root
        f"0::/../../kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/"
        f"cri-containerd-{CID}.scope\n",
        # a process in a cgroup the container made below its own
        f"0::/kubepods.slice/kubepods-pod{U_}.slice/crio-{CID}.scope/container\n",
        # only the memory line names the pod (cpuset left at the root)
        f"4:cpuset:/\n3:memory:/kubepods/pod{UID}/{CID}\n0::/\n",
        # only name=systemd names it
        f"4:cpuset:/\n3:memory:/\n1:name=systemd:/kubepods/pod{UID}/{CID}\n",
        # no trailing newline
        f"0::/kubepods/pod{UID}/{CID}",
    ],
    ids=["cgroupns", "nested", "memory-only", "systemd-only", "no-newline"],
)
def test_pod_and_container_are_found_wherever_they_sit(text: str) -> None:
    assert container_of(text) == REF


def test_the_cpuset_line_wins_over_the_memory_line() -> None:
    text = f"9:memory:/kubepods/pod{OTHER_UID}/{SANDBOX}\n11:cpuset:/kubepods/pod{UID}/{CID}\n"
    assert container_of(text) == REF


def test_a_static_pod_uid_is_its_32_hex_hash() -> None:
    text = f"0::/kubepods/burstable/pod{STATIC_UID}/{CID}\n"
    assert container_of(text) == ContainerRef(STATIC_UID, CID)


def test_the_pause_container_is_a_container_of_its_own() -> None:
    text = f"0::/kubepods.slice/kubepods-pod{U_}.slice/cri-containerd-{SANDBOX}.scope\n"
    assert container_of(text) == ContainerRef(UID, SANDBOX)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "0::/\n",
        "0::/init.scope\n",
        "0::/system.slice/containerd.service\n",
        "0::/user.slice/user-1000.slice/session-3.scope\n",
        "11:cpuset:/\n9:memory:/system.slice/kubelet.service\n1:name=systemd:/system.slice/"
        "kubelet.service\n0::/\n",
        f"0::/kubepods.slice/kubepods-pod{U_}.slice\n",  # in the pod, no container
        f"0::/kubepods/burstable/pod{UID}\n",
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/"
        f"crio-conmon-{CID}.scope\n",  # CRI-O's monitor, beside the container
        f"0::/kubepods/burstable/pod{UID}/crio-conmon-{CID}\n",
        f"0::/machine/pod{UID}/{CID}\n",  # pod<uid> outside kubepods
        f"0::/kubepods/pod{UID}/{CID[:12]}\n",  # not a full ID
        f"0::/kubepods.slice/kubepods-pod{UID}.slice/cri-containerd-{CID}.scope\n",  # dashes
        "garbage without colons\n",
    ],
)
def test_processes_outside_pod_containers(text: str) -> None:
    assert container_of(text) is None


# --- container IDs and refs -------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["containerd://", "cri-o://", "docker://", ""])
def test_container_id_of_strips_the_runtime(scheme: str) -> None:
    assert container_id_of(f"{scheme}{CID}") == CID


@pytest.mark.parametrize("status_id", ["", "containerd://"])
def test_container_id_of_a_container_not_created_yet(status_id: str) -> None:
    with pytest.raises(ValueError, match="not created yet"):
        container_id_of(status_id)


@pytest.mark.parametrize(
    ("uid", "cid", "message"),
    [
        (U_, CID, "pod UID"),
        (UID.upper(), CID, "pod UID"),
        (UID, "../../etc", "container ID"),
        (UID, CID.upper(), "container ID"),
        (UID, CID[:-1], "container ID"),
    ],
)
def test_a_ref_must_be_a_uid_and_a_full_id(uid: str, cid: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ContainerRef(uid, cid)


# --- ProcessTable: /proc/<pid>/cgroup ---------------------------------------------------


@pytest.fixture
def proc(tmp_path: Path) -> Path:
    root = tmp_path / "proc"
    for pid, text in {
        1: "0::/init.scope\n",
        4242: f"0::/{LAYOUTS['systemd-burstable-crio']}\n",
        4243: v1_text(LAYOUTS["cgroupfs-besteffort-docker"]),
    }.items():
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "cgroup").write_text(text)
    (root / "4244").mkdir()  # exited between listing /proc and reading its cgroup file
    return root


def test_process_table_maps_pids(proc: Path) -> None:
    table = ProcessTable(proc)
    assert table.container_of(4242) == REF
    assert table.container_of(4243) == REF
    assert table.container_of(1) is None


def test_process_table_tolerates_vanished_processes(proc: Path) -> None:
    table = ProcessTable(proc)
    assert table.container_of(4244) is None
    assert table.container_of(99999) is None


def test_process_table_tolerates_a_process_exiting_mid_read(
    proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def esrch(self: Path) -> bytes:
        raise ProcessLookupError(3, "No such process")

    monkeypatch.setattr(Path, "read_bytes", esrch)
    assert ProcessTable(proc).container_of(4242) is None


def test_process_table_reports_other_read_errors(
    proc: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eacces(self: Path) -> bytes:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", eacces)
    with pytest.raises(
        CgroupError, match=rf"^{re.escape(str(proc))}/4242/cgroup: Permission denied$"
    ):
        ProcessTable(proc).container_of(4242)


# --- finding a container's cgroup -------------------------------------------------------


def v2_root(tmp_path: Path) -> Path:
    """A unified hierarchy with the directories every node has."""
    root = tmp_path / "sys/fs/cgroup"
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    for d in ("init.scope", "system.slice/containerd.service", "user.slice"):
        (root / d).mkdir(parents=True)
    return root


def v1_root(tmp_path: Path) -> Path:
    """A v1 (hybrid) tmpfs: one directory per controller, no cgroup.controllers on top."""
    root = tmp_path / "sys/fs/cgroup"
    for controller in ("cpuset", "memory", "cpu,cpuacct", "systemd", "unified"):
        (root / controller / "system.slice").mkdir(parents=True)
    (root / "unified" / "cgroup.controllers").write_text("")
    return root


def add_cgroup(base: Path, path: str) -> Path:
    (base / path).mkdir(parents=True)
    (base / path / "cgroup.procs").write_text("")
    return base / path


@pytest.mark.parametrize("path", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_finds_every_layout_on_v2(tmp_path: Path, path: str) -> None:
    root = v2_root(tmp_path)
    add_cgroup(root, path)
    assert find_container_cgroup(root, REF) == CgroupDir(root / path, 2)


@pytest.mark.parametrize("path", LAYOUTS.values(), ids=LAYOUTS.keys())
def test_finds_the_cpuset_directory_of_every_layout_on_v1(tmp_path: Path, path: str) -> None:
    root = v1_root(tmp_path)
    for controller in ("memory", "systemd", "cpuset"):
        add_cgroup(root / controller, path)
    assert find_container_cgroup(root, REF) == CgroupDir(root / "cpuset" / path, 1)


def test_finds_the_container_among_its_pods_other_containers(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    pod = f"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice"
    add_cgroup(root, f"{pod}/cri-containerd-{SANDBOX}.scope")
    add_cgroup(root, f"{pod}/crio-conmon-{CID}.scope")
    add_cgroup(root, f"{pod}/crio-{CID}.scope")
    add_cgroup(root, f"kubepods.slice/kubepods-pod{OTHER_UID.replace('-', '_')}.slice")
    got = find_container_cgroup(root, REF)
    assert got == CgroupDir(root / pod / f"crio-{CID}.scope", 2)


def test_missing_pod_lists_where_it_looked(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    add_cgroup(root, "kubepods.slice/kubepods-burstable.slice")
    add_cgroup(root, "kubepods.slice/kubepods-besteffort.slice")
    with pytest.raises(CgroupError) as err:
        find_container_cgroup(root, REF)
    kp = root / "kubepods.slice"
    assert str(err.value) == (
        f"no cgroup for pod {UID} (v2): looked in {kp}/kubepods-pod{U_}.slice, "
        f"{kp}/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice, "
        f"{kp}/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice"
    )


def test_missing_container_names_its_pods_directory(tmp_path: Path) -> None:
    root = v1_root(tmp_path)
    pod = add_cgroup(root / "cpuset", f"kubepods/burstable/pod{UID}")
    add_cgroup(pod, SANDBOX)
    with pytest.raises(CgroupError) as err:
        find_container_cgroup(root, REF)
    assert str(err.value) == (
        f"{pod}: pod {UID} has no cgroup for container {CID} (looked for {CID}, "
        f"cri-containerd-{CID}, crio-{CID}, docker-{CID}); has the container exited?"
    )


def test_no_kubepods_at_all(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    with pytest.raises(
        CgroupError, match=rf"^no kubepods cgroup in {re.escape(str(root))} or one level below"
    ):
        find_container_cgroup(root, REF)


def test_not_a_cgroup_mount(tmp_path: Path) -> None:
    with pytest.raises(CgroupError, match=r"neither cgroup\.controllers .* nor a cpuset directory"):
        find_container_cgroup(tmp_path, REF)


def test_kubepods_deeper_than_one_level_is_not_searched(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    add_cgroup(root, f"a/b/{LAYOUTS['cgroupfs-guaranteed-containerd']}")
    with pytest.raises(CgroupError, match="no kubepods cgroup"):
        find_container_cgroup(root, REF)


def test_cgroup_version(tmp_path: Path) -> None:
    assert cgroup_version(v2_root(tmp_path / "a")) == 2
    assert cgroup_version(v1_root(tmp_path / "b")) == 1


# --- ProcessTable: a process's own pid (/proc/<pid>/status) -----------------------------


def test_namespace_pid_is_the_innermost_nspid(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, status in {
        4242: "Name:\tpython3\nTgid:\t4242\nNSpid:\t4242\t17\nPPid:\t4200\n",
        4243: "Name:\tsh\nNSpid:\t4243\n",  # in the host's namespace
        4244: "Name:\told-kernel\nPid:\t4244\n",  # no NSpid line before Linux 4.1
        4245: "NSpid:\t4245\tx\n",
    }.items():
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "status").write_text(status)
    table = ProcessTable(proc)
    assert table.namespace_pid(4242) == 17
    assert table.namespace_pid(4243) == 4243
    assert table.namespace_pid(4244) is None
    assert table.namespace_pid(4245) is None
    assert table.namespace_pid(4246) is None  # exited
