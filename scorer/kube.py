"""The extender's link to the API server, through the official `kubernetes` client:
`ClusterSync` keeps a `ClusterView` in step with nodes and bound pods (list, then watch from
the list's resourceVersion; list again when the watch expires or breaks), and `KubePodApi` is
what bind needs (read a pod, annotate it with a precondition, create its Binding).

Objects are read as raw JSON (`_preload_content=False`): the view needs a few fields, and
building the client's model objects for thousands of pods would cost more than the rest.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from gpulet.api.resources import ASSIGNMENT_ANNOTATION
from scorer.cluster import ClusterView
from scorer.extender import ApiConflict, ApiNotFound

log = logging.getLogger("gpulet.scorer")

#: Pods that no longer hold devices.
_FINISHED = frozenset({"Succeeded", "Failed"})
#: Only bound pods count; the watch sends a pod as ADDED when it gets bound.
_BOUND = "spec.nodeName!="


class KubePodApi:
    def __init__(self, core: client.CoreV1Api) -> None:
        self._core = core

    def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]:
        try:
            resp: Any = self._core.read_namespaced_pod(name, namespace, _preload_content=False)
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
            self._core.patch_namespaced_pod(name, namespace, body, _preload_content=False)
        except ApiException as e:
            raise _translated(e) from None

    def bind_pod(self, namespace: str, name: str, uid: str, node: str) -> None:
        binding = client.V1Binding(
            metadata=client.V1ObjectMeta(name=name, namespace=namespace, uid=uid),
            target=client.V1ObjectReference(api_version="v1", kind="Node", name=node),
        )
        try:
            # Raw: the server answers a Status, which the client cannot read as a V1Binding.
            self._core.create_namespaced_binding(namespace, binding, _preload_content=False)
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
    """Keeps `view` in step with the API server from two background threads."""

    def __init__(
        self,
        core: client.CoreV1Api,
        view: ClusterView,
        *,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
    ) -> None:
        self._core = core
        self._view = view
        self._watch_timeout = watch_timeout_s
        self._retry = retry_s
        self._stop = threading.Event()
        self._synced = {"nodes": threading.Event(), "pods": threading.Event()}
        self._threads: list[threading.Thread] = []
        self._open: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._frozen = False

    def start(self) -> None:
        for kind in ("nodes", "pods"):
            thread = threading.Thread(target=self._run, args=(kind,), name=f"gpulet-sync-{kind}")
            thread.daemon = True
            thread.start()
            self._threads.append(thread)

    def ready(self) -> bool:
        """Whether both lists have been read once (what /healthz reports)."""
        return all(e.is_set() for e in self._synced.values())

    def wait_ready(self, timeout: float) -> bool:
        return all(e.wait(timeout) for e in self._synced.values())

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for resp in self._open.values():
                # Not resp.close(): that waits for the lock of the thread reading it.
                # Shutting the socket down ends that read at once.
                sock = getattr(getattr(resp, "connection", None), "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(timeout=5)

    def _freeze_once(self) -> None:
        """Once both lists are in, move what they built out of the collector's sight: full
        collections over thousands of assignments would land in some filter's latency."""
        with self._lock:
            if self.ready() and not self._frozen:
                self._frozen = True
                gc.collect()
                gc.freeze()
                log.info("event=synced nodes=%d", len(self._view.node_names()))

    # ---- one kind -----------------------------------------------------------------------

    def _run(self, kind: str) -> None:
        list_call, apply, replace_all = self._calls(kind)
        while not self._stop.is_set():
            try:
                doc = json.loads(list_call(_preload_content=False).data)
                items = doc.get("items") or []
                replace_all(items)
                self._synced[kind].set()
                self._freeze_once()
                version = str((doc.get("metadata") or {}).get("resourceVersion") or "")
                log.info(
                    "event=listed kind=%s count=%d resource_version=%s", kind, len(items), version
                )
                self._watch(kind, list_call, apply, version)
            except Exception as e:
                if self._stop.is_set():
                    return
                log.warning("event=sync-error kind=%s error=%r", kind, str(e)[:300])
                self._stop.wait(self._retry)

    def _watch(
        self,
        kind: str,
        call: Callable[..., Any],
        apply: Callable[[str, Mapping[str, Any]], None],
        version: str,
    ) -> None:
        """Apply events from `version` on until the stream ends for good (then list again)."""
        while not self._stop.is_set():
            resp = call(
                watch=True,
                resource_version=version,
                timeout_seconds=self._watch_timeout,
                allow_watch_bookmarks=True,
                _preload_content=False,
            )
            with self._lock:
                self._open[kind] = resp
            try:
                for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                    event = json.loads(line)
                    kind_of_event, obj = event.get("type"), event.get("object") or {}
                    if kind_of_event == "ERROR":
                        log.info("event=watch-expired kind=%s message=%r", kind, obj.get("message"))
                        return  # 410 Gone, or another error: list again
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind_of_event != "BOOKMARK":
                        apply(kind_of_event, obj)
            finally:
                with self._lock:
                    self._open.pop(kind, None)
                resp.release_conn()

    def _calls(
        self, kind: str
    ) -> tuple[
        Callable[..., Any],
        Callable[[str, Mapping[str, Any]], None],
        Callable[[Iterable[Mapping[str, Any]]], None],
    ]:
        view = self._view
        if kind == "nodes":

            def apply_node(event: str, node: Mapping[str, Any]) -> None:
                name = (node.get("metadata") or {}).get("name")
                if event == "DELETED" and isinstance(name, str):
                    view.remove_node(name)
                else:
                    view.set_node_object(node)

            def replace_nodes(nodes: Iterable[Mapping[str, Any]]) -> None:
                names = {view.set_node_object(n) for n in nodes}
                for gone in set(view.node_names()) - names:
                    view.remove_node(gone)

            return self._core.list_node, apply_node, replace_nodes

        def apply_pod(event: str, pod: Mapping[str, Any]) -> None:
            meta = pod.get("metadata") or {}
            uid = str(meta.get("uid") or "")
            phase = (pod.get("status") or {}).get("phase")
            if event == "DELETED" or phase in _FINISHED:
                view.remove_pod(uid)
                return
            node = (pod.get("spec") or {}).get("nodeName") or None
            text = (meta.get("annotations") or {}).get(ASSIGNMENT_ANNOTATION)
            view.set_pod(uid, node, text if isinstance(text, str) else None)

        def replace_pods(pods: Iterable[Mapping[str, Any]]) -> None:
            seen = set()
            for pod in pods:
                seen.add(str((pod.get("metadata") or {}).get("uid") or ""))
                apply_pod("ADDED", pod)
            for uid, _, assumed in list(view.pods()):
                if uid not in seen and not assumed:
                    view.remove_pod(uid)

        def list_pods(**kwargs: Any) -> Any:
            return self._core.list_pod_for_all_namespaces(field_selector=_BOUND, **kwargs)

        return list_pods, apply_pod, replace_pods
