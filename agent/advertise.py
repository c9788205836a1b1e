"""The node-level aggregates kube-scheduler and kubelet count: `gpulet.io/gpu-core` (100 for
each GPU) and `gpulet.io/gpu-memory` (the MiB of all its GPUs), in the Node's status
`capacity` and `allocatable` (`gpulet.api.resources.node_aggregates`); and, once the agent
has measured what production leaves idle (`set_batch`, from `agent.idle`), the batch
aggregates `gpulet.io/batch-gpu-core` and `gpulet.io/batch-gpu-memory`.

This is the documented way to advertise a node-level extended resource: a patch of the
Node's status. kubelet keeps extended resources it does not manage and copies capacity to
allocatable on its next status update; writing allocatable too makes the values count at once.
kubelet zeroes every extended resource when its Node is registered again (a Node deleted
and created anew, a node whose state was lost), so the advertiser watches its Node (a field
selector on its name) and writes the values again whenever the Node does not carry them; it
never writes while it does. All writes go out from one thread; a failed one is logged
(`event=capacity-advertise-failed`) and tried again, waiting twice as long each time up to a
minute.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

from agent.kube import why
from agent.loop import OnDemand
from gpulet.api.resources import node_aggregates
from gpulet.kube.calls import CoreCalls, json_object
from gpulet.kube.reflector import Obj, Reflector
from gpulet.placement.podspec import whole_quantity
from gpulet.topology import Topology

log = logging.getLogger("gpulet.agent")


class CapacityAdvertiser:
    """Keeps this node's aggregates in its Node's status (see the module). `settled` is set
    while the Node, as last seen, says them."""

    def __init__(
        self,
        core: CoreCalls,
        topo: Topology,
        *,
        retry_s: float = 1.0,
        max_retry_s: float = 60.0,
        watch_timeout_s: int = 1800,
    ) -> None:
        self.node = topo.node
        self._core = core
        self._lock = threading.Lock()
        self._desired = node_aggregates(g.memory_mib for g in topo.gpus)
        #: The Node's status as last seen: None until listed, {} for no Node.
        self._seen: dict[str, Mapping[str, Any]] | None = None
        #: The resourceVersion of the Node as last seen ("": none yet).
        self._version = ""
        self.settled = threading.Event()
        self.writes = 0
        self._writer = OnDemand(
            "gpulet-capacity", self._advertise, self._failed, retry_s=retry_s,
            max_retry_s=max_retry_s,
        )  # fmt: skip
        name = self.node

        def list_mine(**options: Any) -> Any:
            return core.list_nodes(field_selector=f"metadata.name={name}", **options)

        self.reflector = Reflector.of_one(
            "node-capacity", list_mine, self._saw, watch_timeout_s=watch_timeout_s
        )

    def start(self) -> None:
        self.reflector.start()
        self._writer.start()

    def set_batch(self, values: Mapping[str, int]) -> None:
        """Advertise the batch aggregates `values` (`agent.idle.aggregates`) from now on."""
        with self._lock:
            self._desired = {**self._desired, **values}
        self._check()

    def stop(self) -> None:
        self._writer.stop()
        self.reflector.stop()

    # ---- the watch ----

    def _saw(self, obj: Obj | None) -> None:
        status = (obj or {}).get("status") or {}
        parts = ("capacity", "allocatable")
        with self._lock:
            self._seen = {} if obj is None else {p: dict(status.get(p) or {}) for p in parts}
            self._version = str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")
        self._check()

    @property
    def watched_version(self) -> str:
        """The resourceVersion of the Node as last seen (its watch, or its own write)."""
        with self._lock:
            return self._version

    def _check(self) -> None:
        with self._lock:
            needed = self._needed()
        if needed:
            self.settled.clear()
            self._writer.wake()
        else:
            self.settled.set()

    def _needed(self) -> bool:
        """Whether the Node, as last seen, lacks a value (called with the lock held). Nothing
        is written before the Node is listed, nor while there is no Node. Values are compared
        as quantities: the API server writes one in its canonical form (1000 as "1k")."""
        seen = self._seen
        if not seen:
            return False
        return any(
            whole_quantity(seen[part].get(name)) != value
            for part in ("capacity", "allocatable")
            for name, value in self._desired.items()
        )

    # ---- the writes ----

    def _advertise(self) -> None:
        with self._lock:
            needed = self._needed()
        if needed:
            self._saw(self._write(self._desired))

    def _failed(self, e: Exception, retry_s: float) -> None:
        log.warning(
            "event=capacity-advertise-failed node=%s error=%r retry_s=%g",
            self.node,
            why(e),
            retry_s,
        )

    def _write(self, desired: Mapping[str, int]) -> Obj:
        values = {name: str(value) for name, value in desired.items()}
        body = {"status": {"capacity": values, "allocatable": dict(values)}}
        node = json_object(self._core.patch_node_status(self.node, body).data)
        self.writes += 1
        log.info(
            "event=capacity-advertised node=%s %s",
            self.node,
            " ".join(f"{name}={value}" for name, value in sorted(desired.items())),
        )
        return node
