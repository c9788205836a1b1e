"""One real cluster for the end-to-end tests (session-scoped): etcd, kube-apiserver,
kube-controller-manager and kube-scheduler from kubebox (tests/kube), kubelet's device
manager for node `gpu-a` (kubebox node), and gpulet's own agent and extender as their
commands, each with the identity and RBAC that deploy/ ships. kube-scheduler runs with
deploy/scheduler/kube-scheduler-config.yaml as shipped but two fields: the extender's URL
(a recorder in front of the extender, so tests see each call) and the kubeconfig."""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from deviceplugin.api import podresources_v1_pb2 as pr
from deviceplugin.api import podresources_v1_pb2_grpc as pr_grpc
from gpulet.api.nodetopology import document_of
from gpulet.api.resources import CORE_RESOURCE, GPU_RESOURCE
from gpulet.kube.calls import node_topologies
from gpulet.topology import Topology
from gpulet.topology.document import from_document
from tests.kube.build import BuildError, build
from tests.kube.cluster import ControlPlane, Process, documents, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
NODE = "gpu-a"
#: The cluster's nodes: name, the simulated machine its agent reads, its NUMA nodes, and
#: kubelet's Topology Manager policy there (none is kubelet's default).
NODES = {NODE: ("dgx-h100", 2, "none"), "gpu-b": ("dgx-a100", 8, "single-numa-node")}
SCHEDULER = "gpulet-scheduler"


@dataclass
class Call:
    verb: str
    path: str
    request: Any
    response: Any


class Recorder:
    """kube-scheduler's extender URL: records each call (path, request and answer JSON) and
    passes it to the extender unchanged."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                request = urllib.request.Request(
                    recorder.upstream + self.path,
                    data=body,
                    method="POST",
                    headers={
                        "Content-Type": self.headers.get("Content-Type") or "application/json"
                    },
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as r:
                        status, answer = r.status, r.read()
                except urllib.error.HTTPError as e:
                    status, answer = e.code, e.read()
                with recorder._lock:
                    recorder.calls.append(
                        Call(
                            self.path.rstrip("/").rsplit("/", 1)[-1],
                            self.path,
                            json.loads(body or b"null"),
                            _json_or_text(answer),
                        )
                    )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def for_pod(self, name: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if _names(c) == name]


def _names(call: Call) -> str | None:
    req = call.request or {}
    if "Pod" in req:
        return str(req["Pod"]["metadata"]["name"])
    return req.get("PodName")


def _json_or_text(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


@dataclass
class GpuNode:
    """One node: kubelet's device manager (kubebox node) and gpulet's agent serving it."""

    name: str
    dir: Path
    kubelet: Process
    agent_args: list[str]
    agent: Process
    topology: Topology | None = None

    @property
    def reports(self) -> Path:
        return self.dir / "reports"

    def allocatable(self, resource: str) -> int:
        """How many of `resource`'s devices kubelet's device manager holds healthy now."""
        with grpc.insecure_channel(f"unix://{self.dir / 'pr' / 'kubelet.sock'}") as channel:
            stub = pr_grpc.PodResourcesListerStub(channel)
            answer = stub.GetAllocatableResources(pr.AllocatableResourcesRequest(), timeout=5)
        return sum(len(d.device_ids) for d in answer.devices if d.resource_name == resource)


@dataclass
class World:
    cp: ControlPlane
    dir: Path
    recorder: Recorder
    #: The official client's CoreV1Api, as cluster admin (Any: its models' optional fields
    #: are read as JSON here, through `json` and `pod`).
    core: Any
    nodes: dict[str, GpuNode]

    def json(self, obj: object) -> Any:
        """An API object of the official client as the API server's JSON."""
        return self.core.api_client.sanitize_for_serialization(obj)

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.json(self.core.read_namespaced_pod(name, namespace)))

    def restart_agent(
        self,
        node: str,
        *,
        lose_checkpoint: bool = False,
        while_down: Callable[[], None] | None = None,
    ) -> None:
        """Stop the node's agent until kubelet's device manager has seen its plugins go, and
        start it again until the device manager has them back (kubelet's own pod-resources
        GetAllocatableResources: healthy devices only); with `lose_checkpoint`, its
        checkpoint is deleted while it is down; `while_down` is called before it starts
        again."""
        n = self.nodes[node]
        n.agent.stop()
        self.cp.processes.remove(n.agent)
        if lose_checkpoint:
            for lost in (n.dir / "state").glob("checkpoint.json*"):
                lost.unlink()
        wait_until(
            lambda: n.allocatable(GPU_RESOURCE) == 0,
            30,
            watch=self.cp.processes,
            why="the device manager saw the plugin go",
        )
        if while_down is not None:
            while_down()
        n.agent = start_agent(self.cp, n.name, n.agent_args)
        wait_until(
            lambda: n.allocatable(GPU_RESOURCE) > 0,
            30,
            watch=self.cp.processes,
            why="the plugin registered again",
        )
        # And the Node shows it (kubelet posts its status later): a test that creates a pod
        # at once would otherwise find it refused for want of gpulet.io/gpu.
        wait_until(
            lambda: _allocatable(self.core, node, GPU_RESOURCE) > 0,
            30,
            watch=self.cp.processes,
            why="the Node's allocatable back",
        )

    def bind_directly(self, args: dict[str, Any]) -> Any:
        """POST a bind to the extender as anyone on the network could (not kube-scheduler)."""
        request = urllib.request.Request(
            f"{self.recorder.upstream}/gpulet/bind",
            data=json.dumps(args).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def restart_kubelet(self, node: str) -> None:
        """Stop the node's kubelet (device manager) and start it again, until gpulet's plugins
        have registered with the new one and its devices are allocatable."""
        n = self.nodes[node]
        n.kubelet = self.cp.restart(n.kubelet)
        wait_until(
            lambda: n.allocatable(GPU_RESOURCE) > 0,
            30,
            watch=self.cp.processes,
            why="the plugins registered with the restarted kubelet",
        )

    def topology(self, node: str) -> Topology:
        topo = self.nodes[node].topology
        assert topo is not None
        return topo

    def report(self, node: str, uid: str) -> dict[str, Any] | None:
        path = self.nodes[node].reports / f"{uid}.json"
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            return None


def _advertised(core: Any, node: str) -> bool:
    return _allocatable(core, node, CORE_RESOURCE) > 0


def _allocatable(core: Any, node: str, resource: str) -> int:
    return int((core.read_node(node).status.allocatable or {}).get(resource, "0"))


def start_agent(cp: ControlPlane, node: str, args: list[str]) -> Process:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return cp.spawn(f"gpulet-agent-{node}", args, env=env, command=[sys.executable, "-m", "gpulet"])


def _published(core: Any, node: str) -> Topology | None:
    """The topology the node's agent published (its NodeTopology), once kubelet counts its
    devices too; None before."""
    try:
        raw = node_topologies(core.api_client).read(node)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    topo = from_document(document_of(json.loads(raw.data)))
    return topo if _allocatable(core, node, GPU_RESOURCE) > 0 else None


def add_node(
    cp: ControlPlane, name: str, how: tuple[str, int, str], credentials: Callable[[], Path]
) -> GpuNode:
    """kubelet's device manager for node `name` and gpulet's agent on a simulated machine
    (`how`: as NODES says)."""
    simulate, numa, policy = how
    base = cp.dir / name
    plugin_dir, pr_dir = base / "dp", base / "pr"
    for d in ("state", "lib", "cgroup", "kubelet", "proc", "reports"):
        (base / d).mkdir(parents=True)
    kubelet = cp.node(
        name, plugin_dir, pr_dir / "kubelet.sock", base / "reports", numa_nodes=numa, policy=policy
    )
    (base / "gpu-processes.json").write_text("[]")
    args = [
        "agent",
        "run",
        "--simulate",
        simulate,
        "--node-name",
        name,
        "--kubeconfig",
        str(credentials()),
        "--kubelet-dir",
        str(plugin_dir),
        "--pod-resources-dir",
        str(pr_dir),
        "--state-dir",
        str(base / "state"),
        "--region-root",
        str(base / "regions"),
        "--library-dir",
        str(base / "lib"),
        "--cgroup-root",
        str(base / "cgroup"),
        "--kubelet-state-dir",
        str(base / "kubelet"),
        "--proc-root",
        str(base / "proc"),
        "--usage-file",
        str(base / "gpu-processes.json"),
        "--metrics-port",
        "0",
        # The pod agent_kubeconfig made for it: its Lease's holder names it.
        "--pod-name",
        f"gpulet-agent-{name}",
        "--heartbeat-seconds",
        "5",
        # The room for batch slices measured over 2 s and published at most every 2 s (a
        # minute each in a cluster): the e2e tests wait for it.
        "--idle-window-seconds",
        "2",
        "--idle-interval-seconds",
        "2",
    ]
    return GpuNode(name, base, kubelet, args, start_agent(cp, name, args))


def agent_kubeconfig(cp: ControlPlane, core: Any, node: str) -> Path:
    """The credentials of the agent's pod on `node`, as kubelet gives it: a token of the
    gpulet-agent service account bound to that pod, which names the node. (The pod is the
    DaemonSet's in a cluster; here it is one the node runs as it runs any.)"""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"gpulet-agent-{node}", "namespace": "kube-system"},
        "spec": {
            "serviceAccountName": "gpulet-agent",
            "nodeName": node,
            "containers": [{"name": "agent", "image": "ghcr.io/gpulet/gpulet"}],
        },
    }
    wait_until(lambda: core.read_node(node), 30, watch=cp.processes, why=f"node {node}")
    created = core.create_namespaced_pod("kube-system", pod)
    return cp.service_account_kubeconfig(
        "kube-system", "gpulet-agent", pod=(created.metadata.name, created.metadata.uid)
    )


@pytest.fixture(scope="session")
def world() -> Iterator[World]:
    if os.environ.get("GPULET_SKIP_E2E"):
        pytest.skip("GPULET_SKIP_E2E is set")
    try:
        binary = build()
    except BuildError as e:
        pytest.fail(f"kubebox: {e}")
    short = Path(tempfile.mkdtemp(prefix="gk"))  # unix socket paths must stay short
    cp = ControlPlane(binary, short)
    try:
        cp.start()
        cp.apply(
            # The CRD first, served (Established) before anyone writes a NodeTopology.
            *documents(ROOT / "deploy/crd/nodetopology.yaml"),
            # The accounts' ClusterRoles, and their Roles on the namespace's Leases.
            *documents(ROOT / "deploy/agent/rbac.yaml"),
            *documents(ROOT / "deploy/extender/rbac.yaml"),
            *documents(ROOT / "deploy/scheduler/deployment.yaml", skip_kinds=("Deployment",)),
            *documents(ROOT / "deploy/admission/policy.yaml"),
        )
        crds = client.ApiextensionsV1Api(cp.api())
        wait_until(
            lambda: any(
                c.type == "Established" and c.status == "True"
                for c in getattr(
                    crds.read_custom_resource_definition("nodetopologies.gpulet.io").status,
                    "conditions",
                    None,
                )
                or ()
            ),
            30,
            watch=cp.processes,
            why="the NodeTopology CRD established",
        )
        core = client.CoreV1Api(cp.api())
        nodes = {
            n: add_node(cp, n, how, functools.partial(agent_kubeconfig, cp, core, n))
            for n, how in NODES.items()
        }
        scorer_port, health_port = free_port(), free_port()
        cp.spawn(
            "gpulet-scorer",
            [
                "scorer",
                "serve",
                # The sidecar layout's settings (loopback verbs, a probe port), on free ports.
                "--config",
                str(ROOT / "deploy/extender/scorer.yaml"),
                "--port",
                str(scorer_port),
                "--health-port",
                str(health_port),
                "--kubeconfig",
                # The extender runs in the gpulet-scheduler pods, with their account.
                str(cp.service_account_kubeconfig("kube-system", SCHEDULER)),
            ],
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
            command=[sys.executable, "-m", "gpulet"],
        )
        recorder = Recorder(f"http://127.0.0.1:{scorer_port}")
        config = yaml.safe_load((ROOT / "deploy/scheduler/kube-scheduler-config.yaml").read_text())
        (extender,) = config["extenders"]
        prefix = extender["urlPrefix"].split("://", 1)[1].split("/", 1)[1]
        extender["urlPrefix"] = f"http://127.0.0.1:{recorder.port}/{prefix}"
        cp.scheduler(config, cp.service_account_kubeconfig("kube-system", SCHEDULER))
        for node in nodes.values():
            node.topology = wait_until(
                functools.partial(_published, core, node.name),
                60,
                watch=cp.processes,
                why=f"the agent published node {node.name} and kubelet its devices",
            )
            # kube-scheduler counts gpu-core and gpu-memory against the aggregates the agent
            # advertises in the Node's status.
            wait_until(
                functools.partial(_advertised, core, node.name),
                30,
                watch=cp.processes,
                why=f"the agent advertised node {node.name}'s aggregates",
            )
        wait_until(lambda: _healthy(health_port), 30, watch=cp.processes, why="the extender")
        yield World(cp, short, recorder, core, nodes)
    finally:
        cp.stop()
        if os.environ.get("GPULET_E2E_KEEP"):
            print(f"e2e: kept {short}", file=sys.stderr)
        else:
            shutil.rmtree(short, ignore_errors=True)


def _healthy(port: int) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
        return bool(r.status == 200)


_namespaces = itertools.count(1)


@pytest.fixture
def ns(world: World, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace of this test's own; its pods are gone (not only deleted) afterwards, so
    the next test finds the node empty."""
    words = re.sub(r"[^a-z0-9]+", "-", request.node.name.removeprefix("test_").lower())
    name = f"t{next(_namespaces)}-{words[:50]}".rstrip("-")
    world.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    wait_until(
        lambda: world.core.read_namespaced_service_account("default", name),
        30,
        watch=world.cp.processes,
        why="the namespace's service account",
    )
    try:
        yield name
    finally:
        world.core.delete_collection_namespaced_pod(name, grace_period_seconds=0)
        wait_until(
            lambda: not world.core.list_namespaced_pod(name).items,
            60,
            watch=world.cp.processes,
            why="the test's pods gone",
        )
        world.core.delete_namespace(name)
