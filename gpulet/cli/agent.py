"""`gpulet agent run`: the node agent. For now the device plugins alone (`--standalone`)."""

from __future__ import annotations

import logging
import signal
import socket
import threading
from pathlib import Path
from types import FrameType

import click

from agent.discovery import discover
from agent.discovery.netlink import NetlinkLinkState, SysfsLinkState
from agent.discovery.pynvml_backend import PynvmlBackend
from agent.health import FileXidSource, NvmlXidSource, SysfsPortStates
from agent.health import xid_file as simulated_xid_file
from agent.simulate import open_simulated
from agent.standalone import Standalone, start
from deviceplugin.health import PortStates, XidSource
from deviceplugin.resources import PluginConfig
from gpulet.cli.common import simulate_option, user_errors
from native import LibraryMissingError, library_path

DEFAULT_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
DEFAULT_STATE_DIR = "/var/lib/gpulet"
#: Regions are shared memory: on tmpfs they cost no disk I/O (docs/deviceplugin.md).
DEFAULT_REGION_ROOT = "/run/gpulet/containers"


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
@click.option("--gpu-slots", type=click.IntRange(1, 999), default=100, show_default=True)
@click.option("--rdma-slots", type=click.IntRange(1, 999), default=100, show_default=True)
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
@click.option("--log-level", type=click.Choice(["debug", "info", "warning"]), default="info")
@user_errors
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
    log_level: str,
) -> None:
    """Serve gpulet.io/gpu and gpulet.io/rdma to kubelet until SIGTERM or SIGINT."""
    if not standalone:
        raise click.UsageError(
            "only --standalone is available so far: the agent's Kubernetes side "
            "(publication, assignments, cleanup) is not built yet"
        )
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    xids: XidSource
    ports: PortStates
    if simulate is not None:
        sim = open_simulated(simulate)
        topo = discover(sim.sysfs, sim.nvml, SysfsLinkState(sim.sysfs), sim.name)
        xids = FileXidSource(xid_file or simulated_xid_file(sim.root))
        ports = SysfsPortStates(sim.sysfs, topo, SysfsLinkState(sim.sysfs))
    else:
        import pynvml  # noqa: PLC0415

        topo = discover(Path("/sys"), PynvmlBackend(), NetlinkLinkState(), socket.gethostname())
        xids = NvmlXidSource(pynvml)
        ports = SysfsPortStates(Path("/sys"), topo, NetlinkLinkState())
    try:
        limiter: Path | None = library_path()
    except LibraryMissingError:
        limiter = None
    spec = Standalone(
        topo=topo,
        plugin_dir=kubelet_dir,
        state_dir=state_dir,
        config=PluginConfig(
            gpu_slots=gpu_slots,
            rdma_slots=rdma_slots,
            node_name=topo.node,
            region_root=region_root,
            limiter_host_path=limiter,
        ),
        pod_resources_socket=(pod_resources_dir or kubelet_dir.parent / "pod-resources")
        / "kubelet.sock",
    )
    manager = start(spec, xids, ports)
    click.echo(
        f"gpulet agent: serving {len(topo.gpus)} GPUs x {gpu_slots} slots and "
        f"{len(topo.nics)} RDMA ports x {rdma_slots} slots to kubelet at {kubelet_dir}",
        err=True,
    )
    if isinstance(xids, FileXidSource):
        click.echo(f"gpulet agent: inject XIDs with: echo 'GPU XID' >> {xids.path}", err=True)
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    done.wait()
    manager.stop()
