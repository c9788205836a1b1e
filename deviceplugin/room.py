"""Whether an assignment still fits what the node has granted (`gpulet.api.share`'s rule),
and, when it does not, the refusal naming who holds the device. Pure: it reads what is
granted through `Granted` (which `deviceplugin.ledger.Ledger` satisfies)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from deviceplugin.grants import GpuShare, Grant
from deviceplugin.inventory import Inventory
from deviceplugin.resources import PluginConfig
from gpulet.api.share import GpuUsage, Short, Shortfall, shortfall
from gpulet.placement import NodeState
from gpulet.topology import Gpu, Topology

#: The tail of every refusal: the extender placed the pod against an older view.
BEHIND = "; the scheduler extender's view of this node is behind the agent's"


class Granted(Protocol):
    """What is granted, as the decisions read it (`Ledger` has these; an in-memory one does no
    I/O)."""

    def grants(self) -> tuple[Grant, ...]:
        """Every grant in force, in the order granted."""
        ...

    def holders(self, resource: str, device_ids: Iterable[str]) -> Sequence[Grant]:
        """The grants holding any of `device_ids`, each once."""
        ...

    def node_state(
        self, topo: Topology, config: PluginConfig, excluding: Iterable[Grant] = ()
    ) -> NodeState:
        """What the grants (less `excluding`) take of each GPU and port."""
        ...


def shortage(
    inventory: Inventory,
    granted: Granted,
    gpus: Sequence[GpuShare],
    nics: Sequence[str],
    superseded: Sequence[Grant] = (),
) -> str | None:
    """Why an assignment would over-commit what is granted (less what it supersedes), ending
    with `BEHIND`; None when it fits."""
    config = inventory.config
    state = granted.node_state(inventory.topo, config, excluding=superseded)
    for share in gpus:
        gpu = inventory.gpu_index[share.index]
        use = state.gpu(share.index)
        short = shortfall(use, share, config.gpu_slots, gpu.memory_mib)
        if short is not None:
            holders = _Holders(granted, superseded, _on_gpu(share.index))
            problem = _problem(
                short, share, use=use, gpu=gpu, holders=holders, slots=config.gpu_slots
            )
            return f"{problem}{BEHIND}"
    for key in nics:
        if state.nic_slots.get(key, 0) + 1 > config.rdma_slots:
            holders = _Holders(granted, superseded, _on_port(key))
            return (
                f"all {config.rdma_slots} slots of RDMA port {key} are granted ({holders}){BEHIND}"
            )
    return None


def _problem(
    short: Shortfall, share: GpuShare, *, use: GpuUsage, gpu: Gpu, holders: _Holders, slots: int
) -> str:
    """Why an assigned share does not fit what is granted, naming who holds it."""
    name = f"GPU{gpu.index}"
    match short.short:
        case Short.HELD_WHOLE:
            return f"{name} is held whole by {holders}"
        case Short.IN_USE:
            return f"the assignment gives {name} whole, but {holders} has a slice of it"
        case Short.SLOTS:
            return f"all {slots} slots of {name} are granted"
        case Short.CORE:
            return (
                f"the assignment gives {share.core}% of {name}'s core, but {use.core}% is "
                f"already granted ({holders})"
            )
        case Short.MEMORY:
            return (
                f"the assignment gives {share.memory_mib} MiB of {name}, but "
                f"{use.memory_mib} of its {gpu.memory_mib} MiB are already granted ({holders})"
            )
        case Short.IDLE_CORE | Short.IDLE_MEMORY:  # the node gives `shortfall` no idle room
            return f"{name} has {short}"


class _Holders:
    """Who holds a device (the grants `holds`), named only when a refusal is written: finding
    them walks every grant."""

    def __init__(
        self, granted: Granted, excluding: Sequence[Grant], holds: Callable[[Grant], bool]
    ) -> None:
        self._granted, self._excluding, self._holds = granted, excluding, holds

    def __str__(self) -> str:
        return ", ".join(
            who(g) for g in self._granted.grants() if g not in self._excluding and self._holds(g)
        )


def _on_gpu(index: int) -> Callable[[Grant], bool]:
    return lambda grant: any(s.index == index for s in grant.gpus)


def _on_port(key: str) -> Callable[[Grant], bool]:
    return lambda grant: key in grant.nics


def who(grant: Grant) -> str:
    """The holder of a grant, as a refusal names it."""
    if grant.pod_uid is None:
        return "a standalone container"
    return f"pod {grant.pod_uid} container {grant.container!r}"
