"""`gpulet place`: run the placement engine on one node, as the extender would."""

from __future__ import annotations

import json
from typing import IO

import click

from gpulet.cli.common import print_json, read_node, simulate_option, user_errors
from gpulet.cli.render import cost_lines
from gpulet.placement import Capacity, GpuPolicy, NodeState, Placer, Request, TopologyPolicy
from gpulet.placement.serialize import StateError, placement_to_json, state_from_json


@click.command()
@simulate_option
@click.option(
    "--gpus",
    type=click.IntRange(min=0),
    default=1,
    show_default=True,
    help="GPUs (each on a different physical GPU).",
)
@click.option("--core", type=int, help="Percent of each GPU's compute, 1-100 (a slice).")
@click.option(
    "--memory", "memory_mib", type=int, metavar="MIB", help="MiB of each GPU's memory (a slice)."
)
@click.option("--rdma", type=click.IntRange(min=0), default=0, show_default=True, help="RDMA NICs.")
@click.option(
    "--policy",
    type=click.Choice([p.value for p in TopologyPolicy]),
    default="best-effort",
    show_default=True,
    help="gpulet.io/topology-policy.",
)
@click.option(
    "--gpu-policy",
    type=click.Choice([p.value for p in GpuPolicy]),
    default="binpack",
    show_default=True,
    help="gpulet.io/gpu-policy.",
)
@click.option(
    "--allocated",
    type=click.File("r"),
    help="JSON of what is already allocated (schema: docs/cli.md).",
)
@click.option(
    "--gpu-slots",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Slots advertised per GPU.",
)
@click.option(
    "--nic-slots",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="Slots advertised per RDMA NIC.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@user_errors
def place(
    simulate: str | None,
    gpus: int,
    core: int | None,
    memory_mib: int | None,
    rdma: int,
    policy: str,
    gpu_policy: str,
    allocated: IO[str] | None,
    gpu_slots: int,
    nic_slots: int,
    as_json: bool,
) -> None:
    """Which GPUs and NICs of a node a container would get, and how good that choice is.

    Exits 1 when the request does not fit, with the reason."""
    topo = read_node(simulate)
    state = NodeState()
    if allocated is not None:
        try:
            doc = json.load(allocated)
        except json.JSONDecodeError as e:
            raise StateError(f"{allocated.name}: not JSON: {e}") from None
        state = state_from_json(doc, topo)
    request = Request(
        gpus=gpus,
        core=core,
        memory_mib=memory_mib,
        rdma=rdma,
        topology=TopologyPolicy(policy),
        gpu_policy=GpuPolicy(gpu_policy),
    )
    result = Placer(topo, Capacity(gpu_slots, nic_slots)).place(request, state)
    doc_out = placement_to_json(result, topo)
    if as_json:
        print_json(doc_out)
    elif not result.fits:
        click.echo(f"does not fit on {topo.node}: {doc_out['reason']}")
    else:
        click.echo(f"node {topo.node}: score {doc_out['score']}")
        for g in doc_out["gpus"]:
            whole = "  (whole)" if g["exclusive"] else ""
            click.echo(
                f"  GPU{g['index']}  {g['uuid']}  {g['core']}% core  {g['memory_mib']} MiB"
                f"{whole}  NUMA {g['numa']}  switch {g['switch'] or '-'}"
            )
        for n in doc_out["nics"]:
            netdev, switch = n["netdev"] or "-", n["switch"] or "-"
            click.echo(f"  {n['name']}  {netdev}  NUMA {n['numa']}  switch {switch}")
        click.echo(f"  NUMA nodes: {', '.join(map(str, doc_out['numa']))}")
        terms = cost_lines(doc_out["cost"], gpu_policy)
        if not terms:
            click.echo("  cost: none")
        else:
            click.echo("  cost (lower is better; --json has the engine's terms):")
            for term in terms:
                click.echo(f"    {term}")
    if not result.fits:
        raise SystemExit(1)
