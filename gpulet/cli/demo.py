"""`gpulet demo`: the whole path on simulated nodes (gpulet.demo)."""

from __future__ import annotations

import logging

import click

from gpulet.cli.common import user_errors
from gpulet.demo.run import run_demo


@click.command()
@click.option("--nodes", type=click.IntRange(1, 16), default=2, show_default=True)
@click.option(
    "--node-kind",
    type=click.Choice(["dgx-h100", "dgx-a100", "pcie-16gpu"]),
    default="dgx-h100",
    show_default=True,
    help="Which shipped simulated node every node is.",
)
@click.option("-v", "--verbose", is_flag=True, help="Show the agents' and extender's logs.")
@user_errors
def demo(nodes: int, node_kind: str, verbose: bool) -> None:
    """Run an API server stand-in, simulated GPU nodes (each a kubelet stand-in and a real
    agent) and the extender; place four sample pods and show what each container gets."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.ERROR,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
    )
    raise SystemExit(run_demo(nodes, node_kind, click.echo))
