"""The one error discovery raises for hardware it cannot read."""

from __future__ import annotations


class DiscoveryError(RuntimeError):
    """The sysfs tree (or what NVML says about it) cannot be turned into a topology.

    The message is one line naming the file or device at fault.
    """
