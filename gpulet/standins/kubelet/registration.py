"""Kubelet's Registration service: validate, dial the plugin synchronously, hand it over."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.api import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from gpulet.standins.kubelet.model import (
    KUBELET_ERROR_CODE,
    VERSION,
    PluginOptions,
    RegisterRecord,
    StandInError,
)
from gpulet.standins.kubelet.names import is_extended_resource_name
from gpulet.standins.kubelet.plugin_client import PluginClient

# Takes an accepted registration and its connected client; False if kubelet went away meanwhile.
Accept = Callable[[RegisterRecord, PluginClient], bool]


def endpoint_path(plugin_dir: Path, endpoint: str) -> Path:
    """Go's filepath.Join: an absolute or `..` endpoint is still joined under the directory."""
    return Path(os.path.normpath(f"{plugin_dir}/{endpoint}"))


class RegistrationService(pb_grpc.RegistrationServicer):
    def __init__(self, plugin_dir: Path, dial_timeout: float, accept: Accept) -> None:
        self._plugin_dir = plugin_dir
        self._dial_timeout = dial_timeout
        self._accept = accept

    def Register(self, request: pb.RegisterRequest, context: grpc.ServicerContext) -> pb.Empty:
        """Errors carry kubelet's messages and, as kubelet's plain Go errors do, code UNKNOWN."""
        if request.version != VERSION:
            context.abort(
                KUBELET_ERROR_CODE,
                f'requested API version "{request.version}" is not supported by kubelet. '
                f'Supported version is ["{VERSION}"]',
            )
        if not is_extended_resource_name(request.resource_name):
            context.abort(
                KUBELET_ERROR_CODE, f'the ResourceName "{request.resource_name}" is invalid'
            )
        socket = endpoint_path(self._plugin_dir, request.endpoint)
        try:
            client = PluginClient.connect(socket, self._dial_timeout)
        except StandInError as err:
            context.abort(KUBELET_ERROR_CODE, str(err))
        record = RegisterRecord(
            version=request.version,
            endpoint=request.endpoint,
            resource_name=request.resource_name,
            options=PluginOptions.from_proto(request.options),
            plugin_options=PluginOptions.from_proto(client.options),
            time=time.monotonic(),
        )
        if not self._accept(record, client):
            client.close()
            context.abort(grpc.StatusCode.UNAVAILABLE, "kubelet is shutting down")
        return pb.Empty()
