"""What each GPU and RDMA port of this node is serving, per container, with live usage: the
agent's `/allocations` (JSON; schema in docs/cli.md, `gpulet node allocations`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from agent.monitor import Monitor
from deviceplugin.core import DevicePluginCore
from gpulet.api.assignment import BATCH, PRODUCTION
from gpulet.api.resources import GPU_RESOURCE

VERSION = 1


def allocations(
    core: DevicePluginCore,
    monitor: Monitor | None,
    pod: Callable[[str], Mapping[str, Any] | None],
) -> dict[str, Any]:
    topo = core.topo
    state = core.node_state()
    sick_gpus, sick_nics = core.unhealthy_gpus(), core.unhealthy_nics()
    latest = monitor.latest if monitor is not None else None
    measured = (
        {(c.pod_uid, c.container, c.gpu_uuid): c for c in latest.containers} if latest else {}
    )
    gpu_users: dict[str, list[dict[str, Any]]] = {g.uuid: [] for g in topo.gpus}
    nic_users: dict[str, list[dict[str, Any]]] = {n.key: [] for n in topo.nics}
    for grant in core.grants():
        if grant.spent:
            continue
        meta = (pod(grant.pod_uid) or {}).get("metadata") or {} if grant.pod_uid else {}
        who = {
            "pod_uid": grant.pod_uid,
            "namespace": meta.get("namespace"),
            "pod": meta.get("name"),
            "container": grant.container,
        }
        if grant.resource == GPU_RESOURCE:
            for share in grant.gpus:
                m = measured.get((grant.pod_uid or "", grant.container or "", share.uuid))
                gpu_users.setdefault(share.uuid, []).append(
                    {
                        **who,
                        "class": BATCH if share.batch else PRODUCTION,
                        "core": share.core,
                        "memory_mib": share.memory_mib,
                        "exclusive": share.exclusive,
                        "used_mib": m.used_mib if m else None,
                        "utilization": m.util_percent if m else None,
                    }
                )
        else:
            for key in grant.nics:
                nic_users.setdefault(key, []).append(who)
    gpus = []
    for g in topo.gpus:
        use = state.gpu(g.index)
        gpus.append(
            {
                "index": g.index,
                "uuid": g.uuid,
                "numa": g.numa,
                "healthy": g.index not in sick_gpus,
                "memory_mib": g.memory_mib,
                "allocated": {"core": use.core, "memory_mib": use.memory_mib, "slots": use.slots},
                "batch": {"core": use.batch_core, "memory_mib": use.batch_memory_mib},
                "used_mib": latest.gpu_used_mib.get(g.uuid, 0) if latest else None,
                "utilization": latest.gpu_util.get(g.uuid, 0) if latest else None,
                "containers": gpu_users[g.uuid],
            }
        )
    nics = [
        {
            "key": n.key,
            "numa": n.numa,
            "healthy": n.key not in sick_nics and n.active,
            "slots": state.nic_slots.get(n.key, 0),
            "containers": nic_users[n.key],
        }
        for n in topo.nics
    ]
    return {"version": VERSION, "node": topo.node, "gpus": gpus, "nics": nics}
