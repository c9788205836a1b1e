"""Kubelet's pod-resources service (v1), answered from the stand-in's records."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import grpc

from deviceplugin.api import podresources_v1_pb2 as pr
from deviceplugin.api import podresources_v1_pb2_grpc as pr_grpc
from gpulet.standins.kubelet.model import (
    KUBELET_ERROR_CODE,
    AllocationRecord,
    Device,
    PodRef,
    StandInView,
)


def container_devices(resource: str, devices: Iterable[Device]) -> list[pr.ContainerDevices]:
    """As kubelet reports them: one entry per device and NUMA node (a device on no node gets
    one entry without topology), not one entry per resource."""
    entries = []
    for device in sorted(devices, key=lambda d: d.id):
        if not device.numa_nodes:
            entries.append(pr.ContainerDevices(resource_name=resource, device_ids=[device.id]))
        for node in device.numa_nodes:
            topology = pr.TopologyInfo(nodes=[pr.NUMANode(ID=node)])
            entries.append(
                pr.ContainerDevices(
                    resource_name=resource, device_ids=[device.id], topology=topology
                )
            )
    return entries


def pod_resources(pod: PodRef, records: Iterable[AllocationRecord]) -> pr.PodResources:
    containers: dict[str, list[pr.ContainerDevices]] = {}
    for record in records:
        containers.setdefault(record.container, []).extend(
            container_devices(record.resource, record.devices)
        )
    return pr.PodResources(
        name=pod.name,
        namespace=pod.namespace,
        containers=[pr.ContainerResources(name=n, devices=d) for n, d in containers.items()],
    )


def by_pod(allocations: Iterable[AllocationRecord]) -> dict[PodRef, list[AllocationRecord]]:
    pods: dict[PodRef, list[AllocationRecord]] = {}
    for record in allocations:
        pods.setdefault(record.pod, []).append(record)
    return pods


class PodResourcesService(pr_grpc.PodResourcesListerServicer):
    """Knows only pods that hold devices (kubelet lists every active pod)."""

    def __init__(self, view: Callable[[], StandInView]) -> None:
        self._view = view

    def List(
        self, request: pr.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> pr.ListPodResourcesResponse:
        pods = by_pod(self._view().allocations)
        return pr.ListPodResourcesResponse(
            pod_resources=[pod_resources(pod, records) for pod, records in pods.items()]
        )

    def GetAllocatableResources(
        self, request: pr.AllocatableResourcesRequest, context: grpc.ServicerContext
    ) -> pr.AllocatableResourcesResponse:
        """The healthy advertised devices of every registered resource."""
        devices = []
        for name, resource in sorted(self._view().resources.items()):
            healthy = (d for d in resource.devices.values() if d.healthy)
            devices.extend(container_devices(name, healthy))
        return pr.AllocatableResourcesResponse(devices=devices)

    def Get(
        self, request: pr.GetPodResourcesRequest, context: grpc.ServicerContext
    ) -> pr.GetPodResourcesResponse:
        """Unknown pod: kubelet's plain error, so code UNKNOWN (not NOT_FOUND)."""
        wanted = (request.pod_namespace, request.pod_name)
        pods = by_pod(self._view().allocations)
        pod = next((p for p in pods if (p.namespace, p.name) == wanted), None)
        if pod is None:
            context.abort(
                KUBELET_ERROR_CODE,
                f"pod {request.pod_name} in namespace {request.pod_namespace} not found",
            )
        return pr.GetPodResourcesResponse(pod_resources=pod_resources(pod, pods[pod]))
