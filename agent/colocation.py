"""Batch slices' compute: each runs on what the production slices of its GPU leave idle.

Every `interval_s` (25 ms) the controller reads, from each slice's region on a GPU that has a
batch slice, how many launches it made and how much GPU time they took since the last pass,
decides each batch slice's share (`batch_shares`) and writes it into that batch slice's own
region (`native.region.write_share`), which its limiter follows from its next launch. No
container's region is read or written for another's sake but by the agent.

The rule, per GPU (`batch_shares`): a production slice that launched anything in the last
interval counts its whole reservation (it may want all of it at once, and a launch is the
first sign: its GPU time shows only once its kernels are done); an idle one counts what it
used. What the GPU has left, less a margin, goes to the batch slices in proportion to their
floors (their `batch-gpu-core`), each at least `MIN_PERMILLE`. The margin is small while
production is idle (`MARGIN_PERMILLE`) and large while it runs (`ACTIVE_MARGIN_PERMILLE`):
kernels are not preempted, so a production kernel that arrives while a batch kernel runs
waits for it, and that wait is production's latency. So production gets its share back
within one interval of its first launch, and batch gets nearly the whole GPU while
production is idle (docs/BENCHMARKS.md, "Co-location").
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deviceplugin.grants import Grant
from deviceplugin.regions import limits_of
from gpulet.api.resources import GPU_RESOURCE
from native.region import Inspection, Limits, RegionError, inspect, write_share

log = logging.getLogger("gpulet.agent")

#: How often the controller decides: the time production waits, at most, for its share back
#: (plus one batch launch). Each pass reads every slice's region on a GPU with a batch slice
#: (about 50 us each).
INTERVAL_S = 0.025
#: Kept free of batch work while production is idle: room for production's first launches
#: before the next pass sees them.
MARGIN_PERMILLE = 50
#: Kept free of batch work while a production slice runs: its kernels then rarely queue
#: behind a batch kernel (kernels are not preempted), which is what its latency pays.
ACTIVE_MARGIN_PERMILLE = 500
#: The least a batch slice gets (the limiter's own floor for a share is 0.2% too). Not more:
#: each batch kernel may hold up the production kernel after it (kernels are not preempted),
#: and at 1% beside a busy production slice that was 1% of production's kernels, its p99
#: (docs/BENCHMARKS.md, "Co-location").
MIN_PERMILLE = 2


@dataclass(frozen=True)
class Use:
    """One slice on a GPU, as the last interval saw it."""

    key: str
    batch: bool
    #: A production slice's reservation, a batch slice's floor; permille of the GPU.
    share_permille: int
    #: GPU time its launches took in the interval, permille of the interval.
    busy_permille: int
    #: Launches it made in the interval.
    launches: int


def batch_shares(
    uses: Sequence[Use],
    margin_permille: int = MARGIN_PERMILLE,
    active_margin_permille: int = ACTIVE_MARGIN_PERMILLE,
) -> dict[str, int]:
    """Each batch slice's share of one GPU (key -> permille), by the module's rule."""
    production = 0
    active = False
    for u in uses:
        if not u.batch:
            active = active or u.launches > 0
            production += u.share_permille if u.launches else min(u.busy_permille, u.share_permille)
    margin = active_margin_permille if active else margin_permille
    left = max(0, 1000 - production - margin)
    batch = [u for u in uses if u.batch]
    floors = sum(u.share_permille for u in batch)
    return {
        u.key: max(MIN_PERMILLE, left * u.share_permille // floors if floors else 0) for u in batch
    }


@dataclass(frozen=True)
class Slice:
    """A container's slice of one GPU: where its region is, its limits, which of its
    devices this GPU is."""

    key: str
    directory: Path
    limits: Limits
    device: int

    @property
    def batch(self) -> bool:
        return self.limits.devices[self.device].batch


@dataclass
class _Seen:
    launches: int
    busy_ns: int
    #: When they were read (CLOCK_MONOTONIC, ns).
    at_ns: int


class CoLocation:
    """Decides and writes batch shares for the slices `slices()` lists, grouped by GPU UUID;
    `tick` is one pass (run it every `INTERVAL_S`, e.g. with `agent.loop.Every`; a slice's use
    is measured over the time since the pass before, however long that was)."""

    def __init__(
        self,
        slices: Callable[[], Mapping[str, Sequence[Slice]]],
        *,
        margin_permille: int = MARGIN_PERMILLE,
        active_margin_permille: int = ACTIVE_MARGIN_PERMILLE,
    ) -> None:
        self._slices = slices
        self._margins = (margin_permille, active_margin_permille)
        self._seen: dict[tuple[str, int], _Seen] = {}
        #: The last shares written, key -> permille (for tests and metrics).
        self.shares: dict[str, int] = {}
        #: Per key, the share in force integrated over time since `share_percent` last
        #: read it: (permille-seconds, seconds).
        self._given: dict[str, tuple[float, float]] = {}
        self._given_lock = threading.Lock()
        self._last_tick: float | None = None

    def tick(self) -> None:
        now = time.monotonic()
        if self._last_tick is not None:
            self._integrate(now - self._last_tick)
        self._last_tick = now
        seen: dict[tuple[str, int], _Seen] = {}
        groups = self._slices()
        for slices in groups.values():
            if not any(s.batch for s in slices):
                continue
            uses = []
            for s in slices:
                use = self._use(s, seen)
                if use is not None:
                    uses.append(use)
            for key, permille in batch_shares(uses, *self._margins).items():
                self._write(next(s for s in slices if s.key == key), permille)
        self._seen = seen
        live = {s.key for on in groups.values() for s in on}
        for gone in set(self.shares) - live:  # the slice ended: its share goes with it
            del self.shares[gone]
            with self._given_lock:
                self._given.pop(gone, None)

    def _integrate(self, seconds: float) -> None:
        """The shares in force held for `seconds` more."""
        with self._given_lock:
            for key, permille in self.shares.items():
                total, covered = self._given.get(key, (0.0, 0.0))
                self._given[key] = (total + permille * seconds, covered + seconds)

    def _use(self, s: Slice, seen: dict[tuple[str, int], _Seen]) -> Use | None:
        """What `s` did since the last pass; None when its region cannot be read (a batch
        slice then gets no new share and falls back to its floor; a production slice is
        left out)."""
        found: Inspection = inspect(s.directory, s.limits)
        usage = found.usage
        if usage is None or found.problems:
            return None
        device = usage.devices[s.device]
        now = _Seen(device.launches, device.busy_ns, time.monotonic_ns())
        seen[(s.key, s.device)] = now
        before = self._seen.get((s.key, s.device))
        if before is None:
            launches = busy_permille = 0
        else:
            launches = max(0, now.launches - before.launches)
            elapsed = max(1, now.at_ns - before.at_ns)
            busy_permille = max(0, min(1000, (now.busy_ns - before.busy_ns) * 1000 // elapsed))
        share = s.limits.devices[s.device].core_percent * 10
        return Use(s.key, s.batch, share, busy_permille, launches)

    def _write(self, s: Slice, permille: int) -> None:
        try:
            write_share(s.directory, s.device, permille, s.limits)
        except RegionError as e:
            log.warning("event=batch-share-failed key=%s error=%r", s.key, str(e))
            return
        self.shares[s.key] = permille

    def share_percent(self, pod_uid: str, container: str, uuid: str) -> int | None:
        """A batch container's share of one GPU since the last call, averaged over time, in
        percent rounded up: what the compute backstop holds it to (it samples every second,
        the shares move every pass). None where none was written. The agent's own record:
        what the container's region says is the tenant's to forge."""
        key = slice_key(pod_uid, container, uuid)
        with self._given_lock:
            total, covered = self._given.pop(key, (0.0, 0.0))
        permille = total / covered if covered > 0 else self.shares.get(key)
        return None if permille is None else min(100, math.ceil(permille / 10))


def slice_key(pod_uid: str, container: str, uuid: str) -> str:
    """A container's slice of one GPU, as the controller keys it."""
    return f"{pod_uid}/{container}/{uuid}"


def slice_of(key: str) -> tuple[str, str, str]:
    """`slice_key`'s pod uid, container and GPU UUID (none of them holds a "/")."""
    pod_uid, container, uuid = key.split("/", 2)
    return pod_uid, container, uuid


def batch_gpus(grants: Iterable[Grant]) -> dict[str, list[Slice]]:
    """The slices of every GPU that holds a batch slice, by GPU UUID: what the controller
    reads and writes (`CoLocation`'s `slices`). GPUs without one are left out."""
    mine = [
        g
        for g in grants
        if g.resource == GPU_RESOURCE and g.region_dir and g.pod_uid and g.container
    ]
    shared = {s.uuid for g in mine for s in g.gpus if s.batch}
    slices: list[Slice] = []
    for g in mine:
        if not shared.intersection(s.uuid for s in g.gpus):
            continue  # the agent's every pass: most nodes have no batch slice at all
        assert g.region_dir and g.pod_uid and g.container
        limits = limits_of(g.gpus)
        for device, share in enumerate(g.gpus):
            if not share.exclusive:
                key = slice_key(g.pod_uid, g.container, share.uuid)
                slices.append(Slice(key, Path(g.region_dir), limits, device))
    return {uuid: on for uuid, on in by_gpu(slices).items() if uuid in shared}


def by_gpu(slices: Iterable[Slice]) -> dict[str, list[Slice]]:
    """Slices grouped by the UUID of their GPU."""
    out: dict[str, list[Slice]] = {}
    for s in slices:
        out.setdefault(s.limits.devices[s.device].uuid, []).append(s)
    return out
