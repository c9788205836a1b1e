"""`gpulet demo`: one pod's path through gpulet, for four sample pods, on simulated nodes;
a batch slice on what production leaves idle; then a preemption on a node that joins for it.

In this process tree: an API server stand-in, N simulated nodes each with a kubelet
stand-in and a real agent (device plugins over gRPC, its node published, pods watched), and
the real extender watching the API. The demo plays kube-scheduler (filter, prioritize, bind
over HTTP to the extender) and kubelet's admission (Allocate over gRPC to the agent), then
prints what each container got: node, GPUs and shares, NICs, NUMA node, devices, env, mounts
and its limits file. For the preemption it plays kube-scheduler's too: its victims counted
from the node's sums (gpulet.demo.dryrun), checked per GPU by the extender's preempt verb.
Everything runs on ports and sockets of its own and is removed at the end.
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
from agent.usage import FileUsageSource
from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig
from gpulet.api.assignment import Assignment, parse_assignment
from gpulet.api.nodetopology import lease_name
from gpulet.api.resources import (
    ASSIGNMENT_ANNOTATION,
    BATCH_CORE_RESOURCE,
    BATCH_MEMORY_RESOURCE,
    CORE_RESOURCE,
    GPU_POLICY_ANNOTATION,
    NUMA_PIN_ANNOTATION,
)
from gpulet.demo import dryrun
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
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    HostPriorityList,
    MetaPod,
    MetaVictims,
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
    agent: node_agent.NodeAgent


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
                self._batch(api, scorer, next(iter(self.nodes)))
                name = f"{self.kind}-{self.count}"
                stack.enter_context(self._node(api, core_api, name, work / name, limiter=limiter))
                _wait(lambda: bool((n := view.node(name)) and n.topo))
                self._preemption(api, scorer, name)
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
        (work / "proc").mkdir(parents=True)
        # NVML on a simulated node: no GPU process (a missing file), so every GPU's
        # production is idle; the room for batch is measured over half a second, not a minute.
        monitoring = node_agent.Monitoring(
            FileUsageSource(work / "gpu-processes.json"),
            work / "proc",
            metrics_port=None,
            idle_window_s=0.5,
            idle_interval_s=0.5,
        )
        agent = node_agent.start(spec, core_api, None, None, monitoring=monitoring)
        try:
            if not kubelet.wait_for(lambda v: bool(v.devices(GPU_RESOURCE)), timeout=30):
                raise RuntimeError(f"the agent of {name} did not register with kubelet")
            self.nodes[name] = DemoNode(name, topo, kubelet, agent)
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
        say(f"== pod {sample.name}: {sample.what}")
        self._schedule(api, scorer, stored, list(self.nodes))

    def _schedule(
        self,
        api: ApiServerStandIn,
        scorer: Scorer,
        stored: dict[str, Any],
        names: list[str],
        *,
        quiet: bool = False,
    ) -> str | None:
        """kube-scheduler's part for a created pod: filter, prioritize, bind; then kubelet's
        (`_admit`), unless `quiet`. The node it is bound to, or None."""
        say = self.say
        meta = stored["metadata"]
        passed = ExtenderFilterResult.parse(
            _post(scorer, "filter", ExtenderArgs(stored, node_names=tuple(names)).dump())
        )
        if not passed.names():
            if quiet:
                return None
            say("   does not fit; the extender says, per node:")
            reasons = {**passed.failed_nodes, **passed.failed_and_unresolvable_nodes}
            for node, reason in sorted(reasons.items()):
                say(f"     {node}: {reason}")
            say("")
            return None
        scores = HostPriorityList.parse(
            _post(scorer, "prioritize", ExtenderArgs(stored, node_names=passed.names()).dump())
        )
        best = max(scores, key=lambda s: s.score)
        if not quiet:
            shown = ", ".join(f"{s.host} {s.score}" for s in scores)
            say(f"   scores (0-10): {shown}; binding to {best.host}")
        node = best.host
        bind = ExtenderBindingArgs(meta["name"], meta["namespace"], meta["uid"], node)
        answer = ExtenderBindingResult.parse(_post(scorer, "bind", bind.dump()))
        if answer.error:
            say(f"   bind failed: {answer.error}\n")
            return None
        bound = api.get_pod(meta["namespace"], meta["name"])
        assert bound is not None
        annotation = bound["metadata"]["annotations"][ASSIGNMENT_ANNOTATION]
        self._admit(self.nodes[node], bound, parse_assignment(annotation), quiet=quiet)
        return node

    # ---- a batch slice ---------------------------------------------------------------------

    def _batch(self, api: ApiServerStandIn, scorer: Scorer, node: str) -> None:
        """The agent's measured room for batch, what the Node advertises of it, and a batch
        pod placed on it: beside the inference slice, with its share of the GPU."""
        say = self.say
        view = scorer.server.extender.view
        demo = self.nodes[node]
        topo = demo.topo
        _wait(lambda: len(view.state(node).idle) == len(topo.gpus))
        _wait(lambda: BATCH_CORE_RESOURCE in _allocatable(api, node))
        room = view.state(node).idle
        allocatable = _allocatable(api, node)
        say(
            f"== batch: the agent of {node} measured what production leaves idle, less a "
            "margin, on each GPU"
        )
        rooms = (f"GPU{i} {r.core}%/{r.memory_mib // 1024} GiB" for i, r in sorted(room.items()))
        say("   " + ", ".join(rooms))
        say(
            f"   and advertises {BATCH_CORE_RESOURCE}={allocatable[BATCH_CORE_RESOURCE]}, "
            f"{BATCH_MEMORY_RESOURCE}={allocatable[BATCH_MEMORY_RESOURCE]} (GPUs held whole "
            "have none)"
        )
        stored = api.create_pod(
            pod_object("offline-eval", container("eval", gpus=1, batch_core=20, batch_memory=16384))
        )
        say(
            "== pod offline-eval: a batch slice (floor 20%, cap 16 GiB) that uses what "
            "production leaves idle"
        )
        if self._schedule(api, scorer, stored, [node]) is None:
            return
        controller = demo.agent.colocation
        uid = stored["metadata"]["uid"]
        bound = api.get_pod("default", "offline-eval") or {}
        annotation = bound["metadata"]["annotations"][ASSIGNMENT_ANNOTATION]
        (share,) = [g for c in parse_assignment(annotation).containers for g in c.gpus]
        if controller is not None:
            _wait(lambda: controller.share_percent(uid, "eval", share.uuid) is not None)
            given = controller.share_percent(uid, "eval", share.uuid)
            say(
                f"   the agent's co-location controller gives it {given}% of the GPU while the "
                "production slices there are idle, and takes it back within 25 ms of their "
                "first launch\n"
            )

    # ---- a preemption ---------------------------------------------------------------------

    def _preemption(self, api: ApiServerStandIn, scorer: Scorer, node: str) -> None:
        """Low-priority slices fill the node; a slice of high priority finds no room, and
        gets it through preemption: kube-scheduler's proposal from the node's sums, the
        extender's correction per GPU, the victims deleted, the pod placed."""
        say = self.say
        topo = self.nodes[node].topo
        gpus = len(topo.gpus)
        say(f"== preemption: node {node} joins; the pods below ask for it (nodeSelector)")
        held: dict[str, tuple[str, int]] = {}  # uid -> (name, GPU index)
        by_uuid = {g.uuid: g.index for g in topo.gpus}
        fill = [(f"first-{i}", 200, "spread") for i in range(gpus)]
        fill += [(f"second-{i}", 100 if i < 2 else 101, "binpack") for i in range(gpus)]
        for name, value, policy in fill:
            stored = api.create_pod(_slice(name, 50, value, policy))
            if self._schedule(api, scorer, stored, [node], quiet=True) is None:
                raise RuntimeError(f"the demo's slice {name} found no room on {node}")
            bound = api.get_pod(stored["metadata"]["namespace"], name)
            assert bound is not None
            annotation = bound["metadata"]["annotations"][ASSIGNMENT_ANNOTATION]
            (share,) = [g for c in parse_assignment(annotation).containers for g in c.gpus]
            held[stored["metadata"]["uid"]] = (name, by_uuid[share.uuid])
        say(
            f"   {len(fill)} slices of 50% fill its {gpus} GPUs, two on each: first-N at "
            "priority 200, then second-N beside them at 100 (second-0, second-1) and 101"
        )
        urgent = api.create_pod(_slice("urgent", 60, 1000, "binpack"))
        say("   pod urgent: a 60% slice at priority 1000")
        if self._schedule(api, scorer, urgent, [node], quiet=True) is not None:
            raise RuntimeError("the demo's urgent slice fit without preemption")
        stored_node = api.get_node(node)
        assert stored_node is not None
        allocatable = stored_node["status"]["allocatable"]
        on_node = [p for p in api.pods() if (p.get("spec") or {}).get("nodeName") == node]
        used = sum(dryrun.requests(p)[CORE_RESOURCE] for p in on_node)
        say(
            f"   no room: kube-scheduler counts {used} of the {allocatable[CORE_RESOURCE]} "
            f"{CORE_RESOURCE} the agent advertises for {node}"
        )
        proposed = dryrun.victims(allocatable, on_node, urgent) or []
        names = [str(p["metadata"]["name"]) for p in proposed]
        where = ", ".join(
            f"{n} (GPU{held[p['metadata']['uid']][1]})"
            for n, p in zip(names, proposed, strict=True)
        )
        say(f"   kube-scheduler's preemption, by the node's sums, proposes: {where}")
        args = ExtenderPreemptionArgs(
            urgent,
            node_name_to_meta_victims={
                node: MetaVictims(tuple(MetaPod(str(p["metadata"]["uid"])) for p in proposed))
            },
        )
        answer = ExtenderPreemptionResult.parse(_post(scorer, "preempt", args.dump()))
        kept = (answer.node_name_to_meta_victims or {}).get(node)
        if kept is None:
            say("   the extender drops the node: no victims there free a GPU\n")
            return
        chosen = sorted(held[v.uid] for v in kept.pods)
        added = [f"{n} (GPU{i})" for n, i in chosen if n not in names]
        say(
            "   the extender checks per GPU: those leave no GPU with 60% free; it adds the "
            f"fewest more of lower priority: {', '.join(added) or 'none'}"
        )
        for name, _ in chosen:
            api.delete_pod("default", name)
            api.finish_pod_deletion("default", name)
        say(f"   kube-scheduler deletes {', '.join(n for n, _ in chosen)}; pod urgent is retried:")
        view = scorer.server.extender.view
        gone = {v.uid for v in kept.pods}
        _wait(lambda: not gone & {h.uid for h in view.holders(node)})
        self._schedule(api, scorer, urgent, [node])

    def _admit(
        self, node: DemoNode, pod: dict[str, Any], assignment: Assignment, *, quiet: bool = False
    ) -> None:
        """What kubelet does: Allocate each resource of each container, then show it (unless
        `quiet`)."""
        say: Say = (lambda _: None) if quiet else self.say
        meta = pod["metadata"]
        ref = PodRef(uid=meta["uid"], namespace=meta["namespace"], name=meta["name"])
        by_uuid = {g.uuid: g for g in node.topo.gpus}
        for entry in assignment.containers:
            say(f"   container {entry.name} on {node.name}:")
            for g in entry.gpus:
                gpu = by_uuid[g.uuid]
                share = "whole" if g.exclusive else f"{g.core}% core, {g.memory_mib} MiB"
                if g.batch:
                    share = f"batch: floor {g.core}% core, cap {g.memory_mib} MiB"
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
            if not quiet:
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
                    kind = ", batch (paced to the share the agent gives it)" if d.batch else ""
                    say(f"     limits: {d.uuid} {d.memory_mib} MiB, {d.core_percent}% core{kind}")


def _allocatable(api: ApiServerStandIn, node: str) -> dict[str, str]:
    stored = api.get_node(node) or {}
    return dict((stored.get("status") or {}).get("allocatable") or {})


def _slice(name: str, core: int, priority: int, policy: str) -> dict[str, Any]:
    """A one-GPU slice of `core`% and 1 GiB at `priority` (spec.priority, which the API
    server sets from a PriorityClass), with the `gpu-policy` given."""
    pod = pod_object(
        name,
        container("main", gpus=1, core=core, memory=1024),
        annotations={GPU_POLICY_ANNOTATION: policy},
    )
    pod["spec"]["priority"] = priority
    return pod


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
