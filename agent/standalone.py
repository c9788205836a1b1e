"""`gpulet agent run --standalone`: the device plugins for one node, with no Kubernetes API.

Every container gets whole free GPUs chosen by the placement engine, exclusively (there is no
extender, hence no assignment to follow). State lives in `state_dir`: the checkpoint of what
was granted, and the containers' region directories.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc

from deviceplugin.api import podresources_v1_pb2 as podres
from deviceplugin.api import podresources_v1_pb2_grpc as podres_grpc
from deviceplugin.core import DevicePluginCore
from deviceplugin.health import PortStates, XidSource
from deviceplugin.ledger import CheckpointError, Ledger
from deviceplugin.manager import PluginManager
from deviceplugin.resources import PluginConfig
from gpulet.topology import Topology

log = logging.getLogger("gpulet.agent")

CHECKPOINT = "checkpoint.json"


@dataclass(frozen=True)
class Standalone:
    """What `run` needs: the node, where kubelet is, where our state goes."""

    topo: Topology
    plugin_dir: Path
    state_dir: Path
    config: PluginConfig
    pod_resources_socket: Path | None = None


def live_devices(socket: Path, timeout: float = 2.0) -> Mapping[str, set[str]] | None:
    """Device IDs in use per resource, from kubelet's pod-resources List; None if unreachable."""
    if not socket.exists():
        return None
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            reply = podres_grpc.PodResourcesListerStub(channel).List(
                podres.ListPodResourcesRequest(), timeout=timeout
            )
    except grpc.RpcError as err:
        log.warning("event=pod-resources-unreachable socket=%s error=%r", socket, str(err))
        return None
    live: dict[str, set[str]] = {}
    for pod in reply.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                live.setdefault(devices.resource_name, set()).update(devices.device_ids)
    return live


def load_ledger(path: Path) -> Ledger:
    try:
        return Ledger.load(path)
    except CheckpointError as err:
        # The damaged file was kept aside by Ledger.load; kubelet's List rebuilds the rest.
        log.error("event=checkpoint-unusable error=%r action=start-empty", str(err))
        return Ledger()


def build(spec: Standalone) -> DevicePluginCore:
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = spec.state_dir / CHECKPOINT
    core = DevicePluginCore(
        spec.topo, spec.config, load_ledger(checkpoint), pods=None, checkpoint=checkpoint
    )
    if spec.pod_resources_socket is not None:
        live = live_devices(spec.pod_resources_socket)
        if live is not None:
            dropped = core.reconcile(live)
            log.info("event=reconciled dropped=%d", len(dropped))
    return core


def start(spec: Standalone, xids: XidSource | None, ports: PortStates | None) -> PluginManager:
    manager = PluginManager(build(spec), spec.plugin_dir, xids, ports)
    manager.start()
    # What exists now (topology, placement tables, gRPC machinery) lives as long as the
    # agent: keep it out of the collector's full passes, which otherwise land in Allocate.
    gc.freeze()
    return manager
