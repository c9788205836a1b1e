"""The extended resources the device plugin serves and the settings it runs with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from gpulet.api.resources import (
    GPU_RESOURCE,
    MAX_SLOTS,
    RDMA_RESOURCE,
    RESOURCES,
    UnknownResourceError,
    check_resource,
)
from gpulet.placement import Capacity

__all__ = [
    "GPU_RESOURCE",
    "RDMA_RESOURCE",
    "RESOURCES",
    "PluginConfig",
    "UnknownResourceError",
    "check_resource",
]


@dataclass(frozen=True)
class PluginConfig:
    """How the device plugin advertises and grants devices.

    `limiter_host_path` is the limiter library on the host; it is mounted read-only at the
    same path in every container that gets a slice, with `preload_host_path` (a host file
    holding that path) as the container's `/etc/ld.so.preload`. Whole GPUs get neither.
    Either None: no limiter mounts, which suits an agent that only hands out whole GPUs
    (standalone mode); a slice is then refused rather than granted unenforced (`LD_PRELOAD`
    alone would not do: a process can clear it for its children).
    `dev_root` is where the host's device nodes are (a simulated node points elsewhere);
    inside the container they are always under /dev.
    """

    gpu_slots: int = 100
    rdma_slots: int = 100
    node_name: str = ""
    region_root: Path = Path("/var/lib/gpulet/containers")
    container_region_dir: str = "/run/gpulet"
    limiter_host_path: Path | None = None
    preload_host_path: Path | None = None
    dev_root: str = "/dev"

    def __post_init__(self) -> None:
        for what, slots in (("gpu_slots", self.gpu_slots), ("rdma_slots", self.rdma_slots)):
            if not 1 <= slots <= MAX_SLOTS:
                raise ValueError(f"{what} must be 1..{MAX_SLOTS}, got {slots}")
        if self.preload_host_path is not None and self.limiter_host_path is None:
            raise ValueError("preload_host_path is set, but not limiter_host_path (what it loads)")
        if not PurePosixPath(self.container_region_dir).is_absolute():
            raise ValueError(
                f"container_region_dir must be absolute, got {self.container_region_dir!r}"
            )

    @property
    def limiter(self) -> bool:
        """Whether slices can be enforced: the library and its preload file are both set."""
        return self.limiter_host_path is not None and self.preload_host_path is not None

    @property
    def capacity(self) -> Capacity:
        """Slots per GPU and per RDMA port, as the placement engine counts them."""
        return Capacity(gpu_slots=self.gpu_slots, nic_slots=self.rdma_slots)

    def slots(self, resource: str) -> int:
        check_resource(resource)
        return self.gpu_slots if resource == GPU_RESOURCE else self.rdma_slots
