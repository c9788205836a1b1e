"""The device plugins' core as both modes of the agent build it (`build`): the node, where
kubelet is and where the agent's state goes (`AgentSpec`), the core restored from the
checkpoint in `state_dir` and checked against what kubelet reports (pod-resources List), with
what the checkpoint lost adopted (`adopt`). The agent with the API (`agent.node_agent`) adds
the pods, a hook on each grant and recovery from the pods' assignments; standalone
(`agent.standalone`) serves the core as it is. State lives in `state_dir`: the checkpoint of
what was granted, and the containers' region directories.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from deviceplugin.api import podresources_v1_pb2 as podres
from deviceplugin.api import podresources_v1_pb2_grpc as podres_grpc
from deviceplugin.assignment import PodSource
from deviceplugin.core import DevicePluginCore
from deviceplugin.grants import GpuShare, Grant
from deviceplugin.inventory import owner_of
from deviceplugin.ledger import CheckpointError, Ledger
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.topology import Topology

log = logging.getLogger("gpulet.agent")

CHECKPOINT = "checkpoint.json"


@dataclass(frozen=True)
class AgentSpec:
    """What either mode of the agent needs: the node, where kubelet is, where our state
    goes."""

    topo: Topology
    plugin_dir: Path
    state_dir: Path
    config: PluginConfig
    pod_resources_socket: Path | None = None


@dataclass(frozen=True)
class ListedContainer:
    """One container in kubelet's pod-resources List: whose it is, and the device IDs it
    holds per resource."""

    namespace: str
    pod: str
    container: str
    devices: Mapping[str, tuple[str, ...]]


def listed_containers(socket: Path, timeout: float = 2.0) -> list[ListedContainer] | None:
    """Every container kubelet reports holding devices (pod-resources List); None when
    kubelet cannot be reached."""
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
    listed = []
    for pod in reply.pod_resources:
        for container in pod.containers:
            held: dict[str, list[str]] = {}
            for devices in container.devices:
                held.setdefault(devices.resource_name, []).extend(devices.device_ids)
            if held:
                devices_held = {r: tuple(ids) for r, ids in held.items()}
                listed.append(
                    ListedContainer(pod.namespace, pod.name, container.name, devices_held)
                )
    return listed


def adopt(ledger: Ledger, topo: Topology, containers: Iterable[Mapping[str, Sequence[str]]]) -> int:
    """Grants for what kubelet says containers hold and the ledger does not know (a lost
    checkpoint): in standalone mode every GPU grant is whole GPUs, so each GPU behind such an
    ID is held whole again and never handed out twice. Returns how many were adopted."""
    known = {(g.resource, d) for g in ledger.grants() for d in g.device_ids}
    by_uuid = {g.uuid: g for g in topo.gpus}
    adopted = 0
    for held in containers:
        for resource, device_ids in held.items():
            unknown = tuple(d for d in device_ids if (resource, d) not in known)
            if not unknown:
                continue
            owners = dict.fromkeys(o for o in map(owner_of, unknown) if o is not None)
            gpus = tuple(
                GpuShare.held_whole(u, by_uuid[u].memory_mib, by_uuid[u].index)
                for u in owners
                if resource == GPU_RESOURCE and u in by_uuid
            )
            nics = tuple(o for o in owners if resource == RDMA_RESOURCE)
            ledger.add(Grant(resource, unknown, gpus=gpus, nics=nics, granted_at=time.time()))
            adopted += 1
    return adopted


def load_ledger(path: Path) -> Ledger:
    try:
        return Ledger.load(path)
    except CheckpointError as err:
        # The damaged file was kept aside by Ledger.load; kubelet's List rebuilds the rest.
        log.error("event=checkpoint-unusable error=%r action=start-empty", str(err))
        return Ledger()


def build(
    spec: AgentSpec,
    pods: PodSource | None = None,
    on_granted: Callable[[Grant], None] = lambda grant: None,
    recover: Callable[[Ledger, list[ListedContainer] | None], int] | None = None,
) -> DevicePluginCore:
    """The core, with the checkpoint's grants, checked against what kubelet reports: grants
    of containers that are gone are dropped, holdings the checkpoint lost are adopted.
    `pods`: follow the extender's assignments of these pods (else whole GPUs, standalone).
    `recover` adds what it can rebuild exactly (agent.recover), checked against kubelet's
    List (None: kubelet could not be reached), before the rest of that List is adopted as
    whole GPUs."""
    spec.state_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = spec.state_dir / CHECKPOINT
    ledger = load_ledger(checkpoint)
    listed = (
        listed_containers(spec.pod_resources_socket)
        if spec.pod_resources_socket is not None
        else None
    )
    rebuilt = 0
    if recover is not None:
        rebuilt = recovered = recover(ledger, listed)
        if recovered:
            log.warning("event=recovered grants=%d reason=not-in-checkpoint", recovered)
    if listed is not None:
        adopted = adopt(ledger, spec.topo, (c.devices for c in listed))
        rebuilt += adopted
        if adopted:
            log.warning("event=adopted grants=%d reason=not-in-checkpoint", adopted)
    if rebuilt:
        # On disk at once, not at the next grant: what was rebuilt is the checkpoint now.
        try:
            ledger.save(checkpoint)
        except OSError as e:
            log.error("event=checkpoint-write-failed path=%s error=%r", checkpoint, str(e))
    core = DevicePluginCore(
        spec.topo, spec.config, ledger, pods=pods, checkpoint=checkpoint, on_granted=on_granted
    )
    if listed is not None:
        live: dict[str, set[str]] = {}
        for held in listed:
            for resource, device_ids in held.devices.items():
                live.setdefault(resource, set()).update(device_ids)
        dropped = core.reconcile(live)
        if dropped:
            log.info("event=reconciled dropped=%d", len(dropped))
    return core
