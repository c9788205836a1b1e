"""What the API server serves: each resource at each of its versions, with the rules of its
writes (Kind), looked up by path or, for the garbage collector, by apiVersion and kind."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from gpulet.standins.apiserver.resources import EVENTS, NODES, PODS, JsonObject, Resource
from gpulet.standins.apiserver.selectors import EVENT_FIELDS, NODE_FIELDS, POD_FIELDS, Fields

#: A kind's admission of a write: (the object to store, the stored one or None for a create)
#: to what is stored; raises ApiError (400, 422) for an object it refuses.
Admit = Callable[[JsonObject, JsonObject | None], JsonObject]


def as_is(obj: JsonObject, old: JsonObject | None) -> JsonObject:
    return obj


@dataclass(frozen=True)
class Kind:
    """One resource as one of its versions serves it, and the rules of its writes."""

    resource: Resource
    version: str
    fields: Fields
    admit: Admit = as_is
    #: A PUT without metadata.resourceVersion replaces what is stored (else 422 Invalid).
    unconditional_update: bool = True
    #: A PUT of an object that is not there creates it (201; else 404).
    create_on_update: bool = False
    #: Through the object's path a change to `status` is ignored; /status changes only it.
    status_subresource: bool = False
    #: A custom resource: decoded as unstructured JSON (kind required, a wrong one 422) and
    #: patched by JSON or merge patches only (415 for a strategic merge patch).
    custom: bool = False
    #: DELETE answers the object's last state (else a Status).
    delete_answers_object: bool = False
    #: apiVersion and kind of a written object are checked against the path's.
    checks_type: bool = False
    #: metadata.generation: 1 on create, one more with each change but to metadata (and to
    #: status, with a status subresource).
    tracks_generation: bool = False

    @property
    def api_version(self) -> str:
        group = self.resource.group
        return f"{group}/{self.version}" if group else self.version


CORE_KINDS = (
    Kind(PODS, "v1", POD_FIELDS, status_subresource=True, delete_answers_object=True),
    Kind(NODES, "v1", NODE_FIELDS, status_subresource=True),
    Kind(EVENTS, "v1", EVENT_FIELDS),
)


class Kinds:
    """The served kinds, thread-safe: custom resources come and go with their definitions."""

    def __init__(self, builtin: Iterable[Kind]) -> None:
        self._lock = threading.Lock()
        self._served: dict[tuple[str, str, str], Kind] = {}
        self._by_kind: dict[tuple[str, str], Resource] = {}
        self.add(builtin)

    def add(self, kinds: Iterable[Kind]) -> None:
        with self._lock:
            for kind in kinds:
                resource = kind.resource
                self._served[(resource.group, kind.version, resource.plural)] = kind
                self._by_kind[(kind.api_version, resource.kind)] = resource

    def remove(self, resource: Resource) -> None:
        """Stop serving every version of the resource."""
        with self._lock:
            for key, kind in list(self._served.items()):
                if kind.resource == resource:
                    del self._served[key]
                    self._by_kind.pop((kind.api_version, kind.resource.kind), None)

    def serves(self, group: str, version: str) -> bool:
        """Whether any resource of the group version is served."""
        with self._lock:
            return any(g == group and v == version for g, v, _ in self._served)

    def find(self, group: str, version: str, plural: str) -> Kind | None:
        with self._lock:
            return self._served.get((group, version, plural))

    def resource_of(self, api_version: str, kind: str) -> Resource | None:
        """The resource an owner reference's apiVersion and kind name, if served."""
        with self._lock:
            return self._by_kind.get((api_version, kind))
