"""`gpulet agent run --standalone`: the device plugins for one node, with no Kubernetes API.

Every container gets whole free GPUs chosen by the placement engine, exclusively (there is no
extender, hence no assignment to follow). The core is built as in the other mode
(`agent.plugincore.build`).
"""

from __future__ import annotations

import gc
from dataclasses import dataclass

from agent.plugincore import AgentSpec, build
from agent.supervisor import Supervisor
from deviceplugin.core import DevicePluginCore
from deviceplugin.health import PortStates, XidSource
from deviceplugin.manager import PluginManager


@dataclass
class StandaloneAgent:
    """The standalone agent's parts; `supervisor` owns their lifecycle (`stop`)."""

    core: DevicePluginCore
    manager: PluginManager
    supervisor: Supervisor

    def stop(self) -> None:
        self.supervisor.stop()


def start(spec: AgentSpec, xids: XidSource | None, ports: PortStates | None) -> StandaloneAgent:
    """Serve kubelet: the device plugins (both resources' gRPC servers, their registration,
    the health watchers), with whole GPUs chosen by the placement engine."""
    parts = Supervisor()
    with parts.starting():
        core = build(spec)
        manager = parts.start("device-plugins", PluginManager(core, spec.plugin_dir, xids, ports))
    # What exists now (topology, placement tables, gRPC machinery) lives as long as the
    # agent: keep it out of the collector's full passes, which otherwise land in Allocate.
    gc.freeze()
    return StandaloneAgent(core, manager, parts)
