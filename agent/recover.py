"""Rebuilding grants the checkpoint lost from the pods themselves: each pod bound to this node
carries the extender's assignment (what each container gets) and the agent's
`gpulet.io/allocated` (which device IDs kubelet gave each container). Together they give the
exact grant, a slice as a slice; kubelet's pod-resources List alone gives only the IDs, and
the agent would have to hold their GPUs whole (`agent.standalone.adopt`)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from deviceplugin.grants import GpuShare, Grant
from deviceplugin.ledger import DoubleGrantError, Ledger
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.api.assignment import AssignmentError, parse_assignment
from gpulet.api.resources import ALLOCATED_ANNOTATION, ASSIGNMENT_ANNOTATION
from gpulet.topology import Topology

log = logging.getLogger("gpulet.agent")


def recover_from_pods(
    ledger: Ledger, pods: Iterable[Mapping[str, Any]], topo: Topology, config: PluginConfig
) -> int:
    """Add to `ledger` the grants that pods record and it does not hold; how many."""
    held = {(g.resource, d) for g in ledger.grants() for d in g.device_ids}
    done = {(g.pod_uid, g.container, g.resource) for g in ledger.grants()}
    by_uuid = {g.uuid: g for g in topo.gpus}
    added = 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        annotations = meta.get("annotations") or {}
        try:
            record = json.loads(annotations.get(ALLOCATED_ANNOTATION) or "null")
            assignment = parse_assignment(annotations.get(ASSIGNMENT_ANNOTATION) or "")
        except (ValueError, AssignmentError):
            continue
        if not isinstance(record, dict) or assignment.node != topo.node:
            continue
        for name, resources in (record.get("containers") or {}).items():
            entry = assignment.container(name)
            if entry is None or not isinstance(resources, dict):
                continue
            for resource, ids in resources.items():
                if resource not in (GPU_RESOURCE, RDMA_RESOURCE) or not isinstance(ids, list):
                    continue
                device_ids = tuple(str(i) for i in ids)
                if (uid, name, resource) in done or any((resource, d) in held for d in device_ids):
                    continue
                gpus: tuple[GpuShare, ...] = ()
                nics: tuple[str, ...] = ()
                region = None
                if resource == GPU_RESOURCE and device_ids:
                    gpus = tuple(
                        GpuShare(
                            a.uuid,
                            by_uuid[a.uuid].index,
                            a.core,
                            by_uuid[a.uuid].memory_mib if a.exclusive else a.memory_mib,
                            a.exclusive,
                        )
                        for a in entry.gpus
                        if a.uuid in by_uuid
                    )
                    region = str(config.region_root / uid / name)
                elif device_ids:
                    nics = entry.nics
                grant = Grant(resource, device_ids, gpus, nics, uid, name, region, time.time())
                try:
                    ledger.add(grant)
                except DoubleGrantError as e:
                    log.warning("event=not-recovered pod_uid=%s reason=%r", uid, str(e))
                    continue
                held.update((resource, d) for d in device_ids)
                done.add((uid, name, resource))
                added += 1
    return added
