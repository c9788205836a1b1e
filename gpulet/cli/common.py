"""What the commands share: reading a node (real or simulated) and turning the errors a
person can cause into one line and a non-zero exit."""

from __future__ import annotations

import contextlib
import functools
import json
import select
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, ParamSpec, TypeVar

import click
from kubernetes import client, config

from agent.discovery import DiscoveryError, discover
from agent.discovery.netlink import NetlinkLinkState
from agent.discovery.nvml import NvmlError
from agent.discovery.pynvml_backend import PynvmlBackend
from agent.simnode import SimulationError, open_simulated
from gpulet.httpd import ListenError
from gpulet.placement import RequestError
from gpulet.placement.serialize import StateError
from gpulet.topology import Topology
from gpulet.topology.document import DocumentError
from native import LibraryMissingError
from native.region import RegionError
from scorer.config import ConfigError

P = ParamSpec("P")
R = TypeVar("R")

#: Errors that come from the user's input or machine, not from a bug in gpulet.
USER_ERRORS = (
    SimulationError,
    DiscoveryError,
    NvmlError,
    RequestError,
    StateError,
    DocumentError,
    RegionError,
    LibraryMissingError,
    ConfigError,
    ListenError,
)

simulate_option = click.option(
    "--simulate",
    metavar="NAME|DIR",
    help="Read a simulated node: a shipped name (dgx-a100, dgx-h100, h100-vm, pcie-4gpu, "
    "pcie-16gpu) or a simulated-node directory. Without it, read this machine.",
)


def user_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Report USER_ERRORS as `Error: <message>` with exit status 1, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except USER_ERRORS as e:
            raise click.ClickException(str(e)) from None

    return wrapper


def read_node(simulate: str | None) -> Topology:
    """Discover a simulated node, or this machine through /sys, NVML and netlink."""
    if simulate is not None:
        return open_simulated(simulate).topology()
    return discover(Path("/sys"), PynvmlBackend(), NetlinkLinkState(), socket.gethostname())


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


def kube_configuration(kubeconfig: Path | None) -> client.Configuration:
    """In-cluster when running in a pod (and no --kubeconfig), else the kubeconfig file."""
    configuration = client.Configuration()
    if kubeconfig is None:
        try:
            config.load_incluster_config(  # type: ignore[no-untyped-call]
                client_configuration=configuration
            )
            return configuration
        except config.ConfigException:
            pass
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig) if kubeconfig else None,
            client_configuration=configuration,
        )
    except (config.ConfigException, OSError) as e:
        message = f"cannot reach the API server: {e} (or pass --standalone)"
        raise click.ClickException(message) from None
    return configuration


class StopSignal:
    """Set by SIGTERM or SIGINT; a long-running command waits on it, then stops its parts and
    exits 0.

    The kernel hands a process's signal to any thread that does not block it (gRPC's own
    threads among them), and Python runs the handler only when the main thread next runs
    bytecode: a main thread asleep in `threading.Event.wait()` can sleep through SIGTERM.
    Python's wakeup fd is written by whichever thread takes the signal, so `wait()` sleeps in
    `select` on it instead."""

    def __init__(self) -> None:
        self._set = False
        self._wakeup, writer = socket.socketpair()
        self._writer = writer  # kept open for as long as it is the wakeup fd
        for end in (self._wakeup, writer):
            end.setblocking(False)
        signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def wait(self) -> None:
        while not self._set:
            select.select([self._wakeup], [], [])
            with contextlib.suppress(BlockingIOError):
                self._wakeup.recv(4096)


def until_signalled() -> StopSignal:
    """From now on, SIGTERM and SIGINT set the returned signal instead of ending the process."""
    return StopSignal()
