"""The HTTP servers (the extender's; the agent's metrics share gpulet.httpd) under abuse from
anyone who reaches their port: malformed requests get a 400-class answer, not a dropped
connection; slow and idle clients are cut off after the socket timeout; many connections at
once are queued, not refused."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from bench.scorer_abuse import concurrent_healthz, hostile, peak_rss_mib, post, start
from scorer.cluster import ClusterView
from scorer.extender import Extender
from scorer.server import ExtenderServer


@pytest.fixture
def server() -> Iterator[ExtenderServer]:
    s = ExtenderServer(Extender(ClusterView()), "127.0.0.1", 0, max_body=4 << 20)
    s._http._httpd.timeout_s = 1.0  # the socket timeout, short for the test
    s.start()
    yield s
    s.stop()


def raw(server: ExtenderServer, data: bytes, timeout: float = 5.0) -> bytes:
    """Send `data` as is; what comes back before the server closes (or `timeout`)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def status(answer: bytes) -> int:
    assert answer, "the server dropped the connection without an answer"
    return int(answer.split(b" ", 2)[1])


def test_a_content_length_of_non_ascii_digits_is_answered(server: ExtenderServer) -> None:
    # b"\xb2" is "²" in Latin-1, the header's charset: isdigit() says yes, int() says no.
    request = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: \xb2\r\n\r\n"
    assert status(raw(server, request)) in (400, 411)


def test_json_nested_deeper_than_python_recurses_is_a_400(server: ExtenderServer) -> None:
    body = b"[" * 100_000 + b"]" * 100_000
    head = f"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    answer = raw(server, head + body)
    assert status(answer) == 400
    assert b"nested" in answer


def test_slow_and_idle_connections_are_cut_off(server: ExtenderServer) -> None:
    """50 connections that send nothing, or a header line and then nothing: each is closed
    after the socket timeout (1 s here, 10 s by default), not held for ever."""
    socks = []
    for i in range(50):
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        if i % 2:
            s.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\n")
        socks.append(s)
    started = time.monotonic()
    for s in socks:
        assert s.recv(1) in (b"", b"H")  # closed (or a 408-like answer), never left open
        s.close()
    assert time.monotonic() - started < 8


def test_two_hundred_concurrent_requests_are_all_answered(server: ExtenderServer) -> None:
    assert concurrent_healthz(server.port, 200) == {"answered": 200, "timed_out": 0}


def test_a_small_request_is_answered_while_slow_clients_hold_connections(
    server: ExtenderServer,
) -> None:
    hogs = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(40)]
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        started = time.monotonic()
        body = json.dumps({"Pod": {}, "NodeNames": []})
        conn.request("POST", "/filter", body, {"Content-Type": "application/json"})
        assert conn.getresponse().status in (200, 400)
        assert time.monotonic() - started < 2
    finally:
        for s in hogs:
            s.close()


# ---- one request's memory: the extender as its command, its peak RSS read from /proc ------


@pytest.fixture
def serving() -> Iterator[tuple[int, int]]:
    """`gpulet scorer serve --standalone` on a free port (the bench's): (port, pid)."""
    proc, port = start()
    try:
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_hostile_body_under_the_size_limit_is_refused_before_it_is_parsed(
    serving: tuple[int, int],
) -> None:
    """120 MB of `{}` (under the 128 MiB limit) took the extender to 3.26 GB of RSS."""
    port, pid = serving
    code, answer = post(port, hostile(120_000_000))
    assert code == 413, answer[:200]
    assert b"would take about" in answer
    assert peak_rss_mib(pid) < 600


def test_a_small_request_is_not_held_up_by_large_ones(serving: tuple[int, int]) -> None:
    port, _ = serving
    done = []

    def large() -> None:
        done.append(post(port, hostile(40_000_000))[0])

    threads = [threading.Thread(target=large) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(0.05)
    started = time.monotonic()
    code, _ = post(port, json.dumps({"Pod": {}, "NodeNames": []}).encode())
    took = time.monotonic() - started
    for t in threads:
        t.join()
    assert code in (200, 400)  # answered, quickly
    assert took < 1.0, took
    assert done == [413, 413]
