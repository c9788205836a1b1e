"""PCI function addresses (`0000:07:00.0`) in the spellings sysfs and NVML use."""

from __future__ import annotations

import re
from typing import NamedTuple

_BDF = re.compile(
    r"(?:(?P<domain>[0-9a-fA-F]{4,8}):)?(?P<bus>[0-9a-fA-F]{2}):"
    r"(?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])"
)

MAX_DOMAIN = 0xFFFF_FFFF
MAX_BUS = 0xFF
MAX_DEVICE = 0x1F
MAX_FUNCTION = 7


class Bdf(NamedTuple):
    """Domain, bus, device, function. Orders as the kernel enumerates."""

    domain: int
    bus: int
    device: int
    function: int

    @classmethod
    def parse(cls, text: str) -> Bdf:
        """Read `DDDD:BB:DD.F` or `BB:DD.F` (domain 0), any case; ValueError otherwise."""
        m = _BDF.fullmatch(text.strip())
        if not m:
            raise ValueError(f"not a PCI address: {text!r} (want DDDD:BB:DD.F, e.g. 0000:07:00.0)")
        dev = int(m["dev"], 16)
        if dev > MAX_DEVICE:
            raise ValueError(f"PCI device number {m['dev']} in {text!r} is above 1f")
        return cls(int(m["domain"] or "0", 16), int(m["bus"], 16), dev, int(m["fn"]))

    def __str__(self) -> str:
        """The sysfs spelling: lower case, 4-digit domain (more digits when needed)."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}.{self.function}"

    def nvml(self) -> str:
        """NVML's spelling: upper case, 8-digit domain (`00000000:07:00.0`)."""
        return f"{self.domain:08X}:{self.bus:02X}:{self.device:02X}.{self.function}"


def host_bridge_name(domain: int, bus: int) -> str:
    """The sysfs directory of a root complex: `pci0000:00`."""
    return f"pci{domain:04x}:{bus:02x}"
