"""gpulet's own API calls (gpulet/kube/calls.py) against a plain HTTP server: a write's
answer is read, so its connection goes back to the client's pool. Unread, each heartbeat held
a connection (and an API server goroutine blocked writing the Node back to it) until the
response object was collected."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from kubernetes.client import ApiClient, Configuration

from gpulet.kube.calls import CoreCalls

#: An answer larger than a socket's buffers, as a Node with gpulet's topology is.
BODY = b'{"kind":"Node","metadata":{"annotations":{"big":"' + b"x" * 300_000 + b'"}}}'


class _Counting(ThreadingHTTPServer):
    daemon_threads = True
    connections = 0

    def get_request(self) -> Any:
        accepted = super().get_request()
        self.connections += 1
        return accepted


class _Answer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        # The client may go away without reading: what the fix prevents.
        with contextlib.suppress(OSError):
            self.wfile.write(BODY)

    do_PATCH = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[_Counting]:
    httpd = _Counting(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_writes_reuse_one_connection(server: _Counting) -> None:
    config = Configuration(host=f"http://127.0.0.1:{server.server_address[1]}")
    with ApiClient(config) as api:
        calls = CoreCalls(api)
        for _ in range(10):
            calls.patch_node("gpu-a", {"metadata": {"annotations": {"a": "b"}}})
            calls.patch_pod("ns", "p", {"metadata": {"annotations": {"a": "b"}}})
            calls.create_binding("ns", "p", "uid-1", "gpu-a")
            calls.create_event("ns", {"kind": "Event"})
    assert server.connections == 1
