"""Kubelet's side of the connection to one registered device plugin."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.api import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from gpulet.standins.kubelet.model import (
    PRE_START_TIMEOUT_S,
    AllocateFailed,
    PreStartFailed,
    StandInError,
    StreamEnd,
)

# Kubelet keeps gRPC-go's default receive limit on its plugin connections.
_MAX_RECEIVE = 4 * 1024 * 1024
_CHANNEL_OPTIONS = [
    ("grpc.default_authority", "localhost"),
    ("grpc.max_receive_message_length", _MAX_RECEIVE),
    # A connection of its own, as each kubelet client has, not one shared with other channels.
    ("grpc.use_local_subchannel_pool", 1),
]


def _listening(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def go_rpc_error(err: grpc.RpcError) -> str:
    """An RPC error as gRPC-go prints it, which is how kubelet words what it passes on."""
    code = "".join(part.capitalize() for part in err.code().name.split("_"))
    return f"rpc error: code = {code} desc = {err.details() or ''}"


class PluginClient:
    """A channel to the plugin's socket, its options, and its ListAndWatch stream."""

    def __init__(self, channel: grpc.Channel, options: pb.DevicePluginOptions) -> None:
        self._channel = channel
        self._stub = pb_grpc.DevicePluginStub(channel)
        self.options = options
        self._lock = threading.Lock()
        self._closed = False
        self._cancel: Callable[[], bool] | None = None

    @classmethod
    def connect(cls, path: Path, timeout: float) -> PluginClient:
        """Dial and ask for the options, waiting up to `timeout` for the plugin to serve
        (kubelet dials with grpc.WithBlock). Raises StandInError worded like kubelet's. Unlike
        kubelet, the options call shares the deadline, so a hung plugin cannot hang a test."""
        channel = grpc.insecure_channel(f"unix:{path}", options=_CHANNEL_OPTIONS)
        stub = pb_grpc.DevicePluginStub(channel)
        try:
            options = stub.GetDevicePluginOptions(pb.Empty(), timeout=timeout, wait_for_ready=True)
        except grpc.RpcError as err:
            channel.close()
            if err.code() == grpc.StatusCode.DEADLINE_EXCEEDED and not _listening(path):
                message = "failed to dial device plugin: context deadline exceeded"
            else:
                message = f"failed to get device plugin options: {go_rpc_error(err)}"
            raise StandInError(message) from None
        return cls(channel, options)

    def list_and_watch(self, on_message: Callable[[pb.ListAndWatchResponse], None]) -> StreamEnd:
        """Runs the stream until it ends (or `close`), handing each message over."""
        with self._lock:
            if self._closed:
                return StreamEnd(time.monotonic(), grpc.StatusCode.CANCELLED, "closed")
            call = self._stub.ListAndWatch(pb.Empty())
            self._cancel = call.cancel
        try:
            for response in call:
                on_message(response)
        except grpc.RpcError as err:
            return StreamEnd(time.monotonic(), err.code(), err.details() or "")
        return StreamEnd(time.monotonic(), grpc.StatusCode.OK, "")

    def preferred(
        self, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """One container request; the first answer's IDs."""
        request = pb.PreferredAllocationRequest(
            container_requests=[
                pb.ContainerPreferredAllocationRequest(
                    available_deviceIDs=available,
                    must_include_deviceIDs=must_include,
                    allocation_size=size,
                )
            ]
        )
        try:
            response = self._stub.GetPreferredAllocation(request)
        except grpc.RpcError as err:
            raise AllocateFailed(
                "GetPreferredAllocation", err.code(), err.details() or ""
            ) from None
        return (
            list(response.container_responses[0].deviceIDs) if response.container_responses else []
        )

    def allocate(self, ids: Sequence[str], timeout: float | None) -> pb.AllocateResponse:
        """Kubelet sets no deadline on Allocate; `timeout` exists for tests."""
        request = pb.AllocateRequest(
            container_requests=[pb.ContainerAllocateRequest(devices_ids=ids)]
        )
        try:
            return self._stub.Allocate(request, timeout=timeout)
        except grpc.RpcError as err:
            raise AllocateFailed("Allocate", err.code(), err.details() or "") from None

    def pre_start(self, ids: Sequence[str]) -> None:
        request = pb.PreStartContainerRequest(devices_ids=ids)
        try:
            self._stub.PreStartContainer(request, timeout=PRE_START_TIMEOUT_S)
        except grpc.RpcError as err:
            raise PreStartFailed("PreStartContainer", err.code(), err.details() or "") from None

    def close(self) -> None:
        """Cancels the stream (the plugin sees its ListAndWatch context end) and the channel."""
        with self._lock:
            self._closed = True
            cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()
        self._channel.close()
