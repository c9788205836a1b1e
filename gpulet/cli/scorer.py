"""`gpulet scorer serve`: the scheduler extender."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from gpulet.cli.common import kube_configuration, until_signalled, user_errors
from scorer.app import build
from scorer.config import ScorerConfig, load_config

PORT = click.IntRange(0, 65535)


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
@click.option("--port", type=PORT, help="Port to listen on (0: a free one) [default: 8888].")
@click.option(
    "--health-host", help="Address of the health listener (--health-port) [default: 0.0.0.0]."
)
@click.option(
    "--health-port",
    type=PORT,
    help="Also serve GET /healthz and GET /metrics, and nothing else, over plain HTTP on this "
    "port, for kubelet's probes and Prometheus [default: none].",
)
@click.option(
    "--tls-cert-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Serve HTTPS with this certificate (PEM); needs --tls-key-file and --client-ca-file.",
)
@click.option(
    "--tls-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The private key of --tls-cert-file (PEM).",
)
@click.option(
    "--client-ca-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Require a client certificate signed by this CA (PEM) on every HTTPS connection.",
)
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
@click.option(
    "--lease-namespace",
    help="The namespace of the agents' heartbeat Leases, gpulet's install namespace "
    "[default: $POD_NAMESPACE, else kube-system].",
)
@click.option("-v", "--verbose", is_flag=True, help="Log every request.")
@user_errors
def serve(
    config_file: Path | None,
    host: str | None,
    port: int | None,
    health_host: str | None,
    health_port: int | None,
    tls_cert_file: Path | None,
    tls_key_file: Path | None,
    client_ca_file: Path | None,
    kubeconfig: Path | None,
    standalone: bool,
    gpu_slots: int | None,
    rdma_slots: int | None,
    lease_namespace: str | None,
    verbose: bool,
) -> None:
    """Serve filter, prioritize and bind to kube-scheduler until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    settings = load_config(config_file) if config_file else ScorerConfig()
    settings = settings.overridden(
        host=host,
        port=port,
        health_host=health_host,
        health_port=health_port,
        tls_cert_file=tls_cert_file,
        tls_key_file=tls_key_file,
        client_ca_file=client_ca_file,
        gpu_slots=gpu_slots,
        rdma_slots=rdma_slots,
        lease_namespace=lease_namespace,
    )
    kube = None if standalone else kube_configuration(kubeconfig)
    app = build(settings, kube)
    done = until_signalled()
    app.start()
    mode = "standalone" if standalone else "watching the API server"
    if settings.tls_cert_file is not None:
        mode += "; HTTPS, client certificate required"
    line = f"gpulet scorer serving on {settings.host}:{app.server.port} ({mode})"
    if app.server.health_port is not None:
        line += f", /healthz and /metrics on {settings.health_host}:{app.server.health_port}"
    click.echo(line, err=True)
    done.wait()
    app.stop()
