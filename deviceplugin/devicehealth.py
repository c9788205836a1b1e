"""Which GPUs and RDMA ports are marked unhealthy, and why (`XID 79`, `port DOWN`): the
state the health watchers (`deviceplugin.health`) set and the decisions read."""

from __future__ import annotations

from typing import TypeVar

from deviceplugin.inventory import Inventory, port_down

K = TypeVar("K")


class DeviceHealth:
    """The node's sick devices, with why. Not locked itself: its owner (`DevicePluginCore`)
    holds its own lock around every call."""

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory
        self._gpus: dict[int, str] = {}
        self._nics: dict[str, str] = {}

    def set_gpu(self, index: int, healthy: bool, reason: str | None = None) -> bool:
        """Mark GPU `index` (un)healthy; whether its health changed. ValueError for a GPU the
        node does not have."""
        if index not in self._inventory.gpu_index:
            raise ValueError(f"node {self._inventory.node} has no GPU{index}")
        return _set(self._gpus, index, healthy, reason)

    def set_nic(self, key: str, healthy: bool, reason: str | None = None) -> bool:
        """Mark RDMA port `key` (un)healthy; whether its health changed."""
        if key not in self._inventory.nics:
            raise ValueError(f"node {self._inventory.node} has no RDMA port {key}")
        return _set(self._nics, key, healthy, reason)

    def gpus(self) -> frozenset[int]:
        """The GPUs marked unhealthy, by index."""
        return frozenset(self._gpus)

    def nics(self) -> frozenset[str]:
        """The ports marked unhealthy (ports that are not ACTIVE are not listed)."""
        return frozenset(self._nics)

    def gpu_problem(self, index: int) -> str | None:
        """Why GPU `index` is unhealthy, or None."""
        return self._gpus.get(index)

    def port_problem(self, key: str) -> str | None:
        """Why port `key` cannot be granted (marked unhealthy, or not ACTIVE), or None."""
        return self._nics.get(key) or port_down(self._inventory.nics[key])


def _set(sick: dict[K, str], key: K, healthy: bool, reason: str | None) -> bool:
    was = key in sick
    if healthy:
        sick.pop(key, None)
    else:
        sick[key] = reason or "marked unhealthy"
    return was == healthy
