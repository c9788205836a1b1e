"""The core v1 API's node, pod, status and binding endpoints: a request's path, verb and body
turned into store operations and the reply the API server gives."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from gpulet.standins.apiserver.patch import apply_patch
from gpulet.standins.apiserver.resources import EVENTS, NODES, PODS, JsonObject, Resource, metadata
from gpulet.standins.apiserver.selectors import selector
from gpulet.standins.apiserver.status import ApiError, bad_request, conflict, invalid, success
from gpulet.standins.apiserver.store import Store
from gpulet.standins.apiserver.watch import WatchRequest

COLLECTION = "collection"
OBJECT = "object"
STATUS = "status"
BINDING = "binding"

_NAMESPACE = r"/api/v1/namespaces/(?P<namespace>[^/]+)"
_ROUTES: list[tuple[re.Pattern[str], Resource, str]] = [
    (re.compile(r"/api/v1/nodes"), NODES, COLLECTION),
    (re.compile(r"/api/v1/nodes/(?P<name>[^/]+)"), NODES, OBJECT),
    (re.compile(r"/api/v1/nodes/(?P<name>[^/]+)/status"), NODES, STATUS),
    (re.compile(r"/api/v1/pods"), PODS, COLLECTION),
    (re.compile(_NAMESPACE + r"/pods"), PODS, COLLECTION),
    (re.compile(_NAMESPACE + r"/pods/(?P<name>[^/]+)"), PODS, OBJECT),
    (re.compile(_NAMESPACE + r"/pods/(?P<name>[^/]+)/status"), PODS, STATUS),
    (re.compile(_NAMESPACE + r"/pods/(?P<name>[^/]+)/binding"), PODS, BINDING),
    (re.compile(_NAMESPACE + r"/bindings"), PODS, BINDING),
    (re.compile(r"/api/v1/events"), EVENTS, COLLECTION),
    (re.compile(_NAMESPACE + r"/events"), EVENTS, COLLECTION),
    (re.compile(_NAMESPACE + r"/events/(?P<name>[^/]+)"), EVENTS, OBJECT),
]


@dataclass(frozen=True)
class Request:
    """An HTTP request, decoded: the path without its query, each query parameter's
    first value."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: bytes


@dataclass(frozen=True)
class Reply:
    """A complete (non-streaming) answer."""

    code: int
    body: JsonObject


@dataclass(frozen=True)
class _Target:
    resource: Resource
    endpoint: str
    namespace: str | None
    name: str | None


class CoreV1:
    """Serves the endpoints over a store; hands every Binding body received to on_binding."""

    def __init__(self, store: Store, on_binding: Callable[[JsonObject], None]) -> None:
        self._store = store
        self._on_binding = on_binding
        self._verbs: dict[tuple[str, str], Callable[[_Target, Request], Reply | WatchRequest]] = {
            (COLLECTION, "GET"): self._list,
            (COLLECTION, "POST"): self._create,
            (OBJECT, "GET"): self._get,
            (OBJECT, "PUT"): self._replace,
            (OBJECT, "PATCH"): self._patch,
            (OBJECT, "DELETE"): self._delete,
            (STATUS, "GET"): self._get,
            (STATUS, "PUT"): self._replace,
            (STATUS, "PATCH"): self._patch,
            (BINDING, "POST"): self._bind,
        }

    def serve(self, request: Request) -> Reply | WatchRequest:
        """The reply, or the watch to stream; raises ApiError for a failure."""
        target = _route(request.path)
        handler = self._verbs.get((target.endpoint, request.method))
        creates_everywhere = request.method == "POST" and target.namespace is None
        if handler is None or (target.resource.namespaced and creates_everywhere):
            raise ApiError(405, "the server does not allow this method on the requested resource")
        return handler(target, request)

    def _list(self, target: _Target, request: Request) -> Reply | WatchRequest:
        query = request.query
        matches = selector(
            target.resource, query.get("fieldSelector", ""), query.get("labelSelector", "")
        )
        if query.get("watch", "").lower() in ("true", "1"):
            return WatchRequest(
                target.resource,
                target.namespace,
                matches,
                _resource_version(query.get("resourceVersion", "")),
                _timeout(query.get("timeoutSeconds", "")),
            )
        items, version = self._store.list_objects(target.resource, target.namespace, matches)
        return Reply(
            200,
            {
                "kind": target.resource.list_kind,
                "apiVersion": "v1",
                "metadata": {"resourceVersion": str(version)},
                "items": items,
            },
        )

    def _create(self, target: _Target, request: Request) -> Reply:
        obj = _json_object(request.body)
        if target.namespace is not None:
            meta = metadata(obj)
            if meta.setdefault("namespace", target.namespace) != target.namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
        return Reply(201, self._store.create(target.resource, obj))

    def _get(self, target: _Target, request: Request) -> Reply:
        return Reply(200, self._store.get(*_object_key(target)))

    def _replace(self, target: _Target, request: Request) -> Reply:
        obj = _json_object(request.body)
        return self._update(target, lambda _: obj)

    def _patch(self, target: _Target, request: Request) -> Reply:
        patch = _json(request.body)
        return self._update(
            target, lambda current: apply_patch(request.content_type, current, patch)
        )

    def _update(self, target: _Target, change: Callable[[JsonObject], JsonObject]) -> Reply:
        """Through the object's path a change to its status is ignored; through /status only
        that counts, as the API server's update strategies for pods and nodes have it."""

        def scoped(current: JsonObject) -> JsonObject:
            before = copy.deepcopy(current)
            updated = change(current)
            if target.endpoint != STATUS:
                return _with_status(updated, before.get("status"))
            before["metadata"]["resourceVersion"] = metadata(updated).get("resourceVersion")
            return _with_status(before, updated.get("status"))

        return Reply(200, self._store.update(*_object_key(target), scoped))

    def _delete(self, target: _Target, request: Request) -> Reply:
        gone = self._store.delete(*_object_key(target))
        if target.resource == PODS:
            return Reply(200, gone)
        details = {"name": gone["metadata"]["name"], "kind": target.resource.plural}
        return Reply(200, success(200, details | {"uid": gone["metadata"]["uid"]}))

    def _bind(self, target: _Target, request: Request) -> Reply:
        """Set the pod's spec.nodeName from a v1 Binding, as the scheduler's bind does."""
        binding = _json_object(request.body)
        self._on_binding(binding)
        binding_meta = metadata(binding)
        name = binding_meta.get("name")
        if target.name is not None and name != target.name:
            raise bad_request("name in URL does not match name in Binding object")
        if not name:
            raise invalid("Binding", "bindings", "", "metadata.name: Required value")
        node_ref = binding.get("target")
        node = node_ref.get("name") if isinstance(node_ref, dict) else None
        if not node:
            raise invalid("Binding", "bindings", name, "target.name: Required value")
        # The pods/{name}/binding subresource takes the Binding's uid as a precondition; the
        # collection (POST .../bindings) is a create, whose uid the API server replaces, so
        # it checks none (kube-apiserver 1.37, tests/e2e/test_standin_parity.py). Both take
        # its resourceVersion as one.
        uid = binding_meta.get("uid") if target.name is not None else None
        version = binding_meta.get("resourceVersion")

        def assign(pod: JsonObject) -> JsonObject:
            """The pod on the node; Conflict if it is another pod (uid) or version, or is
            already placed."""
            if uid and uid != pod["metadata"]["uid"]:
                raise conflict(
                    "pods/binding",
                    name,
                    f"Precondition failed: UID in precondition: {uid}, "
                    f"UID in object meta: {pod['metadata']['uid']}",
                )
            if version and version != pod["metadata"].get("resourceVersion"):
                raise conflict(
                    "pods/binding",
                    name,
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again",
                )
            assigned = (pod.get("spec") or {}).get("nodeName")
            if assigned:
                raise conflict(
                    "pods/binding", name, f'pod {name} is already assigned to node "{assigned}"'
                )
            pod.setdefault("spec", {})["nodeName"] = node
            return pod

        self._store.update(PODS, target.namespace or "", name, assign)
        return Reply(201, success(201))


def _route(path: str) -> _Target:
    for pattern, resource, endpoint in _ROUTES:
        found = pattern.fullmatch(path)
        if found:
            groups = {k: unquote(v) for k, v in found.groupdict().items()}
            return _Target(resource, endpoint, groups.get("namespace"), groups.get("name"))
    raise ApiError(404, "the server could not find the requested resource")


def _with_status(obj: JsonObject, status: Any) -> JsonObject:
    if status is None:
        obj.pop("status", None)
    else:
        obj["status"] = status
    return obj


def _object_key(target: _Target) -> tuple[Resource, str, str]:
    return target.resource, target.namespace or "", target.name or ""


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as e:
        raise bad_request(f"couldn't get version/kind; json parse error: {e}") from e


def _json_object(body: bytes) -> JsonObject:
    obj = _json(body)
    if not isinstance(obj, dict):
        raise bad_request("the request body is not a JSON object")
    return obj


def _resource_version(text: str) -> int | None:
    """A watch's starting resourceVersion; None ("" or "0") means list first."""
    if text in ("", "0"):
        return None
    if not text.isdigit():
        raise bad_request(f'resourceVersion: Invalid value: "{text}": must be an integer')
    return int(text)


def _timeout(text: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError as e:
        raise bad_request(f'timeoutSeconds: Invalid value: "{text}"') from e
