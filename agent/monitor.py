"""Every second: what NVML says each GPU process uses, per container.

Each process is mapped to its container through `/proc/<pid>/cgroup` (agent.cgroups) and the
pod's status (container ID -> name), then to the grant of that container (pod UID and name).
Per container and GPU this gives the memory used and the utilisation measured, which

- goes into the container's region as the limiter's feedback (`Region.set_feedback`);
- is checked against the cap: a container whose processes hold more GPU memory than its cap
  by NVML's count got around the limiter (a static binary, a cleared preload, direct ioctls).
  That is reported (a log event, a metric, and a Kubernetes Event through `report`), and with
  `enforce="kill"` the offending processes are killed. The limiter is the fence; this is the
  alarm.
- is checked against the container's region: a process on a slice that has not attached to
  the region for `UNLIMITED_AFTER_S` runs without the limiter (a static binary, a cleared
  preload, a library the loader could not open), whatever memory it holds. That is reported
  (a log event once per process, and a metric); compute is not capped for it.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.cgroups import ContainerRef, ProcessTable, running_containers
from agent.usage import ProcessUsage, UsageError, UsageSource
from deviceplugin.grants import Grant
from gpulet.api.resources import GPU_RESOURCE
from native.region import Region, RegionError

log = logging.getLogger("gpulet.agent")

ENFORCE = ("report", "kill")
#: How long a process on a slice may use its GPU without having attached to the region: the
#: limiter attaches at the first allocation or launch, after the context is made.
UNLIMITED_AFTER_S = 10.0


@dataclass(frozen=True)
class ContainerGpu:
    """One container's use of one GPU in one sample."""

    pod_uid: str
    container: str
    gpu_uuid: str
    used_mib: int
    cap_mib: int
    core_percent: int
    util_percent: float | None
    pids: tuple[int, ...]
    #: Those of `pids` that run without the limiter (see the module's note).
    unlimited: tuple[int, ...] = ()


@dataclass(frozen=True)
class Violation:
    pod_uid: str
    container: str
    gpu_uuid: str
    used_mib: int
    cap_mib: int
    pids: tuple[int, ...]
    killed: bool


@dataclass
class Sample:
    """The latest reading, for metrics and `gpulet node allocations`."""

    containers: list[ContainerGpu] = field(default_factory=list)
    #: Per GPU UUID: memory held by every process NVML lists (MiB), and utilisation (%).
    gpu_used_mib: dict[str, int] = field(default_factory=dict)
    gpu_util: dict[str, int] = field(default_factory=dict)


class Monitor:
    def __init__(
        self,
        usage: UsageSource,
        processes: ProcessTable,
        grants: Callable[[], Iterable[Grant]],
        pods: Callable[[], Iterable[Mapping[str, Any]]],
        *,
        enforce: str = "report",
        report: Callable[[Violation], None] = lambda v: None,
        kill: Callable[[int, int], None] = os.kill,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if enforce not in ENFORCE:
            raise ValueError(f"enforce must be one of {', '.join(ENFORCE)}, got {enforce!r}")
        self._usage = usage
        self._processes = processes
        self._grants = grants
        self._pods = pods
        self._enforce = enforce
        self._report = report
        self._kill = kill
        self._clock = clock
        self.latest = Sample()
        #: Backstop violations so far, per (pod uid, container); forgotten with the pod.
        self.violations: dict[tuple[str, str], int] = {}
        self._usage_failed: str | None = None
        #: Per pid NVML listed last time, its container: a process does not change
        #: container, so /proc is read once per process, not once per second.
        self._known: dict[int, ContainerRef | None] = {}
        #: Open regions, per directory, while their grant lasts.
        self._regions: dict[str, Region] = {}
        #: Per pid on a slice and not attached to its region: since when (monotonic), and
        #: whether it has been reported. Pids seen attached; each pid's pid in its container.
        self._unattached: dict[int, tuple[float, bool]] = {}
        self._attached: set[int] = set()
        self._inner: dict[int, int | None] = {}

    def tick(self) -> list[Violation]:
        """One pass: read usage, attribute it, feed it back, enforce caps."""
        try:
            processes = self._usage.sample()
        except UsageError as e:
            if str(e) != self._usage_failed:
                log.warning("event=usage-unreadable reason=%r", str(e))
                self._usage_failed = str(e)
            return []
        self._usage_failed = None
        names = _container_names(self._pods())
        grants = {
            (g.pod_uid, g.container): g
            for g in self._grants()
            if g.resource == GPU_RESOURCE and g.gpus and g.pod_uid and g.container
        }
        per: dict[tuple[str, str, str], list[ProcessUsage]] = {}
        seen: dict[int, ContainerRef | None] = {}
        now = self._clock()
        sample = Sample()
        for p in processes:
            sample.gpu_used_mib[p.gpu_uuid] = sample.gpu_used_mib.get(p.gpu_uuid, 0) + (
                p.used_mib or 0
            )
            sample.gpu_util[p.gpu_uuid] = min(
                100, sample.gpu_util.get(p.gpu_uuid, 0) + (p.sm_percent or 0)
            )
            if p.pid in self._known:
                ref = self._known[p.pid]
            else:
                ref = self._processes.container_of(p.pid)
            seen[p.pid] = ref
            name = names.get(ref) if ref is not None else None
            if ref is None or name is None:
                continue
            per.setdefault((ref.pod_uid, name, p.gpu_uuid), []).append(p)
        violations: list[Violation] = []
        for (pod_uid, name, uuid), procs in per.items():
            grant = grants.get((pod_uid, name))
            share = next((s for s in grant.gpus if s.uuid == uuid), None) if grant else None
            if grant is None or share is None:
                continue  # a process on a GPU its container was not given: not ours to cap
            used = sum(p.used_mib or 0 for p in procs)
            utils = [p.sm_percent for p in procs if p.sm_percent is not None]
            util = float(min(100, sum(utils))) if utils else None
            pids = tuple(sorted(p.pid for p in procs))
            unlimited: tuple[int, ...] = ()
            if not share.exclusive and grant.region_dir:
                unlimited = self._without_limiter(grant.region_dir, pod_uid, name, pids, now)
            use = ContainerGpu(
                pod_uid, name, uuid, used, share.memory_mib, share.core, util, pids, unlimited
            )
            sample.containers.append(use)
            if util is not None and grant.region_dir:
                self._feedback(grant.region_dir, grant, uuid, util)
            if used > share.memory_mib:
                violations.append(self._enforce_cap(use))
        self._known = seen
        for gone in set(self._unattached) - set(seen):
            del self._unattached[gone]
        self._attached &= set(seen)
        self._inner = {pid: inner for pid, inner in self._inner.items() if pid in seen}
        live = {(g.pod_uid, g.container) for g in grants.values()}
        for ended in set(self.violations) - live:
            del self.violations[ended]
        dirs = {g.region_dir for g in grants.values()}
        for closed in set(self._regions) - dirs:
            self._regions.pop(closed).close()
        self.latest = sample
        return violations

    def _feedback(self, region_dir: str, grant: Grant, uuid: str, util: float) -> None:
        dev = next(i for i, s in enumerate(grant.gpus) if s.uuid == uuid)
        try:
            self._region(region_dir).set_feedback(dev, util)
        except RegionError as e:
            log.debug("event=feedback-skipped region=%s reason=%r", region_dir, str(e))

    def _region(self, region_dir: str) -> Region:
        """The container's region, opened once and kept open while its grant lasts."""
        region = self._regions.get(region_dir)
        if region is None:
            region = self._regions[region_dir] = Region.open(region_dir)
        return region

    def _without_limiter(
        self, region_dir: str, pod_uid: str, name: str, pids: tuple[int, ...], now: float
    ) -> tuple[int, ...]:
        """Those of `pids` not attached to the region for UNLIMITED_AFTER_S, each logged once.
        A process whose own pid cannot be read is not judged. A process seen attached stays
        so until it exits, and its pid in the container does not change: both are read once,
        so a container whose processes all have the limiter costs nothing per tick."""
        doubtful: dict[int, int] = {}
        for pid in pids:
            if pid in self._attached:
                continue
            if pid not in self._inner:
                self._inner[pid] = self._processes.namespace_pid(pid)
            inner = self._inner[pid]
            if inner is not None:
                doubtful[pid] = inner
        if not doubtful:
            return ()
        try:
            attached = {p.pid for p in self._region(region_dir).snapshot().processes}
        except RegionError as e:
            log.debug("event=region-unreadable region=%s reason=%r", region_dir, str(e))
            return ()
        out: list[int] = []
        for pid, inner in doubtful.items():
            if inner in attached:
                self._attached.add(pid)
                self._unattached.pop(pid, None)
                continue
            since, reported = self._unattached.setdefault(pid, (now, False))
            if now - since < UNLIMITED_AFTER_S:
                continue
            out.append(pid)
            if not reported:
                self._unattached[pid] = (since, True)
                log.warning(
                    "event=unlimited-process pod_uid=%s container=%s pid=%d reason=%r",
                    pod_uid,
                    name,
                    pid,
                    "uses its GPU slice but never attached to the container's region: the "
                    "limiter is not loaded in it (static binary, cleared preload, or a library "
                    "the loader could not open)",
                )
        return tuple(out)

    def _enforce_cap(self, use: ContainerGpu) -> Violation:
        pod_uid, name, uuid, pids = use.pod_uid, use.container, use.gpu_uuid, use.pids
        used, cap = use.used_mib, use.cap_mib
        killed = False
        if self._enforce == "kill":
            for pid in pids:
                try:
                    self._kill(pid, signal.SIGKILL)
                    killed = True
                except ProcessLookupError:
                    pass
        key = (pod_uid, name)
        self.violations[key] = self.violations.get(key, 0) + 1
        violation = Violation(pod_uid, name, uuid, used, cap, pids, killed)
        log.warning(
            "event=backstop-violation pod_uid=%s container=%s gpu=%s used_mib=%d cap_mib=%d "
            "pids=%s action=%s",
            pod_uid,
            name,
            uuid,
            used,
            cap,
            ",".join(map(str, pids)),
            "killed" if killed else "reported",
        )
        self._report(violation)
        return violation


def _container_names(pods: Iterable[Mapping[str, Any]]) -> dict[ContainerRef, str]:
    """Container ID -> name, from the pods' statuses (init containers included)."""
    out: dict[ContainerRef, str] = {}
    for pod in pods:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        for name, container_id in running_containers(pod).items():
            try:
                out[ContainerRef(uid, container_id)] = name
            except ValueError:
                continue  # an ID no cgroup can name (ContainerRef checks its form)
    return out
