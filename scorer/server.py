"""The extender's HTTP server: `POST <prefix>/filter|prioritize|bind`, `GET /healthz`,
`GET /metrics`. Any URL prefix works (the verb is the path's last segment), so the scheduler
configuration's `urlPrefix` may carry one.

Bad input never becomes a 500: malformed JSON, a request that breaks the protocol, a body
with no length or over `max_body` bytes are answered 400, 411 or 413 with `{"Error": ...}`.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from scorer.extender import BadRequest, Extender

log = logging.getLogger("gpulet.scorer")

#: 5,000 Node objects with their topology annotations come to about 70 MB.
DEFAULT_MAX_BODY = 128 << 20
_VERBS = ("filter", "prioritize", "bind")


class Metrics:
    def __init__(self, extender: Extender) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gpulet_scorer_requests_total",
            "Extender requests answered, by verb and HTTP status",
            ["verb", "code"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "gpulet_scorer_request_seconds",
            "Time to answer an extender request, by verb",
            ["verb"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        nodes = Gauge("gpulet_scorer_nodes", "Nodes the extender knows", registry=self.registry)
        nodes.set_function(lambda: len(extender.view.node_names()))
        pods = Gauge(
            "gpulet_scorer_pods",
            "Pods whose assignment counts, bound or assumed (decided, not yet seen bound)",
            ["state"],
            registry=self.registry,
        )

        def counter(assumed: bool) -> Callable[[], float]:
            return lambda: sum(1 for _, _, x in extender.view.pods() if x is assumed)

        for state, assumed in (("bound", False), ("assumed", True)):
            pods.labels(state).set_function(counter(assumed))


class ExtenderServer:
    """Serves `extender` on `host:port` (port 0: a free one) from a background thread."""

    def __init__(
        self,
        extender: Extender,
        host: str = "0.0.0.0",
        port: int = 8888,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self.extender = extender
        self.metrics = Metrics(extender)
        self.max_body = max_body
        self.ready = ready
        self._httpd = ThreadingHTTPServer((host, port), _handler(self))
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},  # how soon stop() is noticed
            name="gpulet-scorer-http",
            daemon=True,
        )
        self._thread.start()
        log.info("event=serving port=%d standalone=%s", self.port, self.extender.standalone)

    def serve_forever(self) -> None:
        log.info("event=serving port=%d standalone=%s", self.port, self.extender.standalone)
        self._httpd.serve_forever()

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def answer(self, verb: str, body: bytes) -> tuple[int, Any]:
        """The status and JSON answer to a POST of `body` to `verb`."""
        try:
            args = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return HTTPStatus.BAD_REQUEST, {"Error": f"the body is not valid JSON: {e}"}
        try:
            if verb == "filter":
                return HTTPStatus.OK, self.extender.filter(args)
            if verb == "prioritize":
                return HTTPStatus.OK, self.extender.prioritize(args)
            return HTTPStatus.OK, self.extender.bind(args)
        except BadRequest as e:
            return HTTPStatus.BAD_REQUEST, {"Error": str(e)}


def _handler(server: ExtenderServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # An answer is written whole; Nagle's algorithm would hold its last segment
            # until the client's delayed ACK (40 ms). Go's client sets this on its side too.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_POST(self) -> None:
            verb = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            if verb not in _VERBS:
                self._drain()
                self._send(HTTPStatus.NOT_FOUND, {"Error": f"no such verb {verb!r}"}, "other")
                return
            started = time.perf_counter()
            length = self.headers.get("Content-Length")
            if length is None or not length.isdigit():
                self.close_connection = True
                self._send(
                    HTTPStatus.LENGTH_REQUIRED, {"Error": "Content-Length is required"}, verb
                )
                return
            if int(length) > server.max_body:
                self.close_connection = True
                message = (
                    f"the body is {length} bytes; this extender takes {server.max_body} at most"
                )
                self._send(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"Error": message}, verb)
                return
            body = self.rfile.read(int(length))
            code, answer = server.answer(verb, body)
            self._send(code, answer, verb)
            server.metrics.seconds.labels(verb).observe(time.perf_counter() - started)

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            if path.endswith("/healthz"):
                ok = server.ready()
                data = b"ok\n" if ok else b"syncing with the API server\n"
                self._raw(
                    HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, data, "text/plain"
                )
            elif path.endswith("/metrics"):
                self._raw(
                    HTTPStatus.OK, generate_latest(server.metrics.registry), CONTENT_TYPE_LATEST
                )
            else:
                self._raw(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def _drain(self) -> None:
            length = self.headers.get("Content-Length")
            if length and length.isdigit() and int(length) <= server.max_body:
                self.rfile.read(int(length))
            else:
                self.close_connection = True

        def _send(self, code: int, answer: Any, verb: str) -> None:
            server.metrics.requests.labels(verb, str(int(code))).inc()
            self._raw(code, json.dumps(answer, separators=(",", ":")).encode(), "application/json")

        def _raw(self, code: int, data: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("event=http %s", format % args)

    return Handler
