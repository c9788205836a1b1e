"""`gpulet limiter ...`: a container's limits and accounting region, and the limiter library."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import click

from gpulet.cli.common import print_json, user_errors
from gpulet.cli.render import usage_text
from native import library_path
from native.region import (
    LIMITS_FILE,
    MAX_DEVICES,
    DeviceLimit,
    Limits,
    RegionError,
    Usage,
    check_limits,
    inspect,
    read_limits,
    setup,
)


def _device(spec: str) -> DeviceLimit:
    """UUID:MEMORY_MIB:CORE_PERCENT, checked against the limits file's rules."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise click.BadParameter(f"{spec!r}: expected UUID:MEMORY_MIB:CORE_PERCENT")
    uuid, memory, core = parts
    if not (memory.isascii() and memory.isdigit() and core.isascii() and core.isdigit()):
        raise click.BadParameter(f"{spec!r}: MEMORY_MIB and CORE_PERCENT must be whole numbers")
    device = DeviceLimit(uuid, int(memory), int(core))
    try:
        check_limits(Limits((device,)))
    except RegionError as e:
        raise click.BadParameter(f"{spec!r}: {e}") from None
    return device


def _devices(ctx: click.Context, param: click.Parameter, specs: tuple[str, ...]) -> Limits:
    return Limits(tuple(_device(s) for s in specs))


@click.group()
def limiter() -> None:
    """A container's limits and accounting region (docs/limiter.md)."""


@limiter.command(name="setup")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--device",
    "limits",
    metavar="UUID:MEMORY_MIB:CORE_PERCENT",
    multiple=True,
    callback=_devices,
    required=True,
    help="A GPU the container may use, with its memory cap and compute share (repeat, in "
    f"the container's device order; at most {MAX_DEVICES}).",
)
@user_errors
def setup_command(directory: Path, limits: Limits) -> None:
    """Write DIRECTORY/limits (read-only) and a fresh DIRECTORY/region, as the agent does."""
    setup(directory, limits)


@limiter.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--json", "as_json", is_flag=True, help="Print JSON (schema: docs/cli.md, `limiter usage`)."
)
@user_errors
def usage(directory: Path, as_json: bool) -> None:
    """What a container uses: per device and per attached process.

    The region is read as the agent reads it, as untrusted input (docs/limiter.md): slots of
    processes that have died are left out, and what disagrees with DIRECTORY/limits is
    printed on stderr, one `warning: region: ...` line each."""
    try:
        granted: Limits | None = read_limits(directory / LIMITS_FILE)
    except RegionError:
        granted = None  # the region is still checked against itself
    seen = inspect(directory, granted)
    if seen.usage is None:
        raise RegionError(seen.problems[0])
    for problem in seen.problems:
        click.echo(f"warning: region: {problem}", err=True)
    snapshot = seen.usage
    if as_json:
        print_json(usage_json(snapshot))
    else:
        click.echo(usage_text(snapshot))


@limiter.command()
@user_errors
def path() -> None:
    """The absolute path of the limiter library (built by `make native`)."""
    click.echo(str(library_path()))


def usage_json(usage: Usage) -> dict[str, Any]:
    return {
        "generation": usage.generation,
        "devices": [{"index": i, **dataclasses.asdict(d)} for i, d in enumerate(usage.devices)],
        "processes": [
            {**dataclasses.asdict(p), "used_bytes": list(p.used_bytes)} for p in usage.processes
        ],
    }
