"""The node agent's lifecycle: the supervisor starts its components in order, stops them in
reverse, rolls back what started when one fails, and logs a stop that fails without letting
it keep the others running; and the choice of real or simulated adapters."""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from agent import node_agent, standalone
from agent.adapters import read_adapters
from agent.health import FileXidSource, SysfsPortStates
from agent.plugincore import AgentSpec
from agent.supervisor import Part, Supervisor
from agent.usage import FileUsageSource
from deviceplugin.resources import GPU_RESOURCE, PluginConfig
from gpulet.kube.calls import CoreCalls
from gpulet.kube.crd import node_topology_crd
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.kubelet import KubeletStandIn
from tests.nodes import shipped


class Boom(Exception):
    pass


class Recorded:
    """A component that writes what is done to it in `calls`, and fails where told."""

    def __init__(
        self, name: str, calls: list[str], *, fail_start: bool = False, fail_stop: bool = False
    ) -> None:
        self.name = name
        self.calls = calls
        self.fail_start = fail_start
        self.fail_stop = fail_stop

    def start(self) -> None:
        self.calls.append(f"start {self.name}")
        if self.fail_start:
            raise Boom(f"{self.name} would not start")

    def stop(self) -> None:
        self.calls.append(f"stop {self.name}")
        if self.fail_stop:
            raise Boom(f"{self.name} would not stop")


def four(calls: list[str], **failing: dict[str, bool]) -> list[tuple[str, Recorded]]:
    return [(n, Recorded(n, calls, **failing.get(n, {}))) for n in ("a", "b", "c", "d")]


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gpulet.agent"]


def test_components_start_in_order_and_stop_in_reverse(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "gpulet.agent")
    calls: list[str] = []
    parts = Supervisor()
    parts.start_all(four(calls))
    assert calls == ["start a", "start b", "start c", "start d"]
    assert parts.running == ("a", "b", "c", "d")
    parts.stop()
    assert calls[4:] == ["stop d", "stop c", "stop b", "stop a"]
    assert not parts.running
    logged = lines(caplog)
    assert logged[:4] == [f"event=component-started component={n}" for n in "abcd"]
    assert logged[4:] == [f"event=component-stopped component={n}" for n in "dcba"]


def test_a_component_that_fails_to_start_rolls_back_those_before_it() -> None:
    calls: list[str] = []
    parts = Supervisor()
    components = four(calls, c={"fail_start": True})
    with pytest.raises(Boom, match="c would not start") as raised:
        parts.start_all(components)
    assert calls == ["start a", "start b", "start c", "stop b", "stop a"]  # d never started
    assert raised.value.__cause__ is None  # the original error, not one of the rollback's
    assert not parts.running
    parts.stop()  # nothing more to stop
    assert calls[-1] == "stop a"


def test_a_stop_that_fails_in_the_rollback_is_logged_and_the_rest_still_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "gpulet.agent")
    calls: list[str] = []
    parts = Supervisor()
    components = four(calls, b={"fail_stop": True}, c={"fail_start": True})
    with pytest.raises(Boom, match="c would not start"):  # not b's stop's error
        parts.start_all(components)
    assert calls == ["start a", "start b", "start c", "stop b", "stop a"]
    failed = [line for line in lines(caplog) if line.startswith("event=stop-failed")]
    assert failed == ["event=stop-failed component=b error='b would not stop'"]
    assert "event=start-failed component=c error='c would not start' action=rollback" in (
        lines(caplog)
    )


def test_a_stop_that_fails_at_shutdown_is_logged_and_the_rest_still_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[str] = []
    parts = Supervisor()
    parts.start_all(four(calls, c={"fail_stop": True}))
    parts.stop()  # does not raise
    assert calls[4:] == ["stop d", "stop c", "stop b", "stop a"]
    assert "event=stop-failed component=c error='c would not stop'" in lines(caplog)


def test_stop_is_idempotent() -> None:
    calls: list[str] = []
    parts = Supervisor()
    parts.start_all(four(calls))
    parts.stop()
    parts.stop()
    assert calls.count("stop a") == 1 and len(calls) == 8
    with pytest.raises(RuntimeError, match="stopped"):
        parts.start("e", Recorded("e", calls))  # a stopped supervisor starts nothing new


def test_start_hands_back_the_component_and_callables_make_a_part() -> None:
    calls: list[str] = []
    parts = Supervisor()
    first = Recorded("a", calls)
    assert parts.start("a", first) is first
    parts.start("b", Part(lambda: calls.append("start b"), lambda: calls.append("stop b")))
    parts.stop()
    assert calls == ["start a", "start b", "stop b", "stop a"]


def test_an_error_while_starting_but_outside_a_start_rolls_back_too(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Between two starts, the next component is built (and building may fail): inside
    `starting()`, that error stops what already started too."""
    calls: list[str] = []
    parts = Supervisor()

    def build_the_next() -> Recorded:
        raise Boom("cannot build c")

    def start_three() -> None:
        with parts.starting():
            parts.start("a", Recorded("a", calls))
            parts.start("b", Recorded("b", calls))
            parts.start("c", build_the_next())

    with pytest.raises(Boom, match="cannot build c"):
        start_three()
    assert calls == ["start a", "start b", "stop b", "stop a"]
    assert "event=start-failed error='cannot build c' action=rollback" in lines(caplog)


def test_a_failed_start_inside_starting_rolls_back_once() -> None:
    calls: list[str] = []
    parts = Supervisor()

    def start_four() -> None:
        with parts.starting():
            parts.start_all(four(calls, b={"fail_start": True}))

    with pytest.raises(Boom):
        start_four()
    assert calls == ["start a", "start b", "stop a"]


# ---- the node agent's parts under a supervisor ---------------------------------------------


@pytest.fixture
def short() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sv"))  # unix socket paths must stay short
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_node_agent_stops_what_started_when_a_later_part_fails(
    short: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The metrics port is taken: the agent had published, taken its Lease, watched the
    pods, started its device plugins and the monitor; all of that is stopped again, last
    first, and the error is the port's."""
    caplog.set_level(logging.INFO, "gpulet.agent")
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen()
    port = taken.getsockname()[1]
    before = set(threading.enumerate())
    with taken, ApiServerStandIn() as api, KubeletStandIn(short / "dp", short / "pr") as kubelet:
        api.create_node({"metadata": {"name": "gpu-a"}, "spec": {}, "status": {}})
        spec = AgentSpec(
            topo=shipped("pcie-4gpu"),
            plugin_dir=kubelet.plugin_dir,
            state_dir=short / "state",
            config=PluginConfig(node_name="gpu-a", region_root=short / "regions"),
        )
        monitoring = node_agent.Monitoring(
            FileUsageSource(short / "gpu-processes.json"),
            short / "proc",
            metrics_port=port,
            metrics_auth="none",
        )
        calls = CoreCalls(client.ApiClient(api.configuration()))
        api.create_crd(node_topology_crd())
        with pytest.raises(OSError, match="in use"):
            node_agent.start(spec, calls, None, None, heartbeat_s=0.2, monitoring=monitoring)
        assert not list(kubelet.plugin_dir.glob("gpulet-*.sock"))
    stopped = [
        line.removeprefix("event=component-stopped component=")
        for line in lines(caplog)
        if line.startswith("event=component-stopped")
    ]
    assert stopped == [
        "monitor",
        "colocation",
        "device-plugins",
        "allocated-recorder",
        "pods-watch",
        "heartbeat",
        "node-capacity",
        "topology-publisher",
    ]

    def left() -> list[str]:
        return [t.name for t in set(threading.enumerate()) - before if t.is_alive()]

    # None of the agent's threads is left. The API stand-in's threads serving its watches
    # end on their own once it closed them: give them a moment.
    assert not [name for name in left() if name.startswith("gpulet-")]
    deadline = time.monotonic() + 5
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left()


def test_the_standalone_agent_stops_its_device_plugins(short: Path) -> None:
    with KubeletStandIn(short / "dp", short / "pr") as kubelet:
        spec = AgentSpec(
            topo=shipped("pcie-4gpu"),
            plugin_dir=kubelet.plugin_dir,
            state_dir=short / "state",
            config=PluginConfig(node_name="gpu-a", region_root=short / "regions"),
        )
        agent = standalone.start(spec, None, None)
        assert agent.supervisor.running == ("device-plugins",)
        assert kubelet.wait_for(lambda v: bool(v.devices(GPU_RESOURCE)), timeout=10)
        agent.stop()
        agent.stop()
        assert not list(kubelet.plugin_dir.glob("gpulet-*.sock"))


# ---- real or simulated adapters ------------------------------------------------------------


def test_a_simulated_node_is_read_from_its_files_without_nvml(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`--simulate dgx-a100`: the shipped node's topology, XIDs from a file, port states
    from its sysfs, usage from a file; nothing of NVML is called (agent.usage imports the
    pynvml module, so a call, not the import, is what is checked)."""
    import pynvml  # noqa: PLC0415

    def forbidden(name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            raise AssertionError(f"pynvml.{name} called on a simulated node")

        return call

    for name in dir(pynvml):
        if name.startswith("nvml") and callable(getattr(pynvml, name)):
            monkeypatch.setattr(pynvml, name, forbidden(name))
    usage_file = tmp_path / "gpu-processes.json"
    node = read_adapters("dgx-a100", usage_file=usage_file)
    assert node.topo == shipped("dgx-a100")
    assert isinstance(node.xids, FileXidSource)
    assert node.xid_file == node.xids.path and node.xid_file.name == "xid-events"
    assert isinstance(node.ports, SysfsPortStates)
    assert isinstance(node.usage, FileUsageSource)
    assert node.usage.sample() == []  # the file given, not the node's: it does not exist yet
