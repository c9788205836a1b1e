"""`gpulet agent run` as a process: it registers with a kubelet (the stand-in), serves
allocations, publishes its node and takes its Lease when it has an API server (the
stand-in), and stops cleanly on SIGTERM."""

from __future__ import annotations

import errno
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from kubernetes.client import ApiClient

from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE
from gpulet import __version__
from gpulet.api import nodetopology as nt
from gpulet.cli import main
from gpulet.kube.calls import leases, node_topologies
from gpulet.kube.crd import node_topology_crd
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.kubelet import KubeletStandIn, PodRef
from gpulet.topology.document import from_document


@pytest.fixture
def short() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="kl"))  # unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_agent_run_serves_a_simulated_node_until_sigterm(short: Path) -> None:
    with KubeletStandIn(short / "dp", short / "pr") as kubelet:
        agent = subprocess.Popen(
            agent_command(short, "--standalone", "--simulate", "dgx-h100"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            registered = kubelet.wait_for(
                lambda v: len(v.devices(GPU_RESOURCE)) == 800 and len(v.devices(RDMA_RESOURCE)) > 0,
                timeout=20,
            )
            assert registered, "the agent did not register both resources in 20 s"
            response = kubelet.allocate(PodRef("u1", "default", "p1"), "main", GPU_RESOURCE, 4)
            envs = dict(response.container_responses[0].envs)
            assert len(envs["NVIDIA_VISIBLE_DEVICES"].split(",")) == 4
        finally:
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=20)
        assert agent.returncode == 0, err
        assert "event=registered resource=gpulet.io/gpu" in err
        assert "inject XIDs with" in err
        assert not (short / "dp" / "gpulet-gpu.sock").exists()


def test_a_sigterm_while_the_agent_starts_stops_it_cleanly(short: Path) -> None:
    """SIGTERM as soon as the agent logs its first line, in the middle of its start (a
    rolling update can come then): it finishes starting, stops what it started, exits 0."""
    agent = subprocess.Popen(
        agent_command(short, "--standalone", "--simulate", "dgx-h100"),
        stderr=subprocess.PIPE,
        text=True,
    )
    assert agent.stderr is not None
    first = agent.stderr.readline()
    assert "level=" in first, first
    agent.send_signal(signal.SIGTERM)
    _, rest = agent.communicate(timeout=30)
    assert agent.returncode == 0, first + rest
    assert not (short / "dp" / "gpulet-gpu.sock").exists()


def _stderr_shows(path: Path, needle: str, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in path.read_text():
            return True
        time.sleep(0.05)
    return False


def test_standalone_agent_says_it_waits_for_kubelet_and_when_kubelet_calls(short: Path) -> None:
    errors = short / "stderr"
    with errors.open("w") as sink:
        agent = subprocess.Popen(
            agent_command(
                short, "--standalone", "--simulate", "pcie-4gpu", "--log-level", "debug"
            ),
            stdout=subprocess.DEVNULL,
            stderr=sink,
            text=True,
        )  # fmt: skip
    try:
        socket_path = short / "dp" / "kubelet.sock"
        waiting = (
            f"level=INFO logger=gpulet.deviceplugin event=waiting-for-kubelet socket={socket_path}"
        )
        assert _stderr_shows(errors, waiting), errors.read_text()
        with KubeletStandIn(short / "dp", short / "pr") as kubelet:
            assert kubelet.wait_for(lambda v: len(v.devices(GPU_RESOURCE)) == 400, timeout=20)
            kubelet.allocate(PodRef("u1", "default", "p1"), "main", GPU_RESOURCE, 1)
            assert _stderr_shows(errors, "event=allocated resource=gpulet.io/gpu")
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
    err = errors.read_text()
    assert agent.returncode == 0, err
    assert err.count("event=waiting-for-kubelet") == 1  # said once, not every look
    assert "event=kubelet-found" in err
    assert "event=registered resource=gpulet.io/gpu" in err
    assert "event=list-and-watch resource=gpulet.io/gpu devices=400" in err
    # --log-level debug shows debug lines: each of kubelet's calls.
    assert "level=DEBUG logger=gpulet.deviceplugin event=preferred-allocation" in err


def test_agent_run_with_the_api_publishes_and_follows_assignments(short: Path) -> None:
    """Without --standalone: the node is published on the API server and the device
    plugins serve kubelet; SIGTERM stops both."""
    with ApiServerStandIn() as api, KubeletStandIn(short / "dp", short / "pr") as kubelet:
        api.create_node({"metadata": {"name": "gpu-7"}, "spec": {}, "status": {}})
        calls = ApiClient(api.configuration())
        api.create_crd(node_topology_crd())
        api.write_kubeconfig(short / "kubeconfig")
        api.add_token("scraper-token", "system:serviceaccount:monitoring:prometheus")
        api.allow("system:serviceaccount:monitoring:prometheus", "/metrics")
        agent = subprocess.Popen(
            api_agent(short, "0"),
            env={
                **os.environ,
                "NODE_NAME": "gpu-7",
                "POD_NAMESPACE": "gpulet-system",
                "POD_NAME": "gpulet-agent-x1",
            },
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert agent.stderr is not None
            line = next(x for x in agent.stderr if x.startswith("gpulet agent: node"))
            port = int(line.rsplit(":", 1)[1])
            assert kubelet.wait_for(lambda v: bool(v.devices(GPU_RESOURCE)), timeout=20)
            # --metrics-auth kubernetes, the default: the API server says who may read.
            assert "gpulet_gpu_memory_total_bytes" in get(port, "/metrics", "scraper-token")
            assert "gpulet_gpu" not in get(port, "/metrics")
            assert get(port, "/healthz") == "ok\n"
            obj = node_topologies(calls).find("gpu-7")
            assert obj is not None and from_document(nt.document_of(obj)).node == "gpu-7"
            lease = leases(calls, "gpulet-system").find("gpulet-node-gpu-7")
            assert lease is not None
            assert lease["spec"]["holderIdentity"] == "gpu-7/gpulet-agent-x1"
            assert lease["spec"]["leaseDurationSeconds"] == 60  # --heartbeat-seconds 20
            # It names itself to the API server (audit logs, API Priority and Fairness).
            writes = [t for t in api.traffic() if t.method in ("POST", "PUT", "PATCH")]
            agents = {t.user_agent for t in writes if "/leases" in t.path or "/nodetopol" in t.path}
            assert agents == {f"gpulet-agent/{__version__}"}
            assert (
                (short / "lib" / "ld.so.preload")
                .read_text()
                .strip()
                .endswith("libgpulet-limiter.so")
            )
        finally:
            agent.send_signal(signal.SIGTERM)
            _, err = agent.communicate(timeout=20)
        assert agent.returncode == 0, err
        assert "node gpu-7 published" in line


def api_agent(short: Path, metrics_port: str) -> list[str]:
    """`gpulet agent run` on a simulated pcie-4gpu with the API (short's kubeconfig), its
    directories under `short`."""
    return agent_command(
        short,
        "--simulate",
        "pcie-4gpu",
        "--kubeconfig",
        str(short / "kubeconfig"),
        "--library-dir",
        str(short / "lib"),
        "--metrics-port",
        metrics_port,
    )


def agent_command(short: Path, *options: str) -> list[str]:
    """`gpulet agent run` with kubelet's, the state and the regions' directories under
    `short`, and `options`."""
    return [
        sys.executable,
        "-c",
        "from gpulet.cli import main; main()",
        "agent",
        "run",
        "--kubelet-dir",
        str(short / "dp"),
        "--state-dir",
        str(short / "state"),
        "--region-root",
        str(short / "regions"),
        *options,
    ]


def fails_with(argv: list[str], error: str) -> None:
    """The agent exits 1 with `error` as the last line of its stderr (its log lines come
    before it) and no traceback."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == error


def get(port: int, path: str, token: str | None = None) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
    text = conn.getresponse().read().decode()
    conn.close()
    return text


def test_agent_run_without_an_api_server_says_what_to_do(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("not: a kubeconfig\n")
    result = CliRunner().invoke(
        main, ["agent", "run", "--simulate", "dgx-h100", "--kubeconfig", str(kubeconfig)]
    )
    assert result.exit_code == 1
    assert "cannot reach the API server" in result.output and "--standalone" in result.output


def test_agent_run_with_an_unknown_node_is_one_line() -> None:
    result = CliRunner().invoke(
        main, ["agent", "run", "--standalone", "--simulate", "no-such-node"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error:")
    assert "Traceback" not in result.output


def test_agent_run_refuses_a_node_name_its_lease_cannot_carry() -> None:
    long = "n" * (nt.MAX_NODE_NAME + 1)
    result = CliRunner().invoke(
        main, ["agent", "run", "--simulate", "pcie-4gpu", "--node-name", long]
    )
    assert result.exit_code == 2
    assert "--node-name" in result.output and f"at most {nt.MAX_NODE_NAME}" in result.output
    assert "Traceback" not in result.output


def test_agent_run_takes_its_lease_settings_from_the_pod() -> None:
    from gpulet.cli.agent import run  # noqa: PLC0415

    env = {"POD_NAMESPACE": "gpulet-system", "POD_NAME": "gpulet-agent-x1"}
    ctx = run.make_context("run", [], default_map=None)
    assert (ctx.params["namespace"], ctx.params["heartbeat_seconds"]) == ("kube-system", 20.0)
    assert ctx.params["legacy_annotations"] == "remove"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        ctx = run.make_context("run", ["--legacy-annotations", "keep"])
    assert (ctx.params["namespace"], ctx.params["pod_name"]) == tuple(env.values())
    assert ctx.params["legacy_annotations"] == "keep"


def test_agent_run_with_its_metrics_port_in_use_is_one_line(short: Path) -> None:
    """A --metrics-port another socket holds: one `Error:` line naming the address, the port
    and the reason, exit status 1; what had started is stopped (its sockets removed)."""
    with (
        ApiServerStandIn() as api,
        KubeletStandIn(short / "dp", short / "pr"),
        socket.socket() as held,
    ):
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        api.create_node({"metadata": {"name": "gpu-7"}, "spec": {}, "status": {}})
        api.create_crd(node_topology_crd())
        api.write_kubeconfig(short / "kubeconfig")
        fails_with(
            [*api_agent(short, str(port)), "--node-name", "gpu-7"],
            f"Error: cannot listen on 0.0.0.0:{port}: {os.strerror(errno.EADDRINUSE)}",
        )
    assert not (short / "dp" / "gpulet-gpu.sock").exists()


@pytest.mark.parametrize("value", ["65536", "-1"])
def test_agent_run_refuses_a_metrics_port_out_of_range(value: str) -> None:
    result = CliRunner().invoke(main, ["agent", "run", "--metrics-port", value])
    assert result.exit_code == 2
    assert "Invalid value for '--metrics-port'" in result.output and "0<=x<=65535" in result.output


@pytest.mark.parametrize("option", ["--kubelet-dir", "--state-dir"])
def test_agent_run_with_a_directory_it_cannot_make_is_one_line(short: Path, option: str) -> None:
    (short / "file").write_text("")
    # The option given again: click takes its last value.
    unusable = ("--standalone", "--simulate", "pcie-4gpu", option, str(short / "file" / "sub"))
    fails_with(
        agent_command(short, *unusable),
        f"Error: cannot use {short / 'file' / 'sub'}: {os.strerror(errno.ENOTDIR)}",
    )
