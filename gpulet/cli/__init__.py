"""The `gpulet` command line: a thin layer that reads options, calls the agent, the
scorer or the topology core, and prints. Nothing imports it.

Each command's module is imported only when that command runs: the node agent is a
long-lived process on every GPU node, and importing the extender, the demo and their
stand-ins into it would cost memory for nothing.
"""

from __future__ import annotations

import importlib

import click

from gpulet import __version__

#: command -> "module:attribute" of its click command.
COMMANDS = {
    "agent": "gpulet.cli.agent:agent",
    "demo": "gpulet.cli.demo:demo",
    "limiter": "gpulet.cli.limiter:limiter",
    "node": "gpulet.cli.node:node",
    "place": "gpulet.cli.place:place",
    "scorer": "gpulet.cli.scorer:scorer",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpulet")
def main() -> None:
    """gpulet: fine GPU slices and topology-aware GPU+NIC placement for Kubernetes."""
