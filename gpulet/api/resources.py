"""The names of gpulet's extended resources and annotations. What each means in a pod spec,
its units, defaults and errors: docs/pod-spec.md."""

from __future__ import annotations

from collections.abc import Iterable

#: Counted by kubelet through the device plugin: slots of different physical GPUs.
GPU_RESOURCE = "gpulet.io/gpu"
#: Counted by kubelet through the device plugin: RDMA ports.
RDMA_RESOURCE = "gpulet.io/rdma"
#: Percent of each GPU, 1-100: placed per GPU by the extender; kube-scheduler and kubelet
#: count it against the node's aggregate (`node_aggregates`), which the agent advertises.
CORE_RESOURCE = "gpulet.io/gpu-core"
#: MiB of each GPU: as `CORE_RESOURCE`.
MEMORY_RESOURCE = "gpulet.io/gpu-memory"
#: A batch slice's compute floor (percent of each GPU) and memory cap (MiB of each GPU),
#: placed per GPU against what production leaves idle (docs/colocation.md); kube-scheduler
#: and kubelet count them against the node's measured idle aggregates, which the agent
#: advertises.
BATCH_CORE_RESOURCE = "gpulet.io/batch-gpu-core"
BATCH_MEMORY_RESOURCE = "gpulet.io/batch-gpu-memory"
#: What the device plugin serves.
RESOURCES = (GPU_RESOURCE, RDMA_RESOURCE)
#: What the extender manages (its `managedResources`).
MANAGED_RESOURCES = (
    GPU_RESOURCE,
    CORE_RESOURCE,
    MEMORY_RESOURCE,
    RDMA_RESOURCE,
    BATCH_CORE_RESOURCE,
    BATCH_MEMORY_RESOURCE,
)
#: Slots per GPU and per RDMA port at most (the agent's --gpu-slots/--rdma-slots, the
#: extender's gpuSlots/rdmaSlots): a device ID numbers its slot in three digits, 00..999.
MAX_SLOTS = 1000

TOPOLOGY_ANNOTATION = "gpulet.io/topology"
ASSIGNMENT_ANNOTATION = "gpulet.io/assignment"
#: What the agent allocated to each container of the pod (written by the agent).
ALLOCATED_ANNOTATION = "gpulet.io/allocated"
TOPOLOGY_POLICY_ANNOTATION = "gpulet.io/topology-policy"
GPU_POLICY_ANNOTATION = "gpulet.io/gpu-policy"
NUMA_PIN_ANNOTATION = "gpulet.io/numa-pin"
#: When the agent last published its node (RFC 3339, UTC); a stale one means the agent is gone.
HEARTBEAT_ANNOTATION = "gpulet.io/heartbeat"


def node_aggregates(gpu_memory_mib: Iterable[int]) -> dict[str, int]:
    """What a node advertises in its status for kube-scheduler and kubelet to count, given
    the memory of each of its GPUs: 100 percent of compute and all the memory of every GPU.
    These are sums: kube-scheduler checks a pod against them, the extender places it on
    concrete GPUs."""
    memory = list(gpu_memory_mib)
    return {CORE_RESOURCE: 100 * len(memory), MEMORY_RESOURCE: sum(memory)}


class UnknownResourceError(ValueError):
    """A resource name the device plugin does not serve."""


def check_resource(resource: str) -> None:
    if resource not in RESOURCES:
        raise UnknownResourceError(
            f"unknown resource {resource!r}: this plugin serves {', '.join(RESOURCES)}"
        )
