"""The `gpulet` command line: a thin layer that reads options, calls the agent, the
scorer or the topology core, and prints. Nothing imports it."""

from __future__ import annotations

import click

from gpulet import __version__
from gpulet.cli.agent import agent
from gpulet.cli.demo import demo
from gpulet.cli.limiter import limiter
from gpulet.cli.node import node
from gpulet.cli.place import place
from gpulet.cli.scorer import scorer


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpulet")
def main() -> None:
    """gpulet: fine GPU slices and topology-aware GPU+NIC placement for Kubernetes."""


main.add_command(agent)
main.add_command(demo)
main.add_command(node)
main.add_command(place)
main.add_command(limiter)
main.add_command(scorer)
