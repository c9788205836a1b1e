"""What the kubelet stand-in records, and the errors it raises: plain frozen values, so a test
can hold a snapshot while the stand-in goes on changing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

import grpc

from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb

VERSION = "v1beta1"
HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"
KUBELET_SOCKET = "kubelet.sock"
CHECKPOINT_FILE = "kubelet_internal_checkpoint"
DIAL_TIMEOUT_S = 10.0
PRE_START_TIMEOUT_S = 30.0
# sun_path holds 108 bytes with the terminating NUL; gRPC refuses longer paths.
MAX_SOCKET_PATH = 107
# Kubelet returns plain Go errors from its gRPC handlers (Register, pod resources' Get), and
# gRPC-go sends a plain error as UNKNOWN: a plugin cannot rely on a more specific code.
KUBELET_ERROR_CODE = grpc.StatusCode.UNKNOWN


class StandInError(Exception):
    """Kubelet refused the request itself (admission would fail), without a plugin call."""


class AllocateFailed(StandInError):
    """A plugin RPC made for an allocation failed with a gRPC error."""

    def __init__(self, stage: str, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{stage} failed: {code.name}: {details}")
        self.stage = stage
        self.code = code
        self.details = details


class PreStartFailed(AllocateFailed):
    """PreStartContainer failed: the container does not start, but (as in kubelet, where it
    runs at container start, after admission) the allocation stays recorded."""


@dataclass(frozen=True)
class Device:
    id: str
    health: str
    numa_nodes: tuple[int, ...] = ()

    @property
    def healthy(self) -> bool:
        """Only the exact string `Healthy` counts, as in kubelet."""
        return self.health == HEALTHY

    @classmethod
    def from_proto(cls, device: pb.Device) -> Device:
        return cls(device.ID, device.health, tuple(node.ID for node in device.topology.nodes))


@dataclass(frozen=True)
class PluginOptions:
    pre_start_required: bool = False
    get_preferred_allocation_available: bool = False

    @classmethod
    def from_proto(cls, options: pb.DevicePluginOptions) -> PluginOptions:
        return cls(options.pre_start_required, options.get_preferred_allocation_available)


@dataclass(frozen=True)
class RegisterRecord:
    """An accepted registration. `options` is what the RegisterRequest carried; kubelet ignores
    it and acts on `plugin_options`, the answer to GetDevicePluginOptions."""

    version: str
    endpoint: str
    resource_name: str
    options: PluginOptions
    plugin_options: PluginOptions
    time: float  # time.monotonic()


@dataclass(frozen=True)
class StreamEnd:
    """How a resource's ListAndWatch stream ended; `code` is OK when the plugin returned."""

    time: float
    code: grpc.StatusCode
    details: str


@dataclass(frozen=True)
class PodRef:
    uid: str
    namespace: str
    name: str


@dataclass(frozen=True)
class AllocationRecord:
    """Devices handed to one container for one resource, with the devices as advertised at
    allocation time (an ID the plugin never advertised has no health and no NUMA node)."""

    pod: PodRef
    container: str
    resource: str
    devices: tuple[Device, ...]
    response: pb.ContainerAllocateResponse = field(compare=False, repr=False)
    time: float = field(compare=False, default=0.0)

    @property
    def device_ids(self) -> tuple[str, ...]:
        return tuple(device.id for device in self.devices)


@dataclass(frozen=True)
class ResourceView:
    """A registered resource: the latest device set (each ListAndWatch message replaces it
    whole) and the number of messages received since this registration."""

    registration: RegisterRecord
    devices: Mapping[str, Device]
    messages: int
    stream_end: StreamEnd | None

    @property
    def healthy_ids(self) -> frozenset[str]:
        return frozenset(i for i, device in self.devices.items() if device.healthy)


@dataclass(frozen=True)
class StandInView:
    """A consistent snapshot of the stand-in, handed to `wait_for` predicates."""

    resources: Mapping[str, ResourceView]
    registrations: tuple[RegisterRecord, ...]
    allocations: tuple[AllocationRecord, ...]
    restarts: tuple[float, ...]  # when each restart's kubelet.sock started serving

    def devices(self, resource: str) -> Mapping[str, Device]:
        view = self.resources.get(resource)
        return view.devices if view else MappingProxyType({})

    def messages(self, resource: str) -> int:
        view = self.resources.get(resource)
        return view.messages if view else 0

    def registered_since(self, resource: str, since: float) -> bool:
        return any(r.resource_name == resource and r.time >= since for r in self.registrations)
