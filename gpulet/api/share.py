"""How a GPU's use is counted: the one rule the extender, the device plugin, the ledger and
the CLI share.

A container's *share* of one GPU (`GpuShare`) is a slice (some percent of its compute and
some MiB of its memory, one of its slots) or the GPU whole (all of it, exclusively). What a
GPU has given out (`GpuUsage`) is the sum of its shares' *charges* (`GpuShare.charge`), kept
with `plus` and `minus`. Whether one more share fits is `shortfall`: nothing, or which
resource is short and by how much, from which each part writes its own words.
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

    @property
    def exclusive(self) -> bool:
        """Held whole: no other container may have any of it."""
        return self.whole > 0

    @property
    def idle(self) -> bool:
        return not (self.slots or self.core or self.memory_mib or self.whole)

    def plus(self, other: GpuUsage) -> GpuUsage:
        return GpuUsage(
            self.slots + other.slots,
            self.core + other.core,
            self.memory_mib + other.memory_mib,
            self.whole + other.whole,
        )

    def minus(self, other: GpuUsage) -> GpuUsage:
        return GpuUsage(
            self.slots - other.slots,
            self.core - other.core,
            self.memory_mib - other.memory_mib,
            self.whole - other.whole,
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
        return GpuUsage(1, self.core, self.memory_mib, 0)


class Short(StrEnum):
    """The resource one more share would lack."""

    #: Another container holds the GPU whole.
    HELD_WHOLE = "held whole"
    #: The share wants the GPU whole, but others have slices of it.
    IN_USE = "in use"
    SLOTS = "slots"
    CORE = "core"
    MEMORY = "memory"


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
        return short.value


def shortfall(
    use: GpuUsage, share: GpuShare, slots_per_gpu: int, gpu_memory_mib: int
) -> Shortfall | None:
    """Whether `share` fits a GPU that has given out `use`: None, or what is short."""
    return shortfall_of(
        use,
        share.core,
        share.memory_mib,
        exclusive=share.exclusive,
        slots_per_gpu=slots_per_gpu,
        gpu_memory_mib=gpu_memory_mib,
    )


def shortfall_of(
    use: GpuUsage,
    core: int,
    memory_mib: int,
    *,
    exclusive: bool,
    slots_per_gpu: int,
    gpu_memory_mib: int,
) -> Shortfall | None:
    """`shortfall` for a share not made yet (the placement engine asks it of every GPU, and
    makes the share only for those that can take it)."""
    if use.whole:
        return Shortfall(Short.HELD_WHOLE, 1, 0)
    if exclusive:
        return None if use.idle else Shortfall(Short.IN_USE, 1, 0)
    if use.slots + 1 > slots_per_gpu:
        return Shortfall(Short.SLOTS, 1, max(0, slots_per_gpu - use.slots))
    if use.core + core > 100:
        return Shortfall(Short.CORE, core, max(0, 100 - use.core))
    free_memory = gpu_memory_mib - use.memory_mib
    if memory_mib < 1 or memory_mib > free_memory:
        return Shortfall(Short.MEMORY, memory_mib, max(0, free_memory))
    return None
