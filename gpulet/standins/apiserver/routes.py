"""A request's path, as the API server resolves it: the served kind (Kinds), the endpoint
(collection, object, status, binding, eviction), the namespace and name. Paths of kinds not served
(a custom resource before its definition, or after) are 404, as the real one answers."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from gpulet.standins.apiserver.kinds import Kind, Kinds
from gpulet.standins.apiserver.resources import PODS
from gpulet.standins.apiserver.status import ApiError

COLLECTION = "collection"
OBJECT = "object"
STATUS = "status"
BINDING = "binding"
EVICTION = "eviction"


@dataclass(frozen=True)
class Target:
    kind: Kind
    endpoint: str
    #: None: every namespace (a list or watch of a namespaced kind), or a cluster-scoped kind.
    namespace: str | None
    name: str | None


def not_served() -> ApiError:
    """A resource not served in a group version that is (a Status, with empty details)."""
    return ApiError(404, "the server could not find the requested resource", details={})


def no_such_group() -> ApiError:
    """A path of no group version served: Go's plain-text 404, as kube-apiserver answers."""
    return ApiError(404, "404 page not found\n", plain=True)


def route(path: str, kinds: Kinds) -> Target:
    """The target of a path such as /api/v1/namespaces/ns/pods/web/status or
    /apis/gpulet.io/v1/nodetopologies; raises ApiError 404 for anything not served."""
    parts = [unquote(p) for p in path.strip("/").split("/")]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        raise no_such_group()
    if not kinds.serves(group, version):
        raise no_such_group()
    namespace = None
    if len(rest) >= 3 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3 or not all(rest):
        raise not_served()
    if group == "" and namespace is not None and rest == ["bindings"]:
        return Target(_kind(kinds, "", "v1", PODS.plural), BINDING, namespace, None)
    kind = _kind(kinds, group, version, rest[0])
    if kind.resource.namespaced != (namespace is not None) and len(rest) > 1:
        raise not_served()
    if not kind.resource.namespaced and namespace is not None:
        raise not_served()
    name = rest[1] if len(rest) > 1 else None
    return Target(kind, _endpoint(kind, rest), namespace, name)


def _kind(kinds: Kinds, group: str, version: str, plural: str) -> Kind:
    kind = kinds.find(group, version, plural)
    if kind is None:
        raise not_served()
    return kind


def _endpoint(kind: Kind, rest: list[str]) -> str:
    if len(rest) == 1:
        return COLLECTION
    if len(rest) == 2:
        return OBJECT
    if rest[2] == "status" and kind.status_subresource:
        return STATUS
    if rest[2] == "binding" and kind.resource == PODS:
        return BINDING
    if rest[2] == "eviction" and kind.resource == PODS:
        return EVICTION
    raise not_served()
