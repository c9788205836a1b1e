"""The stored objects of every kind, the resourceVersion counter, the recent history that
watches replay, and the observers that act on each write (the garbage collector, the
CustomResourceDefinition controller)."""

from __future__ import annotations

import copy
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import takewhile

from gpulet.standins.apiserver import deletion
from gpulet.standins.apiserver.resources import (
    JsonObject,
    Resource,
    generated_name,
    key_of,
    metadata,
    stamp_new,
)
from gpulet.standins.apiserver.status import (
    ApiError,
    already_exists,
    conflict,
    expired,
    invalid,
    not_found,
)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


@dataclass(frozen=True)
class Change:
    """One write: the object after it (for DELETED, the last state at the deletion's
    resourceVersion) and before it (None for ADDED). Neither is ever mutated."""

    resource_version: int
    type: str
    resource: Resource
    object: JsonObject
    previous: JsonObject | None


Observer = Callable[[Change], None]


class Store:
    """The API server's storage: every write takes the next resourceVersion of one global
    counter and goes into a bounded history. Thread-safe; hands out copies only.

    Observers see every change, in order, right after it: within the write that made it,
    before that write returns, so their own writes (a garbage collector's deletion) follow
    it at once, with later resourceVersions."""

    def __init__(self, history_size: int) -> None:
        # Reentrant (an RLock): observers write from within a write.
        self._changed = threading.Condition(threading.RLock())
        self._objects: defaultdict[Resource, dict[tuple[str, str], JsonObject]] = defaultdict(dict)
        self._observers: list[Observer] = []
        self._undispatched: deque[Change] = deque()
        self._dispatching = False
        self._version = 0
        self._history: deque[Change] = deque(maxlen=history_size)
        self._compacted = 0  # the newest resourceVersion no longer in the history
        self._watch_generation = 0
        self._closed = False

    def observe(self, observer: Observer) -> None:
        """Call observer(change) after every write from now on (holding the store's lock)."""
        with self._changed:
            self._observers.append(observer)

    def find(self, resource: Resource, namespace: str, name: str) -> JsonObject | None:
        """A copy of the object, or None."""
        with self._changed:
            found = self._objects[resource].get((namespace, name))
            return copy.deepcopy(found) if found is not None else None

    def get(self, resource: Resource, namespace: str, name: str) -> JsonObject:
        """A copy of the object; raises NotFound."""
        found = self.find(resource, namespace, name)
        if found is None:
            raise not_found(resource.plural, name, resource.group)
        return found

    def list_objects(
        self,
        resource: Resource,
        namespace: str | None = None,
        matches: Callable[[JsonObject], bool] | None = None,
    ) -> tuple[list[JsonObject], int]:
        """Copies of the matching objects (in namespace/name order; namespace None for all),
        and the resourceVersion they are current at."""
        with self._changed:
            found = [
                copy.deepcopy(obj)
                for (ns, _), obj in sorted(self._objects[resource].items())
                if (namespace is None or ns == namespace) and (matches is None or matches(obj))
            ]
            return found, self._version

    def create(self, resource: Resource, obj: JsonObject) -> JsonObject:
        """Store a new object (a pod's namespace defaults to "default"); raises
        AlreadyExists, Invalid when it has neither name nor generateName, and a 500 when it
        carries a resourceVersion (as etcd3's storage refuses it)."""
        obj = copy.deepcopy(obj)
        meta = metadata(obj)
        if meta.get("resourceVersion"):
            raise ApiError(500, "resourceVersion should not be set on objects to be created")
        meta.pop("deletionTimestamp", None)
        meta.pop("deletionGracePeriodSeconds", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise invalid(
                    resource.qualified_kind,
                    resource.plural,
                    "",
                    "metadata.name: Required value: name or generateName is required",
                )
            meta["name"] = generated_name(str(meta["generateName"]))
        if resource.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        stamp_new(resource, obj)
        key = key_of(obj)
        with self._changed:
            if key in self._objects[resource]:
                raise already_exists(resource.plural, key[1], resource.group)
            self._commit(resource, ADDED, obj, None)
        return copy.deepcopy(obj)

    def update(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        change: Callable[[JsonObject], JsonObject],
        admit: Callable[[JsonObject, JsonObject], JsonObject] | None = None,
    ) -> JsonObject:
        """Replace the object by change(a copy of it), atomically. A metadata.resourceVersion
        left in the result is a precondition (Conflict unless current); the name and
        namespace may not change, nor the server's fields (deletion.keep_system_fields).
        Then admit(the result, the stored object), when given, makes what is stored (or
        raises). A result equal to the stored object writes nothing; one that empties the
        finalizers of an object whose deletion is due removes it (its last state answered)."""
        with self._changed:
            current = self._objects[resource].get((namespace, name))
            if current is None:
                raise not_found(resource.plural, name, resource.group)
            updated = change(copy.deepcopy(current))
            meta, before = metadata(updated), current["metadata"]
            expected = meta.get("resourceVersion")
            if expected not in (None, "") and str(expected) != before["resourceVersion"]:
                raise conflict(resource.plural, name, group=resource.group)
            for field in ("name", "namespace"):
                if meta.get(field, before.get(field)) != before.get(field):
                    raise invalid(
                        resource.qualified_kind,
                        resource.plural,
                        name,
                        f'metadata.{field}: Invalid value: "{meta[field]}": field is immutable',
                    )
                if field in before:
                    meta[field] = before[field]
            deletion.keep_system_fields(resource, meta, before)
            updated["apiVersion"], updated["kind"] = current["apiVersion"], current["kind"]
            if admit is not None:
                updated = admit(updated, copy.deepcopy(current))
            if deletion.released(updated, current):
                return self._remove(resource, current)
            return copy.deepcopy(self._write(resource, updated, current))

    def delete(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        grace_period_seconds: int | None = None,
        precondition: Callable[[JsonObject], None] | None = None,
    ) -> tuple[JsonObject, bool] | None:
        """Delete the object as a DELETE does (deletion.py): removed at once, or marked while
        its grace period or finalizers hold it. Returns its state after (when removed, its
        last state at the removal's version) and whether it was removed. With `uid`: only the
        object of that uid, and None (no error) when it is gone or another object has its
        name now. precondition(the stored object) raises to refuse the deletion."""
        with self._changed:
            key = (namespace, name)
            current = self._objects[resource].get(key)
            if uid is not None and (current is None or current["metadata"].get("uid") != uid):
                return None
            if current is None:
                raise not_found(resource.plural, name, resource.group)
            if precondition is not None:
                precondition(copy.deepcopy(current))
            marked, remove = deletion.plan(resource, current, grace_period_seconds, time.time())
            if marked is not None:
                self._write(resource, marked, current)
            now = self._objects[resource].get(key)
            if now is None:  # an observer of the mark removed it
                return copy.deepcopy(marked or current), True
            if not remove:
                return copy.deepcopy(now), False
            return self._remove(resource, now), True

    def _write(self, resource: Resource, updated: JsonObject, current: JsonObject) -> JsonObject:
        """Store `updated` over `current` (MODIFIED), unless nothing but its resourceVersion
        differs: the API server writes nothing then, and watchers see nothing. Returns what
        is stored (not a copy)."""
        if _without_version(updated) == _without_version(current):
            return current
        self._commit(resource, MODIFIED, updated, current)
        return updated

    def _remove(self, resource: Resource, current: JsonObject) -> JsonObject:
        gone = copy.deepcopy(current)
        self._commit(resource, DELETED, gone, current)
        return copy.deepcopy(gone)

    def _commit(
        self, resource: Resource, kind: str, obj: JsonObject, previous: JsonObject | None
    ) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)
        key = key_of(obj)
        if kind == DELETED:
            del self._objects[resource][key]
        else:
            self._objects[resource][key] = obj
        if len(self._history) == self._history.maxlen:
            self._compacted = self._history[0].resource_version
        change = Change(self._version, kind, resource, obj, previous)
        self._history.append(change)
        self._changed.notify_all()
        self._dispatch(change)

    def _dispatch(self, change: Change) -> None:
        """Hand the change to every observer, after those of the changes before it."""
        self._undispatched.append(change)
        if self._dispatching:
            return  # an observer's write: the outer loop hands it on
        self._dispatching = True
        try:
            while self._undispatched:
                pending = self._undispatched.popleft()
                for observer in self._observers:
                    observer(pending)
        finally:
            self._dispatching = False
            self._undispatched.clear()

    def watch_generation(self) -> int:
        """Changes when drop_watches() is called: a watch ends when it sees it change."""
        with self._changed:
            return self._watch_generation

    def wait_for_changes(self, after: int, generation: int, timeout: float) -> list[Change] | None:
        """The changes after resourceVersion `after`, once there are any or `timeout`
        seconds have passed (then maybe none); None once the store is closed or watches were
        dropped since `generation`. Raises Expired when the history no longer reaches back
        to `after`."""
        with self._changed:
            self._changed.wait_for(
                lambda: (
                    self._version > after or self._closed or self._watch_generation != generation
                ),
                timeout,
            )
            if self._closed or self._watch_generation != generation:
                return None
            if after < self._compacted:
                raise expired(f"too old resource version: {after} ({self._compacted})")
            newer = takewhile(lambda c: c.resource_version > after, reversed(self._history))
            return list(newer)[::-1]

    def drop_watches(self) -> None:
        """End every open watch."""
        with self._changed:
            self._watch_generation += 1
            self._changed.notify_all()

    def close(self) -> None:
        """End every watch, for good."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def _without_version(obj: JsonObject) -> JsonObject:
    return {**obj, "metadata": {k: v for k, v in obj["metadata"].items() if k != "resourceVersion"}}
