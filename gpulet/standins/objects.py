"""Kubernetes objects as kube-scheduler and the API server send them (JSON), for tests of
the extender: Nodes (with the previous release's topology annotation, or without), a node's
NodeTopology and heartbeat Lease as an agent of this release writes them, Pods that ask for
gpulet resources."""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import replace
from typing import Any

from gpulet.api import nodetopology as nt
from gpulet.api.resources import (
    BATCH_CORE_RESOURCE,
    BATCH_MEMORY_RESOURCE,
    CORE_RESOURCE,
    GPU_RESOURCE,
    HEARTBEAT_ANNOTATION,
    MEMORY_RESOURCE,
    RDMA_RESOURCE,
    TOPOLOGY_ANNOTATION,
)
from gpulet.topology import Topology
from gpulet.topology.document import dumps, to_document


def node_uid(name: str) -> str:
    """The uid `node_object` gives the Node `name`."""
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_DNS, name))


def node_object(
    name: str,
    topo: Topology,
    slots: int = 100,
    *,
    heartbeat: str | None = None,
    legacy: bool = True,
    uid: str | None = None,
) -> dict[str, Any]:
    """A v1.Node for `topo` renamed `name`, as an agent of the previous release publishes it:
    its topology in `gpulet.io/topology` (with `heartbeat` as its `gpulet.io/heartbeat`, when
    given). `legacy` False: as an agent of this release leaves it, without either."""
    annotations = {}
    if legacy:
        annotations[TOPOLOGY_ANNOTATION] = dumps(replace(topo, node=name))
    if heartbeat is not None:
        annotations[HEARTBEAT_ANNOTATION] = heartbeat
    shareable = sum(1 for g in topo.gpus if not g.mig)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": uid or node_uid(name),
            "labels": {"kubernetes.io/hostname": name},
            "annotations": annotations,
        },
        "spec": {},
        "status": {
            "capacity": {
                GPU_RESOURCE: str(shareable * slots),
                RDMA_RESOURCE: str(len(topo.nics) * slots),
            },
            "allocatable": {
                GPU_RESOURCE: str(shareable * slots),
                RDMA_RESOURCE: str(len(topo.nics) * slots),
                "cpu": "224",
                "memory": "2Ti",
            },
        },
    }


def node_topology_object(name: str, topo: Topology, *, uid: str | None = None) -> dict[str, Any]:
    """The NodeTopology of node `name` (`topo` renamed), owned by the Node with `uid`
    (default: the uid `node_object` gives it)."""
    return nt.node_topology(name, uid or node_uid(name), to_document(replace(topo, node=name)))


def lease_object(
    node: str,
    *,
    renewed: float,
    namespace: str = nt.DEFAULT_NAMESPACE,
    duration_s: int = nt.LEASE_DURATION_S,
    acquired: float | None = None,
    pod: str | None = None,
) -> dict[str, Any]:
    """The heartbeat Lease of `node`, renewed at `renewed` (epoch seconds) by the agent pod
    `pod` (default: `gpulet-agent-<node>`)."""
    holder = nt.holder_identity(node, pod or f"gpulet-agent-{node}")
    taken = renewed if acquired is None else acquired
    return nt.lease(node, namespace, holder, renewed=renewed, acquired=taken, duration_s=duration_s)


def container(
    name: str = "main",
    gpus: int | str | None = None,
    core: int | str | None = None,
    memory: int | str | None = None,
    rdma: int | None = None,
    *,
    batch_core: int | str | None = None,
    batch_memory: int | str | None = None,
) -> dict[str, Any]:
    limits: dict[str, Any] = {"cpu": "4", "memory": "16Gi"}
    for resource, value in (
        (GPU_RESOURCE, gpus),
        (CORE_RESOURCE, core),
        (MEMORY_RESOURCE, memory),
        (RDMA_RESOURCE, rdma),
        (BATCH_CORE_RESOURCE, batch_core),
        (BATCH_MEMORY_RESOURCE, batch_memory),
    ):
        if value is not None:
            limits[resource] = str(value)
    return {
        "name": name,
        "image": "nvcr.io/nvidia/pytorch:25.01-py3",
        "resources": {"limits": limits, "requests": dict(limits)},
    }


def pod_object(
    name: str,
    *containers: dict[str, Any],
    namespace: str = "default",
    annotations: dict[str, str] | None = None,
    init: tuple[dict[str, Any], ...] = (),
    uid: str | None = None,
) -> dict[str, Any]:
    """A v1.Pod as kube-scheduler sends it to the extender (not yet bound)."""
    spec: dict[str, Any] = {
        "containers": list(containers) or [container()],
        "schedulerName": "default-scheduler",
        "restartPolicy": "Always",
    }
    if init:
        spec["initContainers"] = list(init)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": uid or str(uuidlib.uuid4()),
            "resourceVersion": "1",
            "creationTimestamp": "2026-11-23T10:00:00Z",
            "annotations": dict(annotations or {}),
        },
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "Guaranteed"},
    }
