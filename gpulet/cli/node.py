"""`gpulet node ...`: what gpulet sees on a node."""

from __future__ import annotations

import click

from gpulet.cli.common import print_json, read_node, simulate_option, user_errors
from gpulet.cli.render import topology_text
from gpulet.topology.document import to_document


@click.group()
def node() -> None:
    """Inspect a node's hardware as gpulet sees it."""


@node.command()
@simulate_option
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the topology document (schema: docs/topology-document.md).",
)
@user_errors
def inspect(simulate: str | None, as_json: bool) -> None:
    """GPUs, RDMA NICs, NUMA nodes, PCIe switches and the link matrix of a node.

    The --json document is the one the agent publishes on the Node
    (annotation gpulet.io/topology)."""
    topo = read_node(simulate)
    if as_json:
        print_json(to_document(topo))
    else:
        click.echo(topology_text(topo))
