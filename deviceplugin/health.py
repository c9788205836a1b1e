"""Device health: which XIDs mean a GPU is lost, and the loop that turns XID events and RDMA
port states into `Healthy`/`Unhealthy` in the device lists.

Where the events come from (NVML, a simulated node) is the agent's business: this module
takes them through two small protocols.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from deviceplugin.core import DevicePluginCore
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE

#: XIDs after which the GPU cannot be trusted until it is reset: 48 double-bit ECC error,
#: 64 ECC page retirement failure, 74 NVLink error, 79 fallen off the bus, 95 uncontained
#: ECC error, 119/120 GSP timeout/error. Application faults (13, 31, 43, 45, 68, ...) are
#: the program's, not the device's, and leave it healthy.
CRITICAL_XIDS = frozenset({48, 64, 74, 79, 95, 119, 120})

log = logging.getLogger("gpulet.health")


@dataclass(frozen=True)
class XidEvent:
    """An XID on a GPU (by index), or, with `recovered`, the GPU answering normally again."""

    gpu: int
    xid: int = 0
    recovered: bool = False


class XidSource(Protocol):
    def events(self, timeout_s: float) -> list[XidEvent]:
        """Events since the last call, waiting up to `timeout_s` for the first."""
        ...


class PortStates(Protocol):
    def unusable(self) -> frozenset[str]:
        """Keys of the RDMA ports that cannot carry traffic now (port or link down)."""
        ...


def apply_xids(core: DevicePluginCore, events: Iterable[XidEvent]) -> bool:
    """Mark GPUs per the events; whether any device list changed."""
    changed = False
    for event in events:
        if event.recovered:
            if core.set_gpu_health(event.gpu, True):
                log.info("event=gpu-recovered gpu=%d", event.gpu)
                changed = True
        elif event.xid in CRITICAL_XIDS:
            if core.set_gpu_health(event.gpu, False, reason=f"XID {event.xid}"):
                log.warning("event=gpu-unhealthy gpu=%d xid=%d", event.gpu, event.xid)
                changed = True
        else:
            log.info("event=xid gpu=%d xid=%d action=none", event.gpu, event.xid)
    return changed


def apply_ports(core: DevicePluginCore, nics: Iterable[str], unusable: frozenset[str]) -> bool:
    changed = False
    for key in nics:
        reason = None if key not in unusable else "port or link down"
        if core.set_nic_health(key, key not in unusable, reason=reason):
            log.warning("event=port-%s nic=%s", "down" if key in unusable else "up", key)
            changed = True
    return changed


class HealthMonitor:
    """Polls the sources on a thread; calls `on_change(resource)` when a list changed."""

    def __init__(
        self,
        core: DevicePluginCore,
        xids: XidSource | None,
        ports: PortStates | None,
        nics: Iterable[str],
        on_change: Callable[[str], None],
        *,
        port_interval_s: float = 1.0,
    ) -> None:
        self.core = core
        self.xids = xids
        self.ports = ports
        self.nics = tuple(nics)
        self.on_change = on_change
        self.port_interval_s = port_interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpulet-health", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        next_ports = 0.0
        # XIDs are waited for this long at a time: an idle agent wakes twice a second, and a
        # lost GPU still shows in the next ListAndWatch message well within 1 s.
        wait_s = 0.5
        while not self._stop.is_set():
            try:
                if self.xids is not None:
                    if apply_xids(self.core, self.xids.events(wait_s)):
                        self.on_change(GPU_RESOURCE)
                else:
                    self._stop.wait(wait_s)
                if self.ports is not None and self.nics:
                    now = time.monotonic()
                    if now >= next_ports:
                        next_ports = now + self.port_interval_s
                        if apply_ports(self.core, self.nics, self.ports.unusable()):
                            self.on_change(RDMA_RESOURCE)
            except Exception:  # a broken source must not end health checking
                log.exception("event=health-source-failed")
                self._stop.wait(1.0)
