"""`gpulet agent run`: the node agent with the Kubernetes API. It publishes the node's
topology (with a heartbeat), serves the device plugins following the extender's assignments
of the pods bound to this node, pins the containers of pods that ask to their GPUs' NUMA
node, and frees a pod's devices, regions and checkpoint entries when the pod is deleted or
finishes."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, replace
from pathlib import Path

from kubernetes import client

from agent.kube import ApiPodSource, NodePublisher
from agent.pinner import Pinner
from agent.standalone import Standalone, build
from deviceplugin.core import DevicePluginCore
from deviceplugin.health import PortStates, XidSource
from deviceplugin.manager import PluginManager
from gpulet.topology.document import dumps

log = logging.getLogger("gpulet.agent")


@dataclass(frozen=True)
class Pinning:
    """Where NUMA pinning writes (the host's cgroup root) and reads kubelet's CPU manager
    checkpoint (`<kubelet dir>/cpu_manager_state`)."""

    cgroup_root: Path
    cpu_manager_state: Path
    interval_s: float = 5.0


@dataclass
class NodeAgent:
    core: DevicePluginCore
    manager: PluginManager
    pods: ApiPodSource
    publisher: NodePublisher
    pinner: Pinner | None = None

    def stop(self) -> None:
        if self.pinner is not None:
            self.pinner.stop()
        self.manager.stop()
        self.publisher.stop()
        self.pods.stop()


def start(
    spec: Standalone,
    api: client.CoreV1Api,
    xids: XidSource | None,
    ports: PortStates | None,
    *,
    heartbeat_s: float = 60.0,
    sync_timeout_s: float = 30.0,
    pinning: Pinning | None = None,
) -> NodeAgent:
    """Publish, learn the node's pods, then serve kubelet (which may call Allocate at once,
    so the pods come first)."""
    node = spec.config.node_name
    if not node:
        raise ValueError("the agent needs its Kubernetes node name (--node-name)")
    topo = replace(spec.topo, node=node)
    publisher = NodePublisher(api, node, dumps(topo), heartbeat_s=heartbeat_s)
    publisher.start()
    released: list[str] = []
    holder: list[DevicePluginCore] = []

    def gone(uid: str) -> None:
        if holder:
            dropped = holder[0].release_pod(uid)
            if dropped:
                log.info("event=released pod_uid=%s grants=%d", uid, len(dropped))
        else:
            released.append(uid)

    pods = ApiPodSource(api, node, on_gone=gone)
    pods.start()
    if not pods.wait_ready(sync_timeout_s):
        log.warning("event=pods-not-listed timeout_s=%s", sync_timeout_s)
    core = build(replace(spec, topo=topo), pods)
    holder.append(core)
    for uid in released:
        core.release_pod(uid)
    manager = PluginManager(core, spec.plugin_dir, xids, ports)
    manager.start()
    pinner = None
    if pinning is not None:
        pinner = Pinner(
            topo,
            pods.pods,
            pinning.cgroup_root,
            pinning.cpu_manager_state,
            interval_s=pinning.interval_s,
        )
        pinner.start()
    gc.freeze()  # as agent.standalone.start: keep the long-lived out of full collections
    return NodeAgent(core, manager, pods, publisher, pinner)
