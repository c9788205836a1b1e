"""Every second: what NVML says each GPU process uses, per container.

Each process is mapped to its container through `/proc/<pid>/cgroup` (agent.cgroups) and the
pod's status (container ID -> name), then to the grant of that container (pod UID and name).
Per container and GPU this gives the memory used and the utilisation measured, which

- goes into the container's region as the limiter's feedback (written by the same
  `native.region.inspect` call that reads the region, to a region found trusted);
- is checked against the cap: a container whose processes hold more GPU memory than its cap
  by NVML's count got around the limiter (a static binary, a cleared preload, direct ioctls).
  That is reported (a log event, a metric, and a Kubernetes Event through `report`), and with
  enforcement on (`enforce="on"`, or its old name `"kill"`) the offending processes are
  killed. The limiter is the fence; this is the alarm.
- is checked against the share (`agent.backstop`): a container that keeps a GPU busier than
  its share for a whole window got around the limiter's pacing. That is reported, and with
  enforcement on its cgroup is frozen in a duty cycle that holds it to its share.
- is checked against the container's region: a process on a slice that has not attached to
  the region for `UNLIMITED_AFTER_S` runs without the limiter (a static binary, a cleared
  preload, a library the loader could not open), whatever memory it holds. That is reported
  (a log event once per process, and a metric); compute is not capped for it.

The region is the tenant's to write (root in its container, the directory mounted
read-write), so the monitor never trusts it: each sample it is read anew with
`native.region.inspect` against the grant, and no mapping of it is kept open. A region that
is not what the grant made it (or cannot be read while its grant lasts) is reported once per
container and treated as a container over its cap: with enforcement on, its processes are
killed. Nothing a region holds, and no one container's trouble, stops the pass: each
container's handling is guarded, and an unexpected error is logged and the loop goes on.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.backstop import ComputeBackstop, ComputeSettings, Freezing, OverShare, ShareUse
from agent.cgroups import ContainerRef, ProcessTable, running_containers
from agent.usage import ProcessUsage, UsageError, UsageSource
from deviceplugin.grants import GpuShare, Grant
from deviceplugin.regions import limits_of
from gpulet.api.resources import GPU_RESOURCE
from native.region import Inspection, Limits, RegionError, inspect

log = logging.getLogger("gpulet.agent")

#: `report`: report only. `on`: also act (memory over the cap and an untrusted region: kill
#: the processes; compute over the share: the duty cycle). `kill`: the old name of `on`.
ENFORCE = ("report", "on", "kill")
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
    """A container over its cap: by NVML's count of its memory (`cause` "memory"), or with a
    region that cannot be trusted (`cause` "region", what is wrong in `problems`)."""

    pod_uid: str
    container: str
    gpu_uuid: str
    used_mib: int
    cap_mib: int
    pids: tuple[int, ...]
    killed: bool
    cause: str = "memory"
    problems: tuple[str, ...] = ()


#: What `report` is given: a violation, or a container over its compute share.
Finding = Violation | OverShare


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
        report: Callable[[Finding], None] = lambda f: None,
        kill: Callable[[int, int], None] = os.kill,
        clock: Callable[[], float] = time.monotonic,
        compute: ComputeSettings | None = None,
        freezing: Freezing | None = None,
        batch_share: Callable[[str, str, str], int | None] = lambda pod, name, uuid: None,
    ) -> None:
        """`compute`: how over-share is judged; `freezing`: how a container is held to its
        share, used only with enforcement on (without it, over-share is reported only);
        `batch_share`: the share (percent) the co-location controller last gave a batch
        container's GPU (pod uid, container, GPU UUID), which the backstop holds it to
        instead of its floor (None: none given, the floor holds)."""
        if enforce not in ENFORCE:
            raise ValueError(f"enforce must be one of {', '.join(ENFORCE)}, got {enforce!r}")
        self._usage = usage
        self._processes = processes
        self._grants = grants
        self._pods = pods
        self.enforcing = enforce != "report"
        self._report = report
        self._batch_share = batch_share
        self._kill = kill
        self._clock = clock
        self.compute = ComputeBackstop(compute, freezing if self.enforcing else None, report)
        self.latest = Sample()
        #: Backstop violations so far, per (pod uid, container); forgotten with the pod.
        self.violations: dict[tuple[str, str], int] = {}
        #: Per (pod uid, container) whose region could not be trusted in the last sample:
        #: what is wrong with it. Replaced every sample (read by the metrics thread).
        self.untrusted: Mapping[tuple[str, str], tuple[str, ...]] = {}
        self._untrusted_reported: set[tuple[str, str]] = set()
        #: Region directories found unreadable or with problems in the last sample: one
        #: more such sample makes them untrusted (not a region being removed with its pod,
        #: nor one read while an honest limiter was half-way through an update).
        self._doubted: set[str] = set()
        #: Per region directory, the limits its grant made it (built once per grant).
        self._limits: dict[str, tuple[tuple[GpuShare, ...], Limits]] = {}
        self._usage_failed: str | None = None
        #: Per pid NVML listed last time, its container: a process does not change
        #: container, so /proc is read once per process, not once per second.
        self._known: dict[int, ContainerRef | None] = {}
        #: Per pid on a slice and not attached to its region: since when (monotonic), and
        #: whether it has been reported. Pids seen attached; each pid's pid in its container.
        self._unattached: dict[int, tuple[float, bool]] = {}
        self._attached: set[int] = set()
        self._inner: dict[int, int | None] = {}

    def stop(self) -> None:
        """Thaw every container the compute backstop holds, and stop its duty cycle."""
        self.compute.stop()

    def tick(self) -> list[Violation]:
        """One pass: read usage, attribute it, feed it back, enforce caps and shares."""
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
        refs: dict[tuple[str, str], ContainerRef] = {}
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
            refs[(ref.pod_uid, name)] = ref
        violations: list[Violation] = []
        feedback: dict[tuple[str, str], dict[str, float]] = {}
        for (pod_uid, name, uuid), procs in per.items():
            util = _utilisation(procs)
            if util is not None:
                feedback.setdefault((pod_uid, name), {})[uuid] = util
        tick = _Tick(now, sample, {}, {}, set(), feedback)
        for key, procs in per.items():
            try:
                violations += self._container(key, procs, grants.get(key[:2]), tick)
            except Exception as e:  # one container's trouble is not every container's
                log.warning(
                    "event=monitor-error pod_uid=%s container=%s gpu=%s error=%r",
                    *key,
                    f"{type(e).__name__}: {e}",
                )
        self._known = seen
        for gone in set(self._unattached) - set(seen):
            del self._unattached[gone]
        self._attached &= set(seen)
        self._inner = {pid: inner for pid, inner in self._inner.items() if pid in seen}
        live = {(g.pod_uid, g.container) for g in grants.values()}
        for ended in set(self.violations) - live:
            del self.violations[ended]
        self._untrusted_reported &= live
        dirs = {g.region_dir for g in grants.values()}
        self._limits = {d: e for d, e in self._limits.items() if d in dirs}
        self._doubted = tick.doubted
        self.untrusted = tick.untrusted
        self.latest = sample
        try:
            self.compute.observe(self._share_uses(grants, sample, refs), now)
        except Exception as e:
            log.warning("event=monitor-error part=compute error=%r", f"{type(e).__name__}: {e}")
        return violations

    def _container(
        self,
        key: tuple[str, str, str],
        procs: list[ProcessUsage],
        grant: Grant | None,
        tick: _Tick,
    ) -> list[Violation]:
        """One container's use of one GPU: measured, fed back, checked."""
        pod_uid, name, uuid = key
        share = next((s for s in grant.gpus if s.uuid == uuid), None) if grant else None
        if grant is None or share is None:
            return []  # a process on a GPU its container was not given: not ours to cap
        used = sum(p.used_mib or 0 for p in procs)
        util = tick.feedback.get((pod_uid, name), {}).get(uuid)
        pids = tuple(sorted(p.pid for p in procs))
        seen = self._inspect(grant, tick) if grant.region_dir else None
        unlimited: tuple[int, ...] = ()
        if not share.exclusive and seen is not None and seen.readable:
            unlimited = self._without_limiter(seen, pod_uid, name, pids, tick.now)
        use = ContainerGpu(
            pod_uid, name, uuid, used, share.memory_mib, share.core, util, pids, unlimited
        )
        tick.sample.containers.append(use)
        out: list[Violation] = []
        if used > share.memory_mib:
            out.append(self._enforce_cap(use))
        problems = self._distrust(grant, seen, tick)
        if problems and not share.exclusive:
            tick.untrusted[(pod_uid, name)] = problems
            out.append(self._untrusted_region(use, grant, problems))
        return out

    def _inspect(self, grant: Grant, tick: _Tick) -> Inspection | None:
        """The container's region read anew, once per sample, and given the utilisation
        measured on each of its GPUs as feedback in the same pass (written only to a region
        found trusted); None when it cannot be judged (an error of the agent's, not of the
        region: logged)."""
        assert grant.region_dir is not None
        if grant.region_dir in tick.inspected:
            return tick.inspected[grant.region_dir]
        seen: Inspection | None = None
        measured = tick.feedback.get((grant.pod_uid or "", grant.container or ""), {})
        feedback = {
            dev: measured[s.uuid]
            for dev, s in enumerate(grant.gpus)
            if 0 <= measured.get(s.uuid, -1.0) <= 100
        }
        try:
            seen = inspect(grant.region_dir, self._expected(grant), feedback)
        except (RegionError, ValueError) as e:
            log.debug("event=region-not-judged region=%s reason=%r", grant.region_dir, str(e))
        if seen is not None and seen.trusted and seen.feedback_error:
            log.debug(
                "event=feedback-skipped region=%s reason=%r", grant.region_dir, seen.feedback_error
            )
        tick.inspected[grant.region_dir] = seen
        return seen

    def _distrust(self, grant: Grant, seen: Inspection | None, tick: _Tick) -> tuple[str, ...]:
        """What is wrong with the container's region (empty: nothing, or cannot judge yet).
        A region counts from its second doubtful sample in a row, so that one being removed
        with its pod, or read while an honest limiter was half-way through an update (the
        reader does not take the lock), is not mistaken for one the tenant broke."""
        if seen is None or seen.trusted or grant.region_dir is None:
            return ()
        tick.doubted.add(grant.region_dir)
        if grant.region_dir not in self._doubted:
            return ()
        return seen.problems or ("the region cannot be read",)

    def _expected(self, grant: Grant) -> Limits:
        """The limits a grant's region must hold: its GPUs, in order."""
        assert grant.region_dir is not None
        known = self._limits.get(grant.region_dir)
        if known is None or known[0] != grant.gpus:
            limits = limits_of(grant.gpus)
            known = self._limits[grant.region_dir] = (grant.gpus, limits)
        return known[1]

    def _share_uses(
        self,
        grants: Mapping[tuple[str, str], Grant],
        sample: Sample,
        refs: Mapping[tuple[str, str], ContainerRef],
    ) -> list[ShareUse]:
        """Every share the compute backstop judges (a slice below 100% of a GPU not held
        whole) with its utilisation in this sample: 0 where none of its processes ran."""
        measured = {(c.pod_uid, c.container, c.gpu_uuid): c for c in sample.containers}
        out: list[ShareUse] = []
        for grant in grants.values():
            if grant.pod_uid is None or grant.container is None:
                continue
            for s in grant.gpus:
                share = s.core
                if s.batch:  # the controller's record, never what the region says
                    given = self._batch_share(grant.pod_uid, grant.container, s.uuid)
                    share = s.core if given is None else given
                if s.exclusive or share >= 100:
                    continue
                m = measured.get((grant.pod_uid, grant.container, s.uuid))
                util = m.util_percent if m is not None and m.util_percent is not None else 0.0
                ref = refs.get((grant.pod_uid, grant.container))
                out.append(ShareUse(grant.pod_uid, grant.container, s.uuid, share, util, ref))
        return out

    def _without_limiter(
        self, seen: Inspection, pod_uid: str, name: str, pids: tuple[int, ...], now: float
    ) -> tuple[int, ...]:
        """Those of `pids` not attached to the region for UNLIMITED_AFTER_S, each logged once.
        A process whose own pid cannot be read is not judged. A process seen attached stays
        so until it exits, and its pid in the container does not change: both are read once,
        so a container whose processes all have the limiter costs nothing more per tick (its
        region's processes are not even converted: `seen.usage` is made when first read)."""
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
        usage = seen.usage
        attached = {p.pid for p in usage.processes} if usage is not None else set()
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

    def _kill_all(self, pids: tuple[int, ...]) -> bool:
        """SIGKILL each of `pids` with enforcement on; whether any was signalled."""
        killed = False
        if self.enforcing:
            for pid in pids:
                try:
                    self._kill(pid, signal.SIGKILL)
                    killed = True
                except ProcessLookupError:
                    pass
        return killed

    def _count(self, pod_uid: str, name: str) -> None:
        key = (pod_uid, name)
        self.violations[key] = self.violations.get(key, 0) + 1

    def _enforce_cap(self, use: ContainerGpu) -> Violation:
        pod_uid, name, uuid, pids = use.pod_uid, use.container, use.gpu_uuid, use.pids
        used, cap = use.used_mib, use.cap_mib
        killed = self._kill_all(pids)
        self._count(pod_uid, name)
        violation = Violation(pod_uid, name, uuid, used, cap, pids, killed)
        log.warning(
            "event=backstop-violation pod_uid=%s container=%s gpu=%s used_mib=%d cap_mib=%d "
            "pids=%s cause=memory action=%s",
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

    def _untrusted_region(
        self, use: ContainerGpu, grant: Grant, problems: tuple[str, ...]
    ) -> Violation:
        """A region that is not what its grant made it: the container is treated as over its
        cap (killed with enforcement on, every sample), reported once."""
        pod_uid, name, pids = use.pod_uid, use.container, use.pids
        key = (pod_uid, name)
        killed = self._kill_all(pids)
        self._count(pod_uid, name)
        violation = Violation(
            pod_uid, name, use.gpu_uuid, use.used_mib, use.cap_mib, pids, killed, "region", problems
        )
        action = "killed" if killed else "reported"
        if key not in self._untrusted_reported:
            self._untrusted_reported.add(key)
            log.warning(
                "event=region-untrusted pod_uid=%s container=%s region=%s pids=%s action=%s "
                "problems=%r",
                pod_uid,
                name,
                grant.region_dir,
                ",".join(map(str, pids)),
                action,
                "; ".join(problems),
            )
            self._report(violation)
        elif killed:
            log.warning(
                "event=backstop-violation pod_uid=%s container=%s gpu=%s pids=%s cause=region "
                "action=killed",
                pod_uid,
                name,
                use.gpu_uuid,
                ",".join(map(str, pids)),
            )
        return violation


@dataclass
class _Tick:
    """What one pass gathers as it goes."""

    now: float
    sample: Sample
    #: Per region directory, this sample's inspection (None: not judged).
    inspected: dict[str, Inspection | None]
    #: Per (pod uid, container): what is wrong with its region.
    untrusted: dict[tuple[str, str], tuple[str, ...]]
    #: Region directories that could not be read at all.
    doubted: set[str]
    #: Per (pod uid, container): the utilisation measured on each of its GPUs (by uuid),
    #: where NVML gave one: the feedback its region is given.
    feedback: dict[tuple[str, str], dict[str, float]]


def _utilisation(procs: list[ProcessUsage]) -> float | None:
    """A container's utilisation of one GPU: its processes' SM percent, summed (at most
    100); None where NVML gave none."""
    utils = [p.sm_percent for p in procs if p.sm_percent is not None]
    return float(min(100, sum(utils))) if utils else None


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
