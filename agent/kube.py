"""The agent's link to the API server: the pods bound to its node (`ApiPodSource`, the
device plugin's `PodSource`), its Events and allocation records, through the official
`kubernetes` client; and the two helpers its reports (`agent.publish`, `agent.heartbeat`)
read objects with. What it writes to say what the node is and that it is alive is in those
two modules.

What a pod asks of gpulet is read by the extender's reader, `gpulet.placement.podspec`, and
by nothing else here, so the agent and the extender never disagree on it: `pod_ask` for
what each container asks, `pod_counts` for the device counts alone.

A pod that reader refuses (a core of 150, `8Gi` of gpu-memory, `1.5` GPUs, a bad policy
annotation) is one the extender never places; it reaches this node only bound by hand,
bypassing the scheduler. The agent grants it nothing:

- when its device counts can be read, it is still matched by them (so an Allocate for it
  is tied to it, not to another pod asking as many), and each Allocate is refused with the
  reader's message, which kubelet shows on the pod as it fails its admission;
- when they cannot (a count that is not a whole number from 0 to 2**40), it is never
  matched: the API server refuses such a count, or kubelet has not that many devices to
  allocate, so no Allocate comes for it.

Either way the watch logs one line for it, `event=pod-refused` with `matched=true|false`
and the reason, once per pod and reason, and goes on: reading a pod never raises there.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes.client import ApiException

from deviceplugin.assignment import ContainerRequest, PendingPod
from deviceplugin.grants import Grant
from gpulet.api.resources import ALLOCATED_ANNOTATION, ASSIGNMENT_ANNOTATION
from gpulet.api.stamps import epoch, stamp
from gpulet.kube.calls import CoreCalls, status_message
from gpulet.kube.reflector import Reflector
from gpulet.placement.podspec import ContainerAsk, PodSpecError, pod_ask, pod_counts

log = logging.getLogger("gpulet.agent")

#: Phases after which a pod holds no device.
_FINISHED = frozenset({"Succeeded", "Failed"})


def why(e: Exception) -> str:
    """An error, on one line: for the API's, its status and the Status message it sent."""
    if not isinstance(e, ApiException):
        return str(e)[:300]
    message = status_message(e)
    return f"{e.status} {e.reason}" + (f": {message[:300]}" if message else "")


class ApiPodSource:
    """The pods bound to this node, from a watch. `pending_pods` (the device plugin's
    `PodSource`) lists those still Pending that ask for a gpulet resource; `on_gone(uid)` is
    called once when a pod that was seen is deleted or finishes, so its devices, region and
    checkpoint entries can be freed."""

    def __init__(
        self,
        core: CoreCalls,
        node: str,
        *,
        on_gone: Callable[[str], None] = lambda uid: None,
        watch_timeout_s: int = 300,
    ) -> None:
        self._node = node
        self._on_gone = on_gone
        self._lock = threading.Lock()
        self._pods: dict[str, Mapping[str, Any]] = {}
        #: The reason logged for each refused pod (the last 4,096): one line per pod.
        self._refused: OrderedDict[str, str] = OrderedDict()

        def list_mine(**kwargs: Any) -> Any:
            return core.list_pods(f"spec.nodeName={node}", **kwargs)

        self._list = list_mine
        #: Pods seen deleted or finished (the last 4,096): a catch-up never brings them back.
        self._ended: OrderedDict[str, None] = OrderedDict()
        self.reflector = Reflector(
            "pods-on-node", list_mine, self._replace, self._apply, watch_timeout_s=watch_timeout_s
        )

    def start(self) -> None:
        self.reflector.start()

    def stop(self) -> None:
        self.reflector.stop()

    def wait_ready(self, timeout: float) -> bool:
        return self.reflector.synced.wait(timeout)

    def pod(self, uid: str) -> Mapping[str, Any] | None:
        with self._lock:
            return self._pods.get(uid)

    def pods(self) -> list[Mapping[str, Any]]:
        """Every pod bound to this node that has not finished, as the API shows it."""
        with self._lock:
            return list(self._pods.values())

    def pending_pods(self) -> Sequence[PendingPod]:
        with self._lock:
            pods = list(self._pods.values())
        out = []
        for pod in pods:
            pending = pending_pod(pod, self._node)
            if pending is not None:
                out.append(pending)
        return tuple(out)

    def refresh(self) -> None:
        """Catch up with the API server now, not waiting for the watch: kubelet learns of a
        pod bound to it from its own watch, and may call Allocate before ours shows it. Pods
        the list shows and the watch has not are added; none is removed (the watch does
        that), and none the watch saw end comes back."""
        try:
            # kubelet waits on this Allocate: 2.5 s a try, and the client tries 4 times on a
            # read timeout (urllib3's retries), so a silent API server holds it 10 s at most.
            raw = self._list(timeout_seconds=2, client_timeout_s=2.5, _preload_content=False)
            listed = json.loads(raw.data)
        except Exception as e:  # the API unreachable: the miss stands
            log.warning("event=refresh-failed what=pods-on-node error=%r", str(e))
            return
        added = []
        with self._lock:
            for pod in (listed or {}).get("items") or ():
                meta = _object(pod, "metadata")
                uid = str(meta.get("uid") or "")
                phase = _object(pod, "status").get("phase")
                if not uid or uid in self._pods or uid in self._ended or phase in _FINISHED:
                    continue
                if meta.get("deletionTimestamp"):
                    continue
                self._pods[uid] = pod
                added.append(pod)
        if added:
            log.info("event=caught-up what=pods-on-node added=%d", len(added))
        for pod in added:
            self._note(pod)

    def _ending(self, uid: str) -> None:
        """Called under the lock: `uid` ended; remember it (bounded)."""
        self._ended[uid] = None
        self._refused.pop(uid, None)
        while len(self._ended) > 4096:
            self._ended.popitem(last=False)

    def _note(self, pod: Mapping[str, Any]) -> None:
        """Log a pending pod that asks for a gpulet device and that the extender's reader
        refuses, once per pod and reason (`event=pod-refused`). It runs in the watch's
        thread, so it never raises."""
        try:
            meta = _object(pod, "metadata")
            uid = str(meta.get("uid") or "")
            containers: tuple[ContainerRequest, ...] | None = ()
            problem = None
            if _phase(pod) == "Pending":
                containers, problem = _read(pod)
                if containers is not None and not any(c.gpus or c.rdma for c in containers):
                    problem = None  # it asks for no device: no Allocate comes for it
            with self._lock:
                if self._refused.get(uid) == problem:
                    return
                if problem is None:
                    self._refused.pop(uid, None)
                    return
                self._refused[uid] = problem
                while len(self._refused) > 4096:
                    self._refused.popitem(last=False)
            log.warning(
                "event=pod-refused pod=%s/%s pod_uid=%s matched=%s reason=%r",
                meta.get("namespace") or "default",
                meta.get("name") or "",
                uid,
                "false" if containers is None else "true",
                problem,
            )
        except Exception as e:  # a bug, not the pod's: the watch goes on
            log.warning("event=pod-unreadable error=%r", str(e)[:300])

    def _apply(self, event: str, pod: Mapping[str, Any]) -> None:
        uid = str(_object(pod, "metadata").get("uid") or "")
        phase = _object(pod, "status").get("phase")
        if event == "DELETED" or phase in _FINISHED:
            with self._lock:
                seen = self._pods.pop(uid, None) is not None
                self._ending(uid)
            if seen or phase in _FINISHED:
                self._gone(uid)
            return
        with self._lock:
            self._pods[uid] = pod
        self._note(pod)

    def _replace(self, pods: Sequence[Mapping[str, Any]]) -> None:
        listed: dict[str, Mapping[str, Any]] = {}
        for pod in pods:
            uid = str(_object(pod, "metadata").get("uid") or "")
            if _object(pod, "status").get("phase") not in _FINISHED:
                listed[uid] = pod
        with self._lock:
            gone = set(self._pods) - set(listed)
            self._pods = listed
            for uid in gone:
                self._ending(uid)
        for uid in gone:
            self._gone(uid)
        for pod in listed.values():
            self._note(pod)

    def _gone(self, uid: str) -> None:
        try:
            self._on_gone(uid)
        except Exception as e:
            log.warning("event=cleanup-failed pod_uid=%s error=%r", uid, str(e))


def pending_pod(pod: Mapping[str, Any], node: str) -> PendingPod | None:
    """The pod as the device plugin's matching sees it, or None when it is not pending or
    asks for no gpulet device. A pod whose request the extender's reader refuses is still
    pending, with the reason as its `problem`, so that its Allocate is refused saying why;
    unless its device counts cannot be read: it is then never matched (None)."""
    if _phase(pod) != "Pending":
        return None
    containers, problem = _read(pod)
    if containers is None or not any(c.gpus or c.rdma for c in containers):
        return None
    meta = _object(pod, "metadata")
    text = _object(meta, "annotations").get(ASSIGNMENT_ANNOTATION)
    return PendingPod(
        uid=str(meta.get("uid") or ""),
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        node=node,
        created=epoch(meta.get("creationTimestamp")) or 0.0,
        containers=containers,
        assignment_text=text if isinstance(text, str) else None,
        problem=problem,
    )


def container_requests(
    pod: Mapping[str, Any],
) -> tuple[tuple[ContainerRequest, ...], str | None]:
    """What each container of `pod` asks (kubelet's order), read as the extender reads it
    (`gpulet.placement.podspec.pod_ask`), and None; or, for a pod that reader refuses, the
    device counts alone (`pod_counts`; none where they cannot be read) and the reader's
    message."""
    containers, problem = _read(pod)
    return containers or (), problem


def _read(pod: Mapping[str, Any]) -> tuple[tuple[ContainerRequest, ...] | None, str | None]:
    """`container_requests`, with None for containers whose device counts cannot be read."""
    try:
        return tuple(_request(c) for c in pod_ask(pod).containers), None
    except PodSpecError as e:
        problem = str(e)
    try:
        counts = pod_counts(pod)
    except PodSpecError:
        return None, problem
    return tuple(ContainerRequest(c.name, c.gpus, c.rdma) for c in counts), problem


def _request(ask: ContainerAsk) -> ContainerRequest:
    r = ask.request
    if r is None:
        return ContainerRequest(ask.name)
    return ContainerRequest(ask.name, r.gpus, r.rdma, r.core, r.memory_mib, r.batch)


def _object(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """`obj[key]` where it is a JSON object, else an empty one."""
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


def _phase(pod: Mapping[str, Any]) -> object:
    return _object(pod, "status").get("phase", "Pending")


class EventReporter:
    """Posts a Warning Event on a pod (what `kubectl describe pod` shows), as the agent on
    `node`: for a backstop violation. A failure is logged, never raised."""

    def __init__(self, core: CoreCalls, node: str, clock: Callable[[], float] = time.time) -> None:
        self._core = core
        self._node = node
        self._clock = clock

    def warn(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        meta = pod.get("metadata") or {}
        namespace = str(meta.get("namespace") or "default")
        now = stamp(self._clock())
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name')}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta.get("name"),
                "namespace": namespace,
                "uid": meta.get("uid"),
            },
            "reason": reason,
            "message": message,
            "type": "Warning",
            "source": {"component": "gpulet-agent", "host": self._node},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._core.create_event(namespace, body)
        except Exception as e:
            log.warning("event=event-post-failed pod=%s reason=%r", meta.get("name"), str(e)[:200])


class AllocatedRecorder:
    """Writes `gpulet.io/allocated` on a pod after each grant: per container, the device IDs
    of each resource it was allocated (`[]` once an init container's devices went to a
    later container). It shows anyone looking at the pod what the agent matched; the
    agent's own record is its checkpoint. Patches go out from a thread of their own, so an
    Allocate never waits for the API server; a failed one is logged, and the next grant of
    the pod writes the whole record again."""

    def __init__(
        self,
        core: CoreCalls,
        pod: Callable[[str], Mapping[str, Any] | None],
        grants: Callable[[], Sequence[Grant]],
    ) -> None:
        self._core = core
        self._pod = pod
        self._grants = grants
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="gpulet-allocated", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def granted(self, grant: Grant) -> None:
        if grant.pod_uid:
            self._queue.put(grant.pod_uid)

    def record(self, uid: str) -> dict[str, Any]:
        containers: dict[str, dict[str, list[str]]] = {}
        for g in self._grants():
            if g.pod_uid == uid and g.container:
                containers.setdefault(g.container, {})[g.resource] = list(g.device_ids)
        return {"version": 1, "containers": containers}

    def _run(self) -> None:
        while (uid := self._queue.get()) is not None:
            pod = self._pod(uid)
            if pod is None:
                continue  # gone already
            meta = pod.get("metadata") or {}
            text = json.dumps(self.record(uid), separators=(",", ":"), sort_keys=True)
            body = {"metadata": {"annotations": {ALLOCATED_ANNOTATION: text}}}
            try:
                self._core.patch_pod(str(meta.get("namespace")), str(meta.get("name")), body)
            except Exception as e:
                log.warning("event=allocated-not-written pod_uid=%s error=%r", uid, str(e)[:200])
