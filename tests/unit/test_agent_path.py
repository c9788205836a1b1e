"""One pod's whole path, on a simulated node with everything real but the cluster: the agent
publishes its node on the API server (stand-in: its NodeTopology, and its Lease renewed),
the extender (watching both) places the pod and binds it, kubelet (stand-in) admits it and
calls the agent's Allocate, which follows the assignment and writes the container's
limits; the pod deleted, all of it goes away."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from agent.kube import ApiPodSource
from agent.node_agent import Monitoring, NodeAgent, start
from agent.plugincore import CHECKPOINT, AgentSpec
from agent.usage import FileUsageSource
from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.ledger import Ledger
from deviceplugin.resources import GPU_RESOURCE, PluginConfig
from gpulet import __version__
from gpulet.api import nodetopology as nt
from gpulet.api.assignment import ContainerAssignment, parse_assignment
from gpulet.cli import main as cli
from gpulet.kube.calls import CoreCalls, leases, node_topologies
from gpulet.kube.crd import node_topology_crd
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.apiserver.traffic import Traffic
from gpulet.standins.kubelet import KubeletStandIn, PodRef
from gpulet.standins.objects import container, pod_object
from gpulet.topology.document import from_document
from native.region import Region, read_limits
from scorer.app import Scorer, build
from scorer.config import ScorerConfig
from tests.nodes import shipped

NODE = "gpu-a"
H100 = shipped("dgx-h100")


@dataclass
class Cluster:
    api: ApiServerStandIn
    kubelet: KubeletStandIn
    agent: NodeAgent
    scorer: Scorer
    state: Path
    root: Path
    start_agent: Callable[[], NodeAgent]

    def value(self, name: str, **labels: str) -> float | None:
        """One sample of the agent's /metrics, parsed; None when there is no such series."""
        for family in text_string_to_metric_families(self.metrics()):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return None

    def metrics(self) -> str:
        assert self.agent.metrics is not None
        conn = http.client.HTTPConnection("127.0.0.1", self.agent.metrics.port, timeout=10)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        return text

    def run_in(self, pod: dict[str, Any], container: str, pid: int, gpu: str, mib: int) -> None:
        """Process `pid` runs in `container` (its cgroup under the stand-in /proc, the pod's
        status naming the container ID) and holds `mib` of GPU `gpu` by NVML's count."""
        self.place(pod, container, pid)
        self.nvml_shows((pid, gpu, mib))

    def place(self, pod: dict[str, Any], container: str, pid: int) -> None:
        """Process `pid` runs in `container`: its cgroup under the stand-in /proc, the pod's
        status naming the container ID."""
        uid = pod["metadata"]["uid"]
        cid = f"{pid:064x}"
        proc = self.root / "proc" / str(pid)
        proc.mkdir(parents=True, exist_ok=True)
        slice_ = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
        (proc / "cgroup").write_text(
            f"0::/kubepods.slice/kubepods-burstable.slice/{slice_}/cri-containerd-{cid}.scope\n"
        )
        stored = self.api.get_pod("default", pod["metadata"]["name"])
        assert stored is not None
        stored["status"]["phase"] = "Running"
        stored["status"]["containerStatuses"] = [
            {"name": container, "containerID": f"containerd://{cid}", "ready": True}
        ]
        self.api.update_pod(stored)

    def nvml_shows(self, *processes: tuple[int, str, int]) -> None:
        """NVML's process list from now on: each (pid, GPU uuid, MiB held), 40% busy."""
        doc = [{"gpu": g, "pid": p, "used_mib": m, "sm_percent": 40} for p, g, m in processes]
        tmp = self.root / "gpu-processes.json.tmp"
        tmp.write_text(json.dumps(doc))
        tmp.replace(self.root / "gpu-processes.json")


def wait_for(what: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    short = Path(tempfile.mkdtemp(prefix="gp"))  # unix socket paths must stay short
    topo = shipped("dgx-h100")
    lib = short / "libgpulet-limiter.so"
    lib.touch()
    preload = short / "ld.so.preload"
    preload.write_text(f"{lib}\n")
    with ApiServerStandIn() as api:
        api.create_node({"metadata": {"name": NODE}, "spec": {}, "status": {}})
        kubelet = KubeletStandIn(short / "dp", short / "pr", dial_timeout=2.0)
        kubelet.start()
        core_api = CoreCalls(client.ApiClient(api.configuration()))
        api.create_crd(node_topology_crd())
        spec = AgentSpec(
            topo=topo,
            plugin_dir=kubelet.plugin_dir,
            state_dir=short / "state",
            config=PluginConfig(
                node_name=NODE,
                region_root=short / "regions",
                limiter_host_path=lib,
                preload_host_path=preload,
            ),
            pod_resources_socket=kubelet.pod_resources_socket,
        )
        (short / "proc").mkdir()
        monitoring = Monitoring(
            FileUsageSource(short / "gpu-processes.json"),
            short / "proc",
            enforce="kill",
            interval_s=0.1,
            metrics_port=0,
            metrics_auth="none",  # who may read: tests/unit/test_agent_metrics_access.py
            # Room for batch published within a second (no usage file: none at all).
            idle_window_s=0.3,
            idle_interval_s=0.3,
        )

        def start_agent() -> NodeAgent:
            return start(spec, core_api, None, None, heartbeat_s=0.2, monitoring=monitoring)

        agent = start_agent()
        scorer = build(
            ScorerConfig(host="127.0.0.1", port=0, watch_timeout_s=5), api.configuration()
        )
        scorer.start()
        try:
            assert scorer.sync is not None and scorer.sync.wait_ready(10)
            assert kubelet.wait_for(lambda v: bool(v.devices(GPU_RESOURCE)), timeout=5)
            cluster = Cluster(api, kubelet, agent, scorer, short / "state", short, start_agent)
            yield cluster
        finally:
            scorer.stop()
            cluster.agent.stop()
            kubelet.stop()
            shutil.rmtree(short, ignore_errors=True)


def post(scorer: Scorer, verb: str, body: Any) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", scorer.server.port, timeout=10)
    conn.request(
        "POST", f"/{verb}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    answer = json.loads(conn.getresponse().read())
    conn.close()
    return answer


def allocatable(c: Cluster) -> dict[str, str]:
    """The agent's Node's allocatable, as the API server has it now."""
    node = c.api.get_node(NODE) or {}
    return dict((node.get("status") or {}).get("allocatable") or {})


def schedule(c: Cluster, pod: dict[str, Any]) -> dict[str, Any]:
    """kube-scheduler's part: filter, prioritize, bind (the extender writes the assignment)."""
    stored = c.api.create_pod(pod)
    passed = post(c.scorer, "filter", {"Pod": stored, "NodeNames": [NODE]})
    assert passed["NodeNames"] == [NODE], passed
    post(c.scorer, "prioritize", {"Pod": stored, "NodeNames": [NODE]})
    meta = stored["metadata"]
    args = {"PodName": meta["name"], "PodNamespace": "default", "PodUID": meta["uid"], "Node": NODE}
    assert post(c.scorer, "bind", args) == {"Error": ""}
    bound = c.api.get_pod("default", meta["name"])
    assert bound is not None
    return bound


def admit(c: Cluster, pod: dict[str, Any], gpus: int = 1) -> pb.AllocateResponse:
    """kubelet's part, once the agent's watch has shown it the pod: Allocate its container
    `main`'s GPUs."""
    uid = pod["metadata"]["uid"]
    wait_for(lambda: any(p.uid == uid for p in c.agent.pods.pending_pods()))
    ref = PodRef(uid=uid, namespace="default", name=pod["metadata"]["name"])
    return c.kubelet.allocate(ref, "main", GPU_RESOURCE, gpus)


def assigned(pod: dict[str, Any]) -> ContainerAssignment:
    (main,) = parse_assignment(pod["metadata"]["annotations"]["gpulet.io/assignment"]).containers
    return main


def test_the_node_is_published_and_its_lease_renewed(cluster: Cluster) -> None:
    calls = CoreCalls(client.ApiClient(cluster.api.configuration()))
    obj = node_topologies(calls.client).find(NODE)
    assert obj is not None
    assert from_document(nt.document_of(obj)).node == NODE
    lease = leases(calls.client, nt.DEFAULT_NAMESPACE)
    first = (lease.find(nt.lease_name(NODE)) or {})["spec"]["renewTime"]
    wait_for(lambda: (lease.find(nt.lease_name(NODE)) or {})["spec"]["renewTime"] != first)
    assert cluster.scorer.server.extender.view.node(NODE) is not None  # the extender saw it


def test_steady_state_writes_one_lease_renewal_per_heartbeat(cluster: Cluster) -> None:
    """With no hardware change and no pod, the agent's only writes are its Lease's renewals,
    one per heartbeat (0.2 s here), each well under a KiB; nothing is written to its Node,
    nor read from it. (Once it has published the room its idle GPUs leave for batch, which
    does not move while nothing runs.)"""
    wait_for(lambda: "gpulet.io/batch-gpu-core" in allocatable(cluster))
    assert cluster.agent.topology.settled.wait(5)
    mark, began = len(cluster.api.requests), time.monotonic()
    lease = f"/leases/{nt.lease_name(NODE)}"

    def writes() -> list[Traffic]:
        return [t for t in cluster.api.traffic()[mark:] if t.method in ("POST", "PUT", "PATCH")]

    wait_for(lambda: len(writes()) >= 6)
    assert time.monotonic() - began >= 5 * 0.2 * 0.9
    assert [(t.method, t.path.endswith(lease)) for t in writes()] == [("PUT", True)] * len(writes())
    assert max(t.request_bytes for t in writes()) < 1024
    assert not [r for r in cluster.api.requests[mark:] if r[1].startswith("/api/v1/nodes/")]
    # Since its start it has read pods only by its node (a field selector), and Nodes only
    # its own (a field selector on its name: the watch behind its aggregates); the extender
    # (which names itself) lists all of them, once.
    agents = [t for t in cluster.api.traffic() if t.user_agent != f"gpulet-extender/{__version__}"]
    pods = [urlsplit(t.path) for t in agents if t.path.startswith("/api/v1/pods")]
    assert pods and {parse_qs(p.query).get("fieldSelector", [""])[0] for p in pods} == {
        f"spec.nodeName={NODE}"
    }
    nodes = [urlsplit(t.path) for t in agents if urlsplit(t.path).path == "/api/v1/nodes"]
    assert nodes and {parse_qs(n.query).get("fieldSelector", [""])[0] for n in nodes} == {
        f"metadata.name={NODE}"
    }


def test_a_slice_from_the_extender_to_the_container(cluster: Cluster) -> None:
    pod = schedule(cluster, pod_object("infer", container("main", gpus=1, core=30, memory=8192)))
    (share,) = assigned(pod).gpus
    assert (share.core, share.memory_mib, share.exclusive) == (30, 8192, False)
    # kubelet admits the pod: the agent must see it first (its watch), then Allocate follows it.
    uid = pod["metadata"]["uid"]
    response = admit(cluster, pod)
    (answer,) = response.container_responses
    assert answer.envs["NVIDIA_VISIBLE_DEVICES"] == share.uuid
    region = next(m.host_path for m in answer.mounts if m.container_path == "/run/gpulet")
    limits = read_limits(Path(region) / "limits")
    got = [(d.uuid, d.memory_mib, d.core_percent) for d in limits.devices]
    assert got == [(share.uuid, 8192, 30)]
    assert Ledger.load(cluster.state / CHECKPOINT).grants()

    # The agent's record of the match, on the pod.
    def allocated() -> Any:
        stored = cluster.api.get_pod("default", "infer")
        text = (stored or {}).get("metadata", {}).get("annotations", {}).get("gpulet.io/allocated")
        return json.loads(text) if text else None

    wait_for(allocated)
    ids = list(cluster.kubelet.allocations()[-1].devices)
    assert allocated() == {
        "version": 1,
        "containers": {"main": {GPU_RESOURCE: [d.id for d in ids]}},
    }
    # Metrics: the GPU's allocation, and the container's cap and share.
    mine = {"pod_uid": uid, "container": "main", "uuid": share.uuid}
    assert cluster.value("gpulet_container_memory_cap_bytes", **mine) == 8192 * 2**20
    assert cluster.value("gpulet_container_core_percent", **mine) == 30
    assert cluster.value("gpulet_gpu_allocated_core_percent", uuid=share.uuid) == 30
    # Deleted: Terminating while its kubelet stops it, it keeps its slice on both sides.
    # A later pod, seen by both watches after the deletion's event, shows they have passed it.
    view = cluster.scorer.server.extender.view

    def granted() -> set[str | None]:
        return {g.pod_uid for g in Ledger.load(cluster.state / CHECKPOINT).grants()}

    cluster.api.delete_pod("default", "infer")
    later = schedule(cluster, pod_object("later", container("main", gpus=1, core=10, memory=512)))
    later_uid = later["metadata"]["uid"]
    wait_for(lambda: (later_uid, NODE, False) in set(view.pods()))
    admit(cluster, later)
    assert Path(region).exists()
    assert granted() == {uid, later_uid}
    assert (uid, NODE, False) in set(view.pods())
    # Gone once its kubelet has stopped it: the agent frees the grant, the region and the
    # series; the extender the slice.
    cluster.api.finish_pod_deletion("default", "infer")
    wait_for(lambda: not Path(region).exists())
    assert uid not in cluster.metrics()
    wait_for(lambda: granted() == {later_uid})
    wait_for(lambda: {u for u, _, _ in view.pods()} == {later_uid})


@pytest.mark.parametrize("main_gpus", [1, 2])
def test_an_init_containers_devices_reused_by_kubelet(cluster: Cluster, main_gpus: int) -> None:
    """Kubelet's device manager hands the app container the device IDs its init container
    got (all of them when they are enough; else with them as must_include_deviceIDs): each
    container still gets the GPUs and shares of its own assignment, and both are held."""
    pod = pod_object(
        "staged",
        container("main", gpus=main_gpus, core=40, memory=4096),
        init=(container("warmup", gpus=1, core=20, memory=2048),),
    )
    pod = schedule(cluster, pod)
    assignment = parse_assignment(pod["metadata"]["annotations"]["gpulet.io/assignment"])
    want = {c.name: sorted(g.uuid for g in c.gpus) for c in assignment.containers}
    uid = pod["metadata"]["uid"]
    wait_for(lambda: any(p.uid == uid for p in cluster.agent.pods.pending_pods()))
    ref = PodRef(uid=uid, namespace="default", name="staged")
    got = {}
    for name, count, init in (("warmup", 1, True), ("main", main_gpus, False)):
        response = cluster.kubelet.allocate(ref, name, GPU_RESOURCE, count, init=init)
        got[name] = sorted(
            response.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"].split(",")
        )
    warmup, main = (r for r in cluster.kubelet.allocations() if r.pod.uid == uid)
    assert set(warmup.device_ids) <= set(main.device_ids)  # kubelet reused the init's ID
    assert got == want
    held = {g.container: g for g in cluster.agent.core.grants() if g.pod_uid == uid}
    assert set(held) == {"warmup", "main"}


def test_a_finished_pod_is_released_too(cluster: Cluster) -> None:
    pod = schedule(cluster, pod_object("job", container("main", gpus=2)))
    admit(cluster, pod, gpus=2)
    assert len(cluster.agent.core.grants()) == 1
    done = cluster.api.get_pod("default", "job")
    assert done is not None
    done["status"]["phase"] = "Succeeded"
    cluster.api.update_pod(done)
    wait_for(lambda: not cluster.agent.core.grants())


def test_a_process_over_its_cap_by_nvmls_count_is_killed(cluster: Cluster) -> None:
    """The limiter was got around (NVML says the container holds 9,000 MiB of an 8,192 MiB
    cap): the agent reports it, counts it, and with --enforce=kill kills the process."""
    pod = schedule(cluster, pod_object("rogue", container("main", gpus=1, core=30, memory=8192)))
    uid = pod["metadata"]["uid"]
    admit(cluster, pod)
    main = assigned(pod)
    victim = subprocess.Popen(["sleep", "60"])
    try:
        cluster.run_in(pod, "main", victim.pid, main.gpus[0].uuid, 9000)
        assert victim.wait(timeout=10) == -signal.SIGKILL
    finally:
        victim.kill()
    wait_for(lambda: cluster.agent.monitor is not None and cluster.agent.monitor.violations)
    violations = cluster.value(
        "gpulet_container_backstop_violations_total", pod_uid=uid, container="main"
    )
    assert violations is not None and violations >= 1
    # ... and an Event on the pod, which `kubectl describe pod` shows.
    wait_for(cluster.api.events)
    (event, *_) = cluster.api.events()
    assert event["involvedObject"]["uid"] == uid and event["type"] == "Warning"
    assert event["reason"] == "GPUMemoryOverCap"
    assert "holds 9000 MiB" in event["message"] and "killed its processes" in event["message"]


def test_usage_below_the_cap_is_fed_back_not_punished(cluster: Cluster) -> None:
    pod = schedule(cluster, pod_object("calm", container("main", gpus=1, core=30, memory=8192)))
    uid = pod["metadata"]["uid"]
    admit(cluster, pod)
    main = assigned(pod)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        cluster.run_in(pod, "main", sleeper.pid, main.gpus[0].uuid, 4000)
        mine = {"pod_uid": uid, "container": "main", "uuid": main.gpus[0].uuid}
        wait_for(
            lambda: cluster.value("gpulet_container_memory_used_bytes", **mine) == 4000 * 2**20
        )
        assert cluster.value("gpulet_container_utilization_percent", **mine) == 40
        # Within its first seconds a process not (yet) attached to the region is not judged.
        assert cluster.value("gpulet_container_unlimited_processes", **mine) == 0
        # ... and into the container's region, as the limiter's feedback.
        (grant,) = cluster.agent.core.grants()
        assert grant.region_dir is not None
        with Region.open(grant.region_dir) as region:
            assert region.snapshot().devices[0].util_percent == 40
        assert sleeper.poll() is None  # under its cap: left alone
    finally:
        sleeper.kill()
        sleeper.wait()


def test_node_allocations_shows_who_has_what(cluster: Cluster) -> None:
    pod = schedule(cluster, pod_object("shown", container("main", gpus=1, core=25, memory=4096)))
    admit(cluster, pod)
    main = assigned(pod)
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        cluster.run_in(pod, "main", sleeper.pid, main.gpus[0].uuid, 3000)
        assert cluster.agent.metrics is not None
        agent = f"http://127.0.0.1:{cluster.agent.metrics.port}"

        def shown() -> dict[str, Any]:
            result = CliRunner().invoke(cli, ["node", "allocations", "--agent", agent, "--json"])
            assert result.exit_code == 0, result.output
            doc: dict[str, Any] = json.loads(result.output)
            return doc

        wait_for(lambda: any(g["used_mib"] for g in shown()["gpus"]))
        doc = shown()
        (gpu,) = [g for g in doc["gpus"] if g["uuid"] == main.gpus[0].uuid]
        assert gpu["allocated"] == {"core": 25, "memory_mib": 4096, "slots": 1}
        (user,) = gpu["containers"]
        assert (user["namespace"], user["pod"], user["container"]) == ("default", "shown", "main")
        assert (user["core"], user["memory_mib"], user["used_mib"]) == (25, 4096, 3000)
        text = CliRunner().invoke(cli, ["node", "allocations", "--agent", agent]).output
        assert "production default/shown main: 25% core, 4096 MiB; using 3000 MiB, 40% SM" in text
    finally:
        sleeper.kill()
        sleeper.wait()
    result = CliRunner().invoke(cli, ["node", "allocations", "--agent", "http://127.0.0.1:1"])
    assert result.exit_code == 1 and "cannot reach the agent at http://127.0.0.1:1" in result.output


def test_a_batch_slice_from_the_measurement_to_the_container(cluster: Cluster) -> None:
    """The agent measures every GPU idle and publishes its room (the NodeTopology's status,
    the Node's batch aggregates); the extender places a batch pod against it; Allocate
    writes `batch` limits; the co-location controller gives the container its share; and
    `gpulet node allocations` shows its class."""
    cluster.nvml_shows()  # NVML lists no process: every GPU idle
    view = cluster.scorer.server.extender.view
    wait_for(lambda: len(view.state(NODE).idle) == len(H100.gpus))
    wait_for(lambda: "gpulet.io/batch-gpu-core" in allocatable(cluster))
    room = view.state(NODE).idle_of(0)
    assert allocatable(cluster)["gpulet.io/batch-gpu-core"] == str(8 * room.core)
    pod = schedule(cluster, pod_object("offline", container("main", gpus=1, batch_core=30,
                                                             batch_memory=8192)))  # fmt: skip
    main = assigned(pod)
    assert main.batch and main.gpus[0].core == 30
    admit(cluster, pod)
    (grant,) = cluster.agent.core.grants()
    assert grant.region_dir is not None
    (limit,) = read_limits(Path(grant.region_dir) / "limits").devices
    assert (limit.core_percent, limit.memory_mib, limit.batch) == (30, 8192, True)
    controller = cluster.agent.colocation
    assert controller is not None
    wait_for(lambda: controller.share_percent(pod["metadata"]["uid"], "main", limit.uuid) == 95)
    assert cluster.agent.metrics is not None
    agent = f"http://127.0.0.1:{cluster.agent.metrics.port}"
    doc = json.loads(CliRunner().invoke(cli, ["node", "allocations", "--agent", agent, "--json"])
                     .output)  # fmt: skip
    (gpu,) = [g for g in doc["gpus"] if g["uuid"] == limit.uuid]
    assert gpu["batch"] == {"core": 30, "memory_mib": 8192}
    assert gpu["allocated"] == {"core": 0, "memory_mib": 0, "slots": 1}
    assert [c["class"] for c in gpu["containers"]] == ["batch"]
    text = CliRunner().invoke(cli, ["node", "allocations", "--agent", agent]).output
    assert "batch      default/offline main: floor 30% core, cap 8192 MiB" in text
    # Its metrics: the room published, the floor granted, the share given.
    index = next(g.index for g in H100.gpus if g.uuid == limit.uuid)
    assert cluster.value("gpulet_gpu_batch_room_core_percent", gpu=str(index)) == room.core
    assert cluster.value("gpulet_gpu_batch_core_percent", gpu=str(index)) == 30
    share = cluster.value("gpulet_container_batch_share_percent", uuid=limit.uuid)
    assert share == 95.0
    assert cluster.value("gpulet_batch_evictions_total", reason="memory") == 0


def test_a_lost_checkpoint_is_rebuilt_exactly_from_the_pods(cluster: Cluster) -> None:
    """The agent restarts and its checkpoint is gone: the pod's assignment and the agent's
    `gpulet.io/allocated` give back the slice as a slice (kubelet's List alone would only
    allow holding its GPU whole)."""
    pod = schedule(cluster, pod_object("kept", container("main", gpus=1, core=30, memory=8192)))
    admit(cluster, pod)
    before = cluster.agent.core.grants()

    def recorded() -> bool:
        stored = cluster.api.get_pod("default", "kept") or {}
        return "gpulet.io/allocated" in stored.get("metadata", {}).get("annotations", {})

    wait_for(recorded)
    cluster.agent.stop()
    for lost in cluster.state.glob("checkpoint.json*"):
        lost.unlink()
    cluster.agent = cluster.start_agent()
    after = cluster.agent.core.grants()
    assert [(g.device_ids, g.gpus, g.pod_uid, g.container, g.region_dir) for g in after] == [
        (g.device_ids, g.gpus, g.pod_uid, g.container, g.region_dir) for g in before
    ]
    (share,) = after[0].gpus
    assert (share.core, share.memory_mib, share.exclusive) == (30, 8192, False)
    # And it is the checkpoint again at once, not only at the next grant (found by
    # tests/e2e: a second restart before any grant would have had to rebuild it again).
    on_disk = Ledger.load(cluster.state / CHECKPOINT).grants()
    assert [(g.device_ids, g.gpus, g.pod_uid) for g in on_disk] == [
        (g.device_ids, g.gpus, g.pod_uid) for g in after
    ]


def test_kubelet_may_allocate_before_the_agents_watch_shows_the_pod(cluster: Cluster) -> None:
    """kubelet admits a pod as soon as its own watch shows it bound: against real Kubernetes
    (tests/e2e) its device manager called Allocate 4 ms after the bind, before the agent's
    watch had shown the pod. A miss asks the API server before refusing."""
    cluster.agent.pods.reflector.stop()  # the agent's watch lags: it shows nothing new
    pod = schedule(cluster, pod_object("eager", container("main", gpus=1, core=20, memory=1024)))
    ref = PodRef(uid=pod["metadata"]["uid"], namespace="default", name="eager")
    response = cluster.kubelet.allocate(ref, "main", GPU_RESOURCE, 1)
    (answer,) = response.container_responses
    assert answer.envs["NVIDIA_VISIBLE_DEVICES"] == assigned(pod).gpus[0].uuid


def test_a_pod_deleted_while_the_watch_lags_is_not_brought_back(cluster: Cluster) -> None:
    pod = schedule(cluster, pod_object("brief", container("main", gpus=1, core=20, memory=1024)))
    uid = pod["metadata"]["uid"]
    wait_for(lambda: any(p.uid == uid for p in cluster.agent.pods.pending_pods()))
    cluster.api.delete_pod("default", "brief")
    cluster.api.finish_pod_deletion("default", "brief")
    wait_for(lambda: not any(p.uid == uid for p in cluster.agent.pods.pending_pods()))
    # A later catch-up with the API (another container's miss) does not revive it.
    cluster.agent.pods.refresh()
    assert not any(p.uid == uid for p in cluster.agent.pods.pending_pods())


def test_a_hung_api_server_does_not_hold_allocate(tmp_path: Path) -> None:
    """The catch-up on a miss is a list of the node's pods; an API server that accepts the
    connection and never answers must not hold kubelet's Allocate (it waits 10 s at most)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{listener.getsockname()[1]}"
    source = ApiPodSource(CoreCalls(client.ApiClient(configuration)), NODE)
    done = threading.Event()

    def refresh() -> None:
        source.refresh()
        done.set()

    threading.Thread(target=refresh, daemon=True).start()
    try:
        assert done.wait(14), "refresh still waiting on a silent API server"
        assert source.pending_pods() == ()
    finally:
        for s in held:
            s.close()
        listener.close()
