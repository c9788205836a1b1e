"""The extender's link to the API server, through the official `kubernetes` client:
`ClusterSync` keeps a `ClusterView` in step with nodes and bound pods (`gpulet.kube.Reflector`:
list, watch, list again), and `KubePodApi` is what bind needs (read a pod, annotate it with a
precondition, create its Binding). Objects are read as raw JSON (`_preload_content=False`).
"""

from __future__ import annotations

import gc
import json
import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from gpulet.api.resources import ASSIGNMENT_ANNOTATION
from gpulet.kube.calls import CoreCalls
from gpulet.kube.reflector import Reflector
from scorer.cluster import ClusterView
from scorer.extender import ApiConflict, ApiNotFound

log = logging.getLogger("gpulet.scorer")

#: Pods that no longer hold devices.
_FINISHED = frozenset({"Succeeded", "Failed"})
#: Only bound pods count; the watch sends a pod as ADDED when it gets bound.
_BOUND = "spec.nodeName!="


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
    message = _status_message(e)
    if e.status == 409:
        return ApiConflict(message)
    if e.status == 404:
        return ApiNotFound(message)
    return e


def _status_message(e: ApiException) -> str:
    try:
        return str(json.loads(str(e.body)).get("message") or e.reason)
    except (TypeError, ValueError, AttributeError):
        return str(e.reason)


class ClusterSync:
    """Keeps `view` in step with the API server: one `Reflector` for nodes, one for bound
    pods."""

    def __init__(
        self,
        core: CoreCalls,
        view: ClusterView,
        *,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
    ) -> None:
        self._view = view
        self._lock = threading.Lock()
        self._frozen = False

        def list_bound_pods(**kwargs: Any) -> Any:
            return core.list_pods(_BOUND, **kwargs)

        self.reflectors = [
            Reflector(
                "nodes",
                core.list_nodes,
                self._replace_nodes,
                self._apply_node,
                watch_timeout_s=watch_timeout_s,
                retry_s=retry_s,
                on_synced=self._freeze_once,
            ),
            Reflector(
                "pods",
                list_bound_pods,
                self._replace_pods,
                self._apply_pod,
                watch_timeout_s=watch_timeout_s,
                retry_s=retry_s,
                on_synced=self._freeze_once,
            ),
        ]

    def start(self) -> None:
        for reflector in self.reflectors:
            reflector.start()

    def ready(self) -> bool:
        """Whether both lists have been read once (what /healthz reports)."""
        return all(r.synced.is_set() for r in self.reflectors)

    def wait_ready(self, timeout: float) -> bool:
        return all(r.synced.wait(timeout) for r in self.reflectors)

    def stop(self) -> None:
        for reflector in self.reflectors:
            reflector.stop()

    def _freeze_once(self) -> None:
        """Once both lists are in, move what they built out of the collector's sight: full
        collections over thousands of assignments would land in some filter's latency."""
        with self._lock:
            if self.ready() and not self._frozen:
                self._frozen = True
                gc.collect()
                gc.freeze()
                log.info("event=synced nodes=%d", len(self._view.node_names()))

    # ---- nodes --------------------------------------------------------------------------

    def _apply_node(self, event: str, node: Mapping[str, Any]) -> None:
        name = (node.get("metadata") or {}).get("name")
        if event == "DELETED" and isinstance(name, str):
            self._view.remove_node(name)
        else:
            self._view.set_node_object(node)

    def _replace_nodes(self, nodes: Sequence[Mapping[str, Any]]) -> None:
        names = {self._view.set_node_object(n) for n in nodes}
        for gone in set(self._view.node_names()) - names:
            self._view.remove_node(gone)

    # ---- pods ---------------------------------------------------------------------------

    def _apply_pod(self, event: str, pod: Mapping[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        phase = (pod.get("status") or {}).get("phase")
        if event == "DELETED" or phase in _FINISHED:
            self._view.remove_pod(uid)
            return
        node = (pod.get("spec") or {}).get("nodeName") or None
        text = (meta.get("annotations") or {}).get(ASSIGNMENT_ANNOTATION)
        self._view.set_pod(uid, node, text if isinstance(text, str) else None)

    def _replace_pods(self, pods: Sequence[Mapping[str, Any]]) -> None:
        seen = set()
        for pod in pods:
            seen.add(str((pod.get("metadata") or {}).get("uid") or ""))
            self._apply_pod("ADDED", pod)
        for uid, _, assumed in list(self._view.pods()):
            if uid not in seen and not assumed:
                self._view.remove_pod(uid)
