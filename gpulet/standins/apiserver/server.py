"""HTTP/1.1 plumbing: requests decoded for the REST API, replies with Content-Length,
watches as chunked streams of JSON lines, injected faults, and the traffic log."""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from gpulet.standins.apiserver.faults import Faults
from gpulet.standins.apiserver.rest import Reply, Request
from gpulet.standins.apiserver.status import ApiError
from gpulet.standins.apiserver.store import Store
from gpulet.standins.apiserver.traffic import Entry, TrafficLog
from gpulet.standins.apiserver.watch import WatchRequest, watch_events


class Api(Protocol):
    def serve(self, request: Request) -> Reply | WatchRequest: ...


class ApiHttpServer(ThreadingHTTPServer):
    """Serves the API (the REST API and the reviews) over HTTP, one daemon thread per connection,
    and keeps track of its connections so that closing the server closes them too."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], api: Api, store: Store) -> None:
        super().__init__(address, _Handler)
        self.api = api
        self.store = store
        self.faults = Faults()
        self.traffic = TrafficLog()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        #: Watch streams still being written; `drain_streams` waits for them to end.
        self._streams = 0
        self._streams_done = threading.Condition(self._lock)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about clients that went away mid-request; loud about anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    def track(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def stream_started(self) -> None:
        with self._lock:
            self._streams += 1

    def stream_ended(self) -> None:
        with self._lock:
            self._streams -= 1
            self._streams_done.notify_all()

    def drain_streams(self, timeout: float) -> bool:
        """Wait until every watch stream has written its last chunk (they end once the store
        is closed); False if some had not within `timeout` seconds."""
        with self._lock:
            return self._streams_done.wait_for(lambda: self._streams == 0, timeout)

    def close_connections(self) -> None:
        """Shut every open connection, idle keep-alive ones included."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # the client closed it first
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ApiHttpServer
    _entry: Entry

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: api.requests is the log."""

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self._entry = self.server.traffic.start(
            self.command, self.path, len(body), self.headers.get("User-Agent", "")
        )
        url = urlsplit(self.path)
        request = Request(
            self.command,
            url.path,
            {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()},
            self.headers.get("Content-Type", ""),
            body,
        )
        try:
            injected = self.server.faults.take(self.command, self.path)
            if injected is not None:
                raise ApiError(injected, f"injected failure for {self.command} {self.path}")
            reply = self.server.api.serve(request)
        except ApiError as e:
            if e.plain:
                self._send(e.code, e.message.encode(), "text/plain; charset=utf-8")
            else:
                self._send_json(e.code, e.status())
            return
        if isinstance(reply, WatchRequest):
            self._stream(reply)
        else:
            self._send_json(reply.code, reply.body)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def _send_json(self, code: int, body: object) -> None:
        self._send(code, json.dumps(body).encode(), "application/json")

    def _send(self, code: int, data: bytes, content_type: str) -> None:
        self._entry.response_bytes += len(data)
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, watch: WatchRequest) -> None:
        """One event per line, each in its own chunk, sent at once; then the last chunk."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.server.stream_started()
        try:
            for event in watch_events(self.server.store, watch, self._client_gone):
                line = json.dumps(event).encode() + b"\n"
                self._entry.response_bytes += len(line)
                self._write_chunk(line)
            self._write_chunk(b"")
            self.wfile.flush()
        except OSError:
            self.close_connection = True
        finally:
            self.server.stream_ended()

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _client_gone(self) -> bool:
        """Whether the client closed the connection (it sends nothing during a watch)."""
        try:
            peeked: bytes = self.connection.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            return True
        return peeked == b""
