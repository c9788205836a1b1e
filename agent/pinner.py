"""NUMA pinning of running containers (`gpulet.io/numa-pin: "true"`, docs/pinning.md).

A container can be pinned only once it runs: its cgroup is named by its container ID, which
the pod's status carries from then on. So the agent goes over the pods bound to its node
every few seconds and pins each container of a pod that asks for it, to the NUMA node(s) of
its GPUs, and again whenever what it would write changes (kubelet's CPU manager handed out
CPUs, or the container was restarted under a new ID).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.cgroups import ContainerRef, running_containers
from agent.pinning import PinningError, pin_container
from gpulet.api.assignment import AssignmentError, parse_assignment
from gpulet.api.resources import ASSIGNMENT_ANNOTATION, NUMA_PIN_ANNOTATION
from gpulet.topology import Topology

log = logging.getLogger("gpulet.agent")


class Pinner:
    """`pods()` gives the pods bound to this node (raw JSON); `reconcile`, called every few
    seconds by the agent, pins what needs it."""

    def __init__(
        self,
        topo: Topology,
        pods: Callable[[], Iterable[Mapping[str, Any]]],
        cgroup_root: Path,
        cpu_manager_state: Path,
    ) -> None:
        self._node = topo.node
        self._numa_cpus = {n.id: n.cpus for n in topo.numa_nodes}
        self._pods = pods
        self._cgroup_root = cgroup_root
        self._state_file = cpu_manager_state
        #: (pod uid, container id) -> what was written there (cpus, mems), or the last error.
        self._done: dict[tuple[str, str], object] = {}

    def reconcile(self) -> int:
        """Pin every running container that asks for it and is not pinned as it should be;
        how many were written."""
        written = 0
        live: set[tuple[str, str]] = set()
        for pod, name, container_id, numa in self._wanted():
            key = (pod, container_id)
            live.add(key)
            try:
                pinned = pin_container(
                    self._cgroup_root,
                    ContainerRef(pod, container_id),
                    name,
                    numa_nodes=numa,
                    numa_cpus=self._numa_cpus,
                    cpu_manager_state=self._state_file,
                )
            except (PinningError, ValueError) as e:
                if self._done.get(key) != str(e):  # say it once per problem, not every pass
                    log.warning(
                        "event=pin-failed pod_uid=%s container=%s reason=%r", pod, name, str(e)
                    )
                    self._done[key] = str(e)
                continue
            outcome = (pinned.cpus, pinned.mems)
            if self._done.get(key) != outcome:
                log.info(
                    "event=pinned pod_uid=%s container=%s numa=%s cpus=%d path=%s",
                    pod,
                    name,
                    ",".join(map(str, sorted(pinned.mems))),
                    len(pinned.cpus),
                    pinned.path,
                )
                self._done[key] = outcome
                written += 1
        for gone in set(self._done) - live:
            del self._done[gone]
        return written

    def _wanted(self) -> Iterable[tuple[str, str, str, tuple[int, ...]]]:
        """(pod uid, container name, container id, NUMA nodes) of each running container
        whose pod asks for pinning and whose assignment names NUMA nodes."""
        for pod in self._pods():
            meta = pod.get("metadata") or {}
            annotations = meta.get("annotations") or {}
            if annotations.get(NUMA_PIN_ANNOTATION) != "true":
                continue
            text = annotations.get(ASSIGNMENT_ANNOTATION)
            if not isinstance(text, str):
                continue
            try:
                assignment = parse_assignment(text)
            except AssignmentError:
                continue  # Allocate refused it already, with the reason
            if assignment.node != self._node:
                continue
            running = running_containers(pod)
            for entry in assignment.containers:
                container_id = running.get(entry.name)
                if entry.numa and container_id is not None:
                    yield str(meta.get("uid")), entry.name, container_id, entry.numa
