"""Typed reads of one YAML mapping, each error naming the place (`pcie[0].devices[1]`)."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any

from agent.simnode.bdf import Bdf
from agent.simnode.errors import SimulationError
from gpulet.topology.cpulist import parse_cpulist

_SIZE = re.compile(r"(?P<n>\d+)\s*(?P<unit>kB|KiB|MiB|GiB|TiB)")
_UNIT_KIB = {"kB": 1, "KiB": 1, "MiB": 1024, "GiB": 1024**2, "TiB": 1024**3}
_CPULIST_PART = re.compile(r"\d+(-\d+)?")


def describe(value: object) -> str:
    """A value as an error message shows it."""
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def as_list(value: object, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise SimulationError(f"{where}: expected a list, got {describe(value)}")
    return value


def as_int(value: object, where: str, *, lo: int = 0, hi: int | None = None) -> int:
    """An integer (or `0x..` text) within [lo, hi]."""
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().lower().startswith("0x"):
        try:
            number = int(value.strip(), 16)
        except ValueError:
            number = None
    if number is None:
        raise SimulationError(f"{where}: expected an integer, got {describe(value)}")
    if hi is None and number < lo:
        raise SimulationError(f"{where}: {number} is out of range (want {lo} or more)")
    if hi is not None and not lo <= number <= hi:
        if hi >= 0xFF and number >= 0:
            raise SimulationError(f"{where}: {number:#x} is out of range (want {lo:#x}..{hi:#x})")
        raise SimulationError(f"{where}: {number} is out of range (want {lo}..{hi})")
    return number


def as_text(value: object, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise SimulationError(f"{where}: expected text, got {describe(value)}")
    text = str(value).strip()
    if not text:
        raise SimulationError(f"{where}: must not be empty")
    return text


def as_bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise SimulationError(f"{where}: expected true or false, got {describe(value)}")
    return value


def as_bdf(value: object, where: str) -> Bdf:
    if not isinstance(value, str):
        raise SimulationError(f"{where}: expected a PCI address like 0000:07:00.0, got {value!r}")
    try:
        return Bdf.parse(value)
    except ValueError as err:
        raise SimulationError(f"{where}: {err}") from None


def as_cpus(value: object, where: str) -> tuple[int, ...]:
    """A kernel cpulist (`0-15,128-143`) or a single CPU number."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise SimulationError(
            f"{where}: expected a cpulist like 0-15,128-143, got {describe(value)}"
        )
    try:
        cpus = parse_cpulist(value)
    except ValueError as err:
        raise SimulationError(f"{where}: {err}") from None
    if not cpus:
        raise SimulationError(f"{where}: the cpulist is empty")
    return cpus


def as_kib(value: object, where: str) -> int:
    """A size with its unit (`128 GiB`, `81920 MiB`, `1056690176 kB`), in KiB."""
    m = _SIZE.fullmatch(value.strip()) if isinstance(value, str) else None
    if not m:
        raise SimulationError(
            f"{where}: expected a size with a unit (kB, KiB, MiB, GiB, TiB), got {describe(value)}"
        )
    kib = int(m["n"]) * _UNIT_KIB[m["unit"]]
    if kib == 0:
        raise SimulationError(f"{where}: the size must not be zero")
    return kib


class Fields:
    """One mapping of the spec. Unknown keys are refused up front, with the known ones listed."""

    def __init__(
        self,
        value: object,
        where: str,
        known: Collection[str],
        required: Collection[str] = (),
    ) -> None:
        if not isinstance(value, dict):
            raise SimulationError(f"{where}: expected a mapping, got {describe(value)}")
        for key in value:
            if key not in known:
                raise SimulationError(f"{where}: unknown key {key!r}{_hint(key, known)}")
        for key in required:
            if key not in value:
                raise SimulationError(f"{where}: missing key {key!r}")
        self.data: dict[str, Any] = value
        self.where = where

    def has(self, key: str) -> bool:
        return key in self.data

    def at(self, key: str) -> str:
        """The place of one key, for messages."""
        return f"{self.where}.{key}"

    def get(self, key: str) -> Any:
        return self.data.get(key)


def _hint(key: object, known: Collection[str]) -> str:
    if isinstance(key, str) and _CPULIST_PART.fullmatch(key):
        return ' (inside {...} a cpulist needs quotes: cpus: "0-15,128-143")'
    return f" (known: {', '.join(sorted(known))})"
