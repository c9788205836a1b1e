"""Runs the two plugins against one kubelet: serve, register, and serve and register again
whenever kubelet restarts (it wipes the plugin directory's sockets and re-creates its own).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import grpc

from deviceplugin.core import DevicePluginCore
from deviceplugin.health import HealthMonitor, PortStates, XidSource
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE
from deviceplugin.server import KUBELET_SOCKET, PluginServer

SOCKETS = {GPU_RESOURCE: "gpulet-gpu.sock", RDMA_RESOURCE: "gpulet-rdma.sock"}
#: How often the kubelet socket and ours are looked at: a kubelet restart is noticed within
#: this, well inside the 2 s in which the plugins must be registered again; each look is
#: three stat calls, and an idle agent wakes for little else.
WATCH_INTERVAL_S = 0.25

log = logging.getLogger("gpulet.deviceplugin")


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_ctime_ns


class PluginManager:
    """Both resources' servers, their registration, and the health monitor."""

    def __init__(
        self,
        core: DevicePluginCore,
        plugin_dir: Path,
        xids: XidSource | None = None,
        ports: PortStates | None = None,
    ) -> None:
        self.core = core
        self.plugin_dir = plugin_dir
        resources = [GPU_RESOURCE] + ([RDMA_RESOURCE] if core.topo.nics else [])
        self.servers = {r: PluginServer(core, r, plugin_dir, SOCKETS[r]) for r in resources}
        self.health = HealthMonitor(
            core, xids, ports, [n.key for n in core.topo.nics], self._changed
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="gpulet-kubelet", daemon=True)

    def _changed(self, resource: str) -> None:
        server = self.servers.get(resource)
        if server is not None:
            server.changed()

    def start(self) -> None:
        self.plugin_dir.mkdir(parents=True, exist_ok=True)
        self.health.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.health.stop()
        for server in self.servers.values():
            server.stop()
            server.socket.unlink(missing_ok=True)

    def serving(self) -> bool:
        """Whether every resource's socket is in place (what the agent's /healthz reports:
        kubelet can reach the plugins)."""
        return not self._stop.is_set() and all(s.socket.exists() for s in self.servers.values())

    def _watch(self) -> None:
        kubelet = self.plugin_dir / KUBELET_SOCKET
        registered_with: tuple[int, int] | None = None
        waiting = False
        while not self._stop.is_set():
            current = _identity(kubelet)
            if current is None and not waiting:
                # Said once per absence: the plugins register as soon as the socket appears.
                log.info("event=waiting-for-kubelet socket=%s", kubelet)
                waiting = True
            ours_gone = any(not s.socket.exists() for s in self.servers.values())
            if current is not None and (current != registered_with or ours_gone):
                if registered_with is not None:
                    log.info("event=kubelet-restarted action=re-register")
                elif waiting:
                    log.info("event=kubelet-found socket=%s action=register", kubelet)
                waiting = False
                if self._serve_and_register():
                    registered_with = current
            self._stop.wait(WATCH_INTERVAL_S)

    def _serve_and_register(self) -> bool:
        for server in self.servers.values():
            server.stop()
            server.serve()
        try:
            for server in self.servers.values():
                server.register()
        except grpc.RpcError as err:
            log.warning("event=register-failed error=%r", str(err))
            time.sleep(WATCH_INTERVAL_S)
            return False
        return True
