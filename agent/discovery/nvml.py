"""What discovery needs from NVML, behind a small interface.

`NvmlBackend` is implemented by `PynvmlBackend` (the real library through nvidia-ml-py)
and by the simulated-node backend (`agent.simnode`), which reads `nvml.json`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class NvmlError(RuntimeError):
    """NVML could not be read (no driver, a device that fails, ...)."""


@dataclass(frozen=True)
class NvlinkInfo:
    link: int
    active: bool
    #: Remote end's PCI address as NVML reports it (`00000000:C7:00.0`); "" for a link
    #: that is down, whose far end is not asked for.
    remote_pci: str
    #: "gpu", "switch" or "unknown" ("unknown" for a link that is down).
    remote_type: str


@dataclass(frozen=True)
class NvmlGpu:
    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    #: NVML's bus id, 8-digit domain (`00000000:07:00.0`).
    pci_bus_id: str
    minor: int
    mig_enabled: bool
    #: Empty when the GPU has no NVLink or NVML says NVLink is not supported.
    nvlinks: tuple[NvlinkInfo, ...] = ()


class NvmlBackend(Protocol):
    def driver_version(self) -> str: ...

    def gpus(self) -> list[NvmlGpu]: ...
