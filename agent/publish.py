"""What the node is, on the API server: its `NodeTopology` (`gpulet.api.nodetopology`), named
after the node and owned by its Node. It is written when the topology document changes,
never to say the agent is alive (`agent.heartbeat` does that, in a Lease): an agent that
restarts on unchanged hardware writes nothing to it.

The publisher also keeps the object as it should be. It watches it (a field selector on its
name, so the watch sees nothing else; opened again every 30 minutes, as it is only a safety
net) and writes it again when someone deleted it or changed what it says. The garbage
collector deletes it when its Node is deleted; the Node registered again has a new uid,
which the next NodeTopology names as its owner. All writes go out from one thread of its
own; a failed one is logged (`event=topology-publish-failed`) and tried again, waiting
twice as long each time up to a minute.

The previous release kept the document and its heartbeat in Node annotations
(`LEGACY_ANNOTATIONS`). `LegacyAnnotations` removes them once both new objects exist, in one
merge patch and only when they are there; or, with `keep`, for a cluster whose extender is
upgraded after its agents, removes only the heartbeat and keeps the topology annotation
current.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from kubernetes.client import ApiException

from agent.kube import why
from agent.loop import OnDemand
from gpulet.api import nodetopology as nt
from gpulet.api.resources import HEARTBEAT_ANNOTATION, TOPOLOGY_ANNOTATION
from gpulet.api.share import Idle
from gpulet.kube.calls import CoreCalls, json_object, node_topologies
from gpulet.kube.reflector import Obj, Reflector
from gpulet.topology import Topology
from gpulet.topology.document import loads, to_document

log = logging.getLogger("gpulet.agent")

#: `--legacy-annotations`: remove both, or keep `gpulet.io/topology` current.
LEGACY_MODES = ("remove", "keep")
#: How many times a write is tried again when the object changed under it (409).
_TRIES = 5


class PublishError(RuntimeError):
    """The NodeTopology kept changing under the publisher's writes."""


class LegacyError(RuntimeError):
    """The Node's legacy annotations could not be settled."""


class TopologyPublisher:
    """Creates this node's NodeTopology (`start`; an error there is the caller's), writes it
    again when `set_topology` changes the document, and keeps it as it should be (see the
    module). `retire_legacy` hands the previous release's annotations to `LegacyAnnotations`
    once the node's Lease exists too."""

    def __init__(
        self,
        core: CoreCalls,
        topo: Topology,
        *,
        legacy: str = "remove",
        retry_s: float = 1.0,
        max_retry_s: float = 60.0,
        watch_timeout_s: int = 1800,
    ) -> None:
        self.node = topo.node
        self._core = core
        self._objects = node_topologies(core.client)
        self.legacy = LegacyAnnotations(core, self.node, legacy)
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._document = to_document(topo)
        #: The status to publish (`set_idle`); None: none measured yet (one already on the
        #: object is kept).
        self._status: dict[str, Any] | None = None
        #: The Node's uid, as last read; None: read it before the next create.
        self._uid: str | None = None
        #: Set when the object may not be as it should be (watch, set_topology).
        self._dirty = False
        self._legacy_on = False
        #: The resourceVersion of the object as the watch last showed it ("" for none).
        self._watched_version = ""
        #: Set while the object is as it should be, as far as the publisher knows.
        self.settled = threading.Event()
        #: One writer at a time: `start` and `retire_legacy` in the caller's thread, then ours.
        self._writing = threading.Lock()
        self._writer = OnDemand(
            "gpulet-topology", self._write, self._write_failed, retry_s=retry_s,
            max_retry_s=max_retry_s,
        )  # fmt: skip
        name = self.node

        def list_mine(**options: Any) -> Any:
            return self._objects.list(field_selector=f"metadata.name={name}", **options)

        self.reflector = Reflector.of_one(
            "node-topology", list_mine, self._saw, watch_timeout_s=watch_timeout_s
        )

    @property
    def document(self) -> dict[str, Any]:
        """The topology document being published."""
        with self._lock:
            return dict(self._document)

    @property
    def watched_version(self) -> str:
        """The resourceVersion of the NodeTopology as the watch last showed it ("": none)."""
        with self._lock:
            return self._watched_version

    def start(self) -> None:
        """Create (or take as it is) the NodeTopology, in the caller's thread; then watch it."""
        with self._writing:
            self._read_node()
            self._put(read_first=False)
        self.settled.set()
        self.reflector.start()
        self._writer.start()

    def stop(self) -> None:
        self._writer.stop()
        self.reflector.stop()

    def set_topology(self, topo: Topology | str) -> None:
        """Publish this document (a topology, or its JSON text) if it differs from the one
        published; the write goes out from the publisher's thread."""
        if isinstance(topo, str):
            topo = loads(topo)
        document = to_document(replace(topo, node=self.node))
        with self._lock:
            if document == self._document:
                return
            self._document = document
            self._dirty = True
            self.settled.clear()
        self._writer.wake()

    def set_idle(self, idle: Mapping[int, Idle], measured: float | None = None) -> None:
        """Publish what each GPU's production leaves idle (`nt.idle_status`, measured now
        unless `measured` says when) in the object's status; the write goes out from the
        publisher's thread."""
        status = nt.idle_status(idle, time.time() if measured is None else measured)
        with self._lock:
            if status == self._status:
                return
            self._status = status
            self._dirty = True
            self.settled.clear()
        self._writer.wake()

    def retire_legacy(self) -> None:
        """Settle the previous release's annotations (`LegacyAnnotations`), now and whenever
        the document changes. The first try is in the caller's thread; a failure is logged
        and tried again from the publisher's."""
        with self._lock:
            self._legacy_on = True
        try:
            with self._writing:
                self.legacy.settle(self.document)
        except Exception as e:
            self._failed("legacy-annotations-failed", e, self._retry_s)
            with self._lock:
                self.settled.clear()
            self._writer.wake()

    # ---- the watch: note what the object is; the writes are the thread's ----

    def _saw(self, obj: Obj | None) -> None:
        with self._lock:
            self._watched_version = str(
                (obj or {}).get("metadata", {}).get("resourceVersion") or ""
            )
            if obj is not None and self._matches(obj, self._document) and self._status_matches(obj):
                return
            if obj is None:
                self._uid = None  # its Node may be a new one
            self._dirty = True
            self.settled.clear()
        self._writer.wake()

    # ---- the writes ----

    def _write(self) -> None:
        with self._writing:
            self._work()
        with self._lock:
            if not self._dirty:
                self.settled.set()

    def _write_failed(self, e: Exception, retry_s: float) -> None:
        failed = isinstance(e, LegacyError)
        event = "legacy-annotations-failed" if failed else "topology-publish-failed"
        self._failed(event, e, retry_s)

    def _work(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, False
            legacy = self._legacy_on
        if dirty:
            try:
                self._put(read_first=True)
            except BaseException:
                with self._lock:
                    self._dirty = True
                raise
        if legacy:
            try:
                self.legacy.settle(self.document)
            except Exception as e:
                raise LegacyError(str(e)) from e

    def _put(self, *, read_first: bool) -> None:
        """Make the NodeTopology the one this agent would write: create it where there is
        none, replace it where it differs (from the version read), else write nothing."""
        current: dict[str, Any] | None = None
        known = not read_first
        for _ in range(_TRIES):
            if not known:
                current = self._objects.find(self.node)
            known = False  # after a refusal, read again
            if current is None:
                desired = self._desired()
                try:
                    created = json_object(self._objects.create(desired).data)
                except ApiException as e:
                    if e.status != 409:  # 409: it exists after all
                        raise
                    continue
                self._published("created", created)
                return
            desired = self._desired()
            if self._matches(current, desired["spec"]) and self._status_matches(current):
                return
            try:
                replaced = json_object(
                    self._objects.replace(self.node, _over(current, desired)).data
                )
            except ApiException as e:
                if e.status not in (404, 409):  # changed or deleted since read
                    raise
                continue
            self._published("replaced", replaced)
            return
        raise PublishError(f"NodeTopology {self.node} changed under {_TRIES} writes in a row")

    def _desired(self) -> dict[str, Any]:
        with self._lock:
            uid, document, status = self._uid, self._document, self._status
        if uid is None:
            uid = self._read_node()
        return nt.node_topology(self.node, uid, document, status)

    def _read_node(self) -> str:
        """Read the Node: its uid (the NodeTopology's owner) and its legacy annotations."""
        node = json_object(self._core.read_node(self.node).data)
        meta = node.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid:
            raise PublishError(f"Node {self.node} has no uid")
        self.legacy.seen(meta.get("annotations") or {})
        with self._lock:
            self._uid = uid
        return uid

    def _matches(self, obj: Obj, spec_or_document: Mapping[str, Any]) -> bool:
        """Whether `obj` says what this agent would write: its spec, its owner. Called with
        the lock held or by the writer."""
        spec = {k: v for k, v in spec_or_document.items() if k not in ("apiVersion", "kind")}
        spec["node"] = self.node
        uid = self._uid
        return obj.get("spec") == spec and (uid is None or nt.owner_uid(obj) == uid)

    def _status_matches(self, obj: Obj) -> bool:
        """Whether `obj`'s status is the one to publish (any, before one is measured)."""
        return self._status is None or obj.get("status") == self._status

    def _published(self, action: str, obj: Obj) -> None:
        meta = obj.get("metadata") or {}
        log.info(
            "event=topology-published node=%s action=%s owner_uid=%s resource_version=%s",
            self.node,
            action,
            nt.owner_uid(obj),
            meta.get("resourceVersion"),
        )

    def _failed(self, event: str, e: Exception, retry_s: float) -> None:
        log.warning("event=%s node=%s error=%r retry_s=%g", event, self.node, why(e), retry_s)


def _over(current: Obj, desired: Mapping[str, Any]) -> dict[str, Any]:
    """`desired`, to replace `current` (its version, so that a change since is refused),
    keeping what others put in its metadata (labels and annotations of their own)."""
    meta = dict(current.get("metadata") or {})
    ours = desired["metadata"]
    meta["labels"] = {**(meta.get("labels") or {}), **ours["labels"]}
    meta["ownerReferences"] = ours["ownerReferences"]
    kept = {"status": current["status"]} if "status" in current and "status" not in desired else {}
    return {**kept, **desired, "metadata": meta}


class LegacyAnnotations:
    """The previous release's Node annotations (`gpulet.io/topology`, `gpulet.io/heartbeat`):
    `settle` removes those there are in one merge patch (`remove`), or (`keep`) removes the
    heartbeat and writes the topology where it is missing or differs from the document.
    What the Node carries is known from its reads (`seen`) and this class's own patches,
    so that a settled Node costs no request."""

    def __init__(self, core: CoreCalls, node: str, mode: str = "remove") -> None:
        if mode not in LEGACY_MODES:
            raise ValueError(f"legacy annotations: {' or '.join(LEGACY_MODES)}, not {mode!r}")
        self.mode = mode
        self._core = core
        self._node = node
        self._lock = threading.Lock()
        self._on_node: dict[str, str] = {}

    def seen(self, annotations: Mapping[str, Any]) -> None:
        """The Node's annotations, as just read."""
        with self._lock:
            self._on_node = {
                k: v for k in nt.LEGACY_ANNOTATIONS if isinstance(v := annotations.get(k), str)
            }

    def settle(self, document: Mapping[str, Any]) -> None:
        with self._lock:
            change = self._change(document)
            if not change:
                return
            self._core.patch_node(self._node, {"metadata": {"annotations": change}})
            for key, value in change.items():
                if value is None:
                    self._on_node.pop(key, None)
                else:
                    self._on_node[key] = value
        removed = sorted(k for k, v in change.items() if v is None)
        if removed:
            log.info(
                "event=legacy-annotations-removed node=%s keys=%s", self._node, ",".join(removed)
            )
        written = change.get(TOPOLOGY_ANNOTATION)
        if written is not None:
            log.info(
                "event=legacy-topology-written node=%s key=%s bytes=%d",
                self._node,
                TOPOLOGY_ANNOTATION,
                len(written),
            )

    def _change(self, document: Mapping[str, Any]) -> dict[str, str | None]:
        change: dict[str, str | None] = {}
        if HEARTBEAT_ANNOTATION in self._on_node:
            change[HEARTBEAT_ANNOTATION] = None
        text = self._on_node.get(TOPOLOGY_ANNOTATION)
        if self.mode == "remove":
            if text is not None:
                change[TOPOLOGY_ANNOTATION] = None
        elif text is None or not _says(text, document):
            change[TOPOLOGY_ANNOTATION] = json.dumps(document, separators=(",", ":"))
        return change


def _says(text: str, document: Mapping[str, Any]) -> bool:
    """Whether the annotation `text` is `document` (however it was spaced)."""
    try:
        return bool(json.loads(text) == document)
    except ValueError:
        return False
