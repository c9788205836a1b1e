"""What each GPU's production leaves idle: the room the extender places batch slices against,
and the batch aggregates the Node advertises (docs/colocation.md, "The room the agent
measures").

Every monitor sample, per GPU: production's use is everything the GPU's processes use but
batch slices' own (processes no container owns count as production: the safe side). The
room is what the busiest moment of the last `WINDOW_S` leaves, less a margin:

- compute: 100 - production's peak utilisation - `CORE_MARGIN` (percent of the GPU). Small:
  batch compute is handed back within one co-location pass whatever was placed;
- memory: the GPU's memory - production's peak memory - `MEMORY_MARGIN_PERMILLE` of it.
  Larger: memory cannot be taken back from a batch slice but by evicting it;
- a GPU held whole, or one out of service, has none.

The first room is published once a whole window has been seen (a node's agent that just
started places no batch slice for a minute), and then at most once every
`MIN_INTERVAL_S`, and only when some GPU's room moved by more than `CHANGE_PERMILLE` of that
GPU (its compute, or its memory): so the NodeTopology's status and the Node's aggregates are
written at most once a minute per node, and not at all while the node is steady.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from agent.monitor import Sample
from deviceplugin.grants import Grant
from gpulet.api.resources import BATCH_CORE_RESOURCE, BATCH_MEMORY_RESOURCE, GPU_RESOURCE
from gpulet.api.share import Idle
from gpulet.topology import Topology

log = logging.getLogger("gpulet.agent")

#: How far back production's peak is taken.
WINDOW_S = 60.0
#: Kept from batch placement: percent of a GPU's compute, permille of its memory.
CORE_MARGIN = 10
MEMORY_MARGIN_PERMILLE = 100
#: Published at most this often, and only on a change of more than this, per GPU.
MIN_INTERVAL_S = 60.0
CHANGE_PERMILLE = 50

Publish = Callable[[Mapping[int, Idle]], None]


@dataclass(frozen=True)
class Production:
    """What production used of one GPU in one sample."""

    util: float
    used_mib: int


def production(sample: Sample, grants: Iterable[Grant]) -> dict[str, Production]:
    """Per GPU UUID, what its processes used less what batch slices used."""
    batch = {
        (g.pod_uid, g.container, s.uuid)
        for g in grants
        if g.resource == GPU_RESOURCE
        for s in g.gpus
        if s.batch
    }
    util = {uuid: float(v) for uuid, v in sample.gpu_util.items()}
    used = dict(sample.gpu_used_mib)
    for c in sample.containers:
        if (c.pod_uid, c.container, c.gpu_uuid) in batch:
            util[c.gpu_uuid] = util.get(c.gpu_uuid, 0.0) - (c.util_percent or 0.0)
            used[c.gpu_uuid] = used.get(c.gpu_uuid, 0) - c.used_mib
    return {
        uuid: Production(max(0.0, util.get(uuid, 0.0)), max(0, used.get(uuid, 0)))
        for uuid in set(util) | set(used)
    }


def room(memory_mib: int, peak: Production) -> Idle:
    """One GPU's room for batch, given production's peak (see the module)."""
    core = 100 - int(-(-peak.util // 1)) - CORE_MARGIN
    memory = memory_mib - peak.used_mib - memory_mib * MEMORY_MARGIN_PERMILLE // 1000
    return Idle(max(0, core), max(0, memory))


def moved(before: Mapping[int, Idle], after: Mapping[int, Idle], memory: Mapping[int, int]) -> bool:
    """Whether some GPU's room moved by more than `CHANGE_PERMILLE` of that GPU."""
    for index in set(before) | set(after):
        a, b = before.get(index, Idle(0, 0)), after.get(index, Idle(0, 0))
        if abs(a.core - b.core) * 1000 > CHANGE_PERMILLE * 100:
            return True
        if abs(a.memory_mib - b.memory_mib) * 1000 > CHANGE_PERMILLE * memory.get(index, 0):
            return True
    return False


def aggregates(idle: Mapping[int, Idle]) -> dict[str, int]:
    """The batch resources a node advertises: the sums of its GPUs' rooms."""
    return {
        BATCH_CORE_RESOURCE: sum(i.core for i in idle.values()),
        BATCH_MEMORY_RESOURCE: sum(i.memory_mib for i in idle.values()),
    }


class IdleMeter:
    """Measures each GPU's room (`observe`, every monitor sample) and publishes it when due
    (see the module). `unavailable` lists GPUs (by index) out of service now; `window_s`
    and `min_interval_s` are the module's, shorter for a demo."""

    def __init__(
        self,
        topo: Topology,
        publish: Publish,
        *,
        unavailable: Callable[[], Iterable[int]] = lambda: (),
        window_s: float = WINDOW_S,
        min_interval_s: float = MIN_INTERVAL_S,
    ) -> None:
        self._window = window_s
        self._interval = min_interval_s
        self._since: float | None = None
        self._gpus = {g.uuid: g for g in topo.gpus}
        self._memory = {g.index: g.memory_mib for g in topo.gpus}
        self._publish = publish
        self._unavailable = unavailable
        self._history: dict[str, deque[tuple[float, Production]]] = {
            uuid: deque() for uuid in self._gpus
        }
        #: What was last published, and when (None: never).
        self.published: dict[int, Idle] | None = None
        self._published_at = 0.0

    def observe(self, sample: Sample, grants: Iterable[Grant], now: float) -> None:
        grants = tuple(grants)
        used = production(sample, grants)
        whole = {
            s.uuid for g in grants if g.resource == GPU_RESOURCE for s in g.gpus if s.exclusive
        }
        out = set(self._unavailable())
        idle: dict[int, Idle] = {}
        for uuid, gpu in self._gpus.items():
            history = self._history[uuid]
            history.append((now, used.get(uuid, Production(0.0, 0))))
            while history and history[0][0] < now - self._window:
                history.popleft()
            if uuid in whole or gpu.index in out or gpu.mig:
                idle[gpu.index] = Idle(0, 0)
                continue
            peak = Production(max(p.util for _, p in history), max(p.used_mib for _, p in history))
            idle[gpu.index] = room(gpu.memory_mib, peak)
        if self._since is None:
            self._since = now
        if now - self._since < self._window:
            return  # not a whole window seen yet
        if self.published is not None and (
            now - self._published_at < self._interval
            or not moved(self.published, idle, self._memory)
        ):
            return
        self._publish(idle)
        self.published, self._published_at = idle, now
        log.info(
            "event=idle-published %s",
            " ".join(f"gpu{i}={v.core}%/{v.memory_mib}MiB" for i, v in sorted(idle.items())),
        )
