"""`gpulet scorer serve`: the scheduler extender."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from gpulet.cli.common import kube_configuration, until_signalled, user_errors
from scorer.app import build
from scorer.config import ScorerConfig, load_config


@click.group()
def scorer() -> None:
    """The scheduler extender."""


@scorer.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Settings file (YAML, docs/scorer.md); flags override it.",
)
@click.option("--host", help="Address to listen on [default: 0.0.0.0].")
@click.option("--port", type=int, help="Port to listen on [default: 8888].")
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="kubeconfig to reach the API server [default: in-cluster, else ~/.kube/config].",
)
@click.option(
    "--standalone",
    is_flag=True,
    help="No API server: nodes come in the requests, and only this extender's own binds "
    "count as allocations (for trials and `gpulet demo`).",
)
@click.option("--gpu-slots", type=int, help="Slots per GPU, as the agents advertise [100].")
@click.option("--rdma-slots", type=int, help="Slots per RDMA port, as the agents advertise [100].")
@click.option("-v", "--verbose", is_flag=True, help="Log every request.")
@user_errors
def serve(
    config_file: Path | None,
    host: str | None,
    port: int | None,
    kubeconfig: Path | None,
    standalone: bool,
    gpu_slots: int | None,
    rdma_slots: int | None,
    verbose: bool,
) -> None:
    """Serve filter, prioritize and bind to kube-scheduler until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    settings = load_config(config_file) if config_file else ScorerConfig()
    settings = settings.overridden(host=host, port=port, gpu_slots=gpu_slots, rdma_slots=rdma_slots)
    kube = None if standalone else kube_configuration(kubeconfig)
    app = build(settings, kube)
    done = until_signalled()
    app.start()
    click.echo(
        f"gpulet scorer serving on {settings.host}:{app.server.port}"
        f" ({'standalone' if standalone else 'watching the API server'})",
        err=True,
    )
    done.wait()
    app.stop()
