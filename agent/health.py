"""Where device health comes from: NVML's XID events on a real node, a plain file on a
simulated one, and the RDMA ports' state in sysfs (plus the netdev's link state)."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from agent.discovery.errors import DiscoveryError
from agent.discovery.infiniband import INFINIBAND, parse_port_state
from agent.discovery.netlink import LinkStateReader
from agent.discovery.sysfs import SysfsTree
from deviceplugin.health import XidEvent
from gpulet.topology import Nic, Topology

log = logging.getLogger("gpulet.health")

#: The file a simulated node's XIDs are written to, in the simulated node's directory.
XID_FILE = "xid-events"


class FileXidSource:
    """XIDs appended to a file, one per line: `GPU_INDEX XID`, or `GPU_INDEX recovered`.

    This is how a simulated node's GPU fails (`echo "3 79" >> NODE/xid-events`). Lines that
    do not parse are logged and skipped; the file is read from where the last call stopped.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = path.stat().st_size if path.exists() else 0

    #: How often the file is looked at while waiting: a stat, and a read only if it grew.
    POLL_S = 0.25

    def events(self, timeout_s: float) -> list[XidEvent]:
        deadline = time.monotonic() + timeout_s
        while True:
            found = self._read()
            if found or time.monotonic() >= deadline:
                return found
            time.sleep(min(self.POLL_S, max(0.0, deadline - time.monotonic())))

    def _read(self) -> list[XidEvent]:
        try:
            if self.path.stat().st_size <= self._offset:
                return []
            with self.path.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1  # a line still being written waits for its newline
        self._offset += end
        found = []
        for raw in data[:end].decode("utf-8", "replace").splitlines():
            parts = raw.split()
            if not parts:
                continue
            try:
                gpu = int(parts[0])
                if len(parts) == 2 and parts[1] == "recovered":
                    found.append(XidEvent(gpu, recovered=True))
                elif len(parts) == 2:
                    found.append(XidEvent(gpu, int(parts[1])))
                else:
                    raise ValueError
            except ValueError:
                log.warning("event=bad-xid-line file=%s line=%r", self.path, raw)
        return found


class NvmlXidSource:
    """XID critical-error events from NVML (pynvml's event set).

    Recovery needs a GPU reset, after which the agent restarts: NVML reports no recovery.
    """

    def __init__(self, pynvml: Any) -> None:
        self._nvml = pynvml
        self._set = pynvml.nvmlEventSetCreate()
        self._index: dict[int, int] = {}
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                pynvml.nvmlDeviceRegisterEvents(
                    handle, pynvml.nvmlEventTypeXidCriticalError, self._set
                )
            except pynvml.NVMLError as err:
                log.warning("event=no-xid-events gpu=%d error=%r", i, str(err))
        self._lock = threading.Lock()

    def events(self, timeout_s: float) -> list[XidEvent]:
        nvml = self._nvml
        try:
            with self._lock:
                data = nvml.nvmlEventSetWait_v2(self._set, int(timeout_s * 1000))
        except nvml.NVMLError_Timeout:
            return []
        index = nvml.nvmlDeviceGetIndex(data.device)
        return [XidEvent(int(index), int(data.eventData))]


class SysfsPortStates:
    """Ports whose InfiniBand state is not ACTIVE, or whose netdev is DOWN."""

    def __init__(self, sysfs_root: Path, topo: Topology, links: LinkStateReader) -> None:
        self._tree = SysfsTree(sysfs_root)
        self._nics = topo.nics
        self._links = links
        #: Each port's state file, resolved once (a safe resolution walks every symlink in
        #: Python, and this runs every second), and again after a read fails.
        self._files: dict[str, Path] = {}

    def _state(self, nic: Nic) -> str:
        path = INFINIBAND / nic.name / "ports" / str(nic.port) / "state"
        known = self._files.get(nic.key)
        if known is not None:
            try:
                return parse_port_state(known.read_text().strip(), str(path))
            except OSError:
                del self._files[nic.key]
        state = parse_port_state(self._tree.read(path), str(path))
        self._files[nic.key] = self._tree.path(path)
        return state

    def unusable(self) -> frozenset[str]:
        down = set()
        for nic in self._nics:
            try:
                state = self._state(nic)
            except (OSError, DiscoveryError) as err:
                log.warning("event=port-state-unreadable nic=%s error=%r", nic.key, str(err))
                state = "UNKNOWN"
            link = self._links.operstate(nic.netdev) if nic.netdev else None
            if state != "ACTIVE" or link == "DOWN":
                down.add(nic.key)
        return frozenset(down)


def xid_file(root: Path) -> Path:
    """The XID file of a simulated node's directory (created empty if missing)."""
    path = root / XID_FILE
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
    return path
