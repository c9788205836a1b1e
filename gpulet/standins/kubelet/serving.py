"""A gRPC server on a unix socket, bound the way kubelet binds its sockets."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from gpulet.standins.kubelet.model import MAX_SOCKET_PATH, StandInError


def check_socket_path(path: Path) -> None:
    """AF_UNIX paths are short: keep test directories short (see `tempfile.mkdtemp`)."""
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        raise StandInError(f"unix socket path over {MAX_SOCKET_PATH} bytes: {path}")


class UnixServer:
    """Serves until `stop`. Like kubelet, removes whatever file is at the path before it
    listens; gRPC removes the socket file again on stop."""

    def __init__(self, path: Path, add_services: Callable[[grpc.Server], None]) -> None:
        check_socket_path(path)
        path.unlink(missing_ok=True)
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix=f"kl-{path.name}")
        self._server = grpc.server(self._executor)
        add_services(self._server)
        self._server.add_insecure_port(f"unix:{path}")
        self._server.start()

    def stop(self) -> None:
        """Stops at once: in-flight calls are cancelled (their handlers may still be running)."""
        self._server.stop(grace=None).wait()
        self._executor.shutdown(wait=False)
