"""`gpulet agent run`: the node agent with the Kubernetes API. It publishes the node's
topology (its NodeTopology, `agent.publish`), renews its Lease (`agent.heartbeat`), serves
the device plugins following the extender's assignments of the pods bound to this node,
pins the containers of pods that ask to their GPUs' NUMA node, and frees a pod's devices,
regions and checkpoint entries when the pod is deleted or finishes."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.access import KubernetesAccess
from agent.advertise import CapacityAdvertiser
from agent.allocations import allocations
from agent.backstop import (
    CgroupFreezer,
    ComputeSettings,
    DutyCycle,
    Freezing,
    OverShare,
    locate_freezer,
    thaw_left_frozen,
)
from agent.cgroups import ContainerRef, ProcessTable
from agent.colocation import INTERVAL_S, CoLocation, batch_gpus
from agent.eviction import WATERMARK_PERMILLE, BatchEvictor, through_api
from agent.heartbeat import LeaseHeartbeat
from agent.idle import MIN_INTERVAL_S, WINDOW_S, IdleMeter, aggregates
from agent.kube import AllocatedRecorder, ApiPodSource, EventReporter
from agent.loop import Every
from agent.metrics import AgentCollector, BatchParts, MetricsServer
from agent.monitor import Finding, Monitor, Violation
from agent.pinner import Pinner
from agent.plugincore import AgentSpec, ListedContainer, build
from agent.publish import TopologyPublisher
from agent.recover import recover_from_pods
from agent.supervisor import Supervisor
from agent.usage import UsageSource
from deviceplugin.core import DevicePluginCore
from deviceplugin.grants import Grant
from deviceplugin.health import PortStates, XidSource
from deviceplugin.ledger import Ledger
from deviceplugin.manager import PluginManager
from gpulet.api import nodetopology as nt
from gpulet.api.share import Idle
from gpulet.kube.calls import CoreCalls, ReviewCalls

log = logging.getLogger("gpulet.agent")


@dataclass(frozen=True)
class Pinning:
    """Where NUMA pinning writes (the host's cgroup root) and reads kubelet's CPU manager
    checkpoint (`<kubelet dir>/cpu_manager_state`)."""

    cgroup_root: Path
    cpu_manager_state: Path
    interval_s: float = 5.0


#: In the state directory: the cgroups the compute backstop's duty cycle may have frozen, so
#: that an agent that died mid-cycle has them thawed by the next one.
DUTY_LEDGER = "frozen-cgroups.json"


@dataclass(frozen=True)
class Monitoring:
    """Per-process GPU usage (NVML, or a file on a simulated node), the host's /proc to map
    processes to containers, what to do about a container over its cap or its share
    (`enforce`: report, or on; `kill` is on's old name), where containers' cgroups are
    frozen with enforcement on (the host's cgroup root; None: compute is only reported), how
    over-share is judged, where metrics are served (port 0: a free one; None: not served),
    and who may read them (`metrics_auth`): `kubernetes`, a bearer token the API server
    authenticates whose user it authorizes to GET the path (`agent.access`), or `none`,
    anyone. `/healthz` is open either way."""

    usage: UsageSource
    proc_root: Path
    enforce: str = "report"
    interval_s: float = 1.0
    metrics_port: int | None = 9400
    cgroup_root: Path | None = None
    compute: ComputeSettings = field(default_factory=ComputeSettings)
    metrics_auth: str = "kubernetes"
    #: How far back production's peak counts, and how often at most the room measured for
    #: batch slices is published (`agent.idle`).
    idle_window_s: float = WINDOW_S
    idle_interval_s: float = MIN_INTERVAL_S
    #: Free memory kept on a GPU with batch slices, permille of the GPU's (`agent.eviction`).
    batch_watermark_permille: int = WATERMARK_PERMILLE


@dataclass
class NodeAgent:
    """The agent's parts, for tests and the command line to look at; `supervisor` owns
    their lifecycle (`stop`)."""

    core: DevicePluginCore
    manager: PluginManager
    pods: ApiPodSource
    topology: TopologyPublisher
    heartbeat: LeaseHeartbeat
    supervisor: Supervisor
    monitor: Monitor | None = None
    metrics: MetricsServer | None = None
    recorder: AllocatedRecorder | None = None
    capacity: CapacityAdvertiser | None = None
    colocation: CoLocation | None = None
    idle: IdleMeter | None = None
    evictor: BatchEvictor | None = None

    def stop(self) -> None:
        """Stop every part, last started first (the monitor's loop before the duty cycle,
        which thaws every container the compute backstop holds; the device plugins before
        the pods' watch)."""
        self.supervisor.stop()


class CoreLink:
    """The device-plugin core, for the parts that start before it is built: the pods' watch
    (the core's recovery needs the node's pods listed) and the recorder of what was
    allocated (the core reports each grant to it). A pod gone before the core is bound is
    released once it is; before then there are no grants."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._core: DevicePluginCore | None = None
        self._gone: list[str] = []

    def bind(self, core: DevicePluginCore) -> None:
        with self._lock:
            self._core, gone, self._gone = core, self._gone, []
        for uid in gone:
            _release(core, uid)

    def release_pod(self, uid: str) -> None:
        with self._lock:
            core = self._core
            if core is None:
                self._gone.append(uid)
                return
        _release(core, uid)

    def grants(self) -> tuple[Grant, ...]:
        core = self._core
        return core.grants() if core is not None else ()


def _release(core: DevicePluginCore, uid: str) -> None:
    dropped = core.release_pod(uid)
    if dropped:
        log.info("event=released pod_uid=%s grants=%d", uid, len(dropped))


def start(
    spec: AgentSpec,
    api: CoreCalls,
    xids: XidSource | None,
    ports: PortStates | None,
    *,
    heartbeat_s: float = nt.HEARTBEAT_S,
    namespace: str = nt.DEFAULT_NAMESPACE,
    pod_name: str | None = None,
    legacy_annotations: str = "remove",
    sync_timeout_s: float = 30.0,
    pinning: Pinning | None = None,
    monitoring: Monitoring | None = None,
) -> NodeAgent:
    """Publish the node's NodeTopology, take its Lease in `namespace` (held as `pod_name`,
    the host name by default; renewed every `heartbeat_s`) and settle the previous
    release's Node annotations (`legacy_annotations`: remove, or keep the topology one);
    learn the node's pods, then serve kubelet (which may call Allocate at once, so the pods
    come first); then pin, watch usage, serve metrics. Each part is started as it is built,
    in that order: if one fails (or building one does), those started are stopped, last
    first, and the error raised."""
    node = spec.config.node_name
    if not node:
        raise ValueError("the agent needs its Kubernetes node name (--node-name)")
    topo = replace(spec.topo, node=node)
    spec = replace(spec, topo=topo)
    heartbeat = LeaseHeartbeat(
        api.client, node, namespace, pod_name or socket.gethostname(), heartbeat_s=heartbeat_s
    )
    parts = Supervisor()
    with parts.starting():
        publisher = TopologyPublisher(api, topo, legacy=legacy_annotations)
        parts.start("topology-publisher", publisher)
        capacity = parts.start("node-capacity", CapacityAdvertiser(api, topo))
        parts.start("heartbeat", heartbeat)
        publisher.retire_legacy()
        link = CoreLink()
        pods = parts.start("pods-watch", ApiPodSource(api, node, on_gone=link.release_pod))
        if not pods.wait_ready(sync_timeout_s):
            log.warning("event=pods-not-listed timeout_s=%s", sync_timeout_s)
        recorder = AllocatedRecorder(api, pods.pod, link.grants)
        parts.start("allocated-recorder", recorder)

        def recover(ledger: Ledger, listed: list[ListedContainer] | None) -> int:
            return recover_from_pods(ledger, pods.pods(), topo, spec.config, listed)

        core = build(spec, pods, recorder.granted, recover=recover)
        link.bind(core)
        manager = parts.start("device-plugins", PluginManager(core, spec.plugin_dir, xids, ports))
        agent = NodeAgent(
            core, manager, pods, publisher, heartbeat, parts, recorder=recorder, capacity=capacity
        )
        colocation = agent.colocation = CoLocation(lambda: batch_gpus(core.grants()))
        parts.start("colocation", Every("gpulet-colocation", INTERVAL_S, colocation.tick))
        if pinning is not None:
            pinner = Pinner(topo, pods.pods, pinning.cgroup_root, pinning.cpu_manager_state)
            loop = Every("gpulet-pin", pinning.interval_s, pinner.reconcile)
            parts.start("pinner", loop)
        if monitoring is not None:
            ledger = spec.state_dir / DUTY_LEDGER
            _start_monitoring(
                agent, parts, monitoring, colocation, api=api, node=node, ledger=ledger
            )
    gc.freeze()  # as agent.standalone.start: keep the long-lived out of full collections
    return agent


def _start_monitoring(
    agent: NodeAgent,
    parts: Supervisor,
    monitoring: Monitoring,
    colocation: CoLocation,
    *,
    api: CoreCalls,
    node: str,
    ledger: Path,
) -> None:
    """The usage monitor and its backstops (the compute backstop's duty cycle first, so that
    it runs before any sample can ask it to freeze), batch slices' room and eviction, then
    the metrics server."""
    core, pods, manager = agent.core, agent.pods, agent.manager
    events = EventReporter(api, node)

    def report(found: Finding) -> None:
        pod = pods.pod(found.pod_uid)
        if pod is not None:
            events.warn(pod, *_event(found))

    freezing = _freezing(monitoring, ledger)
    monitor = agent.monitor = Monitor(
        monitoring.usage,
        ProcessTable(monitoring.proc_root),
        core.grants,
        pods.pods,
        enforce=monitoring.enforce,
        report=report,
        compute=replace(monitoring.compute, sample_s=monitoring.interval_s),
        freezing=freezing,
        batch_share=colocation.share_percent,
    )
    if freezing is not None:
        parts.start("duty-cycle", freezing.duty)  # its stop thaws every container it holds
    topology, capacity = agent.topology, agent.capacity

    def publish(idle: Mapping[int, Idle]) -> None:
        topology.set_idle(idle)
        if capacity is not None:
            capacity.set_batch(aggregates(idle))

    meter = agent.idle = IdleMeter(
        core.topo,
        publish,
        unavailable=core.unhealthy_gpus,
        window_s=monitoring.idle_window_s,
        min_interval_s=monitoring.idle_interval_s,
    )

    # With enforcement on, a batch pod's processes are killed at once: its memory now, not
    # after a grace period.
    evict = through_api(api, events, pods.pod, kill=monitor.enforcing)
    evictor = agent.evictor = BatchEvictor(
        core.topo, evict, permille=monitoring.batch_watermark_permille
    )

    def sample() -> None:
        before = monitor.latest
        monitor.tick()
        if monitor.latest is not before:  # a sample was taken
            grants = core.grants()
            evictor.observe(monitor.latest, grants)
            meter.observe(monitor.latest, grants, time.time())

    parts.start("monitor", Every("gpulet-monitor", monitoring.interval_s, sample))
    if monitoring.metrics_port is not None:
        server = MetricsServer(
            AgentCollector(core, monitor, BatchParts(colocation, meter, evictor)),
            monitoring.metrics_port,
            healthy=manager.serving,
            documents={"/allocations": lambda: allocations(core, monitor, pods.pod)},
            access=metrics_access(monitoring.metrics_auth, api),
        )
        agent.metrics = parts.start("metrics-server", server)


def metrics_access(auth: str, api: CoreCalls) -> KubernetesAccess | None:
    """Who may read the agent's metrics (Monitoring.metrics_auth): reviewed by the API
    server `api` talks to, or (`none`) anyone."""
    if auth == "none":
        log.info("event=metrics-open reason=%r", "--metrics-auth none: anyone may read")
        return None
    if auth != "kubernetes":
        raise ValueError(f"metrics_auth must be kubernetes or none, not {auth!r}")
    return KubernetesAccess(ReviewCalls(api.client))


def _freezing(monitoring: Monitoring, ledger: Path) -> Freezing | None:
    """The duty cycle (not started: its `start` thaws what an agent that died mid-cycle
    left frozen), with enforcement on and a cgroup root; else None, and what such an agent
    left frozen is thawed now."""
    if monitoring.enforce == "report" or monitoring.cgroup_root is None:
        thaw_left_frozen(ledger)
        if monitoring.enforce != "report":
            log.warning(
                "event=compute-report-only reason=%r",
                "no cgroup root: containers over their compute share are reported, not frozen",
            )
        return None
    root = monitoring.cgroup_root
    duty = DutyCycle(monitoring.compute.period_s, ledger=ledger)

    def locate(ref: ContainerRef) -> CgroupFreezer:
        return locate_freezer(root, ref)

    return Freezing(locate, duty)


def _event(found: Finding) -> tuple[str, str]:
    """The Warning Event for a finding: its reason and message."""
    if isinstance(found, OverShare):
        action = (
            "holds it to its share by freezing its cgroup in a duty cycle"
            if found.action == "throttled"
            else "reported" + (f" (it cannot be throttled: {found.note})" if found.note else "")
        )
        return (
            "GPUComputeOverShare",
            f"container {found.container} kept GPU {found.gpu_uuid} {found.mean_percent:.0f}% "
            f"busy over {found.window_s:g} s by NVML's count, over its share of {found.share}% "
            f"by more than {found.tolerance:g} points (the limiter's pacing was got around); "
            f"gpulet {action}",
        )
    v: Violation = found
    pids = ", ".join(map(str, v.pids))
    action = "killed its processes" if v.killed else "reported"
    if v.cause == "region":
        return (
            "GPURegionUntrusted",
            f"container {v.container}'s region is not what gpulet granted it "
            f"({'; '.join(v.problems)}): its limits cannot be relied on, so it is treated as "
            f"over its cap; gpulet {action} (pids {pids})",
        )
    return (
        "GPUMemoryOverCap",
        f"container {v.container} holds {v.used_mib} MiB of GPU {v.gpu_uuid} by NVML's count, "
        f"over its cap of {v.cap_mib} MiB (the limiter was got around); gpulet {action} "
        f"(pids {pids})",
    )
