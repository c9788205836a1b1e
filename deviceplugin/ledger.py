"""What the device plugin has granted: no device ID twice, the placement engine's view of
it kept up to date with every change, and its checkpoint on disk (`deviceplugin.checkpoint`:
a snapshot plus a journal, so that recording an Allocate is an append).

A checkpoint that cannot be read back is moved aside (never deleted) and reported as
CheckpointError; the caller starts empty and rebuilds from kubelet's pod-resources List.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Iterable, Mapping, Set
from pathlib import Path

from deviceplugin import checkpoint
from deviceplugin.checkpoint import CheckpointError
from deviceplugin.grants import GpuShare, Grant
from deviceplugin.resources import PluginConfig
from gpulet.api.share import IDLE, GpuUsage
from gpulet.placement import NodeState
from gpulet.topology import Topology

__all__ = [
    "CheckpointError",
    "DoubleGrantError",
    "GpuShare",
    "Grant",
    "Ledger",
    "node_state",
]


class DoubleGrantError(Exception):
    """A device ID granted while another grant holds it."""


def node_state(grants: Iterable[Grant], topo: Topology, config: PluginConfig) -> NodeState:
    """The placement engine's view of `grants`: what each GPU and port has given out, as
    `gpulet.api.share` counts it. Totals are summed, so an over-commit shows."""
    tally = _Tally(config.gpu_slots, topo)
    for grant in grants:
        tally.count(grant, 1)
    return tally.state()


class _Tally:
    """What each GPU (by index) and each port has given out, kept with every change, so the
    engine's view costs the node's size, not the number of grants. Charges depend on the
    slots per GPU and each GPU's memory: a tally is for one of each."""

    def __init__(self, slots_per_gpu: int, topo: Topology) -> None:
        self.key = _tally_key(slots_per_gpu, topo)
        self.slots_per_gpu = slots_per_gpu
        self.memory = {g.index: g.memory_mib for g in topo.gpus}
        self.gpus: dict[int, GpuUsage] = {}
        self.nics: dict[str, int] = {}

    def copy(self) -> _Tally:
        other = copy.copy(self)
        other.gpus, other.nics = dict(self.gpus), dict(self.nics)
        return other

    def count(self, grant: Grant, sign: int) -> None:
        for share in grant.gpus:
            charge = share.charge(self.slots_per_gpu, self.memory.get(share.index, 0))
            use = self.gpus.get(share.index, IDLE)
            use = use.plus(charge) if sign > 0 else use.minus(charge)
            if use.idle:
                self.gpus.pop(share.index, None)
            else:
                self.gpus[share.index] = use
        for key in grant.nics:
            left = self.nics.get(key, 0) + sign
            if left:
                self.nics[key] = left
            else:
                self.nics.pop(key, None)

    def state(self) -> NodeState:
        return NodeState(gpus=dict(self.gpus), nic_slots=dict(self.nics))


def _tally_key(slots_per_gpu: int, topo: Topology) -> tuple[int, tuple[tuple[int, int], ...]]:
    return slots_per_gpu, tuple((g.index, g.memory_mib) for g in topo.gpus)


class Ledger:
    """The grants in force, thread-safe. Every device ID is held by one grant at most."""

    #: The journal is folded into a new snapshot once it has this many more lines than
    #: there are grants (a snapshot costs about as much as that many appends).
    journal_slack = 64

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self._lock = threading.Lock()
        self._grants: dict[Grant, None] = {}  # in the order granted
        self._held: dict[tuple[str, str], Grant] = {}
        #: Built by the first `node_state` (which knows the slots per GPU and the GPUs).
        self._tally: _Tally | None = None
        #: The checkpoint this ledger last wrote whole, its generation and journal length;
        #: and the changes made since it last wrote anything.
        self._saved_to: Path | None = None
        self._generation = ""
        self._journal_lines = 0
        self._unsaved: list[tuple[str, Grant]] = []
        for grant in grants:
            self.add(grant)

    def grants(self) -> tuple[Grant, ...]:
        with self._lock:
            return tuple(self._grants)

    def add(self, grant: Grant) -> None:
        with self._lock:
            if len(set(grant.device_ids)) != len(grant.device_ids):
                raise DoubleGrantError(f"a grant lists a device ID twice: {grant.device_ids}")
            for device in grant.device_ids:
                holder = self._held.get((grant.resource, device))
                if holder is not None:
                    raise DoubleGrantError(
                        f"{grant.resource} device ID {device} is already granted to "
                        f"{_owner(holder)}"
                    )
            if grant in self._grants:
                return  # a spent grant (no IDs) recorded already: one record is enough
            self._grants[grant] = None
            for device in grant.device_ids:
                self._held[(grant.resource, device)] = grant
            if self._tally is not None:
                self._tally.count(grant, 1)
            self._unsaved.append((checkpoint.ADD, grant))

    def remove(self, grant: Grant) -> bool:
        """Drop one grant; whether it was there."""
        with self._lock:
            if grant not in self._grants:
                return False
            self._forget(grant)
            return True

    def remove_pod(self, uid: str) -> list[Grant]:
        """Drop every grant of pod `uid`; what was dropped."""
        with self._lock:
            return self._drop(lambda g: g.pod_uid == uid)

    def holders(self, resource: str, device_ids: Iterable[str]) -> list[Grant]:
        """The grants that hold any of `device_ids`, each once."""
        with self._lock:
            found = (self._held.get((resource, d)) for d in device_ids)
            return list(dict.fromkeys(g for g in found if g is not None))

    def node_state(
        self, topo: Topology, config: PluginConfig, excluding: Iterable[Grant] = ()
    ) -> NodeState:
        """What the grants use (less `excluding`, grants of this ledger), by the engine."""
        with self._lock:
            tally = self._tally
            if tally is None or tally.key != _tally_key(config.gpu_slots, topo):
                tally = self._tally = _Tally(config.gpu_slots, topo)
                for grant in self._grants:
                    tally.count(grant, 1)
            excluded = [g for g in excluding if g in self._grants]
            if excluded:
                tally = tally.copy()
                for g in excluded:
                    tally.count(g, -1)
            return tally.state()

    def reconcile(
        self, live: Mapping[str, Set[str]], listed_at: float | None = None
    ) -> list[Grant]:
        """Drop the grants none of whose device IDs kubelet still lists as in use (`live`:
        per resource, from pod-resources List; a resource not there has none in use), and
        the spent grants of pods that have nothing else left. Grants made after
        `listed_at` are kept: that List may predate them. Returns what was dropped."""

        def gone(g: Grant) -> bool:
            if listed_at is not None and g.granted_at > listed_at:
                return False
            return not g.spent and live.get(g.resource, set()).isdisjoint(g.device_ids)

        with self._lock:
            dropped = self._drop(gone)
            kept_pods = {g.pod_uid for g in self._grants if not g.spent}
            dropped += self._drop(lambda g: g.spent and g.pod_uid not in kept_pods)
            return dropped

    def _drop(self, doomed: Callable[[Grant], bool]) -> list[Grant]:
        out = [g for g in self._grants if doomed(g)]
        for g in out:
            self._forget(g)
        return out

    def _forget(self, grant: Grant) -> None:
        del self._grants[grant]
        for device in grant.device_ids:
            del self._held[(grant.resource, device)]
        if self._tally is not None:
            self._tally.count(grant, -1)
        self._unsaved.append((checkpoint.REMOVE, grant))

    # ---- the checkpoint --------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Bring the checkpoint at `path` up to date: the changes since the last save are
        appended to its journal, or, when this ledger has not written `path` whole yet, the
        journal has grown long, or a write failed, a new snapshot replaces both."""
        with self._lock:
            changes, self._unsaved = self._unsaved, []
            if not changes and self._saved_to == path:
                return
            lines = self._journal_lines + len(changes)
            try:
                if self._saved_to == path and lines <= len(self._grants) + self.journal_slack:
                    checkpoint.append_journal(path, self._generation, changes)
                    self._journal_lines = lines
                    return
                self._saved_to = None
                generation = checkpoint.new_generation()
                checkpoint.write_snapshot(path, self._grants, generation)
            except BaseException:
                self._saved_to = None  # what is on disk is uncertain: the next save is whole
                raise
            self._saved_to, self._generation, self._journal_lines = path, generation, 0

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """The ledger saved at `path` (its snapshot, then its journal); empty when there is
        none. Damaged files are moved aside and reported as CheckpointError."""
        stored = checkpoint.read(path)
        ledger = cls()
        if stored is None:
            return ledger
        try:
            for grant in stored.grants:
                ledger.add(grant)
            for n, (op, grant) in enumerate(stored.changes, start=1):
                if op == checkpoint.ADD:
                    ledger.add(grant)
                elif not ledger.remove(grant):
                    raise DoubleGrantError(f"change {n} of the journal removes an unknown grant")
        except DoubleGrantError as e:
            raise checkpoint.damaged(path, str(e)) from None
        ledger._unsaved = []
        return ledger


def _owner(grant: Grant) -> str:
    if grant.pod_uid is None:
        return "another container"
    return f"pod {grant.pod_uid} container {grant.container}"
