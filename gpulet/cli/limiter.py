"""`gpulet limiter ...`: a container's limits and accounting region, and the limiter library."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import click

from gpulet.cli.common import print_json, user_errors
from gpulet.cli.render import usage_text
from native import library_path
from native.region import (
    LIMITS_FILE,
    MAX_DEVICES,
    MAX_MIB,
    DeviceLimit,
    Limits,
    RegionError,
    Usage,
    check_limits,
    inspect,
    read_limits,
    setup,
)

#: A GPU's or a MIG device's UUID as NVML spells it: GPU- or MIG-, then 8-4-4-4-12 hex digits.
_NVML_UUID = re.compile(
    r"(GPU|MIG)-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})", re.I | re.A
)
_UUID_FORM = (
    "GPU- or MIG- followed by 8-4-4-4-12 hex digits "
    "(GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx, as `nvidia-smi -L` prints it)"
)


def _uuid(uuid: str) -> str:
    """A GPU or MIG device UUID, spelt as NVML and CUDA spell it (the prefix upper case, the
    hex digits lower case: the limiter compares UUIDs exactly); ValueError saying what is
    wrong with it."""
    if not uuid:
        raise ValueError(f"the UUID is empty; expected {_UUID_FORM}")
    if uuid[:8].upper() == "MIG-GPU-":
        raise ValueError(
            f"UUID {uuid!r} is in the MIG-GPU-<uuid>/<gi>/<ci> form of older drivers, which "
            "a limits file cannot hold; give the MIG device's MIG- UUID (MIG- followed by "
            "8-4-4-4-12 hex digits, as `nvidia-smi -L` prints it on newer drivers)"
        )
    if uuid[:4].upper() not in ("GPU-", "MIG-"):
        raise ValueError(f"UUID {uuid!r} does not start with GPU- or MIG-; expected {_UUID_FORM}")
    match = _NVML_UUID.fullmatch(uuid)
    if match is None:
        raise ValueError(f"UUID {uuid!r} is not {_UUID_FORM}")
    return f"{match[1].upper()}-{match[2].lower()}"


def _count(name: str, text: str, bounds: str) -> int:
    """A whole number >= 0 (ValueError otherwise, naming the field and its `bounds`)."""
    if text.isascii() and text.isdigit():
        return int(text)
    if text[:1] == "-" and text[1:].isascii() and text[1:].isdigit() and int(text[1:]) > 0:
        raise ValueError(f"{name} {text} is negative: it must be {bounds}")
    raise ValueError(f"{name} {text!r} is not a whole number: it must be {bounds}")


def _device(spec: str) -> DeviceLimit:
    """UUID:MEMORY_MIB:CORE_PERCENT, checked against the limits file's rules."""
    parts = spec.split(":")
    if len(parts) != 3:
        raise click.BadParameter(f"{spec!r}: expected UUID:MEMORY_MIB:CORE_PERCENT")
    try:
        uuid = _uuid(parts[0])
        memory = _count("MEMORY_MIB", parts[1], f"1..{MAX_MIB} (MiB)")
        core = _count("CORE_PERCENT", parts[2], "1..100 (percent)")
    except ValueError as e:
        raise click.BadParameter(f"{spec!r}: {e}") from None
    device = DeviceLimit(uuid, memory, core)
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
