"""That the agent is alive: a `coordination.k8s.io/v1` Lease of its own in the install
namespace, `gpulet-node-<node>` (`gpulet.api.nodetopology.lease`), whose `renewTime` it
renews every `heartbeat_s`. The extender judges a node quiet once that time has not
changed for `leaseDurationSeconds`, three heartbeats.

A renewal is one write: a PUT of the Lease as the API server last answered it, with a new
`renewTime` and that answer's resourceVersion; nothing is read first. When it is refused
(409: someone else wrote it; 404: it was deleted) the Lease is read again and taken, or
created. Taking it from another holder (`<node>/<agent pod>`: an agent pod of the same node
before this one) counts a transition and sets `acquireTime`, as Kubernetes' own leader
election does. A failed renewal is logged (`event=heartbeat-failed`) and tried again sooner
than the next heartbeat. Stopping leaves the Lease as it is: a restart is not a node gone.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any

from kubernetes.client import ApiClient, ApiException

from agent.kube import why
from gpulet.api import nodetopology as nt
from gpulet.api.stamps import stamp_micro
from gpulet.kube.calls import json_object, leases

log = logging.getLogger("gpulet.agent")

#: How many times taking the Lease is tried again when it changed under the write (409).
_TRIES = 5


class LeaseError(RuntimeError):
    """The Lease kept changing under the heartbeat's writes."""


def lease_duration(heartbeat_s: float) -> int:
    """`leaseDurationSeconds` for a heartbeat every `heartbeat_s`: three of them, whole."""
    return max(1, math.ceil(round(3 * heartbeat_s, 6)))


class LeaseHeartbeat:
    """Takes this node's Lease (`start`, in the caller's thread: an error there is the
    caller's), then renews it every `heartbeat_s` from a thread of its own; `renew_now`
    renews it at once. `clock` gives the time written (epoch seconds)."""

    def __init__(
        self,
        api: ApiClient,
        node: str,
        namespace: str,
        pod: str,
        *,
        heartbeat_s: float = nt.HEARTBEAT_S,
        clock: Callable[[], float] = time.time,
        retry_s: float = 1.0,
    ) -> None:
        if heartbeat_s <= 0:
            raise ValueError(
                f"the heartbeat must be a positive number of seconds, not {heartbeat_s}"
            )
        self.name = nt.lease_name(node)  # a name too long raises here
        self.node = node
        self.namespace = namespace
        self.holder = nt.holder_identity(node, pod)
        self.interval_s = heartbeat_s
        self.duration_s = lease_duration(heartbeat_s)
        self._leases = leases(api, namespace)
        self._clock = clock
        self._retry_s = retry_s
        self._lock = threading.Lock()
        #: The Lease as the API server last answered a write of it.
        self._last: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gpulet-heartbeat", daemon=True)

    @property
    def lease(self) -> dict[str, Any] | None:
        """The Lease as this agent last wrote it (None before the first write)."""
        with self._lock:
            return copy.deepcopy(self._last)

    def start(self) -> None:
        self.renew_now()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def renew_now(self) -> None:
        """One renewal: one PUT, unless the Lease changed (then read, and take or create it)."""
        with self._lock:
            last = self._last
            if last is not None:
                body = copy.deepcopy(last)
                body["spec"]["renewTime"] = stamp_micro(self._clock())
                # Left out, the server keeps them: a third of a real Lease's bytes.
                body["metadata"].pop("managedFields", None)
                try:
                    self._last = json_object(self._leases.replace(self.name, body).data)
                    return
                except ApiException as e:
                    if e.status not in (404, 409):
                        raise
                    log.info(
                        "event=lease-changed lease=%s/%s status=%d action=read-again",
                        self.namespace,
                        self.name,
                        e.status,
                    )
            self._last = self._acquire()

    def _acquire(self) -> dict[str, Any]:
        """Read the Lease, then take it (or create it where there is none)."""
        for _ in range(_TRIES):
            current = self._leases.find(self.name)
            now = self._clock()
            try:
                if current is None:
                    taken = json_object(self._leases.create(self._fresh(now)).data)
                else:
                    taken = json_object(
                        self._leases.replace(self.name, self._taken(current, now)).data
                    )
            except ApiException as e:
                if e.status not in (404, 409):  # created, changed or deleted since read
                    raise
                continue
            spec = taken.get("spec") or {}
            log.info(
                "event=lease-acquired lease=%s/%s holder=%s previous=%s transitions=%s "
                "duration_s=%d",
                self.namespace,
                self.name,
                self.holder,
                ((current or {}).get("spec") or {}).get("holderIdentity") or "none",
                spec.get("leaseTransitions"),
                self.duration_s,
            )
            return taken
        raise LeaseError(
            f"Lease {self.namespace}/{self.name} changed under {_TRIES} writes in a row"
        )

    def _fresh(self, now: float, transitions: int = 0) -> dict[str, Any]:
        """This agent's Lease as taken at `now`."""
        return nt.lease(
            self.node,
            self.namespace,
            self.holder,
            renewed=now,
            acquired=now,
            duration_s=self.duration_s,
            transitions=transitions,
        )

    def _taken(self, current: dict[str, Any], now: float) -> dict[str, Any]:
        """`current` held by this agent, renewed at `now`: a new holder's transition counted."""
        spec = dict(current.get("spec") or {})
        mine = self._fresh(now, _count(spec.get("leaseTransitions")))["spec"]
        if spec.get("holderIdentity") == self.holder and spec.get("acquireTime"):
            mine["acquireTime"] = spec["acquireTime"]
        elif spec.get("holderIdentity") != self.holder:
            mine["leaseTransitions"] += 1
        meta = dict(current.get("metadata") or {})
        meta["labels"] = {**(meta.get("labels") or {}), **nt.LEASE_LABELS}
        return {**current, "metadata": meta, "spec": {**spec, **mine}}

    def _run(self) -> None:
        delay = self.interval_s
        failures = 0
        while not self._stop.wait(delay):
            try:
                self.renew_now()
            except Exception as e:
                failures += 1
                delay = min(self.interval_s, self._retry_s * 2 ** (failures - 1))
                log.warning(
                    "event=heartbeat-failed lease=%s/%s error=%r retry_s=%g",
                    self.namespace,
                    self.name,
                    why(e),
                    delay,
                )
                continue
            failures, delay = 0, self.interval_s


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
