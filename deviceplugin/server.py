"""One device-plugin gRPC server per resource, on its own unix socket in kubelet's plugin
directory: the servicer, which maps kubelet's messages to and from a `PluginCore` (what it
needs of `deviceplugin.core.DevicePluginCore`) and decides nothing itself.

Kubelet dials the plugin synchronously when it registers, so a plugin serves first and
registers second (`serve`, then `register`). Every `ListAndWatch` message is the whole device
list; a stream re-sends it whenever `changed()` is called (health or inventory moved).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from concurrent import futures
from pathlib import Path
from typing import Protocol

import grpc

from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.api import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from deviceplugin.container import ContainerView
from deviceplugin.decisions import AllocateError
from deviceplugin.inventory import Advertised

VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"
#: How often an idle ListAndWatch stream checks that its client is still there (a stream
#: whose kubelet went away holds only a thread until then).
_STREAM_POLL_S = 2.0

log = logging.getLogger("gpulet.deviceplugin")


class PluginCore(Protocol):
    """What the servicer asks of the device plugin's core, for one resource at a time."""

    def devices(self, resource: str) -> list[Advertised]:
        """Every device ID, with its health and NUMA node."""
        ...

    def preferred(
        self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """The IDs to prefer; AllocateError when there is no preference."""
        ...

    def allocate(self, resource: str, device_ids: Sequence[str]) -> ContainerView:
        """Grant one container's IDs; AllocateError (kubelet shows its message) when refused."""
        ...


class PluginServer(pb_grpc.DevicePluginServicer):
    """The DevicePlugin service for one resource."""

    def __init__(self, core: PluginCore, resource: str, plugin_dir: Path, socket_name: str) -> None:
        self.core = core
        self.resource = resource
        self.plugin_dir = plugin_dir
        self.socket_name = socket_name
        self._server: grpc.Server | None = None
        self._changed = threading.Condition()
        self._generation = 0
        self._stopping = False

    @property
    def socket(self) -> Path:
        return self.plugin_dir / self.socket_name

    # -- lifecycle ------------------------------------------------------------------------

    def serve(self) -> None:
        """Start serving on a fresh socket (removing a stale file of the same name)."""
        self.socket.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_DevicePluginServicer_to_server(self, server)
        if server.add_insecure_port(f"unix://{self.socket}") == 0:
            raise OSError(f"cannot listen on {self.socket}")
        with self._changed:
            self._stopping = False
        server.start()
        self._server = server

    def register(self, timeout: float = 10.0) -> None:
        """Register with kubelet (raises grpc.RpcError when kubelet refuses or is absent)."""
        with grpc.insecure_channel(f"unix://{self.plugin_dir / KUBELET_SOCKET}") as channel:
            pb_grpc.RegistrationStub(channel).Register(
                pb.RegisterRequest(
                    version=VERSION,
                    endpoint=self.socket_name,
                    resource_name=self.resource,
                    options=self._options(),
                ),
                timeout=timeout,
            )
        log.info("event=registered resource=%s endpoint=%s", self.resource, self.socket_name)

    def stop(self) -> None:
        """Stop serving; open ListAndWatch streams end."""
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._server is not None:
            self._server.stop(grace=0.5).wait()
            self._server = None

    def changed(self) -> None:
        """The device list changed: every open stream sends it again."""
        with self._changed:
            self._generation += 1
            self._changed.notify_all()

    # -- the service ----------------------------------------------------------------------

    def _options(self) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def GetDevicePluginOptions(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> pb.DevicePluginOptions:
        log.debug("event=plugin-options resource=%s", self.resource)
        return self._options()

    def ListAndWatch(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> Iterator[pb.ListAndWatchResponse]:
        sent = -1
        while context.is_active():
            with self._changed:
                while self._generation == sent and not self._stopping and context.is_active():
                    self._changed.wait(_STREAM_POLL_S)
                if self._stopping:
                    return
                generation = self._generation
            if generation != sent:
                devices = self._device_list()
                # The first list on a stream is kubelet taking the plugin on (info); the
                # later ones follow health or inventory changes.
                (log.info if sent < 0 else log.debug)(
                    "event=list-and-watch resource=%s devices=%d unhealthy=%d",
                    self.resource,
                    len(devices.devices),
                    sum(d.health != HEALTHY for d in devices.devices),
                )
                yield devices
                sent = generation

    def _device_list(self) -> pb.ListAndWatchResponse:
        devices = []
        for device in self.core.devices(self.resource):
            topology = (
                pb.TopologyInfo(nodes=[pb.NUMANode(ID=device.numa)])
                if device.numa is not None
                else None
            )
            devices.append(
                pb.Device(
                    ID=device.id,
                    health=HEALTHY if device.healthy else UNHEALTHY,
                    topology=topology,
                )
            )
        return pb.ListAndWatchResponse(devices=devices)

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse:
        responses = []
        for ask in request.container_requests:
            log.debug(
                "event=preferred-allocation resource=%s size=%d available=%d must_include=%d",
                self.resource,
                ask.allocation_size,
                len(ask.available_deviceIDs),
                len(ask.must_include_deviceIDs),
            )
            try:
                ids = self.core.preferred(
                    self.resource,
                    list(ask.available_deviceIDs),
                    list(ask.must_include_deviceIDs),
                    ask.allocation_size,
                )
            except AllocateError as e:
                # Advisory only: kubelet then picks by itself, and Allocate says what is wrong.
                log.warning("event=no-preference resource=%s reason=%r", self.resource, str(e))
                ids = []
            responses.append(pb.ContainerPreferredAllocationResponse(deviceIDs=ids))
        return pb.PreferredAllocationResponse(container_responses=responses)

    def Allocate(
        self, request: pb.AllocateRequest, context: grpc.ServicerContext
    ) -> pb.AllocateResponse:
        responses = []
        for ask in request.container_requests:
            try:
                view = self.core.allocate(self.resource, list(ask.devices_ids))
            except AllocateError as e:
                log.warning(
                    "event=allocate-refused resource=%s ids=%s reason=%r",
                    self.resource,
                    ",".join(ask.devices_ids),
                    str(e),
                )
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"gpulet: {e}")
            responses.append(container_response(view))
        log.info(
            "event=allocated resource=%s ids=%s",
            self.resource,
            ";".join(",".join(c.devices_ids) for c in request.container_requests),
        )
        return pb.AllocateResponse(container_responses=responses)

    def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


def container_response(view: ContainerView) -> pb.ContainerAllocateResponse:
    return pb.ContainerAllocateResponse(
        envs=dict(view.envs),
        mounts=[
            pb.Mount(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
            for m in view.mounts
        ],
        devices=[
            pb.DeviceSpec(
                container_path=d.container_path, host_path=d.host_path, permissions=d.permissions
            )
            for d in view.devices
        ],
    )
