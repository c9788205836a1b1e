"""NUMA pinning (`gpulet.io/numa-pin: "true"`): a container's cpuset set to its GPUs' NUMA
nodes, clear of the CPUs kubelet's static CPU manager gave other containers exclusively.

See docs/pinning.md for what wins when, and what the errors mean.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.cgroups import CgroupDir, CgroupError, ContainerRef, find_container_cgroup
from gpulet.topology.cpulist import format_cpulist, parse_cpulist

#: Where kubelet keeps its CPU manager checkpoint (under its `--root-dir`), for callers.
CPU_MANAGER_STATE = Path("/var/lib/kubelet/cpu_manager_state")


class PinningError(RuntimeError):
    """The container is not pinned; the one-line message says which file or set is at fault."""


@dataclass(frozen=True)
class CpuManagerState:
    """Kubelet's CPU manager checkpoint: its policy, shared pool and exclusive assignments.

    `entries` maps pod UID -> container name -> the CPUs that container holds exclusively.
    """

    policy_name: str
    default_cpu_set: frozenset[int]
    entries: Mapping[str, Mapping[str, frozenset[int]]]

    def exclusive_cpus(self, pod_uid: str, container: str) -> frozenset[int] | None:
        """The CPUs kubelet gave this container exclusively, if any."""
        return self.entries.get(pod_uid, {}).get(container)


#: What kubelet without a checkpoint does: the `none` policy, nothing exclusive.
NO_CPU_MANAGER = CpuManagerState("none", frozenset(), {})


@dataclass(frozen=True)
class Pinned:
    """What `pin_container` wrote, for the log. `kubelet_cpus`: the CPUs are kubelet's own
    exclusive set for the container, kept as they were (only the memory nodes are ours)."""

    path: Path
    cpus: frozenset[int]
    mems: frozenset[int]
    kubelet_cpus: bool


def parse_cpu_manager_state(text: str, source: str) -> CpuManagerState:
    """Parse the checkpoint's JSON; `source` (the file) heads every error message.

    The checksum is not verified: kubelet's is a hash of its Go structure, not of the text.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise PinningError(
            f"{source}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
        ) from None
    if not isinstance(doc, dict):
        raise PinningError(f"{source}: not a JSON object")
    policy = doc.get("policyName")
    if not isinstance(policy, str) or not policy:
        raise PinningError(f"{source}: no policyName")
    default = _cpuset(doc.get("defaultCpuSet", ""), source, "defaultCpuSet")
    raw_entries = doc.get("entries")
    if raw_entries is None:  # kubelet leaves it out when nothing is exclusive
        raw_entries = {}
    if not isinstance(raw_entries, dict):
        raise PinningError(f"{source}: entries is not an object")
    entries: dict[str, dict[str, frozenset[int]]] = {}
    for uid, containers in raw_entries.items():
        if not isinstance(containers, dict):
            raise PinningError(
                f"{source}: entries[{uid!r}] is not an object of container names "
                "(a checkpoint from before kubelet 1.18?)"
            )
        entries[uid] = {
            name: _cpuset(cpus, source, f"entries[{uid!r}][{name!r}]")
            for name, cpus in containers.items()
        }
    return CpuManagerState(policy, default, entries)


def _cpuset(value: Any, source: str, field: str) -> frozenset[int]:
    if not isinstance(value, str):
        raise PinningError(f"{source}: {field} is not a cpulist string")
    try:
        return frozenset(parse_cpulist(value))
    except ValueError as err:
        raise PinningError(f"{source}: {field}: {err}") from None


def read_cpu_manager_state(path: Path) -> CpuManagerState:
    """Kubelet's checkpoint at `path`; no file means the `none` policy (NO_CPU_MANAGER)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return NO_CPU_MANAGER
    except (OSError, UnicodeDecodeError) as err:
        raise PinningError(f"{path}: cannot read kubelet's CPU manager state: {err}") from None
    return parse_cpu_manager_state(text, str(path))


def cpus_for(
    numa_cpus: frozenset[int], state: CpuManagerState, pod_uid: str, container: str
) -> frozenset[int]:
    """The CPUs to pin a container to: its GPUs' NUMA CPUs less every other container's
    exclusive CPUs (other pods', and the same pod's other containers').

    A container that holds an exclusive set itself (a Guaranteed pod with whole CPUs under
    the static policy) keeps it unchanged, on whatever NUMA node it is: kubelet's set wins.
    """
    own = state.exclusive_cpus(pod_uid, container)
    if own is not None:
        return own
    if not numa_cpus:
        raise PinningError(
            f"container {container!r} of pod {pod_uid}: its GPUs' NUMA node(s) have no CPUs"
        )
    taken = {
        cpu
        for uid, containers in state.entries.items()
        for name, cpus in containers.items()
        if (uid, name) != (pod_uid, container)
        for cpu in cpus
    }
    left = numa_cpus - taken
    if not left:
        raise PinningError(
            f"container {container!r} of pod {pod_uid}: every CPU of its GPUs' NUMA node(s) "
            f"({_fmt(numa_cpus)}) is held exclusively by other containers (kubelet's static "
            "CPU manager)"
        )
    return left


def pin(cgroup: CgroupDir, cpus: frozenset[int], mems: frozenset[int]) -> None:
    """Write `cpuset.cpus`, then `cpuset.mems`, in the container's cgroup directory.

    Both sets are first checked against the parent's (v2: `cpuset.*.effective`, where
    present; v1: `cpuset.cpus`, `cpuset.mems`): v1 would refuse the write (EACCES), v2 would
    take it and silently narrow the container to what the parent allows.
    """
    if not cpus or not mems:
        raise PinningError(
            f"{cgroup.path}: refusing to write an empty cpuset (cpus {_fmt(cpus) or 'none'}, "
            f"mems {_fmt(mems) or 'none'})"
        )
    _check_parent(cgroup, "cpus", cpus)
    _check_parent(cgroup, "mems", mems)
    _write(cgroup.path / "cpuset.cpus", cpus, "")
    _write(cgroup.path / "cpuset.mems", mems, " (cpuset.cpus was written)")


def _check_parent(cgroup: CgroupDir, kind: str, wanted: frozenset[int]) -> None:
    name = f"cpuset.{kind}.effective" if cgroup.version == 2 else f"cpuset.{kind}"
    path = cgroup.path.parent / name
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError) as err:
        raise PinningError(f"{path}: cannot read: {err}") from None
    try:
        allowed = frozenset(parse_cpulist(text))
    except ValueError as err:
        raise PinningError(f"{path}: {err}") from None
    missing = wanted - allowed
    if missing:
        what = "CPUs" if kind == "cpus" else "memory nodes"
        raise PinningError(
            f"{path} is {_fmt(allowed) or 'empty'}: it lacks {what} {_fmt(missing)}, so "
            f"{cgroup.path} cannot be pinned to {_fmt(wanted)}"
        )


def _write(path: Path, values: frozenset[int], note: str) -> None:
    """One write(2) of the whole list, no O_CREAT (a missing cgroup file is an error), as runc."""
    text = _fmt(values)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            written = os.write(fd, text.encode())
        finally:
            os.close(fd)
    except OSError as err:
        code = errno.errorcode.get(err.errno or 0, "?")
        hint = ""
        if isinstance(err, FileNotFoundError):
            hint = "; the container has exited, or cpuset is not enabled on its cgroup"
        raise PinningError(
            f"{path}: writing {text!r} failed: {err.strerror} ({code}){hint}{note}"
        ) from err
    if written != len(text):
        raise PinningError(f"{path}: short write of {text!r} ({written} bytes){note}")


def _fmt(values: Iterable[int]) -> str:
    return format_cpulist(sorted(values))


def pin_container(
    cgroup_root: Path,
    ref: ContainerRef,
    container: str,
    *,
    numa_nodes: Collection[int],
    numa_cpus: Mapping[int, Iterable[int]],
    cpu_manager_state: Path,
) -> Pinned:
    """Pin a container to its GPUs' NUMA nodes (`numa_nodes`, CPUs from `numa_cpus`).

    Every reason not to pin, a missing cgroup included, is raised as PinningError.
    """
    if not numa_nodes:
        raise PinningError(f"container {container!r} of pod {ref.pod_uid}: no NUMA node given")
    unknown = sorted(set(numa_nodes) - set(numa_cpus))
    if unknown:
        raise PinningError(
            f"container {container!r} of pod {ref.pod_uid}: NUMA node(s) {unknown} are not "
            f"among the node's ({sorted(numa_cpus)})"
        )
    state = read_cpu_manager_state(cpu_manager_state)
    node_cpus = frozenset(cpu for node in numa_nodes for cpu in numa_cpus[node])
    cpus = cpus_for(node_cpus, state, ref.pod_uid, container)
    try:
        cgroup = find_container_cgroup(cgroup_root, ref)
    except CgroupError as err:
        raise PinningError(str(err)) from err
    mems = frozenset(numa_nodes)
    pin(cgroup, cpus, mems)
    return Pinned(cgroup.path, cpus, mems, state.exclusive_cpus(ref.pod_uid, container) is not None)
