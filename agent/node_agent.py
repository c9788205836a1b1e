"""`gpulet agent run`: the node agent with the Kubernetes API. It publishes the node's
topology (with a heartbeat), serves the device plugins following the extender's assignments
of the pods bound to this node, pins the containers of pods that ask to their GPUs' NUMA
node, and frees a pod's devices, regions and checkpoint entries when the pod is deleted or
finishes."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from agent.access import KubernetesAccess
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
from agent.kube import AllocatedRecorder, ApiPodSource, EventReporter, NodePublisher
from agent.loop import Every
from agent.metrics import AgentCollector, MetricsServer
from agent.monitor import Finding, Monitor, Violation
from agent.pinner import Pinner
from agent.recover import recover_from_pods
from agent.standalone import Standalone, build
from agent.usage import UsageSource
from deviceplugin.core import DevicePluginCore
from deviceplugin.grants import Grant
from deviceplugin.health import PortStates, XidSource
from deviceplugin.manager import PluginManager
from gpulet.kube.calls import CoreCalls, ReviewCalls
from gpulet.topology.document import dumps

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


@dataclass
class NodeAgent:
    core: DevicePluginCore
    manager: PluginManager
    pods: ApiPodSource
    publisher: NodePublisher
    monitor: Monitor | None = None
    metrics: MetricsServer | None = None
    loops: list[Every] = field(default_factory=list)
    recorder: AllocatedRecorder | None = None

    def stop(self) -> None:
        if self.recorder is not None:
            self.recorder.stop()
        for loop in self.loops:
            loop.stop()
        if self.monitor is not None:
            self.monitor.stop()  # thaws every container the compute backstop holds
        if self.metrics is not None:
            self.metrics.stop()
        self.manager.stop()
        self.publisher.stop()
        self.pods.stop()


def start(
    spec: Standalone,
    api: CoreCalls,
    xids: XidSource | None,
    ports: PortStates | None,
    *,
    heartbeat_s: float = 60.0,
    sync_timeout_s: float = 30.0,
    pinning: Pinning | None = None,
    monitoring: Monitoring | None = None,
) -> NodeAgent:
    """Publish, learn the node's pods, then serve kubelet (which may call Allocate at once,
    so the pods come first)."""
    node = spec.config.node_name
    if not node:
        raise ValueError("the agent needs its Kubernetes node name (--node-name)")
    topo = replace(spec.topo, node=node)
    publisher = NodePublisher(api, node, dumps(topo), heartbeat_s=heartbeat_s)
    publisher.start()
    released: list[str] = []
    holder: list[DevicePluginCore] = []

    def gone(uid: str) -> None:
        if holder:
            dropped = holder[0].release_pod(uid)
            if dropped:
                log.info("event=released pod_uid=%s grants=%d", uid, len(dropped))
        else:
            released.append(uid)

    pods = ApiPodSource(api, node, on_gone=gone)
    pods.start()
    if not pods.wait_ready(sync_timeout_s):
        log.warning("event=pods-not-listed timeout_s=%s", sync_timeout_s)

    def grants() -> tuple[Grant, ...]:
        return holder[0].grants()  # the core, once built (grants come only after that)

    recorder = AllocatedRecorder(api, pods.pod, grants)
    recorder.start()
    core = build(
        replace(spec, topo=topo),
        pods,
        recorder.granted,
        recover=lambda ledger, listed: recover_from_pods(
            ledger, pods.pods(), topo, spec.config, listed
        ),
    )
    holder.append(core)
    for uid in released:
        core.release_pod(uid)
    manager = PluginManager(core, spec.plugin_dir, xids, ports)
    manager.start()
    loops: list[Every] = []
    if pinning is not None:
        pinner = Pinner(topo, pods.pods, pinning.cgroup_root, pinning.cpu_manager_state)
        loops.append(Every("gpulet-pin", pinning.interval_s, pinner.reconcile))
        loops[-1].start()
    agent = NodeAgent(core, manager, pods, publisher, loops=loops, recorder=recorder)
    if monitoring is not None:
        events = EventReporter(api, node)

        def report(found: Finding) -> None:
            pod = pods.pod(found.pod_uid)
            if pod is not None:
                events.warn(pod, *_event(found))

        freezing = _freezing(monitoring, spec.state_dir / DUTY_LEDGER)
        agent.monitor = Monitor(
            monitoring.usage,
            ProcessTable(monitoring.proc_root),
            core.grants,
            pods.pods,
            enforce=monitoring.enforce,
            report=report,
            compute=replace(monitoring.compute, sample_s=monitoring.interval_s),
            freezing=freezing,
        )
        loop = Every("gpulet-monitor", monitoring.interval_s, agent.monitor.tick)
        loop.start()
        agent.loops.append(loop)
        if monitoring.metrics_port is not None:
            monitor = agent.monitor
            agent.metrics = MetricsServer(
                AgentCollector(core, monitor),
                monitoring.metrics_port,
                healthy=manager.serving,
                documents={"/allocations": lambda: allocations(core, monitor, pods.pod)},
                access=metrics_access(monitoring.metrics_auth, api),
            )
            agent.metrics.start()
    gc.freeze()  # as agent.standalone.start: keep the long-lived out of full collections
    return agent


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
    """The duty cycle, started, with enforcement on and a cgroup root; else None. What an
    agent that died mid-cycle left frozen is thawed first, whatever the setting now."""
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
    duty.start()

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
