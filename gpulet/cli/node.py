"""`gpulet node ...`: what gpulet sees on a node."""

from __future__ import annotations

import http.client
import json
import os
import urllib.parse
from pathlib import Path

import click

from gpulet.cli.common import print_json, read_node, simulate_option, user_errors
from gpulet.cli.render import allocations_text, topology_text
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


@node.command()
@click.option(
    "--agent",
    "agent_url",
    default="http://127.0.0.1:9400",
    show_default=True,
    help="The node agent's metrics address (its --metrics-port).",
)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A file holding the bearer token to send, e.g. a pod's ServiceAccount token "
    "[default: $GPULET_TOKEN, else none]. It is sent in the clear (plain HTTP).",
)
@click.option("--json", "as_json", is_flag=True, help="The agent's document (docs/cli.md).")
@user_errors
def allocations(agent_url: str, token_file: Path | None, as_json: bool) -> None:
    """What each GPU and RDMA port is serving, per container, with live usage (from the
    running agent)."""
    url = urllib.parse.urlsplit(agent_url)
    if url.scheme != "http" or not url.hostname:
        raise click.UsageError(f"--agent must be http://HOST:PORT, got {agent_url!r}")
    token = _token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=10)
        conn.request("GET", "/allocations", headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        conn.close()
    except OSError as e:
        raise click.ClickException(f"cannot reach the agent at {agent_url}: {e}") from None
    if resp.status != 200:
        raise click.ClickException(
            f"the agent at {agent_url} answered HTTP {resp.status}{_why(resp.status, token)}"
        )
    doc = json.loads(body)
    if as_json:
        print_json(doc)
        return
    click.echo(allocations_text(doc))


def _token(token_file: Path | None) -> str | None:
    """--token-file's token, else $GPULET_TOKEN; none unless asked for (a token is never
    sent to an agent unbidden, the pod's own included)."""
    text = token_file.read_text() if token_file is not None else os.environ.get("GPULET_TOKEN")
    token = (text or "").strip()
    if len(token.split()) > 1:
        raise click.ClickException("the token holds whitespace: not a bearer token")
    return token or None


def _why(status: int, token: str | None) -> str:
    if status == 401:
        return (
            ": it wants a bearer token its API server accepts (--token-file or $GPULET_TOKEN)"
            if token is None
            else ": the API server did not accept the token"
        )
    if status == 403:
        return ": the token's user may not GET /allocations (a ClusterRole's nonResourceURLs)"
    if status == 503:
        return ": it could not ask its API server about the token"
    return ""
