"""Readers for the spec's device attributes: each turns a YAML value into the form the
kernel or NVML shows, or raises SimulationError naming the place."""

from __future__ import annotations

import re
from typing import Any

from agent.simnode.errors import SimulationError
from agent.simnode.fields import as_int, as_kib, as_list, as_text, describe

#: Logical IB port states (`ports/N/state`), by the name a spec uses.
PORT_STATES = {"down": "DOWN", "init": "INIT", "armed": "ARMED", "active": "ACTIVE"}
LINK_LAYERS = {"infiniband": "InfiniBand", "ethernet": "Ethernet"}
OPERSTATES = ("up", "down", "unknown", "dormant", "lowerlayerdown", "notpresent", "testing")

#: 4X rates a spec may give as a bare number of Gb/s, and the kernel's speed name for each.
FOUR_X_SPEEDS = {
    10: "SDR",
    20: "DDR",
    40: "QDR",
    56: "FDR",
    100: "EDR",
    200: "HDR",
    400: "NDR",
    800: "XDR",
}
_RATE = re.compile(r"\d+(\.5)? Gb/sec \((1|2|4|8|12)X (SDR|DDR|QDR|FDR10|FDR|EDR|HDR|NDR|XDR)\)")
_UUID = re.compile(r"GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)
#: What the kernel refuses in an interface name (dev_valid_name), besides length.
_BAD_IFNAME = re.compile(r"[/:\s]")
IFNAMSIZ = 16


def pci_id(value: object, where: str) -> int:
    """A 16-bit vendor or device id (`0x10de`)."""
    return as_int(value, where, hi=0xFFFF)


def pci_class(value: object, where: str) -> int:
    """A 24-bit class code (`0x030200`)."""
    return as_int(value, where, hi=0xFFFFFF)


def size_bytes(value: object, where: str) -> int:
    return as_kib(value, where) * 1024


def port_state(value: object, where: str) -> str:
    name = value.lower() if isinstance(value, str) else None
    if name not in PORT_STATES:
        raise SimulationError(
            f"{where}: unknown port state {describe(value)} (want {', '.join(PORT_STATES)})"
        )
    return PORT_STATES[name]


def link_layer(value: object, where: str) -> str:
    name = value.lower() if isinstance(value, str) else None
    if name not in LINK_LAYERS:
        raise SimulationError(
            f"{where}: unknown link layer {describe(value)} (want InfiniBand or Ethernet)"
        )
    return LINK_LAYERS[name]


def operstate(value: object, where: str) -> str:
    name = value.lower() if isinstance(value, str) else None
    if name not in OPERSTATES:
        raise SimulationError(
            f"{where}: unknown operstate {describe(value)} (want {', '.join(OPERSTATES)})"
        )
    return name


def rate(value: object, where: str) -> str:
    """Gb/s of a 4X link (`400`) or the kernel's text (`100 Gb/sec (2X NDR)`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value not in FOUR_X_SPEEDS:
            known = ", ".join(str(r) for r in FOUR_X_SPEEDS)
            raise SimulationError(
                f"{where}: {value} Gb/s is no 4X InfiniBand rate ({known}); "
                "write the kernel's text instead, e.g. '50 Gb/sec (1X HDR)'"
            )
        return f"{value} Gb/sec (4X {FOUR_X_SPEEDS[value]})"
    if isinstance(value, str) and _RATE.fullmatch(value.strip()):
        return value.strip()
    raise SimulationError(
        f"{where}: expected Gb/s (e.g. 400) or the kernel's rate text "
        f"(e.g. '400 Gb/sec (4X NDR)'), got {describe(value)}"
    )


def netdev_name(value: object, where: str) -> str:
    """An interface name the kernel would accept."""
    name = as_text(value, where)
    if len(name) >= IFNAMSIZ or name in (".", "..") or _BAD_IFNAME.search(name):
        raise SimulationError(
            f"{where}: {name!r} is not a valid interface name "
            f"(at most {IFNAMSIZ - 1} characters, no '/', ':' or spaces)"
        )
    return name


def optional_netdev(value: object, where: str) -> str | None:
    """An interface name, or None where the spec writes `null` (no netdev)."""
    return None if value is None else netdev_name(value, where)


def gpu_uuid(value: object, where: str) -> str:
    text = as_text(value, where)
    if not _UUID.fullmatch(text):
        raise SimulationError(
            f"{where}: {text!r} is not a GPU UUID (want GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)"
        )
    return text


def nvswitch_links(value: object, where: str) -> tuple[int, ...] | int:
    """A total of NVSwitch links, or one count per NVSwitch (`[5, 4, 4, 5]`)."""
    if isinstance(value, list):
        items: list[Any] = as_list(value, where)
        return tuple(as_int(v, f"{where}[{i}]", hi=64) for i, v in enumerate(items))
    return as_int(value, where, hi=64 * 16)
