"""What a container asks for, what a node already has allocated, and what it can give."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from gpulet.api.share import IDLE, UNMEASURED, GpuUsage, Idle


class TopologyPolicy(StrEnum):
    BEST_EFFORT = "best-effort"
    RESTRICTED = "restricted"
    SINGLE_NUMA = "single-numa"


class GpuPolicy(StrEnum):
    BINPACK = "binpack"
    SPREAD = "spread"


class RequestError(ValueError):
    """A request no node could ever honour (bad values), as opposed to one that does not fit."""


@dataclass(frozen=True)
class Request:
    """GPUs (each a slice of a different physical GPU) and RDMA NICs for one container.

    `core` is percent of each GPU (None: 100, no throttle), `memory_mib` MiB of each GPU
    (None: the rest of that GPU). With neither, the GPUs are granted whole and exclusively.
    A `batch` request (docs/colocation.md) gives both: its floor and its memory cap, placed
    against what production leaves idle on each GPU.
    """

    gpus: int
    core: int | None = None
    memory_mib: int | None = None
    rdma: int = 0
    topology: TopologyPolicy = TopologyPolicy.BEST_EFFORT
    gpu_policy: GpuPolicy = GpuPolicy.BINPACK
    batch: bool = False

    @property
    def whole(self) -> bool:
        return self.core is None and self.memory_mib is None and not self.batch

    def validate(self) -> None:
        if self.gpus < 0 or self.rdma < 0:
            raise RequestError("GPU and RDMA counts cannot be negative")
        if self.gpus == 0 and self.rdma == 0:
            raise RequestError("the request asks for no GPU and no RDMA device")
        kind = "batch-" if self.batch else ""
        if self.core is not None and not 1 <= self.core <= 100:
            raise RequestError(
                f"{kind}gpu-core must be 1-100 (percent of each GPU), got {self.core}"
            )
        if self.memory_mib is not None and self.memory_mib < 1:
            raise RequestError(f"{kind}gpu-memory must be at least 1 MiB, got {self.memory_mib}")
        if self.gpus == 0 and (self.core is not None or self.memory_mib is not None):
            raise RequestError("gpu-core or gpu-memory given without any gpulet.io/gpu")
        if self.batch and (self.gpus == 0 or self.core is None or self.memory_mib is None):
            raise RequestError(
                "a batch slice needs gpulet.io/gpu, batch-gpu-core and batch-gpu-memory"
            )
        if self.topology is TopologyPolicy.RESTRICTED and self.gpus and not self.rdma:
            raise RequestError(
                "topology-policy restricted needs at least one gpulet.io/rdma: every GPU must "
                "share a PCIe switch with one of the container's NICs"
            )


@dataclass(frozen=True)
class Capacity:
    """Slots advertised to kubelet per physical GPU and per RDMA port."""

    gpu_slots: int = 100
    nic_slots: int = 100


@dataclass(frozen=True)
class NodeState:
    """Allocations on one node, by GPU index and NIC key, plus devices out of service."""

    gpus: Mapping[int, GpuUsage] = field(default_factory=dict)
    nic_slots: Mapping[str, int] = field(default_factory=dict)
    unhealthy_gpus: frozenset[int] = frozenset()
    unhealthy_nics: frozenset[str] = frozenset()
    #: What production leaves idle on each GPU, as the node's agent measured it: what batch
    #: slices are placed against. A GPU not listed takes no batch slice.
    idle: Mapping[int, Idle] = field(default_factory=dict)

    def gpu(self, index: int) -> GpuUsage:
        return self.gpus.get(index, IDLE)

    def idle_of(self, index: int) -> Idle:
        return self.idle.get(index, UNMEASURED)
