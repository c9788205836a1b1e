"""The extender's link to the API server, through the official `kubernetes` client:
`ClusterSync` keeps a `ClusterView` in step with Nodes, NodeTopology objects, the agents'
heartbeat Leases and bound pods (`gpulet.kube.Reflector`: list, watch, list again), and
`KubePodApi` is what bind needs (read a pod, annotate it with a precondition, create its
Binding). Objects are read as raw JSON (`_preload_content=False`).
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from gpulet.api import nodetopology as nt
from gpulet.api.resources import ASSIGNMENT_ANNOTATION
from gpulet.api.stamps import epoch
from gpulet.kube.calls import CoreCalls, leases, node_topologies, status_message
from gpulet.kube.reflector import Reflector
from scorer.cluster import ClusterView
from scorer.extender import ApiConflict, ApiNotFound
from scorer.preemption import pod_priority

log = logging.getLogger("gpulet.scorer")

#: Pods that no longer hold devices.
_FINISHED = frozenset({"Succeeded", "Failed"})
#: Only bound pods count; the watch sends a pod as ADDED when it gets bound.
_BOUND = "spec.nodeName!="
#: How often a collection the API server does not serve (404) is asked for again.
ABSENT_RETRY_S = 30.0


class KubePodApi:
    def __init__(self, core: CoreCalls) -> None:
        self._core = core

    def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        try:
            resp: Any = self._core.read_pod(namespace, name)
        except ApiException as e:
            raise _translated(e) from None
        pod: Mapping[str, Any] = json.loads(resp.data)
        return pod

    def annotate_pod(
        self, namespace: str, name: str, resource_version: str, key: str, value: str
    ) -> None:
        """Set one annotation, only on the pod as it was at `resource_version` (ApiConflict
        when it changed since)."""
        body = {"metadata": {"resourceVersion": resource_version, "annotations": {key: value}}}
        try:
            self._core.patch_pod(namespace, name, body)
        except ApiException as e:
            raise _translated(e) from None

    def bind_pod(self, namespace: str, name: str, uid: str, node: str) -> None:
        try:
            self._core.create_binding(namespace, name, uid, node)
        except ApiException as e:
            raise _translated(e) from None


def _translated(e: ApiException) -> Exception:
    message = status_message(e) or str(e.reason)
    if e.status == 409:
        return ApiConflict(message)
    if e.status == 404:
        return ApiNotFound(message)
    return e


class ClusterSync:
    """Keeps `view` in step with the API server: one `Reflector` each for Nodes,
    NodeTopology objects, the heartbeat Leases in `namespace` (the install namespace), and
    bound pods. A collection the API server answers 404 for (the NodeTopology CRD not applied
    yet) counts as empty, and is asked for again every `absent_retry_s`: an extender upgraded
    before the CRD still serves the nodes that carry the old annotations."""

    def __init__(
        self,
        core: CoreCalls,
        view: ClusterView,
        *,
        namespace: str = nt.DEFAULT_NAMESPACE,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
        absent_retry_s: float = ABSENT_RETRY_S,
    ) -> None:
        self._view = view
        self._lock = threading.Lock()
        self._frozen = False
        self._stopping = threading.Event()
        topologies = node_topologies(core.client)
        heartbeats = leases(core.client, namespace)

        def list_bound_pods(**kwargs: Any) -> Any:
            return core.list_pods(_BOUND, **kwargs)

        def list_heartbeats(**kwargs: Any) -> Any:
            return heartbeats.list(label_selector=nt.LEASE_SELECTOR, **kwargs)

        def absent_as_empty(what: str, call: Callable[..., Any]) -> _AbsentAsEmpty:
            return _AbsentAsEmpty(what, call, self._stopping, absent_retry_s)

        reflector = functools.partial(
            Reflector,
            watch_timeout_s=watch_timeout_s,
            retry_s=retry_s,
            on_synced=self._freeze_once,
        )
        self.reflectors = [
            reflector("nodes", core.list_nodes, self._replace_nodes, self._apply_node),
            reflector(
                "nodetopologies",
                absent_as_empty(topologies.collection, topologies.list),
                self._replace_topologies,
                self._apply_topology,
            ),
            reflector(
                "leases",
                absent_as_empty(heartbeats.collection, list_heartbeats),
                self._replace_leases,
                self._apply_lease,
            ),
            reflector("pods", list_bound_pods, self._replace_pods, self._apply_pod),
        ]

    def start(self) -> None:
        for reflector in self.reflectors:
            reflector.start()

    def ready(self) -> bool:
        """Whether every list has been read once (what /healthz reports)."""
        return all(r.synced.is_set() for r in self.reflectors)

    def wait_ready(self, timeout: float) -> bool:
        return all(r.synced.wait(timeout) for r in self.reflectors)

    def stop(self) -> None:
        self._stopping.set()
        for reflector in self.reflectors:
            reflector.stop()

    def _freeze_once(self) -> None:
        """Once every list is in, move what they built out of the collector's sight: full
        collections over thousands of assignments would land in some filter's latency."""
        with self._lock:
            if self.ready() and not self._frozen:
                self._frozen = True
                gc.collect()
                gc.freeze()
                log.info(
                    "event=synced nodes=%d nodetopologies=%d leases=%d",
                    len(self._view.node_names()),
                    len(self._view.node_topology_names()),
                    len(self._view.lease_nodes()),
                )

    # ---- nodes, their NodeTopology objects and heartbeat Leases -------------------------

    def _apply_node(self, event: str, node: Mapping[str, Any]) -> None:
        name = _name(node)
        if event == "DELETED" and name is not None:
            self._view.remove_node(name)
        else:
            self._view.set_node_object(node)

    def _replace_nodes(self, nodes: Sequence[Mapping[str, Any]]) -> None:
        view = self._view
        _replace(nodes, view.set_node_object, view.node_names, view.remove_node)

    def _apply_topology(self, event: str, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        if event == "DELETED" and name is not None:
            self._view.remove_node_topology(name)
        else:
            self._view.set_node_topology_object(obj)

    def _replace_topologies(self, objs: Sequence[Mapping[str, Any]]) -> None:
        view = self._view
        _replace(
            objs, view.set_node_topology_object, view.node_topology_names, view.remove_node_topology
        )

    def _apply_lease(self, event: str, obj: Mapping[str, Any]) -> None:
        name = _name(obj)
        node = None if name is None else nt.node_of_lease(name)
        if event == "DELETED" and node is not None:
            self._view.remove_lease(node)
        else:
            self._view.set_lease_object(obj)

    def _replace_leases(self, objs: Sequence[Mapping[str, Any]]) -> None:
        view = self._view
        _replace(objs, view.set_lease_object, view.lease_nodes, view.remove_lease)

    # ---- pods ---------------------------------------------------------------------------

    def _apply_pod(self, event: str, pod: Mapping[str, Any]) -> None:
        apply_pod(self._view, event, pod)

    def _replace_pods(self, pods: Sequence[Mapping[str, Any]]) -> None:
        replace_pods(self._view, pods)


def apply_pod(view: ClusterView, event: str, pod: Mapping[str, Any]) -> None:
    """One event of the bound pods' watch into `view`. A pod counts until it is deleted or
    finished; a Terminating one (deletionTimestamp set) still holds its devices."""
    meta = pod.get("metadata") or {}
    uid = str(meta.get("uid") or "")
    phase = (pod.get("status") or {}).get("phase")
    if event == "DELETED" or phase in _FINISHED:
        view.remove_pod(uid)
        return
    spec = pod.get("spec") or {}
    text = (meta.get("annotations") or {}).get(ASSIGNMENT_ANNOTATION)
    view.set_pod(
        uid,
        spec.get("nodeName") or None,
        text if isinstance(text, str) else None,
        priority=pod_priority(pod),
        created=epoch(meta.get("creationTimestamp")) or 0.0,
    )


def replace_pods(view: ClusterView, pods: Sequence[Mapping[str, Any]]) -> None:
    """A fresh list of the bound pods into `view`: what it no longer holds is gone, except
    assumptions, whose binds may be newer than the list (they expire on their own)."""
    seen = set()
    for pod in pods:
        seen.add(str((pod.get("metadata") or {}).get("uid") or ""))
        apply_pod(view, "ADDED", pod)
    for uid, _, assumed in list(view.pods()):
        if uid not in seen and not assumed:
            view.remove_pod(uid)


def _name(obj: Mapping[str, Any]) -> str | None:
    name = (obj.get("metadata") or {}).get("name")
    return name if isinstance(name, str) else None


def _replace(
    objs: Sequence[Mapping[str, Any]],
    put: Callable[[Mapping[str, Any]], str | None],
    held: Callable[[], list[str]],
    remove: Callable[[str], None],
) -> None:
    """A list's objects into the view, and out of it what the list no longer has."""
    names = {put(obj) for obj in objs}
    for gone in set(held()) - names:
        remove(gone)


class _Canned:
    """An answer read as the API server's: a list's body (`data`), or a watch's stream."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, amt: int | None = None, decode_content: bool = False) -> Iterator[bytes]:
        yield self.data

    def release_conn(self) -> None:
        pass


_EMPTY_LIST = b'{"items": [], "metadata": {"resourceVersion": ""}}'
#: A watch's end that makes the Reflector list again.
_LIST_AGAIN = b'{"type": "ERROR", "object": {"kind": "Status", "code": 404}}\n'


class _AbsentAsEmpty:
    """A list call for a Reflector that takes the API server's 404 (a collection it does not
    serve: a CRD not applied yet) for an empty list; while it is missing, each watch ends
    after `retry_s` without asking, so that the Reflector lists again then. Logged when it
    goes missing and when it comes."""

    def __init__(
        self, path: str, call: Callable[..., Any], stopping: threading.Event, retry_s: float
    ) -> None:
        self._path = path
        self._call = call
        self._stopping = stopping
        self._retry_s = retry_s
        self._absent = False

    def __call__(self, **options: Any) -> Any:
        watch = bool(options.get("watch"))
        if watch and self._absent:
            return self._list_again_later()  # only a list tells that it is back
        try:
            answer = self._call(**options)
        except ApiException as e:
            if e.status != 404:
                raise
            if not self._absent:
                self._absent = True
                log.warning(
                    "event=collection-absent path=%s retry_s=%s hint=%r",
                    self._path,
                    self._retry_s,
                    "the API server does not serve it (is the NodeTopology CRD applied?); "
                    "read as empty until it does",
                )
            return self._list_again_later() if watch else _Canned(_EMPTY_LIST)
        if self._absent:
            self._absent = False
            log.info("event=collection-found path=%s", self._path)
        return answer

    def _list_again_later(self) -> _Canned:
        self._stopping.wait(self._retry_s)
        return _Canned(_LIST_AGAIN)
