"""The REST verbs on every served kind (routes.py resolves the path): a request's verb and
body turned into store operations and the reply the API server gives."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpulet.standins.apiserver.binding import bind
from gpulet.standins.apiserver.kinds import Kind, Kinds
from gpulet.standins.apiserver.patch import apply_patch
from gpulet.standins.apiserver.resources import JsonObject, Resource, metadata
from gpulet.standins.apiserver.routes import (
    BINDING,
    COLLECTION,
    EVICTION,
    OBJECT,
    STATUS,
    Target,
    route,
)
from gpulet.standins.apiserver.selectors import selector
from gpulet.standins.apiserver.status import (
    ApiError,
    FieldError,
    bad_request,
    conflict,
    invalid_fields,
    success,
    uid_precondition_failed,
)
from gpulet.standins.apiserver.store import Store
from gpulet.standins.apiserver.watch import WatchRequest


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


Handler = Callable[[Target, Request], "Reply | WatchRequest"]


class RestApi:
    """Serves every kind `kinds` serves over a store; hands every Binding body received to
    on_binding."""

    def __init__(
        self, store: Store, kinds: Kinds, on_binding: Callable[[JsonObject], None]
    ) -> None:
        self._store = store
        self._kinds = kinds
        self._on_binding = on_binding
        self._verbs: dict[tuple[str, str], Handler] = {
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
            (EVICTION, "POST"): self._evict,
        }

    def serve(self, request: Request) -> Reply | WatchRequest:
        """The reply, or the watch to stream; raises ApiError for a failure."""
        target = route(request.path, self._kinds)
        handler = self._verbs.get((target.endpoint, request.method))
        creates_everywhere = request.method == "POST" and target.namespace is None
        if handler is None or (target.kind.resource.namespaced and creates_everywhere):
            raise ApiError(
                405, "the server does not allow this method on the requested resource", details={}
            )
        return handler(target, request)

    def _list(self, target: Target, request: Request) -> Reply | WatchRequest:
        query, kind = request.query, target.kind
        matches = selector(
            kind.fields, query.get("fieldSelector", ""), query.get("labelSelector", "")
        )
        if query.get("watch", "").lower() in ("true", "1"):
            return WatchRequest(
                kind.resource,
                target.namespace,
                matches,
                _resource_version(query.get("resourceVersion", "")),
                _timeout(query.get("timeoutSeconds", "")),
                kind.api_version,
            )
        items, version = self._store.list_objects(kind.resource, target.namespace, matches)
        return Reply(
            200,
            {
                "kind": kind.resource.list_kind,
                "apiVersion": kind.api_version,
                "metadata": {"resourceVersion": str(version)},
                "items": [served(kind, item) for item in items],
            },
        )

    def _create(self, target: Target, request: Request) -> Reply:
        return Reply(201, self.create(target, json_object(request.body)))

    def create(self, target: Target, obj: JsonObject) -> JsonObject:
        """Create the object in the target's collection (and namespace); its answer."""
        kind = target.kind
        _check_type(kind, obj)
        if target.namespace is not None:
            meta = metadata(obj)
            if meta.setdefault("namespace", target.namespace) != target.namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
        if kind.custom and kind.status_subresource:
            obj.pop("status", None)  # status is the subresource's to write
        obj = kind.admit(obj, None)
        _set_generation(kind, obj, None)
        return served(kind, self._store.create(kind.resource, obj))

    def _get(self, target: Target, request: Request) -> Reply:
        return Reply(200, served(target.kind, self._store.get(*object_key(target))))

    def _replace(self, target: Target, request: Request) -> Reply:
        obj = json_object(request.body)
        kind = target.kind
        if kind.create_on_update and self._store.find(*object_key(target)) is None:
            meta = metadata(obj)
            meta.setdefault("name", target.name)
            meta.pop("resourceVersion", None)  # a create through the update path
            return Reply(201, self.create(target, obj))
        return Reply(200, self.replace(target, obj))

    def replace(self, target: Target, obj: JsonObject) -> JsonObject:
        """PUT: the object replaced by `obj`, over the resourceVersion `obj` carries (which
        a kind without unconditional updates requires); the answer."""
        kind = target.kind
        _check_type(kind, obj)
        named = metadata(obj).get("name")
        if named and named != target.name:
            raise bad_request(
                f"the name of the object ({named}) does not match the name on the URL "
                f"({target.name})"
            )

        def replace(current: JsonObject) -> JsonObject:
            uid, stored = metadata(obj).get("uid"), current["metadata"]["uid"]
            if uid and uid != stored:  # the API server takes a PUT's uid as a precondition
                raise uid_precondition_failed(
                    kind.resource.qualified, target.name or "", uid, stored
                )
            if not kind.unconditional_update and not metadata(obj).get("resourceVersion"):
                resource = kind.resource
                raise invalid_fields(
                    resource.plural,
                    resource.group,
                    target.name or "",
                    [
                        FieldError(
                            "metadata.resourceVersion",
                            "FieldValueInvalid",
                            "Invalid value: 0: must be specified for an update",
                        )
                    ],
                )
            return obj

        return self.update(target, replace)

    def _patch(self, target: Target, request: Request) -> Reply:
        patch = _json(request.body)
        strategic = not target.kind.custom
        return Reply(
            200,
            self.update(
                target,
                lambda current: apply_patch(
                    request.content_type, current, patch, strategic=strategic
                ),
            ),
        )

    def update(self, target: Target, change: Callable[[JsonObject], JsonObject]) -> JsonObject:
        """The object replaced by change(a copy of it), admitted by its kind; the answer.
        With a status subresource, a change to status through the object's path is ignored,
        and through /status only that counts, as the API server's update strategies have it."""
        kind = target.kind

        def scoped(current: JsonObject) -> JsonObject:
            before = copy.deepcopy(current)
            updated = change(current)
            if not kind.status_subresource:
                return updated
            if target.endpoint != STATUS:
                return _with_status(updated, before.get("status"))
            before["metadata"]["resourceVersion"] = metadata(updated).get("resourceVersion")
            return _with_status(before, updated.get("status"))

        def admit(updated: JsonObject, current: JsonObject) -> JsonObject:
            admitted = kind.admit(updated, current)
            _set_generation(kind, admitted, current)
            return admitted

        return served(kind, self._store.update(*object_key(target), scoped, admit))

    def _delete(self, target: Target, request: Request) -> Reply:
        """DeleteOptions from the body, else from the query (as the API server reads them):
        gracePeriodSeconds and preconditions (uid, resourceVersion)."""
        options = json_object(request.body) if request.body.strip() else {}
        grace = options.get("gracePeriodSeconds", request.query.get("gracePeriodSeconds"))
        preconditions = options.get("preconditions") or {}
        return Reply(
            200,
            self.delete(
                target,
                grace_period_seconds=None
                if grace is None
                else _integer("gracePeriodSeconds", grace),
                uid=preconditions.get("uid"),
                resource_version=preconditions.get("resourceVersion"),
            ),
        )

    def delete(
        self,
        target: Target,
        *,
        grace_period_seconds: int | None = None,
        uid: str | None = None,
        resource_version: str | None = None,
    ) -> JsonObject:
        """Delete the object (deletion.py; once removed, its dependents follow), if it has
        the uid and resourceVersion given (else Conflict). The answer: the object while it
        is held (graceful deletion, finalizers); once removed, its last state or a Status,
        as the kind's."""
        kind = target.kind
        resource, _, name = object_key(target)

        def precondition(current: JsonObject) -> None:
            meta = current["metadata"]
            if uid and uid != meta["uid"]:
                raise uid_precondition_failed(resource.qualified, name, uid, meta["uid"])
            if resource_version and resource_version != meta["resourceVersion"]:
                raise conflict(resource.plural, name, group=resource.group)

        deleted = self._store.delete(
            *object_key(target),
            grace_period_seconds=grace_period_seconds,
            precondition=precondition,
        )
        assert deleted is not None  # no uid given: NotFound raised instead
        last, removed = deleted
        if kind.delete_answers_object or not removed:
            return served(kind, last)
        meta = last["metadata"]
        details = {"name": meta["name"], "group": resource.group, "kind": resource.plural}
        return success(None, {k: v for k, v in details.items() if v} | {"uid": meta["uid"]})

    def _bind(self, target: Target, request: Request) -> Reply:
        """Set the pod's spec.nodeName from a v1 Binding, as the scheduler's bind does."""
        binding = json_object(request.body)
        self._on_binding(binding)
        bind(self._store, target.namespace or "", target.name, binding)
        return Reply(201, success(201))

    def _evict(self, target: Target, request: Request) -> Reply:
        """A policy/v1 Eviction, as the API server takes one where no PodDisruptionBudget
        covers the pod (the stand-in has none): the pod deleted with the Eviction's
        deleteOptions (grace period, uid precondition); 201 and a Status."""
        eviction = json_object(request.body)
        if eviction.get("kind") != "Eviction" or eviction.get("apiVersion") not in (
            "policy/v1",
            "policy/v1beta1",
        ):
            raise bad_request("the body of an eviction must be a policy/v1 Eviction")
        if metadata(eviction).get("name") != target.name:
            raise bad_request("name in URL does not match name in Eviction object")
        options = eviction.get("deleteOptions") or {}
        grace = options.get("gracePeriodSeconds")
        self.delete(
            target,
            grace_period_seconds=None if grace is None else _integer("gracePeriodSeconds", grace),
            uid=(options.get("preconditions") or {}).get("uid"),
        )
        return Reply(201, success(201))


def served(kind: Kind, obj: JsonObject) -> JsonObject:
    """A stored object (a copy) as the kind's version serves it: a custom resource is
    converted between its versions by its apiVersion alone (conversion strategy None)."""
    obj["apiVersion"] = kind.api_version
    return obj


def _check_type(kind: Kind, obj: JsonObject) -> None:
    """apiVersion and kind, as the API server's decoding (400) and a custom resource's
    validation (422) check them; core kinds take what they are sent (the store sets both)."""
    if not kind.checks_type:
        return
    api_version, kind_name = obj.get("apiVersion"), obj.get("kind")
    if kind.custom and not kind_name:
        raise bad_request(
            f"the object provided is unrecognized (must be of type {kind.resource.kind}): "
            f"Object 'Kind' is missing in '{json.dumps(obj)}'"
        )
    if (kind.custom or api_version) and api_version != kind.api_version:
        raise bad_request(
            f"the API version in the data ({api_version or ''}) does not match the expected "
            f"API version ({kind.api_version})"
        )
    if kind_name and kind_name != kind.resource.kind:
        if not kind.custom:
            version = str(api_version or "").rpartition("/")[2]
            raise bad_request(
                f'{kind_name} in version "{version}" cannot be handled as a '
                f'{kind.resource.kind}: no kind "{kind_name}" is registered for version '
                f'"{api_version}" in scheme "pkg/runtime/scheme.go:111"'
            )
        name = str(metadata(obj).get("name", ""))
        wrong = FieldError(
            "kind",
            "FieldValueInvalid",
            f'Invalid value: "{kind_name}": must be {kind.resource.kind}',
        )
        raise invalid_fields(str(kind_name), kind.resource.group, name, [wrong])


def _set_generation(kind: Kind, obj: JsonObject, old: JsonObject | None) -> None:
    """1 on create; one more when anything but metadata (and status, when it has its own
    subresource) changed."""
    if not kind.tracks_generation:
        return
    meta = metadata(obj)
    if old is None:
        meta["generation"] = 1
        return
    generation = int(old["metadata"].get("generation") or 1)
    meta["generation"] = (
        generation + 1 if _content(kind, obj) != _content(kind, old) else generation
    )


def _content(kind: Kind, obj: JsonObject) -> JsonObject:
    ignored = {"apiVersion", "kind", "metadata"} | (
        {"status"} if kind.status_subresource else set()
    )
    return {k: v for k, v in obj.items() if k not in ignored}


def _with_status(obj: JsonObject, status: Any) -> JsonObject:
    if status is None:
        obj.pop("status", None)
    else:
        obj["status"] = status
    return obj


def object_key(target: Target) -> tuple[Resource, str, str]:
    """The store's key of the target's object."""
    return target.kind.resource, target.namespace or "", target.name or ""


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as e:
        raise bad_request(f"couldn't get version/kind; json parse error: {e}") from e


def json_object(body: bytes) -> JsonObject:
    """The request body, which must be a JSON object (else 400)."""
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


def _integer(name: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError) as e:
        raise bad_request(f'{name}: Invalid value: "{value}": must be an integer') from e


def _timeout(text: str) -> float | None:
    if not text:
        return None
    try:
        return float(text)
    except ValueError as e:
        raise bad_request(f'timeoutSeconds: Invalid value: "{text}"') from e
