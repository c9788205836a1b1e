"""`gpulet agent run`: the node agent, with the Kubernetes API or (`--standalone`) without."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import click

from agent import node_agent
from agent.adapters import read_adapters
from agent.eviction import WATERMARK_PERMILLE
from agent.idle import MIN_INTERVAL_S, WINDOW_S
from agent.library import install_limiter
from agent.node_agent import NodeAgent
from agent.plugincore import AgentSpec
from agent.publish import LEGACY_MODES
from agent.standalone import StandaloneAgent
from agent.standalone import start as standalone_start
from deviceplugin.resources import PluginConfig
from gpulet.api import nodetopology as nt
from gpulet.api.resources import MAX_SLOTS
from gpulet.cli.common import kube_configuration, simulate_option, until_signalled, user_errors
from gpulet.kube.calls import CoreCalls, api_client
from native import LibraryMissingError, library_path

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_STATE_DIR = "/var/lib/gpulet"
#: Regions are shared memory: on tmpfs they cost no disk I/O (docs/deviceplugin.md).
DEFAULT_REGION_ROOT = "/run/gpulet/containers"
DEFAULT_LIBRARY_DIR = "/var/lib/gpulet/lib"


@contextlib.contextmanager
def _path_errors() -> Iterator[None]:
    """A file or directory of the options that the agent cannot make or use (a state
    directory under a file, say) is one line (the parts started are stopped by then)."""
    try:
        yield
    except OSError as e:
        if e.filename is None:
            raise
        raise click.ClickException(f"cannot use {e.filename}: {e.strerror or e}") from None


@click.group()
def agent() -> None:
    """The node agent."""


@agent.command()
@simulate_option
@click.option(
    "--kubelet-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_PLUGIN_DIR,
    show_default=True,
    help="kubelet's device-plugin directory (where kubelet.sock is).",
)
@click.option(
    "--pod-resources-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="kubelet's pod-resources directory [default: beside --kubelet-dir].",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_STATE_DIR,
    show_default=True,
    help="Where the checkpoint of what was granted is kept.",
)
@click.option(
    "--region-root",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_REGION_ROOT,
    show_default=True,
    help="The containers' region directories (<pod uid>/<container>); best on tmpfs.",
)
@click.option("--gpu-slots", type=click.IntRange(1, MAX_SLOTS), default=100, show_default=True)
@click.option("--rdma-slots", type=click.IntRange(1, MAX_SLOTS), default=100, show_default=True)
@click.option(
    "--xid-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --simulate: the file XIDs are injected into ('GPU XID' lines) "
    "[default: xid-events in the simulated node's directory].",
)
@click.option(
    "--standalone",
    is_flag=True,
    help="No Kubernetes API: whole GPUs only, chosen by the placement engine.",
)
@click.option(
    "--node-name",
    envvar="NODE_NAME",
    help="This node's name in Kubernetes [default: $NODE_NAME, else the host name].",
)
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="kubeconfig to reach the API server [default: in-cluster, else ~/.kube/config].",
)
@click.option(
    "--library-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_LIBRARY_DIR,
    show_default=True,
    help="Host directory the limiter library and its ld.so.preload are copied to, for "
    "containers to mount (same path inside the agent's container and out).",
)
@click.option(
    "--cgroup-root",
    type=click.Path(file_okay=False, path_type=Path),
    default="/sys/fs/cgroup",
    show_default=True,
    help="The host's cgroup root, where NUMA pinning writes containers' cpusets.",
)
@click.option(
    "--kubelet-state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="/var/lib/kubelet",
    show_default=True,
    help="kubelet's root directory, for its CPU manager checkpoint (cpu_manager_state).",
)
@click.option(
    "--proc-root",
    type=click.Path(file_okay=False, path_type=Path),
    default="/proc",
    show_default=True,
    help="The host's /proc (the agent needs hostPID): which container each GPU process is in.",
)
@click.option(
    "--enforce",
    type=click.Choice(["report", "on", "kill"]),
    is_flag=False,
    flag_value="on",
    default="report",
    show_default=True,
    help="What the backstops do about a container that got around its limiter: `report` "
    "(log, metric, Event) only, or `on` (`--enforce` alone; `kill` is its old name): also "
    "kill its processes when it holds more GPU memory than its cap or its region was "
    "tampered with, and freeze its cgroup in a duty cycle when it uses more compute than its "
    "share (under --cgroup-root).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=9400,
    show_default=True,
    help="Port of /metrics, /allocations and /healthz (0: a free one).",
)
@click.option(
    "--metrics-auth",
    type=click.Choice(["kubernetes", "none"]),
    default="kubernetes",
    show_default=True,
    help="Who may read /metrics and /allocations (/healthz is open): `kubernetes`, a bearer "
    "token the API server authenticates (TokenReview) whose user it allows to GET the path "
    "(SubjectAccessReview, RBAC's nonResourceURLs); `none`, anyone who reaches the port.",
)
@click.option(
    "--usage-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --simulate: the JSON file of GPU processes to read instead of NVML "
    "[default: gpu-processes.json in the simulated node's directory].",
)
@click.option(
    "--idle-window-seconds",
    type=click.FloatRange(min=1),
    default=WINDOW_S,
    show_default=True,
    help="How far back production's busiest moment counts when the agent measures the room "
    "each GPU leaves for batch slices; also how long it watches before it first publishes it.",
)
@click.option(
    "--idle-interval-seconds",
    type=click.FloatRange(min=1),
    default=MIN_INTERVAL_S,
    show_default=True,
    help="The least time between two publications of that room (its NodeTopology's status, "
    "the Node's batch aggregates); each also needs a change of more than 5% of a GPU.",
)
@click.option(
    "--batch-watermark-percent",
    type=click.FloatRange(min=0.1, max=50),
    default=WATERMARK_PERMILLE / 10,
    show_default=True,
    help="Free memory kept on a GPU with batch slices, percent of its memory (at least "
    "1 GiB): under it, batch pods there are evicted, newest first. Raise it where production "
    "can allocate more than this within a second.",
)
@click.option(
    "--heartbeat-seconds",
    type=click.FloatRange(min=1),
    default=nt.HEARTBEAT_S,
    show_default=True,
    help="How often the agent renews its Lease (gpulet-node-<node>); the extender judges "
    "the node quiet after three heartbeats without a renewal.",
)
@click.option(
    "--namespace",
    envvar="POD_NAMESPACE",
    default=nt.DEFAULT_NAMESPACE,
    show_default=True,
    help="The install namespace, where the agent's Lease lives [$POD_NAMESPACE].",
)
@click.option(
    "--pod-name",
    envvar="POD_NAME",
    help="This agent's pod, named in its Lease's holderIdentity [default: $POD_NAME, else "
    "the host name].",
)
@click.option(
    "--legacy-annotations",
    type=click.Choice(LEGACY_MODES),
    default="remove",
    show_default=True,
    help="The previous release's gpulet.io/topology and gpulet.io/heartbeat on the Node: "
    "`remove` both, or `keep` gpulet.io/topology current (and remove the heartbeat) for an "
    "extender not yet upgraded.",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info")
@user_errors
@_path_errors()
def run(
    simulate: str | None,
    kubelet_dir: Path,
    pod_resources_dir: Path | None,
    state_dir: Path,
    region_root: Path,
    gpu_slots: int,
    rdma_slots: int,
    xid_file: Path | None,
    standalone: bool,
    node_name: str | None,
    kubeconfig: Path | None,
    library_dir: Path,
    cgroup_root: Path,
    kubelet_state_dir: Path,
    proc_root: Path,
    enforce: str,
    metrics_port: int,
    metrics_auth: str,
    usage_file: Path | None,
    idle_window_seconds: float,
    idle_interval_seconds: float,
    batch_watermark_percent: float,
    heartbeat_seconds: float,
    namespace: str,
    pod_name: str | None,
    legacy_annotations: str,
    log_level: str,
) -> None:
    """Serve gpulet.io/gpu and gpulet.io/rdma to kubelet until SIGTERM or SIGINT.

    With the Kubernetes API (the default), it publishes the node's topology (its
    NodeTopology), renews its Lease, follows the scheduler extender's assignments, and frees
    what a pod held when it ends. With --standalone, containers get whole GPUs and nothing
    needs the API."""
    if not standalone:
        _check_node_name(node_name or socket.gethostname())
    kube = None if standalone else kube_configuration(kubeconfig)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    node = read_adapters(simulate, xid_file=xid_file, usage_file=usage_file)
    limiter, preload = _limiter(standalone, library_dir)
    spec = AgentSpec(
        topo=node.topo,
        plugin_dir=kubelet_dir,
        state_dir=state_dir,
        config=PluginConfig(
            gpu_slots=gpu_slots,
            rdma_slots=rdma_slots,
            node_name=node.topo.node if standalone else (node_name or socket.gethostname()),
            region_root=region_root,
            limiter_host_path=limiter,
            preload_host_path=preload,
        ),
        pod_resources_socket=(pod_resources_dir or kubelet_dir.parent / "pod-resources")
        / "kubelet.sock",
    )
    # From here a SIGTERM (a rolling update, say) waits for the start to finish, then stops
    # what started, rather than killing the agent half started.
    done = until_signalled()
    agent: StandaloneAgent | NodeAgent
    if kube is None:
        agent = standalone_start(spec, node.xids, node.ports)
    else:
        agent = node_agent.start(
            spec,
            CoreCalls(api_client(kube, "agent")),
            node.xids,
            node.ports,
            heartbeat_s=heartbeat_seconds,
            namespace=namespace,
            pod_name=pod_name or socket.gethostname(),
            legacy_annotations=legacy_annotations,
            pinning=node_agent.Pinning(cgroup_root, kubelet_state_dir / "cpu_manager_state"),
            monitoring=node_agent.Monitoring(
                node.usage,
                proc_root,
                enforce=enforce,
                metrics_port=metrics_port,
                cgroup_root=cgroup_root,
                metrics_auth=metrics_auth,
                idle_window_s=idle_window_seconds,
                idle_interval_s=idle_interval_seconds,
                batch_watermark_permille=round(batch_watermark_percent * 10),
            ),
        )
        metrics = f"; metrics on :{agent.metrics.port}" if agent.metrics else ""
        click.echo(
            f"gpulet agent: node {spec.config.node_name} published; following the "
            f"extender's assignments{metrics}",
            err=True,
        )
    click.echo(
        f"gpulet agent: serving {len(node.topo.gpus)} GPUs x {gpu_slots} slots and "
        f"{len(node.topo.nics)} RDMA ports x {rdma_slots} slots to kubelet at {kubelet_dir}",
        err=True,
    )
    if node.xid_file is not None:
        click.echo(f"gpulet agent: inject XIDs with: echo 'GPU XID' >> {node.xid_file}", err=True)
    done.wait()
    agent.stop()


def _check_node_name(node: str) -> None:
    """Refuse a node name gpulet cannot name its Lease after, before anything starts."""
    try:
        nt.lease_name(node)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--node-name") from None


def _limiter(standalone: bool, library_dir: Path) -> tuple[Path | None, Path | None]:
    """The limiter library for containers, and the ld.so.preload that loads it: with the
    API, both installed in `library_dir` (the library must have been built); standalone,
    the built library where it is, if it was built, and no preload."""
    try:
        built = library_path()
    except LibraryMissingError:
        if not standalone:
            raise
        return None, None
    if standalone:
        return built, None
    return install_limiter(built, library_dir)
