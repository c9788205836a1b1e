"""What the device plugin has granted, and its checkpoint on disk.

The checkpoint is JSON, replaced atomically (temporary file, fsync, rename, fsync of the
directory) after every change:

    {"version": 1, "grants": [{"resource": "gpulet.io/gpu", "device_ids": ["GPU-...::00"],
      "gpus": [{"uuid": "GPU-...", "index": 3, "core": 100, "memory_mib": 81920,
                "exclusive": true}],
      "nics": [], "pod_uid": "...", "container": "main", "region_dir": "/var/lib/...",
      "granted_at": 1767225600.0}]}

A checkpoint that cannot be read back is renamed `<name>.corrupt-<UTC time>` (never deleted)
and reported as CheckpointError; the caller starts empty and rebuilds from kubelet's
pod-resources List.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Set
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from deviceplugin.resources import PluginConfig
from gpulet.topology import Topology
from scorer.placement import GpuUsage, NodeState

CHECKPOINT_VERSION = 1


class DoubleGrantError(Exception):
    """A device ID granted while another grant holds it."""


class CheckpointError(Exception):
    """A checkpoint that cannot be read; `kept` is where the damaged file was moved."""

    def __init__(self, message: str, kept: Path | None = None) -> None:
        super().__init__(message)
        self.kept = kept


@dataclass(frozen=True)
class GpuShare:
    """What one GPU gives a container."""

    uuid: str
    index: int
    core: int
    memory_mib: int
    #: Held whole: no other container may have any of it.
    exclusive: bool


@dataclass(frozen=True)
class Grant:
    """One Allocate answered. `pod_uid`/`container` are None in standalone mode (kubelet
    does not say whose the devices are). A grant with no device IDs is *spent*: its
    container finished and kubelet gave its devices to a later container of the same pod
    (init containers); it is kept so that the match does not allocate that container again.
    """

    resource: str
    device_ids: tuple[str, ...]
    gpus: tuple[GpuShare, ...] = ()
    nics: tuple[str, ...] = ()
    pod_uid: str | None = None
    container: str | None = None
    region_dir: str | None = None
    #: When it was granted (seconds since the epoch).
    granted_at: float = 0.0

    @property
    def spent(self) -> bool:
        return not self.device_ids

    def spend(self) -> Grant:
        return replace(self, device_ids=(), gpus=(), nics=(), region_dir=None)


def node_state(grants: Iterable[Grant], topo: Topology, config: PluginConfig) -> NodeState:
    """The placement engine's view of `grants`: slots, core and memory per GPU (a whole GPU
    takes all of them), slots per NIC. Totals are summed, so an over-commit shows."""
    memory = {g.index: g.memory_mib for g in topo.gpus}
    gpus: dict[int, GpuUsage] = {}
    nics: dict[str, int] = {}
    for grant in grants:
        for share in grant.gpus:
            use = gpus.get(share.index, GpuUsage())
            if share.exclusive:
                whole = max(share.memory_mib, memory.get(share.index, 0))
                slots, core, mib, exclusive = config.gpu_slots, 100, whole, True
            else:
                slots, core, mib, exclusive = 1, share.core, share.memory_mib, use.exclusive
            use = GpuUsage(use.slots + slots, use.core + core, use.memory_mib + mib, exclusive)
            gpus[share.index] = use
        for key in grant.nics:
            nics[key] = nics.get(key, 0) + 1
    return NodeState(gpus=gpus, nic_slots=nics)


class Ledger:
    """The grants in force, thread-safe. Every device ID is held by one grant at most."""

    def __init__(self, grants: Iterable[Grant] = ()) -> None:
        self._lock = threading.Lock()
        self._grants: list[Grant] = []
        self._held: dict[tuple[str, str], Grant] = {}
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
            self._grants.append(grant)
            for device in grant.device_ids:
                self._held[(grant.resource, device)] = grant

    def remove(self, grant: Grant) -> bool:
        """Drop one grant; whether it was there."""
        with self._lock:
            return self._drop(lambda g: g == grant) != []

    def remove_pod(self, uid: str) -> list[Grant]:
        """Drop every grant of pod `uid`; what was dropped."""
        with self._lock:
            return self._drop(lambda g: g.pod_uid == uid)

    def holders(self, resource: str, device_ids: Iterable[str]) -> list[Grant]:
        """The grants that hold any of `device_ids`, each once."""
        with self._lock:
            found = (self._held.get((resource, d)) for d in device_ids)
            return list(dict.fromkeys(g for g in found if g is not None))

    def granted_ids(self, resource: str) -> frozenset[str]:
        with self._lock:
            return frozenset(d for r, d in self._held if r == resource)

    def node_state(self, topo: Topology, config: PluginConfig) -> NodeState:
        return node_state(self.grants(), topo, config)

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
        if out:
            self._grants = [g for g in self._grants if not doomed(g)]
            self._held = {k: g for k, g in self._held.items() if not doomed(g)}
        return out

    # ---- the checkpoint --------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Replace the checkpoint at `path` atomically (a temporary file renamed over it).

        Not fsync'd: the rename already makes it whole across a crash of the agent, the
        case it is for. A node that loses power loses its containers too; kubelet allocates
        them again, and a checkpoint that came back damaged is set aside and rebuilt from
        kubelet's pod resources. Syncing cost more than the rest of an Allocate here.
        """
        # Each grant is encoded once (grants are immutable): a save is a join, not a re-encoding
        # of the whole ledger, which Allocate would pay for on every call.
        grants = ",".join(_grant_json(g) for g in self.grants())
        data = f'{{"version":{CHECKPOINT_VERSION},"grants":[{grants}]}}'.encode()
        tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
        try:
            with open(tmp, "wb", opener=_private) as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: Path) -> Ledger:
        """The ledger saved at `path`; empty when there is none. A damaged checkpoint is
        moved aside and reported as CheckpointError."""
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return cls()
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            version = doc.get("version")
            if version != CHECKPOINT_VERSION:
                raise ValueError(f"version {version!r}, this agent reads {CHECKPOINT_VERSION}")
            return cls(_grant_from(g) for g in doc["grants"])
        except (ValueError, KeyError, TypeError, DoubleGrantError) as e:
            kept = _keep_aside(path)
            problem = str(e) if not isinstance(e, KeyError) else f"missing field {e}"
            raise CheckpointError(
                f"checkpoint {path} cannot be read ({problem}); it was moved to {kept}, and "
                "what was granted must be rebuilt from kubelet's pod resources",
                kept,
            ) from None


def _owner(grant: Grant) -> str:
    if grant.pod_uid is None:
        return "another container"
    return f"pod {grant.pod_uid} container {grant.container}"


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


@lru_cache(maxsize=4096)
def _grant_json(g: Grant) -> str:
    return json.dumps(_grant_doc(g), separators=(",", ":"))


def _grant_doc(g: Grant) -> dict[str, Any]:
    return {
        "resource": g.resource,
        "device_ids": list(g.device_ids),
        "gpus": [
            {
                "uuid": s.uuid,
                "index": s.index,
                "core": s.core,
                "memory_mib": s.memory_mib,
                "exclusive": s.exclusive,
            }
            for s in g.gpus
        ],
        "nics": list(g.nics),
        "pod_uid": g.pod_uid,
        "container": g.container,
        "region_dir": g.region_dir,
        "granted_at": g.granted_at,
    }


def _typed(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise TypeError(f"{what} has the wrong type ({type(value).__name__})")
    return value


def _grant_from(d: Any) -> Grant:
    _typed(d, dict, "a grant")
    resource = _typed(d["resource"], str, "resource")
    device_ids = tuple(_typed(i, str, "a device ID") for i in _typed(d["device_ids"], list, "ids"))
    gpus = tuple(
        GpuShare(
            _typed(s["uuid"], str, "uuid"),
            _typed(s["index"], int, "index"),
            _typed(s["core"], int, "core"),
            _typed(s["memory_mib"], int, "memory_mib"),
            _typed(s["exclusive"], bool, "exclusive"),
        )
        for s in _typed(d["gpus"], list, "gpus")
    )
    none_or_str = (str, type(None))
    return Grant(
        resource=resource,
        device_ids=device_ids,
        gpus=gpus,
        nics=tuple(_typed(n, str, "a NIC") for n in _typed(d["nics"], list, "nics")),
        pod_uid=_typed(d["pod_uid"], none_or_str, "pod_uid"),
        container=_typed(d["container"], none_or_str, "container"),
        region_dir=_typed(d["region_dir"], none_or_str, "region_dir"),
        granted_at=float(_typed(d["granted_at"], (int, float), "granted_at")),
    )


def _keep_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, kept)
    return kept
