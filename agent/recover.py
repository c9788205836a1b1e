"""Rebuilding grants the checkpoint lost from the pods themselves: each pod bound to this node
carries the extender's assignment (what each container gets) and the agent's
`gpulet.io/allocated` (which device IDs kubelet gave each container). Together they give the
exact grant, a slice as a slice; kubelet's pod-resources List alone gives only the IDs, and
the agent would have to hold their GPUs whole (`agent.plugincore.adopt`).

Both annotations are the pod owner's to edit, so they are trusted no further than Allocate
trusts them: a pod whose assignment gives other than its own resources ask
(`deviceplugin.assignment.check_entry`), or whose record does not fit its spec, is not
recovered (`event=not-recovered`) and is left to kubelet's List. Where that List can be
read, it is also the judge of which device IDs are whose: a record claiming IDs that kubelet
does not show held by that very container is not recovered either."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping, Set
from pathlib import Path
from typing import Any

from agent.kube import container_requests
from agent.plugincore import ListedContainer
from deviceplugin.assignment import ContainerRequest, EntryError, check_entry
from deviceplugin.grants import GpuShare, Grant
from deviceplugin.inventory import shareable_gpus
from deviceplugin.ledger import DoubleGrantError, Ledger
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.api.assignment import AssignmentError, parse_assignment
from gpulet.api.resources import ALLOCATED_ANNOTATION, ASSIGNMENT_ANNOTATION
from gpulet.topology import Gpu, Topology

log = logging.getLogger("gpulet.agent")


class NotRecovered(ValueError):
    """Why a pod's annotations cannot be trusted to rebuild its grants."""


def recover_from_pods(
    ledger: Ledger,
    pods: Iterable[Mapping[str, Any]],
    topo: Topology,
    config: PluginConfig,
    listed: Iterable[ListedContainer] | None = None,
) -> int:
    """Add to `ledger` the grants that pods record and it does not hold; how many.
    `listed`: kubelet's pod-resources List, when it could be read."""
    kubelet = _held_by(listed) if listed is not None else None
    held = {(g.resource, d) for g in ledger.grants() for d in g.device_ids}
    done = {(g.pod_uid, g.container, g.resource) for g in ledger.grants()}
    gpus = {g.uuid: g for g in shareable_gpus(topo)}
    ports = frozenset(n.key for n in topo.nics)
    added = 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if ALLOCATED_ANNOTATION not in (meta.get("annotations") or {}):
            continue  # nothing was allocated to it (or recorded): nothing to rebuild
        try:
            grants = pod_grants(pod, topo.node, gpus, ports, config.region_root)
            if kubelet is not None:
                _check_held(pod, grants, kubelet)
        except NotRecovered as e:
            log.warning("event=not-recovered pod_uid=%s reason=%r", uid, str(e))
            continue
        for grant in grants:
            key = (grant.pod_uid, grant.container, grant.resource)
            if key in done or any((grant.resource, d) in held for d in grant.device_ids):
                continue
            try:
                ledger.add(grant)
            except DoubleGrantError as e:
                log.warning("event=not-recovered pod_uid=%s reason=%r", uid, str(e))
                continue
            held.update((grant.resource, d) for d in grant.device_ids)
            done.add(key)
            added += 1
    return added


def pod_grants(
    pod: Mapping[str, Any],
    node: str,
    gpus: Mapping[str, Gpu],
    ports: Set[str],
    region_root: Path,
) -> list[Grant]:
    """The grants `pod`'s annotations record, each checked against the pod's own request as
    Allocate checks it: `gpus` are the GPUs this node shares, `ports` its RDMA ports.
    NotRecovered for the first thing that does not fit."""
    meta = pod.get("metadata") or {}
    uid = str(meta.get("uid") or "")
    annotations = meta.get("annotations") or {}
    requests, problem = container_requests(pod)
    if problem is not None:
        raise NotRecovered(problem)
    try:
        record = json.loads(annotations.get(ALLOCATED_ANNOTATION) or "null")
        assignment = parse_assignment(annotations.get(ASSIGNMENT_ANNOTATION) or "")
    except (ValueError, AssignmentError) as e:
        raise NotRecovered(str(e)) from None
    if assignment.node != node:
        raise NotRecovered(f"its assignment is for node {assignment.node!r}, not {node!r}")
    containers = record.get("containers") if isinstance(record, dict) else None
    if not isinstance(containers, dict):
        raise NotRecovered(f"{ALLOCATED_ANNOTATION} has no containers object")
    memory = {uuid: g.memory_mib for uuid, g in gpus.items()}
    grants = []
    for name, resources in containers.items():
        request = _named(requests, name)
        entry = assignment.container(name)
        if request is None:
            raise NotRecovered(f"the pod has no container {name!r}")
        if entry is None:
            raise NotRecovered(f"its assignment has nothing for container {name!r}")
        if not isinstance(resources, dict):
            raise NotRecovered(f"{ALLOCATED_ANNOTATION}: container {name!r} is not an object")
        try:
            check_entry(request, entry, memory, ports)
        except EntryError as e:
            raise NotRecovered(f"container {name!r}: {e}") from None
        for resource, ids in resources.items():
            if resource not in (GPU_RESOURCE, RDMA_RESOURCE):
                continue
            if not isinstance(ids, list) or len(ids) not in (0, request.count(resource)):
                raise NotRecovered(
                    f"container {name!r} asks {request.count(resource)} {resource}, but "
                    f"{ALLOCATED_ANNOTATION} records {ids!r}"
                )
            device_ids = tuple(str(i) for i in ids)
            shares: tuple[GpuShare, ...] = ()
            nics: tuple[str, ...] = ()
            region = None
            if resource == GPU_RESOURCE and device_ids:
                shares = tuple(
                    a.on_gpu(gpus[a.uuid].index, gpus[a.uuid].memory_mib) for a in entry.gpus
                )
                region = str(region_root / uid / name)
            elif device_ids:
                nics = entry.nics
            grants.append(Grant(resource, device_ids, shares, nics, uid, name, region, time.time()))
    return grants


def _held_by(listed: Iterable[ListedContainer]) -> dict[tuple[str, str, str, str], set[str]]:
    """(namespace, pod, container, resource) -> the device IDs kubelet says it holds."""
    out: dict[tuple[str, str, str, str], set[str]] = {}
    for c in listed:
        for resource, ids in c.devices.items():
            out.setdefault((c.namespace, c.pod, c.container, resource), set()).update(ids)
    return out


def _check_held(
    pod: Mapping[str, Any],
    grants: Iterable[Grant],
    kubelet: Mapping[tuple[str, str, str, str], set[str]],
) -> None:
    """NotRecovered unless kubelet's List shows each grant's IDs held by its container."""
    meta = pod.get("metadata") or {}
    namespace, name = str(meta.get("namespace") or "default"), str(meta.get("name") or "")
    for g in grants:
        held = kubelet.get((namespace, name, str(g.container), g.resource), set())
        stray = sorted(set(g.device_ids) - held)
        if stray:
            raise NotRecovered(
                f"container {g.container!r}: {ALLOCATED_ANNOTATION} records {g.resource} "
                f"{', '.join(stray)}, which kubelet's pod-resources List does not show held "
                "by that container"
            )


def _named(requests: Iterable[ContainerRequest], name: str) -> ContainerRequest | None:
    return next((r for r in requests if r.name == name), None)
