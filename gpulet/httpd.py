"""The small HTTP servers gpulet runs (the extender; the agent's metrics): a request handler
that answers whole responses without Nagle delay, and a server on a background thread."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("gpulet.http")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # An answer is written whole; Nagle's algorithm would hold its last segment until
        # the client's delayed ACK (40 ms). Go's client sets this on its side too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def reply(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=http %s", format % args)


class BackgroundServer:
    """`handler` on `host:port` (port 0: a free one), served from a daemon thread.
    `poll_s` is how soon `stop()` is noticed, and how often an idle server wakes."""

    def __init__(
        self, host: str, port: int, handler: type[Handler], *, name: str, poll_s: float
    ) -> None:
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": poll_s}, name=name
        )
        self._thread.daemon = True

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
