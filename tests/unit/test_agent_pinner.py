"""NUMA pinning as the agent does it: a pod that asks for it gets its running containers'
cpusets written under the cgroup root (a temp dir laid out as a cgroup v2 host with the
systemd driver), clear of CPUs kubelet gave others; again when kubelet's choice changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.pinner import Pinner
from gpulet.api.assignment import Assignment, ContainerAssignment, dump_assignment
from gpulet.api.share import GpuShare
from gpulet.topology.cpulist import format_cpulist
from tests.nodes import shipped

H100 = shipped("dgx-h100")  # NUMA 0: CPUs 0-55,112-167; NUMA 1: 56-111,168-223
POD = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b"
CID = "ab" * 32


def cgroup_tree(root: Path) -> Path:
    """A v2 host with the systemd driver and one burstable pod's container."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    pod = (
        root
        / "kubepods.slice/kubepods-burstable.slice"
        / (f"kubepods-burstable-pod{POD.replace('-', '_')}.slice")
    )
    box = pod / f"cri-containerd-{CID}.scope"
    box.mkdir(parents=True)
    (pod / "cpuset.cpus.effective").write_text("0-223\n")
    (pod / "cpuset.mems.effective").write_text("0-1\n")
    for name in ("cpuset.cpus", "cpuset.mems"):
        (box / name).write_text("")
    return box


def pod(
    numa_pin: str, gpu: int, container_id: str | None = f"containerd://{CID}"
) -> dict[str, Any]:
    g = H100.gpus[gpu]
    assignment = Assignment(
        H100.node,
        (
            ContainerAssignment(
                "loader", (GpuShare(g.uuid, 100, g.memory_mib, True),), (), (g.numa,)
            ),
        ),
    )
    statuses = [{"name": "loader", "containerID": container_id}] if container_id else []
    return {
        "metadata": {
            "uid": POD,
            "name": "p",
            "namespace": "default",
            "annotations": {
                "gpulet.io/numa-pin": numa_pin,
                "gpulet.io/assignment": dump_assignment(assignment),
            },
        },
        "status": {"phase": "Running", "containerStatuses": statuses},
    }


def test_a_running_container_is_pinned_to_its_gpus_numa_node(tmp_path: Path) -> None:
    box = cgroup_tree(tmp_path / "cgroup")
    state = tmp_path / "cpu_manager_state"
    pods = [pod("true", gpu=5)]  # GPU5 is on NUMA 1
    pinner = Pinner(H100, lambda: pods, tmp_path / "cgroup", state)
    assert pinner.reconcile() == 1
    numa1 = next(n for n in H100.numa_nodes if n.id == 1)
    assert (box / "cpuset.cpus").read_text() == format_cpulist(numa1.cpus)
    assert (box / "cpuset.mems").read_text() == "1"
    assert pinner.reconcile() == 0  # nothing changed: nothing written
    # kubelet's static CPU manager gives CPUs 56-59 of NUMA 1 to another container.
    state.write_text(
        json.dumps(
            {
                "policyName": "static",
                "defaultCpuSet": "0-55,60-223",
                "entries": {"other-pod": {"main": "56-59"}},
                "checksum": 1,
            }
        )
    )
    assert pinner.reconcile() == 1
    left = sorted(set(numa1.cpus) - {56, 57, 58, 59})
    assert (box / "cpuset.cpus").read_text() == format_cpulist(left)


def test_only_pods_that_ask_and_containers_that_run(tmp_path: Path) -> None:
    box = cgroup_tree(tmp_path / "cgroup")
    cases: list[list[dict[str, Any]]] = [
        [pod("false", gpu=0)],
        [pod("true", gpu=0, container_id=None)],
        [],
    ]
    for pods in cases:

        def listed(p: list[dict[str, Any]] = pods) -> list[dict[str, Any]]:
            return p

        assert Pinner(H100, listed, tmp_path / "cgroup", tmp_path / "none").reconcile() == 0
    assert (box / "cpuset.cpus").read_text() == ""


def test_a_container_whose_cgroup_is_missing_is_reported_once(tmp_path: Path, caplog: Any) -> None:
    (tmp_path / "cgroup").mkdir()
    (tmp_path / "cgroup" / "cgroup.controllers").write_text("cpuset\n")
    pods = [pod("true", gpu=0)]
    pinner = Pinner(H100, lambda: pods, tmp_path / "cgroup", tmp_path / "none")
    with caplog.at_level("WARNING", logger="gpulet.agent"):
        assert pinner.reconcile() == 0
        assert pinner.reconcile() == 0
    failures = [r for r in caplog.records if "event=pin-failed" in r.getMessage()]
    assert len(failures) == 1 and "kubepods" in failures[0].getMessage()
