"""The `nvml.json` of a simulated node: what NVML would report about its GPUs."""

from __future__ import annotations

import uuid
from typing import Any

from agent.simnode.layout import Layout
from agent.simnode.spec import GpuSpec

NVML_JSON_VERSION = 1
#: Namespace of the UUIDs derived for simulated GPUs (uuid5 of node name and index).
UUID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "simulated.gpulet.io")


def derived_uuid(node: str, index: int) -> str:
    """A stable `GPU-...` UUID for GPU `index` of node `node`."""
    return f"GPU-{uuid.uuid5(UUID_NAMESPACE, f'{node}/gpu{index}')}"


def nvswitch_counts(gpu: GpuSpec, switches: int) -> list[int]:
    """Links from the GPU to each NVSwitch, in NVSwitch index order."""
    if isinstance(gpu.nvswitch_links, tuple):
        return list(gpu.nvswitch_links)
    return [gpu.nvswitch_links // switches] * switches if switches else []


def nvml_document(layout: Layout) -> dict[str, Any]:
    spec = layout.spec
    switches = layout.nvswitches()
    address = {gpu.index: placed.bdf for placed, gpu in layout.gpus()}
    devices: list[dict[str, Any]] = []
    for placed, gpu in layout.gpus():
        ends: list[tuple[str, str, bool]] = []
        for (switch, _), count in zip(switches, nvswitch_counts(gpu, len(switches)), strict=True):
            ends += [(switch.bdf.nvml(), "switch", True)] * count
        for pair in spec.nvlink_pairs:
            if gpu.index in pair.gpus:
                peer = pair.gpus[1] if pair.gpus[0] == gpu.index else pair.gpus[0]
                ends += [(address[peer].nvml(), "gpu", pair.active)] * pair.links
        supported = bool(ends) if gpu.nvlink_supported is None else gpu.nvlink_supported
        devices.append(
            {
                "index": gpu.index,
                "uuid": gpu.uuid or derived_uuid(spec.name, gpu.index),
                "name": gpu.model,
                "memory_total_bytes": gpu.memory_bytes,
                "pci_bus_id": placed.bdf.nvml(),
                "minor": gpu.index if gpu.minor is None else gpu.minor,
                "mig_enabled": gpu.mig,
                "nvlink_supported": supported,
                "nvlinks": [
                    {"link": n, "active": active, "remote_pci": remote, "remote_type": kind}
                    for n, (remote, kind, active) in enumerate(ends)
                ],
            }
        )
    return {
        "version": NVML_JSON_VERSION,
        "driver_version": spec.driver_version,
        "cuda_driver_version": spec.cuda_driver_version,
        "devices": devices,
    }
