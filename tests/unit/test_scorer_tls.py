"""The extender's two listeners, attacked over real sockets: the main one over HTTPS with a
client certificate required (kube-scheduler's extender `tlsConfig`), the health one serving
`GET /healthz` and `GET /metrics` alone. Certificates are made here, by a throwaway CA.

What must hold: no answer without a certificate from the right CA (plain HTTP, no
certificate, another CA's, an old TLS version); a client that never finishes its handshake,
or sends it a byte at a time, holds one slot for the socket timeout in all and holds up no
one; rotated certificate files are served to new connections, and a broken rotation keeps
the old ones; a failed handshake is one log line, never a traceback on stderr."""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import socket
import ssl
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpulet.httpd import ServerTLS, TLSError, TLSFiles
from gpulet.standins.objects import container, node_object, pod_object
from scorer.cluster import ClusterView
from scorer.config import ConfigError, ScorerConfig, load_config
from scorer.extender import Extender
from scorer.server import ExtenderServer
from scorer.wire import ExtenderArgs, ExtenderFilterResult, NodeList
from tests.kube.certs import Authority, Pair
from tests.nodes import shipped

#: The server's socket timeout here (10 s by default): the most a handshake may take.
TIMEOUT_S = 1.0
#: How often the server looks at its certificate files here (10 s by default).
RELOAD_S = 0.2


@dataclass
class PKI:
    ca: Authority
    served: TLSFiles  # the server's files, in a directory of their own (replaced in place)
    client: Pair  # signed by `ca`
    stranger: Pair  # a client certificate from another CA
    stranger_ca: Authority


def serving_pair(ca: Authority, name: str) -> Pair:
    return ca.issue(name, "gpulet-scorer", hosts=("127.0.0.1", "localhost"))


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    ca = Authority(tmp_path / "ca")
    other = Authority(tmp_path / "other-ca")
    pair = serving_pair(ca, "server")
    served = tmp_path / "served"
    served.mkdir()
    files = TLSFiles(served / "tls.crt", served / "tls.key", served / "ca.crt")
    os.replace(pair.cert, files.cert)
    os.replace(pair.key, files.key)
    files.client_ca.write_bytes(ca.ca.cert.read_bytes())
    return PKI(ca, files, ca.issue("scheduler", "kube-scheduler"), other.issue("x", "x"), other)


@pytest.fixture
def server(pki: PKI) -> Iterator[ExtenderServer]:
    s = ExtenderServer(
        Extender(ClusterView()),
        "127.0.0.1",
        0,
        tls=ServerTLS(pki.served, reload_s=RELOAD_S),
        health_host="127.0.0.1",
        health_port=0,
        timeout_s=TIMEOUT_S,
    )
    s.start()
    yield s
    s.stop()


@pytest.fixture
def http_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="gpulet.http")
    return caplog


def client_context(pki: PKI, pair: Pair | None) -> ssl.SSLContext:
    """A client that trusts the server's CA and presents `pair` (None: no certificate)."""
    context = ssl.create_default_context(cafile=str(pki.ca.ca.cert))
    if pair is not None:
        context.load_cert_chain(pair.cert, pair.key)
    return context


def https(
    server: ExtenderServer, context: ssl.SSLContext, method: str, path: str, body: Any = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, timeout=5, context=context)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, data, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def refused(server: ExtenderServer, context: ssl.SSLContext) -> bool:
    """True when a GET /healthz with `context` gets no HTTP answer at all."""
    try:
        code, _ = https(server, context, "GET", "/healthz")
    except (OSError, http.client.HTTPException):  # ssl.SSLError is an OSError
        return True
    raise AssertionError(f"answered {code} to a client that should have been refused")


def plain(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def served_certificate(server: ExtenderServer, pki: PKI) -> bytes:
    """The DER certificate a new connection is shown."""
    context = client_context(pki, pki.client)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


def client_hello() -> bytes:
    """A real TLS ClientHello's bytes."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    out = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), out, server_side=False)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return out.read()


def until(check: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "not within the time allowed"
        time.sleep(0.02)


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=tls_refused" in r.getMessage()]


# ---- who is served on the main listener ---------------------------------------------------


def test_a_client_with_a_certificate_from_the_ca_is_served(
    server: ExtenderServer, pki: PKI
) -> None:
    context = client_context(pki, pki.client)
    assert https(server, context, "GET", "/healthz") == (200, b"ok\n")
    args = ExtenderArgs(
        pod_object("p", container(gpus=2)),
        nodes=NodeList((node_object("gpu-1", shipped("pcie-4gpu")),)),
    )
    code, data = https(server, context, "POST", "/filter", args.dump())
    assert code == 200
    assert ExtenderFilterResult.parse(json.loads(data)).names() == ("gpu-1",)


def test_plain_http_to_the_tls_port_gets_no_answer(
    server: ExtenderServer, http_log: pytest.LogCaptureFixture
) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):  # until the server closes
            answer += chunk
    assert answer == b""  # not a byte: no HTTP error page, no TLS alert
    until(lambda: len(refusals(http_log)) == 1)
    assert "reason=HTTP_REQUEST" in refusals(http_log)[0]


def test_a_client_without_a_certificate_is_refused(
    server: ExtenderServer, pki: PKI, http_log: pytest.LogCaptureFixture
) -> None:
    assert refused(server, client_context(pki, None))
    until(lambda: len(refusals(http_log)) == 1)
    assert "reason=PEER_DID_NOT_RETURN_A_CERTIFICATE" in refusals(http_log)[0]


def test_a_client_certificate_from_another_ca_is_refused(
    server: ExtenderServer, pki: PKI, http_log: pytest.LogCaptureFixture
) -> None:
    assert refused(server, client_context(pki, pki.stranger))
    until(lambda: len(refusals(http_log)) == 1)
    assert "reason=CERTIFICATE_VERIFY_FAILED" in refusals(http_log)[0]


def test_the_server_certificate_is_not_a_client_certificate(
    server: ExtenderServer, pki: PKI
) -> None:
    """Signed by the CA, but for serving only (extended key usage): not a client's."""
    served = Pair(pki.served.cert, pki.served.key)
    assert refused(server, client_context(pki, served))


def test_tls_1_2_is_served_and_older_versions_are_refused(
    server: ExtenderServer, pki: PKI, http_log: pytest.LogCaptureFixture
) -> None:
    tls12 = client_context(pki, pki.client)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    assert https(server, tls12, "GET", "/healthz")[0] == 200
    old = client_context(pki, pki.client)
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let this client offer TLS 1.1 at all
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old.minimum_version = ssl.TLSVersion.TLSv1
        old.maximum_version = ssl.TLSVersion.TLSv1_1
    assert refused(server, old)
    until(lambda: len(refusals(http_log)) == 1)  # the server saw it, and said no
    assert "reason=UNSUPPORTED_PROTOCOL" in refusals(http_log)[0]


def test_the_context_requires_a_client_certificate_and_tls_1_2(pki: PKI) -> None:
    context = ServerTLS(pki.served).context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


# ---- clients that hold connections -------------------------------------------------------


def test_a_client_that_never_handshakes_holds_up_no_one_and_is_dropped(
    server: ExtenderServer, pki: PKI
) -> None:
    idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(8)]
    try:
        started = time.monotonic()
        assert https(server, client_context(pki, pki.client), "GET", "/healthz")[0] == 200
        assert time.monotonic() - started < TIMEOUT_S / 2
        for s in idle:
            assert s.recv(1) == b""  # closed by the server, with nothing said
        assert time.monotonic() - started < TIMEOUT_S + 2
    finally:
        for s in idle:
            s.close()


def test_a_handshake_sent_a_byte_at_a_time_is_cut_off_at_the_timeout(
    server: ExtenderServer, http_log: pytest.LogCaptureFixture
) -> None:
    """Each byte comes within the socket timeout; the handshake as a whole does not."""
    hello = client_hello()
    stop = threading.Event()
    s = socket.create_connection(("127.0.0.1", server.port), timeout=10)

    def trickle() -> None:
        for byte in hello[:-1]:
            if stop.wait(TIMEOUT_S / 4):
                return
            try:
                s.send(bytes([byte]))
            except OSError:
                return

    sender = threading.Thread(target=trickle)
    started = time.monotonic()
    sender.start()
    try:
        try:
            closed = s.recv(1) == b""
        except ConnectionResetError:
            closed = True
        took = time.monotonic() - started
        assert closed and took < TIMEOUT_S + 1, took  # not len(hello) / 4 seconds
    finally:
        stop.set()
        sender.join()
        s.close()
    until(lambda: any("reason=timeout" in m for m in refusals(http_log)))


# ---- certificate rotation -----------------------------------------------------------------


def test_replaced_certificate_files_are_served_to_new_connections(
    server: ExtenderServer, pki: PKI
) -> None:
    first = der(pki.served.cert)
    assert served_certificate(server, pki) == first
    nxt = serving_pair(pki.ca, "server-next")
    second = der(nxt.cert)
    os.replace(nxt.key, pki.served.key)  # as a Secret's volume does: a rename
    os.replace(nxt.cert, pki.served.cert)
    until(lambda: served_certificate(server, pki) == second)
    assert https(server, client_context(pki, pki.client), "GET", "/healthz")[0] == 200


def test_a_broken_rotation_keeps_the_certificate_in_use(
    server: ExtenderServer, pki: PKI, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gpulet.http")
    first = der(pki.served.cert)
    nxt = serving_pair(pki.ca, "server-next")
    # The certificate lands first, its key later: in between the two do not match.
    pki.served.cert.write_bytes(nxt.cert.read_bytes())
    time.sleep(RELOAD_S * 2)
    assert served_certificate(server, pki) == first
    assert any("event=tls_reload_failed" in r.getMessage() for r in caplog.records)
    pki.served.key.write_bytes(nxt.key.read_bytes())
    until(lambda: served_certificate(server, pki) == der(nxt.cert))
    # Garbage in place of the certificate: the last good one stays.
    pki.served.cert.write_text("not a certificate\n")
    time.sleep(RELOAD_S * 2)
    assert served_certificate(server, pki) == der(nxt.cert)
    assert https(server, client_context(pki, pki.client), "GET", "/healthz")[0] == 200


# ---- no tracebacks ------------------------------------------------------------------------


def test_failed_handshakes_and_broken_streams_print_no_traceback(
    server: ExtenderServer, pki: PKI, capfd: pytest.CaptureFixture[str]
) -> None:
    for pair in (None, pki.stranger):
        assert refused(server, client_context(pki, pair))
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.recv(100)
    # A good handshake, then a record that is not TLS's: the server's read fails mid-stream.
    context = client_context(pki, pki.client)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        socket.socket(fileno=os.dup(tls.fileno())) as same,
    ):
        same.sendall(b"\x17\x03\x03\x00\x05hello")
        with contextlib.suppress(OSError):
            tls.recv(100)
    time.sleep(0.3)  # the server's threads finish with these connections
    assert https(server, context, "GET", "/healthz")[0] == 200
    assert "Traceback" not in capfd.readouterr().err


# ---- the health listener ------------------------------------------------------------------


def test_the_health_port_serves_healthz_and_metrics_over_plain_http(
    server: ExtenderServer,
) -> None:
    assert server.health_port is not None and server.health_port != server.port
    assert plain(server.health_port, "GET", "/healthz") == (200, b"ok\n")
    code, data = plain(server.health_port, "GET", "/metrics")
    assert code == 200 and b"gpulet_scorer_nodes 0.0" in data


def test_the_health_port_refuses_the_extender_verbs_and_other_paths(
    server: ExtenderServer,
) -> None:
    port = server.health_port
    assert port is not None
    args = ExtenderArgs(pod_object("p", container(gpus=1)), node_names=("n",))
    body = json.dumps(args.dump()).encode()
    for verb in ("/filter", "/prioritize", "/bind", "/x/filter", "/healthz", "/metrics"):
        assert plain(port, "POST", verb, body)[0] == 405, verb
    for method in ("PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        assert plain(port, method, "/bind", body)[0] == 405, method
    for path in ("/filter", "/bind", "/", "/x/healthz", "/healthz/x", "/metricsx"):
        assert plain(port, "GET", path)[0] == 404, path
    assert plain(port, "GET", "/healthz?verbose=1")[0] == 200


def test_the_health_port_reports_not_ready_while_syncing() -> None:
    s = ExtenderServer(Extender(ClusterView()), "127.0.0.1", 0, ready=lambda: False, health_port=0)
    s.start()
    try:
        assert s.health_port is not None
        assert plain(s.health_port, "GET", "/healthz")[0] == 503
    finally:
        s.stop()


def test_no_health_port_no_second_listener() -> None:
    s = ExtenderServer(Extender(ClusterView()), "127.0.0.1", 0)
    assert s.health_port is None
    s.stop()


# ---- loading the files, and the settings --------------------------------------------------


def test_files_that_cannot_be_used_are_named(pki: PKI, tmp_path: Path) -> None:
    files = pki.served
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    other_key = serving_pair(pki.ca, "unrelated").key
    cases = {
        "cert": TLSFiles(tmp_path / "missing.crt", files.key, files.client_ca),
        "key": TLSFiles(files.cert, tmp_path / "missing.key", files.client_ca),
        "client_ca": TLSFiles(files.cert, files.key, tmp_path / "missing-ca.crt"),
    }
    for which, case in cases.items():
        with pytest.raises(TLSError) as e:
            ServerTLS(case)
        assert e.value.which == which and "missing" in str(e.value)
    for which, case in {
        "cert": TLSFiles(garbage, files.key, files.client_ca),
        "key": TLSFiles(files.cert, other_key, files.client_ca),
        "client_ca": TLSFiles(files.cert, files.key, garbage),
    }.items():
        with pytest.raises(TLSError) as e:
            ServerTLS(case)
        assert e.value.which == which


def test_tls_settings_come_all_three_or_not_at_all(pki: PKI, tmp_path: Path) -> None:
    config = tmp_path / "scorer.yaml"
    config.write_text(
        f"tlsCertFile: {pki.served.cert}\ntlsKeyFile: {pki.served.key}\n"
        f"clientCAFile: {pki.served.client_ca}\nhealthPort: 8889\n"
    )
    settings = load_config(config)
    assert settings.tls_cert_file == pki.served.cert and settings.health_port == 8889
    assert settings.health_host == "0.0.0.0"
    tls = settings.tls()
    assert tls is not None and tls.files == pki.served
    assert ScorerConfig().tls() is None and ScorerConfig().health_port is None
    config.write_text(f"tlsCertFile: {pki.served.cert}\nclientCAFile: {pki.served.client_ca}\n")
    with pytest.raises(ConfigError, match=f"{config}: tlsKeyFile is missing"):
        load_config(config)
    with pytest.raises(ConfigError, match="clientCAFile is missing"):
        ScorerConfig(tls_cert_file=pki.served.cert, tls_key_file=pki.served.key)


def test_bad_listener_settings_are_refused() -> None:
    for bad in (-1, 70000, "8889", True, 1.5):
        with pytest.raises(ConfigError, match="healthPort"):
            ScorerConfig(health_port=bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="healthPort must differ from port"):
        ScorerConfig(port=8888, health_port=8888)
    with pytest.raises(ConfigError, match="healthHost"):
        ScorerConfig(health_host="")
    with pytest.raises(ConfigError, match="tlsCertFile must be a file path"):
        ScorerConfig(tls_cert_file=3)  # type: ignore[arg-type]


def test_a_file_that_does_not_load_is_a_config_error_naming_the_setting(
    pki: PKI, tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not PEM\n")
    settings = ScorerConfig(
        tls_cert_file=pki.served.cert, tls_key_file=pki.served.key, client_ca_file=garbage
    )
    with pytest.raises(ConfigError, match=r"^clientCAFile: "):
        settings.tls()
