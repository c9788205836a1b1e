"""What gpulet costs the API server: writes, bytes written, and bytes every watcher of Nodes,
NodeTopologies and gpulet's Leases is sent, per node, in the previous release's form and in
this one's, projected to 5,000 nodes.

N simulated agents run against the API server stand-in (`gpulet.standins.apiserver`), each
for a node of its own: only their publication and heartbeat, not the device plugin or the pod
watch. Each node's Node is created first, as kubelet registers it (a GPU node's labels,
capacity, conditions, addresses, images: about 8 KB), and its topology is the shipped
dgx-h100's, renamed. The modes:

- `annotations` (the previous release, tests/legacy_publisher.py): each agent patches its
  Node with `gpulet.io/topology` at start, and `gpulet.io/heartbeat` every 60 s.
- `resources` (this release, agent.publish and agent.heartbeat, started as the agent starts
  them): each agent reads its Node, creates its NodeTopology (and watches it), takes its
  Lease, and renews the Lease every 20 s.
- `upgrade` (not run by default): `resources` on Nodes that still carry the previous
  release's annotations, which each agent removes once.

Watching them: the extender's own sync (`scorer.kube.ClusterSync` over a `ClusterView`, as
`scorer.app.build` makes them) and three raw watchers, plain HTTP clients that list and then
read a watch's chunked stream, counting each event's bytes: all Nodes, all NodeTopologies, and
the install namespace's Leases with gpulet's label selector. What the stand-in recorded of each
request (method, path, bytes in and out, User-Agent) tells the components apart; every
client has a User-Agent of its own.

Phases: start-up, from the first agent's start until every agent's first publication has
reached the watchers (the heartbeats some agents already renew by then are left out of it);
then steady state, nothing changing but the heartbeats (`--steady`: 600 simulated seconds,
a whole number of both modes' heartbeats).

Time may be compressed: `--speed 10` divides every interval by 10 (the heartbeat of 60 s
becomes 6 s) and multiplies the rates measured back, so that hundreds of agents fit on a
small machine. Every process runs on this machine: the stand-in (here), the agents, the
extender and the watchers (one process each). An agent waits its interval after each write,
so a slow answer delays its next heartbeat; compressed, that delay weighs `--speed` times
more, and the check line says how far the heartbeats measured fell short of the interval.
The projection is given both as measured and at the nominal heartbeat (what each heartbeat
cost, times the interval's rate). The stand-in adds no managedFields: a real API server adds
some to every object it stores and sends, so its bytes are somewhat higher.

Run: .venv/bin/python bench/api_footprint.py [--nodes 200] [--speed 10] [--steady 600]
     [--spread 5] [--mode annotations resources upgrade]
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import logging
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.*, bench.*

from kubernetes.client import ApiClient, Configuration

from agent.heartbeat import LeaseHeartbeat
from agent.publish import TopologyPublisher
from bench.placement import cpu_model
from gpulet.api import nodetopology as nt
from gpulet.api.resources import (
    GPU_RESOURCE,
    HEARTBEAT_ANNOTATION,
    RDMA_RESOURCE,
    TOPOLOGY_ANNOTATION,
)
from gpulet.api.stamps import stamp
from gpulet.kube.calls import CoreCalls, ObjectCalls, leases
from gpulet.kube.crd import node_topology_crd
from gpulet.placement import Capacity
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.topology.document import dumps, to_document
from scorer.app import tune_gc
from scorer.cluster import ClusterView
from scorer.config import ScorerConfig
from scorer.kube import ClusterSync
from tests.kube.build import build as build_kubebox
from tests.kube.cluster import ControlPlane, documents, wait_until
from tests.legacy_publisher import LEGACY_HEARTBEAT_S, LegacyNodePublisher
from tests.nodes import shipped

ROOT = Path(__file__).resolve().parent.parent
#: Each client's User-Agent; the stand-in's record tells the components apart by it.
AGENT_UA = "gpulet-agent/bench"
EXTENDER_UA = "gpulet-scorer/bench"
WATCHER_UA = "raw-watcher/bench"
SETUP_UA = "bench-setup"
COMPONENTS = {AGENT_UA: "agent", EXTENDER_UA: "extender", WATCHER_UA: "watcher"}

#: Each mode's heartbeat, in (simulated) seconds.
MODES = {"annotations": LEGACY_HEARTBEAT_S, "resources": nt.HEARTBEAT_S, "upgrade": nt.HEARTBEAT_S}
#: What each mode's agents are: this release's in `resources` and `upgrade` (whose Nodes carry
#: the previous release's annotations when the agents start, for them to remove).
LEGACY_MODES = frozenset({"annotations"})
KINDS = ("nodes", "nodetopologies", "leases", "pods")
WATCHERS = ("nodes", "nodetopologies", "leases")
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
PROJECTED_NODES = 5_000
#: The bytes of managedFields a real kube-apiserver adds to each object it stores and sends
#: (compact JSON), which the stand-in does not: a Node as kubelet registers it and the
#: previous release's agent patches it (kubelet's two entries, the agent's), a NodeTopology
#: (an entry naming every field of its spec), a Lease. Measured with `--managed-fields` on
#: kube-apiserver v1.37.2 (tests/kube) on 2026-12-06.
MANAGED_FIELDS = {"nodes": 4_051, "nodetopologies": 6_134, "leases": 392}
NAMESPACE = nt.DEFAULT_NAMESPACE
MB = 1_000_000


# ---- the nodes, as kubelet registers them ------------------------------------------------

_IMAGES = (
    ("nvcr.io/nvidia/pytorch", "25.01-py3", 10_402_515_209),
    ("nvcr.io/nvidia/tritonserver", "25.01-py3", 8_961_226_450),
    ("nvcr.io/nvidia/nemo", "24.12", 19_851_662_881),
    ("nvcr.io/nvidia/cuda", "12.6.3-base-ubuntu22.04", 113_562_412),
    ("nvcr.io/nvidia/k8s/dcgm-exporter", "3.3.9-3.6.1-ubuntu22.04", 453_184_133),
    ("nvcr.io/nvidia/cloud-native/k8s-mig-manager", "v0.10.0-ubuntu22.04", 141_208_300),
    ("ghcr.io/gpulet/gpulet", "0.1.0", 162_774_931),
    ("registry.k8s.io/kube-proxy", "v1.32.1", 30_908_485),
    ("quay.io/cilium/cilium", "v1.16.5", 197_112_374),
    ("registry.k8s.io/nfd/node-feature-discovery", "v0.16.6", 75_114_882),
    ("quay.io/prometheus/node-exporter", "v1.8.2", 11_729_306),
    ("public.ecr.aws/ebs-csi-driver/aws-ebs-csi-driver", "v1.37.0", 35_880_414),
    ("public.ecr.aws/eks-distro/kubernetes-csi/node-driver-registrar", "v2.12.0", 9_876_314),
    ("registry.k8s.io/pause", "3.10", 320_368),
)
_FEATURES = (
    "cpu-cpuid.AVX512F",
    "cpu-cpuid.AVX512BW",
    "cpu-cpuid.AMXTILE",
    "cpu-hardware_multithreading",
    "pci-10de.present",
    "pci-1d0f.present",
    "rdma.available",
    "rdma.capable",
    "storage-nonrotationaldisk",
)


def _hex(seed: str, n: int) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()[:n]


def kubelet_node(name: str, index: int) -> dict[str, Any]:
    """The Node kubelet registers for a p5.48xlarge-like GPU node (8 H100s, gpulet's device
    plugins' resources), with node-feature-discovery's labels, a CNI's annotations and the
    images a GPU node keeps; about 8 KB of JSON."""
    ip = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
    instance = f"i-0{_hex(name, 16)}"
    zone = f"us-east-1{'abcd'[index % 4]}"
    cidr = f"100.{64 + (index >> 8 & 63)}.{index & 255}.0/24"

    def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
        return {
            "type": kind,
            "status": status,
            "lastHeartbeatTime": "2026-12-06T09:14:07Z",
            "lastTransitionTime": "2026-12-01T17:02:44Z",
            "reason": reason,
            "message": message,
        }

    capacity = {
        "cpu": "192",
        "ephemeral-storage": "7499362304Ki",
        "hugepages-1Gi": "0",
        "hugepages-2Mi": "0",
        "memory": "2113254912Ki",
        "pods": "110",
        "vpc.amazonaws.com/efa": "32",
        GPU_RESOURCE: "800",
        RDMA_RESOURCE: "800",
    }
    allocatable = {
        **capacity,
        "cpu": "191450m",
        "memory": "2100475904Ki",
        "ephemeral-storage": "6911395095262",
    }
    handler = {"recursiveReadOnlyMounts": True, "userNamespaces": True}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/instance-type": "p5.48xlarge",
                "beta.kubernetes.io/os": "linux",
                "failure-domain.beta.kubernetes.io/region": "us-east-1",
                "failure-domain.beta.kubernetes.io/zone": zone,
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": "p5.48xlarge",
                "topology.kubernetes.io/region": "us-east-1",
                "topology.kubernetes.io/zone": zone,
                "topology.ebs.csi.aws.com/zone": zone,
                "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
                "nvidia.com/gpu.count": "8",
                "nvidia.com/gpu.memory": "81559",
                "nvidia.com/gpu.family": "hopper",
                "nvidia.com/cuda.driver.major": "560",
                "nvidia.com/cuda.driver.minor": "35",
                "nvidia.com/cuda.driver.rev": "03",
                **{f"feature.node.kubernetes.io/{f}": "true" for f in _FEATURES},
                "feature.node.kubernetes.io/kernel-version.full": "6.8.0-1021-aws",
                "feature.node.kubernetes.io/system-os_release.ID": "ubuntu",
                "feature.node.kubernetes.io/system-os_release.VERSION_ID": "22.04",
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
                "csi.volume.kubernetes.io/nodeid": json.dumps({"ebs.csi.aws.com": instance}),
                "nfd.node.kubernetes.io/feature-labels": ",".join(_FEATURES),
                "nfd.node.kubernetes.io/worker.version": "v0.16.6",
                "io.cilium.network.ipv4-cilium-host": f"100.64.{index >> 8 & 255}.{index & 255}",
                "io.cilium.network.ipv4-pod-cidr": cidr,
            },
        },
        "spec": {
            "podCIDR": cidr,
            "podCIDRs": [cidr],
            "providerID": f"aws:///{zone}/{instance}",
            "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        },
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "conditions": [
                condition(
                    "MemoryPressure",
                    "False",
                    "KubeletHasSufficientMemory",
                    "kubelet has sufficient memory available",
                ),
                condition(
                    "DiskPressure",
                    "False",
                    "KubeletHasNoDiskPressure",
                    "kubelet has no disk pressure",
                ),
                condition(
                    "PIDPressure",
                    "False",
                    "KubeletHasSufficientPID",
                    "kubelet has sufficient PID available",
                ),
                condition("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": ip},
                {"type": "InternalDNS", "address": f"ip-{ip.replace('.', '-')}.ec2.internal"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": _hex(name + "machine", 32),
                "systemUUID": f"ec2{_hex(name, 5)}-{_hex(name + 'a', 4)}-{_hex(name + 'b', 4)}-"
                f"{_hex(name + 'c', 4)}-{_hex(name + 'd', 12)}",
                "bootID": f"{_hex(name + 'e', 8)}-{_hex(name + 'f', 4)}-4{_hex(name + 'g', 3)}-"
                f"8{_hex(name + 'h', 3)}-{_hex(name + 'i', 12)}",
                "kernelVersion": "6.8.0-1021-aws",
                "osImage": "Ubuntu 22.04.5 LTS",
                "containerRuntimeVersion": "containerd://1.7.24",
                "kubeletVersion": "v1.32.1",
                "kubeProxyVersion": "v1.32.1",
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
            "images": [
                {"names": [f"{repo}@sha256:{_hex(repo, 64)}", f"{repo}:{tag}"], "sizeBytes": size}
                for repo, tag, size in _IMAGES
            ],
            "runtimeHandlers": [
                {"name": name, "features": handler} for name in ("nvidia", "runc", "")
            ],
            "features": {"supplementalGroupsPolicy": True},
        },
    }


def node_name(i: int) -> str:
    return f"gpu-node-{i:05d}"


def api_client(url: str, user_agent: str) -> ApiClient:
    api = ApiClient(Configuration(host=url))
    api.user_agent = user_agent
    return api


# ---- the agents (a process of their own) --------------------------------------------------


class _Agent(Protocol):
    def start(self) -> None: ...

    def stop(self) -> None: ...


class _ThisRelease:
    """This release's publication, started as `agent.node_agent.start` starts it: the
    NodeTopology, then the Lease, then the previous release's annotations settled."""

    def __init__(self, url: str, name: str, heartbeat_s: float) -> None:
        api = api_client(url, AGENT_UA)
        topo = replace(shipped("dgx-h100"), node=name)
        self.topology = TopologyPublisher(CoreCalls(api), topo)
        self.heartbeat = LeaseHeartbeat(
            api, name, NAMESPACE, f"gpulet-agent-{name}", heartbeat_s=heartbeat_s
        )

    def start(self) -> None:
        self.topology.start()
        self.heartbeat.start()
        self.topology.retire_legacy()

    def stop(self) -> None:
        self.heartbeat.stop()
        self.topology.stop()


def _legacy_agent(url: str, name: str, heartbeat_s: float) -> LegacyNodePublisher:
    text = dumps(replace(shipped("dgx-h100"), node=name))
    core = CoreCalls(api_client(url, AGENT_UA))
    return LegacyNodePublisher(core, name, text, heartbeat_s=heartbeat_s)


@dataclass(frozen=True)
class Fleet:
    """The agents to run: their mode, nodes, heartbeat (real seconds), and the real seconds
    over which they start."""

    mode: str
    names: list[str]
    heartbeat_s: float
    spread_s: float


def agents_main(conn: Connection, url: str, fleet: Fleet) -> None:
    """Build an agent per node; on "go", start them spread over `spread_s` and report when
    every first publication is done; on "stop", stop them."""
    logging.basicConfig(level=logging.ERROR)
    agents: list[_Agent] = [
        _ThisRelease(url, name, fleet.heartbeat_s)
        if fleet.mode not in LEGACY_MODES
        else _legacy_agent(url, name, fleet.heartbeat_s)
        for name in fleet.names
    ]
    conn.send(("built", len(agents)))
    conn.recv()
    t0 = time.monotonic()
    step = fleet.spread_s / max(1, len(agents))

    def start(i: int) -> float:
        time.sleep(max(0.0, t0 + i * step - time.monotonic()))
        agents[i].start()
        return time.monotonic()

    with ThreadPoolExecutor(32) as pool:
        done = list(pool.map(start, range(len(agents))))
    conn.send(("published", t0, max(done)))
    conn.recv()
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda a: a.stop(), agents))
    conn.send(("stopped",))


# ---- the extender (a process of its own) --------------------------------------------------


def extender_main(conn: Connection, url: str) -> None:
    """The extender's view and sync, as `scorer.app.build` makes them; answers "view" with
    what it sees, stops on "stop"."""
    logging.basicConfig(level=logging.ERROR)
    config = ScorerConfig(lease_namespace=NAMESPACE)
    view = ClusterView(
        Capacity(gpu_slots=config.gpu_slots, nic_slots=config.rdma_slots),
        assume_ttl=config.assume_ttl_s,
        stale_after=config.stale_heartbeat_s,
    )
    core = CoreCalls(api_client(url, EXTENDER_UA))
    sync = ClusterSync(core, view, namespace=NAMESPACE, watch_timeout_s=config.watch_timeout_s)
    tune_gc()
    sync.start()
    conn.send(("ready", sync.wait_ready(60)))
    while conn.recv() == "view":
        names = view.node_names()
        usable = sum(1 for n in names if (info := view.node(n)) is not None and info.topo)
        conn.send((len(names), usable, len(view.quiet_nodes())))
    sync.stop()
    conn.send(("stopped",))


# ---- the raw watchers (a process of their own) --------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One watch event a raw watcher read: when (monotonic), its type and object's name, its
    bytes as a real API server sends them (compact JSON, as Go writes it), and as the stand-in
    sent them (Python's JSON, with a space after every colon and comma)."""

    at: float
    type: str
    name: str
    size: int
    wire: int


class RawWatch:
    """Lists `path` (with `query`), then reads a watch from the list's resourceVersion with a
    plain HTTP client, keeping each event's time, type, name and size."""

    def __init__(self, url: str, path: str, query: dict[str, str]) -> None:
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._path, self._query = path, query
        self.listed_bytes = 0
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._conn = http.client.HTTPConnection(self._host, self._port, timeout=30)
        self.ready = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _get(self, query: dict[str, str]) -> http.client.HTTPResponse:
        target = f"{self._path}?{urlencode(query)}" if query else self._path
        self._conn.request("GET", target, headers={"User-Agent": WATCHER_UA})
        resp = self._conn.getresponse()
        if resp.status != 200:
            raise RuntimeError(f"GET {target}: HTTP {resp.status}: {resp.read()[:300]!r}")
        return resp

    def _run(self) -> None:
        body = self._get(self._query).read()
        self.listed_bytes = len(body)
        version = json.loads(body)["metadata"]["resourceVersion"]
        query = {**self._query, "watch": "true", "resourceVersion": version}
        resp = self._get({**query, "timeoutSeconds": "3600"})
        if self._conn.sock is not None:
            self._conn.sock.settimeout(None)
        self.ready.set()
        try:
            for line in resp:
                now = time.monotonic()
                event = json.loads(line)
                meta = (event.get("object") or {}).get("metadata") or {}
                size = len(json.dumps(event, separators=(",", ":")).encode()) + 1
                seen = Seen(now, event.get("type", ""), meta.get("name", ""), size, len(line))
                with self._lock:
                    self.seen.append(seen)
        except (OSError, ValueError):
            if not self._stopping.is_set():
                raise

    def names(self) -> int:
        with self._lock:
            return len({s.name for s in self.seen})

    def stop(self) -> list[Seen]:
        self._stopping.set()
        if self._conn.sock is not None:
            self._conn.sock.close()
        with self._lock:
            return list(self.seen)


def watchers_main(conn: Connection, url: str) -> None:
    """Three raw watchers; answers "names" with how many objects each has seen events of,
    and "stop" with everything each saw."""
    watches = {
        "nodes": RawWatch(url, "/api/v1/nodes", {}),
        "nodetopologies": RawWatch(url, nt.COLLECTION_PATH, {}),
        "leases": RawWatch(
            url,
            f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases",
            {"labelSelector": nt.LEASE_SELECTOR},
        ),
    }
    for watch in watches.values():
        watch.start()
    conn.send(("ready", all(w.ready.wait(60) for w in watches.values())))
    while conn.recv() == "names":
        conn.send({kind: w.names() for kind, w in watches.items()})
    conn.send({kind: (w.listed_bytes, w.stop()) for kind, w in watches.items()})


# ---- managedFields, on a real API server (tests/kube) -------------------------------------


def measure_managed_fields() -> dict[str, int]:
    """Start a real control plane (tests/kube: etcd and kube-apiserver, built once), write a
    Node as kubelet does and patch it as the previous release's agent did, a NodeTopology and
    a Lease as this release's agent does, and read how many bytes of managedFields each
    carries."""
    with tempfile.TemporaryDirectory(prefix="gk") as tmp:
        plane = ControlPlane(build_kubebox(quiet=True), Path(tmp))
        try:
            plane.start()
            plane.apply(*documents(ROOT / "deploy/crd/nodetopology.yaml"))
            return _managed_fields(plane)
        finally:
            plane.stop()


def _managed_fields(plane: ControlPlane) -> dict[str, int]:
    def client(user_agent: str) -> ApiClient:
        api = plane.api()
        api.user_agent = user_agent
        return api

    def managed(calls: ObjectCalls, name: str) -> int:
        obj = json.loads(calls.read(name).data)
        full = len(json.dumps(obj, separators=(",", ":")))
        del obj["metadata"]["managedFields"]
        return full - len(json.dumps(obj, separators=(",", ":")))

    name, agent = node_name(0), client("gpulet-agent/bench")
    nodes = ObjectCalls(client("kubelet/v1.32.1 (linux/amd64) kubernetes/bench"), "/api/v1/nodes")
    node = kubelet_node(name, 0)
    status = node.pop("status")
    nodes.create(node)
    nodes.patch(f"{name}/status", {"status": status})
    topo = replace(shipped("dgx-h100"), node=name)
    LegacyNodePublisher(CoreCalls(agent), name, dumps(topo)).publish()
    uid = json.loads(nodes.read(name).data)["metadata"]["uid"]
    topologies = ObjectCalls(agent, nt.COLLECTION_PATH)
    wait_until(
        lambda: topologies.create(nt.node_topology(name, uid, to_document(topo))),
        60,
        watch=plane.processes,
        why="the NodeTopology CRD served",
    )
    heartbeat = LeaseHeartbeat(agent, name, NAMESPACE, f"gpulet-agent-{name}")
    heartbeat.renew_now()
    heartbeat.renew_now()
    return {
        "nodes": managed(nodes, name),
        "nodetopologies": managed(topologies, name),
        "leases": managed(leases(agent, NAMESPACE), nt.lease_name(name)),
    }


# ---- one mode, measured -------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    """One request as the stand-in recorded it, and whose it was."""

    method: str
    path: str
    sent: int  # request body bytes
    answered: int  # response body bytes (a watch: all it streamed by then)
    component: str
    kind: str

    @property
    def write(self) -> bool:
        return self.method in WRITES

    @property
    def watch(self) -> bool:
        return "watch=true" in self.path or "watch=1" in self.path

    @property
    def bare(self) -> str:
        return self.path.split("?", 1)[0]


def kind_of(path: str) -> str:
    bare = path.split("?", 1)[0]
    if bare.startswith("/api/v1/nodes"):
        return "nodes"
    if bare.startswith(nt.COLLECTION_PATH):
        return "nodetopologies"
    if bare.startswith("/apis/coordination.k8s.io/") and "/leases" in bare:
        return "leases"
    if bare.startswith("/api/v1/") and "/pods" in bare:
        return "pods"
    return "other"


def calls_of(api: ApiServerStandIn) -> list[Call]:
    return [
        Call(
            r.method,
            r.path,
            r.request_bytes,
            r.response_bytes,
            COMPONENTS.get(r.user_agent, "other"),
            kind_of(r.path),
        )
        for r in api.traffic()
    ]


@dataclass
class Phase:
    """What one phase cost, per (component, kind): requests, writes, request bytes, answer
    bytes (not of watches) and bytes streamed to watches; per raw watcher, events and bytes;
    its length in real seconds."""

    seconds: float = 0.0
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    writes: Counter[tuple[str, str]] = field(default_factory=Counter)
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    answered: Counter[tuple[str, str]] = field(default_factory=Counter)
    streamed: Counter[tuple[str, str]] = field(default_factory=Counter)
    events: Counter[str] = field(default_factory=Counter)
    delivered: Counter[str] = field(default_factory=Counter)
    wire: Counter[str] = field(default_factory=Counter)

    def add(self, call: Call) -> None:
        key = (call.component, call.kind)
        self.requests[key] += 1
        self.writes[key] += call.write
        self.sent[key] += call.sent
        if not call.watch:
            self.answered[key] += call.answered

    def saw(self, watcher: str, seen: Seen) -> None:
        self.events[watcher] += 1
        self.delivered[watcher] += seen.size
        self.wire[watcher] += seen.wire


@dataclass
class Run:
    """What one mode's run left: the stand-in's record before the agents started (`calls[0]`),
    at the end of start-up, at the end of steady state and after everything stopped; the
    times of those (monotonic); what each raw watcher listed and saw; what the extender saw
    (nodes, nodes with a topology, quiet nodes); each process's CPU share in steady state."""

    calls: tuple[list[Call], list[Call], list[Call], list[Call]]
    t0: float
    t1: float
    t2: float
    watched: dict[str, tuple[int, list[Seen]]]
    view: tuple[int, int, int]
    cpu: dict[str, float]


def _child(target: Callable[..., None], *args: Any) -> tuple[mp.process.BaseProcess, Connection]:
    here, there = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=target, args=(there, *args), daemon=True)
    proc.start()
    return proc, here


def _expect(conn: Connection, timeout: float, what: str) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError(f"no answer from the {what} in {timeout:g} s")
    return conn.recv()


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(mode: str, n: int, speed: float, steady_s: float, spread_s: float) -> tuple[Run, int]:
    """One mode against a fresh stand-in; also the size of a Node as kubelet registered it."""
    names = [node_name(i) for i in range(n)]
    with ApiServerStandIn(history_size=max(10_000, 40 * n)) as api:
        crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        ObjectCalls(api_client(api.url, SETUP_UA), crds).create(node_topology_crd())
        topo = shipped("dgx-h100")
        for i, name in enumerate(names):
            node = kubelet_node(name, i)
            if mode == "upgrade":  # as the previous release's agent left it
                node["metadata"]["annotations"].update(
                    {
                        TOPOLOGY_ANNOTATION: dumps(replace(topo, node=name)),
                        HEARTBEAT_ANNOTATION: stamp(time.time()),
                    }
                )
            api.create_node(node)
        registered = api.get_node(names[0]) or {}
        for key in nt.LEGACY_ANNOTATIONS:
            registered["metadata"]["annotations"].pop(key, None)
        node_bytes = len(json.dumps(registered, separators=(",", ":")))

        watchers, watch_conn = _child(watchers_main, api.url)
        extender, ext_conn = _child(extender_main, api.url)
        fleet = Fleet(mode, names, MODES[mode] / speed, spread_s)
        agents, agent_conn = _child(agents_main, api.url, fleet)
        _expect(agent_conn, 300, "agents")
        if not _expect(watch_conn, 120, "watchers")[1] or not _expect(ext_conn, 120, "extender")[1]:
            raise RuntimeError("the watchers or the extender did not sync")

        # Start-up: from the first agent's start until every first publication has reached
        # the raw watchers (the Nodes' watcher, or the NodeTopologies' and the Leases').
        before = calls_of(api)
        agent_conn.send("go")
        _, t0, _ = _expect(agent_conn, 600, "agents")
        wanted = {
            "annotations": ("nodes",),
            "resources": ("nodetopologies", "leases"),
            "upgrade": ("nodetopologies", "leases", "nodes"),
        }[mode]
        deadline = time.monotonic() + 120
        while True:
            watch_conn.send("names")
            seen = watch_conn.recv()
            if all(seen[w] >= n for w in wanted):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the watchers saw only {seen} of {n} nodes")
            time.sleep(0.05)
        t1 = time.monotonic()
        started = calls_of(api)

        # Steady state: nothing changes; the agents renew their heartbeats.
        procs = {"agents": agents, "extender": extender, "raw watchers": watchers}
        pids = {"API server stand-in": os.getpid()}
        pids.update({k: p.pid for k, p in procs.items() if p.pid is not None})
        cpu0 = {k: _cpu_seconds(pid) for k, pid in pids.items()}
        time.sleep(steady_s / speed)
        t2 = time.monotonic()
        cpu = {k: (_cpu_seconds(pid) - cpu0[k]) / (t2 - t1) for k, pid in pids.items()}
        steady = calls_of(api)
        ext_conn.send("view")
        view = ext_conn.recv()

        agent_conn.send("stop")
        _expect(agent_conn, 120, "agents")
        ext_conn.send("stop")
        _expect(ext_conn, 60, "extender")
        watch_conn.send("stop")
        watched = _expect(watch_conn, 60, "watchers")
        for proc in procs.values():
            proc.join(30)
    return Run((before, started, steady, calls_of(api)), t0, t1, t2, watched, view, cpu), node_bytes


def renewal(mode: str, call: Call, patched: set[str]) -> bool:
    """Whether an agent's `call` is a heartbeat renewal rather than part of its first
    publication: a Lease written over (resources), or a Node patched again (annotations)."""
    if mode not in LEGACY_MODES:
        return call.kind == "leases" and call.method in ("PUT", "PATCH")
    if call.kind != "nodes" or call.method != "PATCH":
        return False
    again = call.bare in patched
    patched.add(call.bare)
    return again


def tally(mode: str, r: Run) -> tuple[Phase, Phase, list[str]]:
    """Start-up (renewals left out) and steady state; and what looked wrong."""
    before, started, steady_end, _ = r.calls
    startup, steady = Phase(r.t1 - r.t0), Phase(r.t2 - r.t1)
    patched: set[str] = set()
    for i, call in enumerate(steady_end):
        if i < len(before):
            pass
        elif i < len(started):
            if not (call.component == "agent" and renewal(mode, call, patched)):
                startup.add(call)
        else:
            steady.add(call)
        if call.watch:  # what it streamed in each phase
            key = (call.component, call.kind)
            at0 = before[i].answered if i < len(before) else 0
            at1 = started[i].answered if i < len(started) else 0
            startup.streamed[key] += at1 - at0
            steady.streamed[key] += call.answered - at1
    problems = []
    first: set[tuple[str, str]] = set()
    for watcher, (_, seen) in r.watched.items():
        for s in seen:
            new = (watcher, s.name) not in first
            first.add((watcher, s.name))
            if r.t0 <= s.at < r.t1:
                if new if watcher == "nodes" else s.type == "ADDED":
                    startup.saw(watcher, s)
                if watcher == "nodetopologies" and s.type != "ADDED":
                    problems.append(f"a NodeTopology {s.type} in start-up: {s.name}")
            elif r.t1 <= s.at < r.t2:
                steady.saw(watcher, s)
    return startup, steady, problems


@dataclass
class Result:
    mode: str
    nodes: int
    speed: float
    heartbeat_s: float
    node_bytes: int
    startup: Phase
    steady: Phase
    run: Run
    problems: list[str]

    @property
    def heartbeats(self) -> float:
        """The agents' heartbeat writes per node per (simulated) minute, as measured."""
        kind = "nodes" if self.mode in LEGACY_MODES else "leases"
        return per_node_minute(self, self.steady.writes["agent", kind])

    @property
    def behind(self) -> float:
        """How many times fewer heartbeats the agents wrote than their interval asks (each
        waits its interval after the last write, so a slow answer delays the next)."""
        return 60 / self.heartbeat_s / self.heartbeats if self.heartbeats else 1.0

    def lists(self, component: str, collection: str) -> tuple[int, int]:
        """How many LISTs and watches of all of `collection` (/api/v1/nodes or pods) the
        component made in the whole run."""
        calls = [c for c in self.run.calls[3] if c.component == component and c.method == "GET"]
        mine = [c for c in calls if c.bare == collection]
        return sum(not c.watch for c in mine), sum(c.watch for c in mine)


def measure(mode: str, n: int, speed: float, steady_s: float, spread_s: float) -> Result:
    r, node_bytes = run(mode, n, speed, steady_s, spread_s)
    startup, steady, problems = tally(mode, r)
    return Result(mode, n, speed, MODES[mode], node_bytes, startup, steady, r, problems)


# ---- the report ---------------------------------------------------------------------------


def _kb(b: float) -> str:
    return f"{b / 1000:,.1f} KB" if b < MB else f"{b / MB:,.2f} MB"


def _rows(header: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    rows = [list(header), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for r in rows:
        print(
            "  "
            + "  ".join(
                c.rjust(w) if i else c.ljust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )


def per_node_minute(r: Result, value: float) -> float:
    """A steady-state total, per node per (simulated) minute."""
    return value / r.nodes / (r.steady.seconds * r.speed) * 60


def _table(r: Result, phase: Phase, per: Callable[[float], float]) -> None:
    counters = (phase.requests, phase.streamed)
    keys = sorted(
        k
        for k in phase.requests.keys() | phase.streamed.keys()
        if k[0] in ("agent", "extender") and any(c[k] for c in counters)
    )
    _rows(
        ("component", "kind", "requests", "writes", "bytes written", "answered", "to watches"),
        (
            (
                c,
                k,
                f"{per(phase.requests[c, k]):.2f}",
                f"{per(phase.writes[c, k]):.2f}",
                f"{per(phase.sent[c, k]):,.0f}",
                f"{per(phase.answered[c, k]):,.0f}",
                f"{per(phase.streamed[c, k]):,.0f}",
            )
            for c, k in keys
        ),
    )


def report_mode(r: Result) -> None:
    print(
        f"\n== {r.mode}: {r.nodes} agents, heartbeat {r.heartbeat_s:g} s "
        f"({r.heartbeat_s / r.speed:g} s real); a Node as kubelet registered it: "
        f"{r.node_bytes:,} B"
    )
    print(
        f"start-up {r.startup.seconds:.1f} s real; steady state {r.steady.seconds:.1f} s real "
        f"= {r.steady.seconds * r.speed:.0f} s simulated"
    )
    print("start-up (every agent's first publication; heartbeat renewals left out), per node:")
    _table(r, r.startup, lambda v: v / r.nodes)
    print("  to each raw watcher: " + _watched(r.startup, lambda v: v / r.nodes))
    print("steady state, per node per minute:")
    _table(r, r.steady, lambda v: per_node_minute(r, v))
    print("  to each raw watcher: " + _watched(r.steady, lambda v: per_node_minute(r, v)))
    expected, measured = 60 / r.heartbeat_s, r.heartbeats
    node_writes = r.steady.writes["agent", "nodes"] + r.steady.writes["extender", "nodes"]
    print(
        f"checks: heartbeats {measured:.3f}/min per node, {expected:.3f} expected "
        f"({100 * (measured / expected - 1):+.1f}%); Node writes by gpulet in steady state: "
        f"{node_writes}"
    )
    lists = {
        c: (r.lists(c, "/api/v1/nodes"), r.lists(c, "/api/v1/pods")) for c in ("agent", "extender")
    }
    print(
        "  LISTs (watches) of all Nodes, all pods in the whole run: "
        + "; ".join(
            f"{c} {nodes[0]} ({nodes[1]}), {pods[0]} ({pods[1]})"
            for c, (nodes, pods) in lists.items()
        )
        + "  [one per reflector start: the extender 1 (1), 1 (1); the agents none]"
    )
    total, usable, quiet = r.run.view
    print(f"  the extender sees {total} nodes, {usable} with a topology, {quiet} quiet")
    print(
        "  raw watchers' first lists: "
        + ", ".join(f"{w} {_kb(r.run.watched[w][0])}" for w in WATCHERS)
    )
    print(
        "  CPU in steady state (share of one core): "
        + ", ".join(f"{k} {100 * v:.0f}%" for k, v in r.run.cpu.items())
    )
    for problem in r.problems[:10]:
        print(f"  PROBLEM: {problem}")


def _watched(phase: Phase, per: Callable[[float], float]) -> str:
    return ", ".join(
        f"{w} {per(phase.delivered[w]):,.0f} B in {per(phase.events[w]):.2f} events"
        for w in WATCHERS
    )


def report_projection(results: Sequence[Result], managed: dict[str, int]) -> None:
    """Steady state per node and at 5,000 nodes, and start-up, the modes side by side;
    `managed`: the managedFields a real API server would add to each watch event, by kind."""
    print(f"\n== side by side, per node and projected to {PROJECTED_NODES:,} nodes")
    print("   (gpulet's agents' writes and what watchers are sent; JSON without managedFields)")
    big = f"{PROJECTED_NODES:,} nodes"
    per_s = PROJECTED_NODES / 60
    rows: list[tuple[str, Callable[[Result], str]]] = [
        ("steady, per node per minute: writes", _steady(_writes, 1, ".2f")),
        ("  of them to Nodes", _steady(_node_writes, 1, ".2f")),
        ("  bytes written", _steady(_written, 1, ",.0f")),
        *((f"  bytes to a {w} watcher", _steady(_to(w), 1, ",.0f")) for w in WATCHERS),
        (f"steady, {big}: writes/s", _steady(_writes, per_s, ",.1f")),
        ("  MB/s written", _steady(_written, per_s / MB, ".3f")),
        *((f"  MB/s to each {w} watcher", _steady(_to(w), per_s / MB, ".3f")) for w in WATCHERS),
        ("  writes/s at the nominal heartbeat", _steady(_writes, per_s, ",.1f", nominal=True)),
        ("  MB/s written, nominal", _steady(_written, per_s / MB, ".3f", nominal=True)),
        *(
            (f"  MB/s to each {w} watcher, nominal", _steady(_to(w), per_s / MB, ".3f", True))
            for w in WATCHERS
        ),
        *(
            (
                f"  MB/s to each {w} watcher, nominal, with managedFields",
                _steady(_to(w, managed[w]), per_s / MB, ".3f", True),
            )
            for w in WATCHERS
        ),
        ("start-up, per node: writes", _startup(_writes, 1, ".2f")),
        ("  bytes written", _startup(_written, 1, ",.0f")),
        *((f"  bytes to a {w} watcher", _startup(_to(w), 1, ",.0f")) for w in WATCHERS),
        (f"start-up, {big}: MB written", _startup(_written, PROJECTED_NODES / MB, ",.1f")),
        *(
            (f"  MB to each {w} watcher", _startup(_to(w), PROJECTED_NODES / MB, ",.1f"))
            for w in WATCHERS
        ),
        *(
            (
                f"  MB to each {w} watcher, with managedFields",
                _startup(_to(w, managed[w]), PROJECTED_NODES / MB, ",.1f"),
            )
            for w in WATCHERS
        ),
    ]
    _rows(
        ("", *(r.mode for r in results)), ((label, *(f(r) for r in results)) for label, f in rows)
    )


Total = Callable[[Phase], float]


def _writes(phase: Phase) -> float:
    return _agent(phase.writes)


def _node_writes(phase: Phase) -> float:
    return phase.writes["agent", "nodes"]


def _written(phase: Phase) -> float:
    return _agent(phase.sent)


def _to(watcher: str, managed: int = 0) -> Total:
    """The bytes sent to `watcher`, with `managed` more per event."""
    return lambda phase: phase.delivered[watcher] + managed * phase.events[watcher]


def _steady(
    total: Total, scale: float, spec: str, nominal: bool = False
) -> Callable[[Result], str]:
    """A steady-state total per node per minute, times `scale`, formatted; `nominal`: at the
    mode's heartbeat rather than as often as the agents managed to renew it here."""
    return lambda r: format(
        per_node_minute(r, total(r.steady)) * scale * (r.behind if nominal else 1.0), spec
    )


def _startup(total: Total, scale: float, spec: str) -> Callable[[Result], str]:
    """A start-up total per node, times `scale`, formatted."""
    return lambda r: format(total(r.startup) / r.nodes * scale, spec)


def _agent(counter: Counter[tuple[str, str]]) -> float:
    return sum(v for (c, _), v in counter.items() if c == "agent")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--speed", type=float, default=10.0, help="time compression")
    parser.add_argument(
        "--steady",
        type=float,
        default=600.0,
        help="simulated seconds of steady state (a multiple of 60 counts whole heartbeats)",
    )
    parser.add_argument(
        "--spread", type=float, default=5.0, help="real seconds over which the agents start"
    )
    parser.add_argument(
        "--mode",
        nargs="+",
        choices=sorted(MODES),
        default=["annotations", "resources"],
        help="upgrade: this release's agents on Nodes that carry the previous one's annotations",
    )
    parser.add_argument(
        "--managed-fields",
        action="store_true",
        help="measure the managedFields a real kube-apiserver adds (tests/kube's, built once)",
    )
    args = parser.parse_args()

    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"gpulet API footprint  {started}  python {platform.python_version()}  "
        f"{cpu_model()}, {os.cpu_count()} CPUs"
    )
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"N={args.nodes} agents, speed {args.speed:g}, steady state {args.steady:g} s "
        f"simulated, start spread over {args.spread:g} s; node dgx-h100 renamed per node"
    )
    managed = MANAGED_FIELDS
    if args.managed_fields:
        managed = measure_managed_fields()
        print(f"managedFields on kube-apiserver (tests/kube), bytes per object: {managed}")
    results = []
    for mode in args.mode:
        t = time.monotonic()
        results.append(measure(mode, args.nodes, args.speed, args.steady, args.spread))
        report_mode(results[-1])
        print(f"  ({time.monotonic() - t:.0f} s measured in all)")
    report_projection(results, managed)
    spaced = {w: sum(r.steady.wire[w] + r.startup.wire[w] for r in results) for w in WATCHERS}
    compact = {
        w: sum(r.steady.delivered[w] + r.startup.delivered[w] for r in results) for w in WATCHERS
    }
    print(
        "\nBytes to watchers are counted as a real API server sends them, compact JSON (the"
        " stand-in's own, with spaces, was "
        + ", ".join(
            f"{w} {100 * (spaced[w] / compact[w] - 1):+.1f}%" for w in WATCHERS if compact[w]
        )
        + "); bytes written are the agents' own (the Python client's JSON, with spaces); the"
        " 'answered' and 'to watches' columns are the stand-in's JSON."
    )
    source = (
        "measured now"
        if managed is not MANAGED_FIELDS
        else "as --managed-fields measured them on kube-apiserver v1.37.2"
    )
    sizes = ", ".join(f"{k} {v:,} B" for k, v in managed.items())
    print(
        f"managedFields: the stand-in adds none; a real API server adds them to every object it"
        f" stores and sends ({sizes} per object, {source}); the rows 'with managedFields' add"
        " them to each event."
    )
    print(
        "Not counted: protobuf, which Go clients such as kube-scheduler ask for Nodes in (not"
        " for custom resources); watch bookmarks; kubelet's own Node status updates and node"
        " Lease (kube-node-lease, every 10 s); the agents' watch of the pods on their node; TLS"
        " and HTTP framing."
    )


if __name__ == "__main__":
    main()
