"""The small HTTP servers gpulet runs (the extender; the agent's metrics): a request handler
that answers whole responses without Nagle delay, and a server on a background thread that
holds under abuse: a real listen backlog, a cap on the connections served at once (the rest
wait in the backlog), and a timeout on every socket read and write, so a slow or idle client
holds a thread for `timeout_s` at most.

With `ServerTLS` the server speaks HTTPS and requires a client certificate signed by a given
CA. The accepting thread only wraps the socket; the handshake runs in the connection's own
thread, within `timeout_s` in all (not per read), so a client that never finishes one holds
one slot for `timeout_s` and never holds up accept. A failed handshake or a broken
connection is one log line, never a traceback. The certificate files are read again when they
change (a rotated Secret or cert-manager certificate), checked at most every `reload_s`."""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("gpulet.http")

#: Connections the kernel queues before accept (Python's default is 5).
BACKLOG = 256
#: Connections served at once; each has a thread.
MAX_CONNECTIONS = 64
#: Seconds a socket read or write may wait (an idle keep-alive connection is closed after it),
#: and the whole of a TLS handshake.
TIMEOUT_S = 10.0
#: How often, at most, the TLS files are checked for a change (on accept).
RELOAD_S = 10.0


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

    def reply(
        self, code: int, data: bytes, content_type: str, headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(code)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("event=http %s", format % args)


class ListenError(OSError):
    """An address a server cannot listen on (in use, not this host's, not an address): the
    message names it and says why, in the OS's words; `errno` is the OS's."""

    def __init__(self, host: str, port: int, cause: BaseException) -> None:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        reason = (cause.strerror if isinstance(cause, OSError) else None) or str(cause)
        super().__init__(f"cannot listen on {address}: {reason}")
        self.errno = cause.errno if isinstance(cause, OSError) else None
        self.host = host
        self.port = port


_Which = Literal["cert", "key", "client_ca"]


class TLSError(ValueError):
    """A TLS file that cannot be used. `which` says which: "cert", "key" or "client_ca"."""

    def __init__(self, which: _Which, message: str) -> None:
        super().__init__(message)
        self.which = which


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the serving certificate (its chain may follow it), its private key, and the
    CA (one or more certificates) that client certificates must be signed by."""

    cert: Path
    key: Path
    client_ca: Path


def server_context(files: TLSFiles) -> ssl.SSLContext:
    """A server context from `files`: TLS 1.2 at least, a client certificate required.
    Raises TLSError, naming the file at fault."""
    named: tuple[tuple[_Which, Path], ...] = (
        ("cert", files.cert),
        ("key", files.key),
        ("client_ca", files.client_ca),
    )
    for which, path in named:
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise TLSError(which, f"{path} cannot be read: {e.strerror or e}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.verify_mode = ssl.CERT_REQUIRED
    context.options |= ssl.OP_NO_RENEGOTIATION
    try:
        context.load_verify_locations(cafile=files.client_ca)
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TLSError("client_ca", f"{files.client_ca} holds no PEM CA certificate: {e}") from None
    if not context.get_ca_certs():
        raise TLSError("client_ca", f"{files.client_ca} holds no CA certificate")
    try:  # the certificate alone first, so that an error can say which file is at fault
        check = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        check.load_verify_locations(cadata=files.cert.read_text(errors="replace"))
    except (ssl.SSLError, OSError, ValueError) as e:
        raise TLSError("cert", f"{files.cert} holds no PEM certificate: {e}") from None
    try:
        context.load_cert_chain(files.cert, files.key)
    except (ssl.SSLError, OSError, ValueError) as e:
        message = f"{files.key} is not a PEM private key of the certificate in {files.cert}: {e}"
        raise TLSError("key", message) from None
    return context


_Stamp = tuple[tuple[int, int, int] | None, ...]


class ServerTLS:
    """HTTPS that requires a client certificate, from `files`, loaded now (TLSError if they
    cannot be) and again when they change: on accept, at most every `reload_s` seconds, the
    files' mtimes, inodes and sizes are compared with those last loaded. A change that does
    not load keeps the context in use, with a warning."""

    def __init__(self, files: TLSFiles, *, reload_s: float = RELOAD_S) -> None:
        self.files = files
        self.reload_s = reload_s
        self._stamp = self._stat()
        self.context = server_context(files)
        self._checked = time.monotonic()
        self._lock = threading.Lock()

    def _stat(self) -> _Stamp:
        stamps: list[tuple[int, int, int] | None] = []
        for path in (self.files.cert, self.files.key, self.files.client_ca):
            try:
                st = os.stat(path)
                stamps.append((st.st_mtime_ns, st.st_ino, st.st_size))
            except OSError:
                stamps.append(None)
        return tuple(stamps)

    def current(self) -> ssl.SSLContext:
        """The context for a connection accepted now, loaded again if the files changed."""
        now = time.monotonic()
        if now - self._checked < self.reload_s:
            return self.context
        with self._lock:
            if now - self._checked < self.reload_s:
                return self.context
            self._checked = now
            stamp = self._stat()
            if stamp != self._stamp:
                # Tried once per change: a rotation half written now is tried again when
                # its last file lands (a new stamp).
                self._stamp = stamp
                try:
                    self.context = server_context(self.files)
                except TLSError as e:
                    log.warning("event=tls_reload_failed keeping=previous error=%r", str(e))
                else:
                    log.info("event=tls_reloaded cert=%s", self.files.cert)
            return self.context


def _describe(error: BaseException) -> str:
    """A connection error as key=value pairs (one token each, or quoted)."""
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"reason={error.reason} detail={error.verify_message!r}"
    if isinstance(error, ssl.SSLError) and error.reason:
        return f"reason={error.reason}"
    if isinstance(error, TimeoutError):
        return "reason=timeout"
    return f"reason={type(error).__name__} detail={str(error)!r}"


def _peer(client_address: Any) -> str:
    if isinstance(client_address, tuple) and len(client_address) >= 2:
        return f"{client_address[0]}:{client_address[1]}"
    return str(client_address)


class _BoundedServer(ThreadingHTTPServer):
    request_queue_size = BACKLOG
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[Handler],
        *,
        limit: int,
        timeout_s: float,
        tls: ServerTLS | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.tls = tls
        self._slots = threading.BoundedSemaphore(limit)
        self.closing = threading.Event()
        super().__init__(address, handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        if self.tls is None:
            return sock, address
        try:
            # No I/O here: the handshake is the connection thread's (_handshake).
            wrapped = self.tls.current().wrap_socket(
                sock, server_side=True, do_handshake_on_connect=False
            )
        except (OSError, ValueError) as e:
            sock.close()
            log.info("event=tls_refused peer=%s %s", _peer(address), _describe(e))
            raise OSError("not wrapped") from e  # socketserver drops the connection
        return wrapped, address

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
            if isinstance(request, ssl.SSLSocket) and not self._handshake(request, client_address):
                self.shutdown_request(request)
                return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _handshake(self, sock: ssl.SSLSocket, client_address: Any) -> bool:
        """The TLS handshake, within `timeout_s` in all: CPython's do_handshake() takes the
        socket timeout as one deadline for the whole handshake, so a client that sends it a
        byte at a time gets no more time than one that sends nothing."""
        try:
            sock.settimeout(self.timeout_s)
            sock.do_handshake()
        except (OSError, ValueError) as e:  # ssl.SSLError and TimeoutError are OSErrors
            log.info("event=tls_refused peer=%s %s", _peer(client_address), _describe(e))
            return False
        return True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A connection that breaks (reset, timeout, bad TLS record) is one line; anything
        else is a bug, logged with its traceback (socketserver would print it to stderr)."""
        error = sys.exc_info()[1]
        if isinstance(error, OSError):
            log.info("event=connection_error peer=%s %s", _peer(client_address), _describe(error))
        else:
            log.error("event=handler_error peer=%s", _peer(client_address), exc_info=error)


class BackgroundServer:
    """`handler` on `host:port` (port 0: a free one), served from a daemon thread.
    `poll_s` is how soon `stop()` is noticed, and how often an idle server wakes;
    `max_connections` and `timeout_s` bound what clients can hold (module docstring);
    `tls`: HTTPS with a client certificate required. ListenError when `host:port` cannot be
    listened on (the port closed again)."""

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
        tls: ServerTLS | None = None,
    ) -> None:
        try:  # socketserver closes the socket when its bind or listen fails
            self._httpd = _BoundedServer(
                (host, port), handler, limit=max_connections, timeout_s=timeout_s, tls=tls
            )
        except (OSError, OverflowError) as e:  # OverflowError: a port past 65535
            raise ListenError(host, port, e) from e
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
        """Stop serving and close the port (started or not)."""
        self._httpd.closing.set()
        if self._thread.is_alive():  # shutdown() waits for serve_forever(): only once started
            self._httpd.shutdown()
            self._thread.join(timeout=5)
        self._httpd.server_close()
