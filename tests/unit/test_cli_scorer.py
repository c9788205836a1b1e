"""`gpulet scorer serve` as a process: standalone it answers kube-scheduler until SIGTERM;
with an API server (the stand-in, via a kubeconfig) it syncs before it reports healthy; bad
settings are one line."""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from gpulet.cli import main
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.objects import container, node_object, pod_object
from scorer.wire import ExtenderArgs, ExtenderFilterResult, NodeList
from tests.kube.certs import Authority
from tests.nodes import shipped


def start(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc, line = start_line(*args)
    return proc, int(line.split(":")[1].split()[0])


def start_line(*args: str) -> tuple[subprocess.Popen[str], str]:
    """The scorer, and the line it prints once listening."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from gpulet.cli import main; main()", "scorer", "serve", *args],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("gpulet scorer serving on"):
            return proc, line
    raise AssertionError(f"the scorer exited: {proc.wait()}")


def request(port: int, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, None if body is None else json.dumps(body).encode())
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0


def test_standalone_serves_until_sigterm() -> None:
    proc, port = start("--standalone", "--host", "127.0.0.1", "--port", "0")
    try:
        args = ExtenderArgs(
            pod_object("p", container(gpus=2)),
            nodes=NodeList((node_object("gpu-1", shipped("pcie-4gpu")),)),
        )
        code, data = request(port, "POST", "/filter", args.dump())
        assert code == 200
        assert ExtenderFilterResult.parse(json.loads(data)).names() == ("gpu-1",)
    finally:
        stop(proc)


def test_with_an_api_server_it_is_healthy_once_synced(tmp_path: Path) -> None:
    with ApiServerStandIn() as api:
        api.create_node(node_object("gpu-1", shipped("dgx-h100")))
        kubeconfig = tmp_path / "kubeconfig"
        api.write_kubeconfig(kubeconfig)
        settings = tmp_path / "scorer.yaml"
        settings.write_text("gpuSlots: 4\nport: 0\n")
        proc, port = start(
            "--kubeconfig", str(kubeconfig), "--config", str(settings), "--host", "127.0.0.1"
        )
        try:
            deadline = time.monotonic() + 10
            while request(port, "GET", "/healthz")[0] != 200:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            pod = api.create_pod(pod_object("p", container(gpus=1, core=1, memory=10)))
            args = ExtenderArgs(pod, node_names=("gpu-1",))
            code, data = request(port, "POST", "/filter", args.dump())
            assert code == 200
            assert ExtenderFilterResult.parse(json.loads(data)).node_names == ("gpu-1",)
            code, data = request(port, "GET", "/metrics")
            assert b"gpulet_scorer_nodes 1.0" in data
        finally:
            stop(proc)


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    settings = tmp_path / "scorer.yaml"
    settings.write_text("gpuSlot: 4\n")
    result = CliRunner().invoke(
        main, ["scorer", "serve", "--standalone", "--config", str(settings)]
    )
    assert result.exit_code != 0
    assert f"{settings}: unknown key 'gpuSlot' (known: host, port, gpuSlots" in result.output
    settings.write_text("gpuSlots: 0\n")
    result = CliRunner().invoke(
        main, ["scorer", "serve", "--standalone", "--config", str(settings)]
    )
    assert "gpuSlots and rdmaSlots must be 1..1000" in result.output


def test_no_api_server_says_what_to_do(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("not: a kubeconfig\n")
    result = CliRunner().invoke(main, ["scorer", "serve", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code != 0
    assert "cannot reach the API server" in result.output and "--standalone" in result.output


def test_https_with_client_certificates_and_a_health_port(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "ca")
    served = ca.issue("server", "gpulet-scorer", hosts=("127.0.0.1",))
    client = ca.issue("scheduler", "kube-scheduler")
    settings = tmp_path / "scorer.yaml"
    settings.write_text("healthPort: 0\n")
    proc, line = start_line(
        "--standalone",
        "--config",
        str(settings),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--health-host",
        "127.0.0.1",
        "--tls-cert-file",
        str(served.cert),
        "--tls-key-file",
        str(served.key),
        "--client-ca-file",
        str(ca.ca.cert),
    )
    try:
        assert "HTTPS, client certificate required" in line
        port = int(line.split(":")[1].split()[0])
        health = int(line.rsplit(":", 1)[1])
        assert request(health, "GET", "/healthz") == (200, b"ok\n")
        assert request(health, "POST", "/filter", {})[0] == 405
        context = ssl.create_default_context(cafile=str(ca.ca.cert))
        context.load_cert_chain(client.cert, client.key)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10, context=context)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        stop(proc)


def test_incomplete_or_unusable_tls_settings_are_one_line(tmp_path: Path) -> None:
    ca = Authority(tmp_path / "ca")
    served = ca.issue("server", "gpulet-scorer", hosts=("127.0.0.1",))
    serve = ["scorer", "serve", "--standalone", "--port", "0"]
    result = CliRunner().invoke(
        main, [*serve, "--tls-cert-file", str(served.cert), "--client-ca-file", str(ca.ca.cert)]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: tlsKeyFile is missing: HTTPS needs")
    result = CliRunner().invoke(
        main,
        [
            *serve,
            "--tls-cert-file",
            str(served.cert),
            "--tls-key-file",
            str(ca.ca.key),  # the CA's key, not the certificate's
            "--client-ca-file",
            str(ca.ca.cert),
        ],
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: tlsKeyFile: ") and "Traceback" not in result.output


#: An address of TEST-NET-3 (RFC 5737): on no host's interfaces.
NOT_HERE = "203.0.113.1"
IN_USE = os.strerror(errno.EADDRINUSE)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port on 127.0.0.1 that a socket of the test listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def not_here_reason() -> str:
    """What the OS says to a bind to NOT_HERE (skip where this host may bind it)."""
    with socket.socket() as sock:
        try:
            sock.bind((NOT_HERE, 0))
        except OSError as e:
            reason = e.strerror
        else:
            pytest.skip(f"this host may bind {NOT_HERE} (net.ipv4.ip_nonlocal_bind?)")
    assert reason == os.strerror(errno.EADDRNOTAVAIL)
    return reason


def serve(args: str) -> Result:
    """`gpulet scorer serve --standalone ARGS` in this process (for errors before serving)."""
    return CliRunner().invoke(main, ["scorer", "serve", "--standalone", *args.split()])


def one_line(result: Result, exit_code: int, *needles: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: "), result.stderr
    if exit_code == 1:
        assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


def test_a_port_in_use_is_one_line(held_port: int) -> None:
    result = serve(f"--host 127.0.0.1 --port {held_port}")
    one_line(result, 1, f"cannot listen on 127.0.0.1:{held_port}: {IN_USE}")


def test_a_health_port_in_use_is_one_line(held_port: int) -> None:
    result = serve(f"--host 127.0.0.1 --port 0 --health-host 127.0.0.1 --health-port {held_port}")
    one_line(result, 1, f"cannot listen on 127.0.0.1:{held_port}: {IN_USE}")


def test_the_main_port_is_closed_when_the_health_port_fails(held_port: int) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    result = serve(
        f"--host 127.0.0.1 --port {free} --health-host 127.0.0.1 --health-port {held_port}"
    )
    one_line(result, 1, f"127.0.0.1:{held_port}")
    with socket.socket() as again:  # nothing holds the main listener's port
        again.bind(("127.0.0.1", free))


def test_an_address_not_on_this_host_is_one_line() -> None:
    reason = not_here_reason()
    result = serve(f"--host {NOT_HERE} --port 0")
    one_line(result, 1, f"cannot listen on {NOT_HERE}:0: {reason}")
    result = serve(f"--host 127.0.0.1 --port 0 --health-host {NOT_HERE} --health-port 0")
    one_line(result, 1, f"cannot listen on {NOT_HERE}:0: {reason}")


def test_a_host_that_does_not_resolve_is_one_line() -> None:
    result = serve("--host no-such-host.invalid --port 0")
    one_line(result, 1, "cannot listen on no-such-host.invalid:0: ")


@pytest.mark.parametrize("option", ["--port", "--health-port"])
@pytest.mark.parametrize("value", ["99999", "65536", "-1"])
def test_a_port_out_of_range_is_a_usage_error(option: str, value: str) -> None:
    one_line(serve(f"{option} {value}"), 2, f"Invalid value for '{option}'", "0<=x<=65535")
