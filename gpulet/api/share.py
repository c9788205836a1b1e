"""How a GPU's use is counted: the one rule the extender, the device plugin, the ledger and
the CLI share.

A container's *share* of one GPU (`GpuShare`) is a slice (some percent of its compute and
some MiB of its memory, one of its slots) or the GPU whole (all of it, exclusively). A slice
is production (a reservation) or batch (docs/colocation.md): a batch slice takes one slot and
reserves nothing; its core and memory are counted apart, against what the GPU's production
leaves idle (`Idle`, measured by the node's agent). What a GPU has given out (`GpuUsage`) is
the sum of its shares' *charges* (`GpuShare.charge`), kept with `plus` and `minus`. Whether
one more share fits is `shortfall`: nothing, or which resource is short and by how much,
from which each part writes its own words.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import NamedTuple


@dataclass(frozen=True)
class GpuUsage:
    """What one GPU has given out: the sum of its shares' charges."""

    slots: int = 0
    #: Percent of the GPU's compute.
    core: int = 0
    memory_mib: int = 0
    #: How many shares hold it whole (more than one only when something over-committed it).
    whole: int = 0
    #: Batch slices: how many (each is also one of `slots`), and their core and memory,
    #: which reserve nothing and are not in `core` and `memory_mib`.
    batch: int = 0
    batch_core: int = 0
    batch_memory_mib: int = 0

    @property
    def exclusive(self) -> bool:
        """Held whole: no other container may have any of it."""
        return self.whole > 0

    @property
    def idle(self) -> bool:
        """Nothing given out, batch included."""
        return not (self.slots or self.core or self.memory_mib or self.whole)

    @property
    def unreserved(self) -> bool:
        """No production share: nothing given out but batch slices, which a production
        share takes back (a whole GPU too: the node's agent evicts them)."""
        return self.slots == self.batch and not (self.core or self.memory_mib or self.whole)

    def plus(self, other: GpuUsage) -> GpuUsage:
        return GpuUsage(
            self.slots + other.slots,
            self.core + other.core,
            self.memory_mib + other.memory_mib,
            self.whole + other.whole,
            self.batch + other.batch,
            self.batch_core + other.batch_core,
            self.batch_memory_mib + other.batch_memory_mib,
        )

    def minus(self, other: GpuUsage) -> GpuUsage:
        return GpuUsage(
            self.slots - other.slots,
            self.core - other.core,
            self.memory_mib - other.memory_mib,
            self.whole - other.whole,
            self.batch - other.batch,
            self.batch_core - other.batch_core,
            self.batch_memory_mib - other.batch_memory_mib,
        )


IDLE = GpuUsage()


@dataclass(frozen=True)
class GpuShare:
    """What one container is given of one GPU."""

    uuid: str
    #: Percent of the GPU's compute, 1..100 (100: not paced). A whole GPU: 100.
    core: int
    #: A whole GPU: all of its memory when it was given.
    memory_mib: int
    #: Held whole: no other container may have any of it.
    exclusive: bool = False
    #: The GPU's index on its node; -1 where the GPU is named by its UUID alone (the
    #: assignment annotation).
    index: int = -1
    #: A batch slice: `core` is its floor, `memory_mib` its cap; it reserves neither.
    batch: bool = False

    @classmethod
    def held_whole(cls, uuid: str, memory_mib: int, index: int = -1) -> GpuShare:
        """A GPU given whole: all its compute, all its memory (`memory_mib`), no one else."""
        return cls(uuid, 100, memory_mib, exclusive=True, index=index)

    def on_gpu(self, index: int, gpu_memory_mib: int) -> GpuShare:
        """This share as granted on its node's GPU `index`: a whole GPU holds all of the
        memory the GPU has (whatever the assignment said); every other field carries over."""
        memory = gpu_memory_mib if self.exclusive else self.memory_mib
        return replace(self, index=index, memory_mib=memory)

    def by_uuid(self) -> GpuShare:
        """This share as the assignment names it: by UUID alone (index -1); every other
        field carries over."""
        return GpuShare(**{**self.__dict__, "index": -1})

    def charge(self, slots_per_gpu: int, gpu_memory_mib: int = 0) -> GpuUsage:
        """What this share takes of its GPU: a slice one slot, its core and its memory; a
        whole GPU every slot, all its core and all its memory (`gpu_memory_mib`, the GPU's
        as its node reports it now, where that is more than the share recorded)."""
        if self.exclusive:
            return GpuUsage(slots_per_gpu, 100, max(self.memory_mib, gpu_memory_mib), 1)
        if self.batch:
            return GpuUsage(1, batch=1, batch_core=self.core, batch_memory_mib=self.memory_mib)
        return GpuUsage(1, self.core, self.memory_mib, 0)


@dataclass(frozen=True)
class Idle:
    """What one GPU's production leaves idle, as its node's agent last measured it (less a
    safety margin): the most batch slices may be placed against, in all."""

    #: Percent of the GPU's compute.
    core: int
    memory_mib: int


#: A GPU with no measurement: no batch slice is placed on it.
UNMEASURED = Idle(0, 0)


class Short(StrEnum):
    """The resource one more share would lack."""

    #: Another container holds the GPU whole.
    HELD_WHOLE = "held whole"
    #: The share wants the GPU whole, but others have slices of it.
    IN_USE = "in use"
    SLOTS = "slots"
    CORE = "core"
    MEMORY = "memory"
    #: A batch share: the GPU's measured idle compute or memory, less other batch slices'.
    IDLE_CORE = "idle core"
    IDLE_MEMORY = "idle memory"


class Shortfall(NamedTuple):
    """Why a share does not fit a GPU: what is short, how much the share needs and how much
    is free (slots, percent of compute or MiB; for HELD_WHOLE and IN_USE, the GPU). A named
    tuple: the placement engine makes one for every GPU that cannot take a request."""

    short: Short
    needed: int
    free: int

    def __str__(self) -> str:
        """The short form the placement engine lists per GPU. No "%": kube-scheduler uses the
        reasons it shows in a FailedScheduling event as a printf format."""
        short = self.short
        if short is Short.SLOTS:
            return "no free slot"
        if short is Short.CORE:
            return f"{self.free} percent core free"
        if short is Short.MEMORY:
            return f"{self.free} MiB free"
        if short is Short.IDLE_CORE:
            return f"{self.free} percent idle core for batch"
        if short is Short.IDLE_MEMORY:
            return f"{self.free} MiB idle memory for batch"
        return short.value


def shortfall(
    use: GpuUsage,
    share: GpuShare,
    slots_per_gpu: int,
    gpu_memory_mib: int,
    idle: Idle | None = None,
) -> Shortfall | None:
    """Whether `share` fits a GPU that has given out `use`: None, or what is short. `idle`
    as for `shortfall_of`."""
    return shortfall_of(
        use,
        share.core,
        share.memory_mib,
        exclusive=share.exclusive,
        slots_per_gpu=slots_per_gpu,
        gpu_memory_mib=gpu_memory_mib,
        batch=share.batch,
        idle=idle,
    )


def shortfall_of(
    use: GpuUsage,
    core: int,
    memory_mib: int,
    *,
    exclusive: bool,
    slots_per_gpu: int,
    gpu_memory_mib: int,
    batch: bool = False,
    idle: Idle | None = None,
) -> Shortfall | None:
    """`shortfall` for a share not made yet (the placement engine asks it of every GPU, and
    makes the share only for those that can take it).

    A batch share needs a slot and a GPU no one holds whole; and, where `idle` is given (the
    extender, placing), its core and memory within what is idle less the batch slices
    already there. The node, which follows the extender's placement, gives no `idle`. A
    production share does not see batch slices' core and memory: it takes them back; a
    whole GPU may be given where only batch slices run (they are evicted)."""
    if use.whole:
        return Shortfall(Short.HELD_WHOLE, 1, 0)
    if batch:
        if use.slots + 1 > slots_per_gpu:
            return Shortfall(Short.SLOTS, 1, max(0, slots_per_gpu - use.slots))
        if idle is None:
            return None
        free_core = idle.core - use.batch_core
        if core > free_core:
            return Shortfall(Short.IDLE_CORE, core, max(0, free_core))
        free_memory = idle.memory_mib - use.batch_memory_mib
        if memory_mib < 1 or memory_mib > free_memory:
            return Shortfall(Short.IDLE_MEMORY, memory_mib, max(0, free_memory))
        return None
    if exclusive:
        return None if use.unreserved else Shortfall(Short.IN_USE, 1, 0)
    if use.slots + 1 > slots_per_gpu:
        return Shortfall(Short.SLOTS, 1, max(0, slots_per_gpu - use.slots))
    if use.core + core > 100:
        return Shortfall(Short.CORE, core, max(0, 100 - use.core))
    free_memory = gpu_memory_mib - use.memory_mib
    if memory_mib < 1 or memory_mib > free_memory:
        return Shortfall(Short.MEMORY, memory_mib, max(0, free_memory))
    return None
