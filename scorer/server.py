"""The extender's HTTP server: `POST <prefix>/filter|prioritize|bind|preempt`, `GET /healthz`,
`GET /metrics`. Any URL prefix works (the verb is the path's last segment), so the scheduler
configuration's `urlPrefix` may carry one.

Two listeners. The main one serves all of it, over HTTPS with a client certificate required
when given `tls` (kube-scheduler's extender `tlsConfig`). The optional health listener
(`health_port`, plain HTTP) serves only `GET /healthz` and `GET /metrics`: for kubelet's
probes and Prometheus when the main one listens on loopback only (a sidecar of
kube-scheduler) or asks for a client certificate they do not have. It refuses every other
path (404) and method (405; 501 for a method HTTP does not define), and has connection slots
of its own (as many as the main one's), so traffic there cannot take the scheduler's.

Bad input never becomes a 500: malformed JSON, a request that breaks the protocol, a body
with no length or over `max_body` bytes are answered 400, 411 or 413 with `{"Error": ...}`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gpulet.httpd import TIMEOUT_S, BackgroundServer, Handler, ServerTLS
from scorer.extender import Extender
from scorer.wire import BadRequest, ExtenderArgs, ExtenderBindingArgs, ExtenderPreemptionArgs

log = logging.getLogger("gpulet.scorer")

#: 5,000 Node objects with their topology annotations come to about 70 MB.
DEFAULT_MAX_BODY = 128 << 20
#: What parsing one body may cost in memory, by `parse_cost` (the extender's pod limit in
#: deploy/ is 2 GiB; 5,000 DGX Node objects, 79-80 MiB of body, cost 699-704 MiB by it).
DEFAULT_MAX_PARSE = 768 << 20
#: Bodies over this many bytes are read and parsed one at a time; smaller ones (a pod and
#: node names: every request of a `nodeCacheCapable` scheduler) never wait for them.
LARGE_BODY = 1 << 20
#: How long a large body waits for its turn before 503.
LARGE_WAIT_S = 30.0


def parse_cost(body: bytes) -> int:
    """An upper bound of the memory `json.loads(body)` takes, counted in C (bytes.count),
    before parsing: each object or array ~120 bytes, each string ~60, each item ~16, and the
    text twice. Measured: 114 MiB of `{},` takes 3 GiB to parse (25 bytes per byte), while
    2,000 real Node objects (31 MiB, their topology in strings) take almost nothing beyond
    the text."""
    containers = body.count(b"{") + body.count(b"[")
    return 2 * len(body) + 120 * containers + 30 * body.count(b'"') + 16 * body.count(b",")


_VERBS = ("filter", "prioritize", "bind", "preempt")


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
        quiet = Gauge(
            "gpulet_scorer_nodes_quiet",
            "Nodes whose gpulet agent stopped reporting (stale heartbeat Lease or annotation): "
            "nothing new goes there",
            registry=self.registry,
        )
        quiet.set_function(lambda: len(extender.view.quiet_nodes()))
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
    """Serves `extender` on `host:port` (port 0: a free one) from a background thread, over
    HTTPS that requires a client certificate when `tls` is given; and, when `health_port` is
    given (0: a free one), `/healthz` and `/metrics` alone on `health_host:health_port` over
    plain HTTP. `timeout_s` bounds each socket read and write, and each TLS handshake."""

    def __init__(
        self,
        extender: Extender,
        host: str = "0.0.0.0",
        port: int = 8888,
        *,
        max_body: int = DEFAULT_MAX_BODY,
        max_parse: int = DEFAULT_MAX_PARSE,
        ready: Callable[[], bool] = lambda: True,
        tls: ServerTLS | None = None,
        health_host: str = "0.0.0.0",
        health_port: int | None = None,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.extender = extender
        self.metrics = Metrics(extender)
        self.max_body = max_body
        self.max_parse = max_parse
        #: One large body at a time (LARGE_BODY).
        self.large = threading.Semaphore(1)
        self.ready = ready
        self.tls = tls
        self._http = BackgroundServer(
            host,
            port,
            _handler(self),
            name="gpulet-scorer-http",
            poll_s=0.05,
            timeout_s=timeout_s,
            tls=tls,
        )
        self._health: BackgroundServer | None = None
        if health_port is not None:
            try:
                self._health = BackgroundServer(
                    health_host,
                    health_port,
                    _health_handler(self),
                    name="gpulet-scorer-health",
                    poll_s=0.5,
                    timeout_s=timeout_s,
                )
            except BaseException:
                self._http.stop()
                raise

    @property
    def port(self) -> int:
        return self._http.port

    @property
    def health_port(self) -> int | None:
        """The health listener's port (None: there is none)."""
        return None if self._health is None else self._health.port

    def start(self) -> None:
        self._http.start()
        if self._health is not None:
            self._health.start()
        log.info(
            "event=serving port=%d tls=%s health_port=%s standalone=%s",
            self.port,
            "client-cert-required" if self.tls is not None else "off",
            self.health_port,
            self.extender.standalone,
        )

    def stop(self) -> None:
        self._http.stop()
        if self._health is not None:
            self._health.stop()

    def answer(self, verb: str, body: bytes) -> tuple[int, Any]:
        """The status and JSON answer to a POST of `body` to `verb`: the body parsed into the
        verb's `scorer.wire` request, the extender's answer serialised."""
        cost = parse_cost(body)
        if cost > self.max_parse:
            message = (
                f"the body would take about {cost >> 20} MiB to parse; this extender parses "
                f"{self.max_parse >> 20} MiB at most"
            )
            return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, {"Error": message}
        try:
            args = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            return HTTPStatus.BAD_REQUEST, {"Error": f"the body is not valid JSON: {e}"}
        except RecursionError:
            return HTTPStatus.BAD_REQUEST, {"Error": "the body's JSON is nested too deeply"}
        try:
            if verb == "filter":
                return HTTPStatus.OK, self.extender.filter(ExtenderArgs.parse(args)).dump()
            if verb == "prioritize":
                return HTTPStatus.OK, self.extender.prioritize(ExtenderArgs.parse(args)).dump()
            if verb == "preempt":
                answer = self.extender.preempt(ExtenderPreemptionArgs.parse(args))
                return HTTPStatus.OK, answer.dump()
            return HTTPStatus.OK, self.extender.bind(ExtenderBindingArgs.parse(args)).dump()
        except BadRequest as e:
            return HTTPStatus.BAD_REQUEST, {"Error": str(e)}


def _handler(server: ExtenderServer) -> type[Handler]:
    class ExtenderHandler(Handler):
        def do_POST(self) -> None:
            verb = self.path.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
            if verb not in _VERBS:
                self._drain()
                self._send(HTTPStatus.NOT_FOUND, {"Error": f"no such verb {verb!r}"}, "other")
                return
            started = time.perf_counter()
            length = self.headers.get("Content-Length")
            if length is None or not (length.isascii() and length.isdigit()):
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
            large = int(length) > LARGE_BODY
            if large and not server.large.acquire(timeout=LARGE_WAIT_S):
                self._drain()
                busy = {"Error": "busy with other large requests; try again"}
                self._send(HTTPStatus.SERVICE_UNAVAILABLE, busy, verb)
                return
            try:
                body = self.rfile.read(int(length))
                code, answer = server.answer(verb, body)
                del body
            finally:
                if large:
                    server.large.release()
            self._send(code, answer, verb)
            server.metrics.seconds.labels(verb).observe(time.perf_counter() - started)

        def do_GET(self) -> None:
            path = self.path.split("?")[0].rstrip("/")
            if path.endswith("/healthz"):
                _healthz(self, server)
            elif path.endswith("/metrics"):
                _metrics(self, server)
            else:
                self.reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def _drain(self) -> None:
            length = self.headers.get("Content-Length")
            if length and length.isascii() and length.isdigit() and int(length) <= server.max_body:
                self.rfile.read(int(length))
            else:
                self.close_connection = True

        def _send(self, code: int, answer: Any, verb: str) -> None:
            server.metrics.requests.labels(verb, str(int(code))).inc()
            self.reply(code, json.dumps(answer, separators=(",", ":")).encode(), "application/json")

    return ExtenderHandler


def _healthz(handler: Handler, server: ExtenderServer) -> None:
    ok = server.ready()
    data = b"ok\n" if ok else b"syncing with the API server\n"
    handler.reply(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, data, "text/plain")


def _metrics(handler: Handler, server: ExtenderServer) -> None:
    handler.reply(HTTPStatus.OK, generate_latest(server.metrics.registry), CONTENT_TYPE_LATEST)


def _health_handler(server: ExtenderServer) -> type[Handler]:
    """`GET /healthz` and `GET /metrics`, those paths exactly; nothing else."""

    class HealthHandler(Handler):
        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/healthz":
                _healthz(self, server)
            elif path == "/metrics":
                _metrics(self, server)
            else:
                self.reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

        def _refuse(self) -> None:
            # The body is not read: the connection closes after the answer.
            self.close_connection = True
            self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
            self.send_header("Allow", "GET")
            data = b"this port serves GET /healthz and GET /metrics only\n"
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _refuse
        do_CONNECT = do_TRACE = _refuse

    return HealthHandler
