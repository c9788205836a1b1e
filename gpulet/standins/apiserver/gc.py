"""Garbage collection of dependents, as kube-controller-manager's garbage collector does it
(background propagation), but synchronously: right after the write that calls for it, where
the real one acts a few seconds later.

An object whose metadata.ownerReferences all name owners that do not exist (no object of
that apiVersion and kind, name and uid; a namespaced owner is looked for in its dependent's
namespace, and never exists for a cluster-scoped dependent) is deleted; one with some owners
left loses the references to the others. An owner reference to a kind that is not served
leaves its object alone, as the real collector keeps retrying it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from gpulet.standins.apiserver.kinds import Kinds
from gpulet.standins.apiserver.resources import JsonObject, Resource, key_of
from gpulet.standins.apiserver.store import DELETED, Change, Store

#: An object as the collector knows it: its resource, namespace and name.
Ref = tuple[Resource, str, str]


class Collector:
    """A store observer: keeps which object has which uid and which objects name which
    owner, and deletes (or trims) dependents whose owners are gone."""

    def __init__(self, store: Store, kinds: Kinds) -> None:
        self._store = store
        self._kinds = kinds
        self._by_uid: dict[str, Ref] = {}
        self._dependents: defaultdict[str, set[Ref]] = defaultdict(set)

    def observe(self, change: Change) -> None:
        obj, ref = change.object, _ref(change.resource, change.object)
        uid = str(obj["metadata"].get("uid", ""))
        for owner in _owner_uids(change.previous):
            self._dependents[owner].discard(ref)
        if change.type == DELETED:
            self._by_uid.pop(uid, None)
            for dependent in sorted(self._dependents.pop(uid, set()), key=_order):
                self._judge(dependent)
            return
        self._by_uid[uid] = ref
        owners = _owner_uids(obj)
        for owner in owners:
            self._dependents[owner].add(ref)
        if owners:
            self._judge(ref)

    def _judge(self, ref: Ref) -> None:
        resource, namespace, name = ref
        obj = self._store.find(resource, namespace, name)
        if obj is None:
            return
        refs = [r for r in obj["metadata"].get("ownerReferences") or [] if isinstance(r, dict)]
        verdicts = [self._exists(r, resource, namespace) for r in refs]
        if not refs or None in verdicts:
            return
        if not any(verdicts):
            self._store.delete(resource, namespace, name, uid=obj["metadata"]["uid"])
        elif not all(verdicts):
            solid = [r for r, found in zip(refs, verdicts, strict=True) if found]
            self._store.update(resource, namespace, name, _trimmed(solid))

    def _exists(self, owner: JsonObject, dependent: Resource, namespace: str) -> bool | None:
        """Whether the owner exists; None when its kind is not served."""
        resource = self._kinds.resource_of(str(owner.get("apiVersion")), str(owner.get("kind")))
        if resource is None:
            return None
        if resource.namespaced and not dependent.namespaced:
            return False
        found = self._by_uid.get(str(owner.get("uid", "")))
        where = namespace if resource.namespaced else ""
        return found == (resource, where, owner.get("name"))


def _ref(resource: Resource, obj: JsonObject) -> Ref:
    return (resource, *key_of(obj))


def _order(ref: Ref) -> tuple[str, str, str, str]:
    return ref[0].group, ref[0].plural, ref[1], ref[2]


def _owner_uids(obj: JsonObject | None) -> set[str]:
    if obj is None:
        return set()
    refs = obj.get("metadata", {}).get("ownerReferences") or []
    return {str(r.get("uid")) for r in refs if isinstance(r, dict) and r.get("uid")}


def _trimmed(solid: list[Any]) -> Any:
    def trim(obj: JsonObject) -> JsonObject:
        obj["metadata"]["ownerReferences"] = solid
        obj["metadata"].pop("resourceVersion", None)
        return obj

    return trim
