"""Batch slices give memory back by leaving (docs/colocation.md, "Memory"): when a GPU's free
memory falls under a watermark (production growing into its reservation, which batch was
placed on), the agent evicts batch pods on that GPU, newest first, until what they hold
would bring the GPU back over the watermark. Every batch pod on a GPU granted whole to
production leaves too, whatever its memory.

Memory cannot wait for a grace period, so the eviction (`Evict`) kills the batch
container's processes on the GPU at once, then asks the API server for a policy/v1
Eviction of its pod (so that the pod's owner sees why, and a PodDisruptionBudget is
honoured for the pod, if not for its memory) and posts an Event on it. A pod is evicted
once; it is forgotten with its grant.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from agent.kube import EventReporter
from agent.monitor import Sample
from deviceplugin.grants import Grant
from gpulet.api.resources import GPU_RESOURCE
from gpulet.kube.calls import CoreCalls
from gpulet.topology import Topology

log = logging.getLogger("gpulet.agent")

#: Free memory kept on a GPU with batch slices: this share of it, and at least `MIN_MIB`.
WATERMARK_PERMILLE = 50
MIN_MIB = 1024
#: The grace period of a batch pod's eviction: its GPU processes are already stopped.
GRACE_S = 5
#: The Event's reason.
REASON = "GPUBatchEvicted"


@dataclass(frozen=True)
class Eviction:
    """A batch pod to evict, and why: the GPU whose memory ran short."""

    pod_uid: str
    gpu_uuid: str
    #: The batch pod's processes on any GPU, and the memory they held on this one.
    pids: tuple[int, ...]
    held_mib: int
    free_mib: int
    watermark_mib: int
    #: The GPU was granted whole to production (else: its memory ran short).
    whole: bool = False

    @property
    def message(self) -> str:
        if self.whole:
            return (
                f"GPU {self.gpu_uuid} was granted whole to a production pod, which batch slices "
                f"do not share. gpulet evicted this batch pod and stopped its GPU processes, "
                f"which held {self.held_mib} MiB"
            )
        return (
            f"GPU {self.gpu_uuid} had {self.free_mib} MiB free, under its watermark of "
            f"{self.watermark_mib} MiB: production slices grew into their reservations, which "
            f"batch slices borrow. gpulet evicted this batch pod (the newest on the GPU first) "
            f"and stopped its GPU processes, which held {self.held_mib} MiB"
        )


Evict = Callable[[Eviction], None]


def through_api(
    api: CoreCalls,
    events: EventReporter,
    pod: Callable[[str], Mapping[str, Any] | None],
    *,
    kill: bool,
    signal_pid: Callable[[int, int], None] = os.kill,
) -> Evict:
    """The agent's eviction (see the module): with `kill`, the pod's GPU processes killed
    first; then its Eviction, then the Event. `pod`: the pod of a uid, as the agent's watch
    has it (a pod it no longer sees is only killed)."""

    def evict(e: Eviction) -> None:
        if kill:
            for pid in e.pids:
                try:
                    signal_pid(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                except OSError as error:
                    log.warning("event=kill-failed pid=%d error=%r", pid, str(error))
        found = pod(e.pod_uid)
        if found is None:
            return
        meta = found.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
        api.evict_pod(namespace, name, e.pod_uid, grace_period_s=GRACE_S)
        events.warn(found, REASON, e.message)

    return evict


def watermark(memory_mib: int, permille: int = WATERMARK_PERMILLE) -> int:
    return max(MIN_MIB, memory_mib * permille // 1000)


def to_evict(
    sample: Sample,
    grants: Iterable[Grant],
    memory: dict[str, int],
    done: set[str],
    permille: int = WATERMARK_PERMILLE,
) -> list[Eviction]:
    """The batch pods to evict now (see the module): per GPU under its watermark, the
    newest batch pods on it not evicted already (`done`), until what they hold lifts it
    back over. `memory`: each GPU's MiB, by UUID."""
    grants = tuple(grants)
    batch = [g for g in grants if g.resource == GPU_RESOURCE and g.pod_uid and g.gpus]
    batch = [g for g in batch if any(s.batch for s in g.gpus) and g.pod_uid not in done]
    held: dict[tuple[str, str], int] = {}
    pids: dict[str, set[int]] = {}
    for c in sample.containers:
        held[(c.pod_uid, c.gpu_uuid)] = held.get((c.pod_uid, c.gpu_uuid), 0) + c.used_mib
        pids.setdefault(c.pod_uid, set()).update(c.pids)
    out: list[Eviction] = []
    chosen: set[str] = set()
    whole = {s.uuid for g in grants for s in g.gpus if s.exclusive}
    for uuid, total in memory.items():
        on = [g for g in batch if any(s.uuid == uuid and s.batch for s in g.gpus)]
        free = total - sample.gpu_used_mib.get(uuid, 0)
        floor = watermark(total, permille)
        granted_whole = uuid in whole  # then every batch pod goes, whatever the memory
        freed = 0
        for g in sorted(on, key=lambda g: (g.granted_at, g.pod_uid or ""), reverse=True):
            if not granted_whole and free + freed >= floor:
                break
            uid = g.pod_uid or ""
            mine = held.get((uid, uuid), 0)
            freed += mine
            if uid in chosen:
                continue
            chosen.add(uid)
            victim_pids = tuple(sorted(pids.get(uid, ())))
            out.append(Eviction(uid, uuid, victim_pids, mine, free, floor, granted_whole))
    return out


class BatchEvictor:
    """Evicts batch pods (`evict`) from GPUs whose memory ran short, every monitor sample
    (`observe`)."""

    def __init__(self, topo: Topology, evict: Evict, *, permille: int = WATERMARK_PERMILLE) -> None:
        self._memory = {g.uuid: g.memory_mib for g in topo.gpus}
        self._evict = evict
        #: The watermark, permille of each GPU's memory (at least `MIN_MIB`).
        self.permille = permille
        #: Pods evicted whose grants are still held.
        self.evicted: set[str] = set()
        #: Evictions so far, by reason ("memory", "whole"), for metrics.
        self.counts: dict[str, int] = {}

    def observe(self, sample: Sample, grants: Iterable[Grant]) -> list[Eviction]:
        grants = tuple(grants)
        self.evicted &= {g.pod_uid for g in grants if g.pod_uid}
        found = to_evict(sample, grants, self._memory, self.evicted, self.permille)
        for e in found:
            self.evicted.add(e.pod_uid)
            reason = "whole" if e.whole else "memory"
            self.counts[reason] = self.counts.get(reason, 0) + 1
            log.warning(
                "event=batch-evicted pod_uid=%s gpu=%s free_mib=%d watermark_mib=%d held_mib=%d",
                e.pod_uid,
                e.gpu_uuid,
                e.free_mib,
                e.watermark_mib,
                e.held_mib,
            )
            try:
                self._evict(e)
            except Exception as error:  # logged; the pod is not tried again
                log.warning(
                    "event=batch-evict-failed pod_uid=%s error=%r", e.pod_uid, str(error)[:300]
                )
        return found
