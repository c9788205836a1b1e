"""What kube-scheduler's preemption proposes on one node, for `gpulet demo` (which plays
kube-scheduler): DefaultPreemption's victim selection, counting what kube-scheduler counts,
the pods' requests against the node's allocatable. It cannot see GPUs: that is the extender's
preempt verb's to check. The end-to-end tests run the real kube-scheduler instead."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gpulet.api.resources import CORE_RESOURCE, MEMORY_RESOURCE
from gpulet.placement.podspec import whole_quantity
from scorer.preemption import pod_priority

#: The resources counted here: the node-level aggregates the agent advertises.
#: kube-scheduler counts every resource; the demo's kubelet stand-in posts no Node status
#: (no gpulet.io/gpu, no cpu), and the demo's pods ask little of those.
COUNTED = (CORE_RESOURCE, MEMORY_RESOURCE)


def requests(pod: Mapping[str, Any]) -> dict[str, int]:
    """The pod's requests of `COUNTED`, summed over its containers."""
    total = dict.fromkeys(COUNTED, 0)
    for c in (pod.get("spec") or {}).get("containers") or ():
        asked = ((c.get("resources") or {}).get("requests")) or {}
        for name in COUNTED:
            if name in asked:
                total[name] += whole_quantity(asked[name]) or 0
    return total


def victims(
    allocatable: Mapping[str, str], pods: Sequence[Mapping[str, Any]], preemptor: Mapping[str, Any]
) -> list[Mapping[str, Any]] | None:
    """The pods on the node that kube-scheduler would evict for `preemptor`: every pod of lower
    priority removed (None where the preemptor still does not fit), then put back one by one,
    highest priority first and the oldest first among equals, as long as the preemptor still
    fits. An empty list: it fits as the node is, so the node is no candidate."""
    have = {name: whole_quantity(allocatable.get(name, "0")) or 0 for name in COUNTED}
    want = requests(preemptor)
    level = pod_priority(preemptor)
    stays = [p for p in pods if pod_priority(p) >= level]
    lower = sorted(
        (p for p in pods if pod_priority(p) < level),
        key=lambda p: (-pod_priority(p), str(p["metadata"].get("creationTimestamp", ""))),
    )

    def fits(on_node: Iterable[Mapping[str, Any]]) -> bool:
        used = dict.fromkeys(COUNTED, 0)
        for p in on_node:
            for name, value in requests(p).items():
                used[name] += value
        return all(used[name] + want[name] <= have[name] for name in COUNTED)

    if not fits(stays):
        return None
    chosen: list[Mapping[str, Any]] = []
    kept = list(stays)
    for pod in lower:
        if fits([*kept, pod]):
            kept.append(pod)
        else:
            chosen.append(pod)
    return chosen
