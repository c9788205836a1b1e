"""A kubelet stand-in speaking the real device-plugin (v1beta1) and pod-resources (v1) APIs
over unix sockets, for testing device plugins."""

from gpulet.standins.kubelet.admission import choose_devices
from gpulet.standins.kubelet.model import (
    CHECKPOINT_FILE,
    HEALTHY,
    KUBELET_ERROR_CODE,
    KUBELET_SOCKET,
    UNHEALTHY,
    VERSION,
    AllocateFailed,
    AllocationRecord,
    Device,
    PluginOptions,
    PodRef,
    PreStartFailed,
    RegisterRecord,
    ResourceView,
    StandInError,
    StandInView,
    StreamEnd,
)
from gpulet.standins.kubelet.names import is_extended_resource_name
from gpulet.standins.kubelet.standin import KubeletStandIn

__all__ = [
    "CHECKPOINT_FILE",
    "HEALTHY",
    "KUBELET_ERROR_CODE",
    "KUBELET_SOCKET",
    "UNHEALTHY",
    "VERSION",
    "AllocateFailed",
    "AllocationRecord",
    "Device",
    "KubeletStandIn",
    "PluginOptions",
    "PodRef",
    "PreStartFailed",
    "RegisterRecord",
    "ResourceView",
    "StandInError",
    "StandInView",
    "StreamEnd",
    "choose_devices",
    "is_extended_resource_name",
]
