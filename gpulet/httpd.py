"""The small HTTP servers gpulet runs (the extender; the agent's metrics): a request handler
that answers whole responses without Nagle delay, and a server on a background thread that
holds under abuse: a real listen backlog, a cap on the connections served at once (the rest
wait in the backlog), and a timeout on every socket read and write, so a slow or idle client
holds a thread for `timeout_s` at most."""

from __future__ import annotations

import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger("gpulet.http")

#: Connections the kernel queues before accept (Python's default is 5).
BACKLOG = 256
#: Connections served at once; each has a thread.
MAX_CONNECTIONS = 64
#: Seconds a socket read or write may wait (an idle keep-alive connection is closed after it).
TIMEOUT_S = 10.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # socketserver's `timeout` is a class attribute; the server's own setting wins here.
        self.connection.settimeout(getattr(self.server, "timeout_s", TIMEOUT_S))
        # An answer is written whole; Nagle's algorithm would hold its last segment until
        # the client's delayed ACK (40 ms). Go's client sets this on its side too.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except TimeoutError:
            self.close_connection = True  # a client that went quiet: let the thread go

    def reply(self, code: int, data: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=http %s", format % args)


class _BoundedServer(ThreadingHTTPServer):
    request_queue_size = BACKLOG
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[Handler], *, limit: int, timeout_s: float
    ) -> None:
        self.timeout_s = timeout_s
        self._slots = threading.BoundedSemaphore(limit)
        self.closing = threading.Event()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Past the cap, stop accepting: the kernel's backlog holds the next connections.
        while not self._slots.acquire(timeout=0.2):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class BackgroundServer:
    """`handler` on `host:port` (port 0: a free one), served from a daemon thread.
    `poll_s` is how soon `stop()` is noticed, and how often an idle server wakes;
    `max_connections` and `timeout_s` bound what clients can hold (module docstring)."""

    def __init__(
        self,
        host: str,
        port: int,
        handler: type[Handler],
        *,
        name: str,
        poll_s: float,
        max_connections: int = MAX_CONNECTIONS,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self._httpd = _BoundedServer(
            (host, port), handler, limit=max_connections, timeout_s=timeout_s
        )
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
        self._httpd.closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
