"""`gpulet scorer serve` as a process: standalone it answers kube-scheduler until SIGTERM;
with an API server (the stand-in, via a kubeconfig) it syncs before it reports healthy; bad
settings are one line."""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner

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
