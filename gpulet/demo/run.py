"""`gpulet demo`: one pod's path through gpulet, for four sample pods, on simulated nodes.

In this process tree: an API server stand-in, N simulated nodes each with a kubelet
stand-in and a real agent (device plugins over gRPC, its node published, pods watched), and
the real extender watching the API. The demo plays kube-scheduler (filter, prioritize, bind
over HTTP to the extender) and kubelet's admission (Allocate over gRPC to the agent), then
prints what each container got: node, GPUs and shares, NICs, NUMA node, devices, env, mounts
and its limits file. Everything runs on ports and sockets of its own and is removed at the end.
"""

from __future__ import annotations

import http.client
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from agent import node_agent
from agent.library import install_limiter
from agent.plugincore import AgentSpec
from agent.simnode import open_simulated
from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.api.assignment import Assignment, parse_assignment
from gpulet.api.nodetopology import lease_name
from gpulet.api.resources import ASSIGNMENT_ANNOTATION, NUMA_PIN_ANNOTATION
from gpulet.kube.calls import CoreCalls
from gpulet.kube.crd import node_topology_crd
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.kubelet import KubeletStandIn, PodRef
from gpulet.standins.objects import container, pod_object
from gpulet.topology import Topology
from native import library_path
from native.region import read_limits
from scorer.app import Scorer, build
from scorer.config import ScorerConfig
from scorer.wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    HostPriorityList,
)

Say = Callable[[str], None]


@dataclass(frozen=True)
class Sample:
    name: str
    what: str
    pod: dict[str, Any]


def samples(kind: str, most_per_numa: int) -> list[Sample]:
    """The four sample pods; the last asks for more GPUs on one NUMA node than a `kind` node
    has (`most_per_numa`)."""
    return [
        Sample(
            "inference",
            "an inference server: 30% of one GPU's compute and 8 GiB of its memory",
            pod_object("inference", container("server", gpus=1, core=30, memory=8192)),
        ),
        Sample(
            "training",
            "a training job: 4 whole GPUs and 4 RDMA NICs behind the same PCIe switches",
            pod_object(
                "training",
                container("trainer", gpus=4, rdma=4),
                annotations={"gpulet.io/topology-policy": "restricted"},
            ),
        ),
        Sample(
            "numa-pinned",
            "a data loader on one whole GPU, pinned to that GPU's NUMA node",
            pod_object(
                "numa-pinned",
                container("loader", gpus=1),
                annotations={NUMA_PIN_ANNOTATION: "true"},
            ),
        ),
        Sample(
            "too-big",
            f"8 whole GPUs all on one NUMA node (single-numa); a {kind} node has at most "
            f"{most_per_numa} GPUs on one NUMA node",
            pod_object(
                "too-big",
                container("trainer", gpus=8),
                annotations={"gpulet.io/topology-policy": "single-numa"},
            ),
        ),
    ]


@dataclass
class DemoNode:
    name: str
    topo: Topology
    kubelet: KubeletStandIn


class Demo:
    def __init__(self, nodes: int, kind: str, say: Say) -> None:
        self.say = say
        self.kind = kind
        self.count = nodes
        self.nodes: dict[str, DemoNode] = {}

    def run(self) -> int:
        work = Path(tempfile.mkdtemp(prefix="gpulet-demo-"))
        try:
            with ExitStack() as stack:
                api = stack.enter_context(ApiServerStandIn())
                self.say(f"API server stand-in at {api.url}")
                # As `kubectl apply -k deploy/` does first: the NodeTopology resource.
                api.create_crd(node_topology_crd())
                core_api = CoreCalls(client.ApiClient(api.configuration()))
                limiter = install_limiter(library_path(), work / "lib")
                for i in range(self.count):
                    name = f"{self.kind}-{i}"
                    stack.enter_context(
                        self._node(api, core_api, name, work / name, limiter=limiter)
                    )
                scorer = build(
                    ScorerConfig(host="127.0.0.1", port=0, watch_timeout_s=30),
                    api.configuration(),
                )
                scorer.start()
                stack.callback(scorer.stop)
                assert scorer.sync is not None
                if not scorer.sync.wait_ready(30):
                    raise RuntimeError("the extender did not sync with the API server")
                view = scorer.server.extender.view
                _wait(lambda: all((n := view.node(name)) and n.topo for name in self.nodes))
                self.say(
                    f"scheduler extender at 127.0.0.1:{scorer.server.port}, watching "
                    f"{self.count} nodes\n"
                )
                topo = next(iter(self.nodes.values())).topo
                most = max(sum(g.numa == n.id for g in topo.gpus) for n in topo.numa_nodes)
                for sample in samples(self.kind, most):
                    self._submit(api, scorer, sample)
            return 0
        finally:
            shutil.rmtree(work, ignore_errors=True)

    @contextmanager
    def _node(
        self,
        api: ApiServerStandIn,
        core_api: CoreCalls,
        name: str,
        work: Path,
        *,
        limiter: tuple[Path, Path],
    ) -> Iterator[None]:
        """A Node object, a kubelet stand-in and a real agent on a simulated node."""
        api.create_node({"metadata": {"name": name}, "spec": {}, "status": {}})
        sim = open_simulated(self.kind)
        topo = sim.topology(name)
        kubelet = KubeletStandIn(work / "dp", work / "pr", dial_timeout=5.0)
        kubelet.start()
        spec = AgentSpec(
            topo=topo,
            plugin_dir=kubelet.plugin_dir,
            state_dir=work / "state",
            config=PluginConfig(
                node_name=name,
                region_root=work / "containers",
                limiter_host_path=limiter[0],
                preload_host_path=limiter[1],
            ),
            pod_resources_socket=kubelet.pod_resources_socket,
        )
        agent = node_agent.start(spec, core_api, None, None)
        try:
            if not kubelet.wait_for(lambda v: bool(v.devices(GPU_RESOURCE)), timeout=30):
                raise RuntimeError(f"the agent of {name} did not register with kubelet")
            self.nodes[name] = DemoNode(name, topo, kubelet)
            self.say(
                f"node {name}: {len(topo.gpus)} GPUs, {len(topo.nics)} RDMA NICs, "
                f"{len(topo.numa_nodes)} NUMA nodes; agent published NodeTopology/{name}, "
                f"holds Lease {agent.heartbeat.namespace}/{lease_name(name)} and registered "
                f"{len(kubelet.view().devices(GPU_RESOURCE))} gpulet.io/gpu slots with kubelet"
            )
            yield
        finally:
            agent.stop()
            kubelet.stop()

    # ---- one pod --------------------------------------------------------------------------

    def _submit(self, api: ApiServerStandIn, scorer: Scorer, sample: Sample) -> None:
        say = self.say
        stored = api.create_pod(sample.pod)
        meta = stored["metadata"]
        say(f"== pod {sample.name}: {sample.what}")
        names = list(self.nodes)
        passed = ExtenderFilterResult.parse(
            _post(scorer, "filter", ExtenderArgs(stored, node_names=tuple(names)).dump())
        )
        if not passed.names():
            say("   does not fit; the extender says, per node:")
            reasons = {**passed.failed_nodes, **passed.failed_and_unresolvable_nodes}
            for node, reason in sorted(reasons.items()):
                say(f"     {node}: {reason}")
            say("")
            return
        scores = HostPriorityList.parse(
            _post(scorer, "prioritize", ExtenderArgs(stored, node_names=passed.names()).dump())
        )
        best = max(scores, key=lambda s: s.score)
        shown = ", ".join(f"{s.host} {s.score}" for s in scores)
        say(f"   scores (0-10): {shown}; binding to {best.host}")
        node = best.host
        bind = ExtenderBindingArgs(meta["name"], meta["namespace"], meta["uid"], node)
        answer = ExtenderBindingResult.parse(_post(scorer, "bind", bind.dump()))
        if answer.error:
            say(f"   bind failed: {answer.error}\n")
            return
        bound = api.get_pod(meta["namespace"], meta["name"])
        assert bound is not None
        assignment = parse_assignment(bound["metadata"]["annotations"][ASSIGNMENT_ANNOTATION])
        self._admit(self.nodes[node], bound, assignment)

    def _admit(self, node: DemoNode, pod: dict[str, Any], assignment: Assignment) -> None:
        """What kubelet does: Allocate each resource of each container, then show it."""
        say = self.say
        meta = pod["metadata"]
        ref = PodRef(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"])
        by_uuid = {g.uuid: g for g in node.topo.gpus}
        for entry in assignment.containers:
            say(f"   container {entry.name} on {node.name}:")
            for g in entry.gpus:
                gpu = by_uuid[g.uuid]
                share = "whole" if g.exclusive else f"{g.core}% core, {g.memory_mib} MiB"
                say(f"     GPU{gpu.index} {g.uuid} ({share}) NUMA {gpu.numa} switch {gpu.switch}")
            for key in entry.nics:
                nic = next(n for n in node.topo.nics if n.key == key)
                say(f"     NIC {key} NUMA {nic.numa} switch {nic.switch}")
            responses = []
            for resource, count in (
                (GPU_RESOURCE, len(entry.gpus)),
                (RDMA_RESOURCE, len(entry.nics)),
            ):
                if count:
                    response = allocate_once_seen(node.kubelet, ref, entry.name, resource, count)
                    responses.append(response.container_responses[0])
            self._show(responses, {g.uuid for g in entry.gpus if g.exclusive})
            if meta.get("annotations", {}).get(NUMA_PIN_ANNOTATION) == "true":
                cpus = [c for n in node.topo.numa_nodes if n.id in entry.numa for c in n.cpus]
                say(
                    f"     NUMA pinning asked: CPUs of NUMA node(s) {list(entry.numa)}: "
                    f"{_ranges(cpus)}, memory nodes {list(entry.numa)}"
                )
        say("")

    def _show(self, responses: list[pb.ContainerAllocateResponse], whole: set[str]) -> None:
        """Devices, env, mounts and the limits file; a GPU in `whole` has no limiter."""
        say = self.say
        devices = [d.host_path for r in responses for d in r.devices]
        say(f"     devices: {' '.join(devices)}")
        envs = {k: v for r in responses for k, v in r.envs.items()}
        for key in sorted(envs):
            say(f"     env {key}={json.dumps(envs[key])}")
        for r in responses:
            for m in r.mounts:
                mode = "ro" if m.read_only else "rw"
                paths = (
                    m.container_path
                    if m.container_path == m.host_path
                    else f"{m.container_path} <- {m.host_path}"
                )
                say(f"     mount {paths} ({mode})")
        region = next(
            (m.host_path for r in responses for m in r.mounts if m.container_path == "/run/gpulet"),
            None,
        )
        if region is not None:
            limits = read_limits(Path(region) / "limits")
            for d in limits.devices:
                if d.uuid in whole:
                    say(f"     limits: {d.uuid} no limiter (whole GPU)")
                else:
                    say(f"     limits: {d.uuid} {d.memory_mib} MiB, {d.core_percent}% core")


def allocate_once_seen(
    kubelet: KubeletStandIn, ref: PodRef, container: str, resource: str, count: int
) -> pb.AllocateResponse:
    """Allocate once the agent's watch has shown it the pod (kubelet itself only admits
    pods the API has shown it, and the agent watches the same API)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return kubelet.allocate(ref, container, resource, count)
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _post(scorer: Scorer, verb: str, body: Any) -> Any:
    conn = http.client.HTTPConnection("127.0.0.1", scorer.server.port, timeout=30)
    conn.request(
        "POST", f"/{verb}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    data = json.loads(resp.read())
    conn.close()
    return data


def _wait(what: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise RuntimeError("the demo's cluster did not come up in time")
        time.sleep(0.05)


def _ranges(cpus: list[int]) -> str:
    out: list[str] = []
    for cpu in sorted(cpus):
        if out and out[-1].split("-")[-1] == str(cpu - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{cpu}"
        else:
            out.append(str(cpu))
    return ",".join(out)


def run_demo(nodes: int = 2, kind: str = "dgx-h100", say: Say = print) -> int:
    return Demo(nodes, kind, say).run()
