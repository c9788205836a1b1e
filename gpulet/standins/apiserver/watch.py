"""A watch: the events one watch request streams, replayed from the store's history."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from gpulet.standins.apiserver.resources import JsonObject, Resource, key_of
from gpulet.standins.apiserver.status import ApiError
from gpulet.standins.apiserver.store import ADDED, DELETED, MODIFIED, Change, Store

# How often an idle watch checks whether its client is still there.
POLL_SECONDS = 0.25


@dataclass(frozen=True)
class WatchRequest:
    """What to watch. resource_version None starts with a synthetic ADDED per object;
    api_version is the version objects are shown at (a custom resource's served version)."""

    resource: Resource
    namespace: str | None
    matches: Callable[[JsonObject], bool]
    resource_version: int | None
    timeout_seconds: float | None
    api_version: str = ""

    def shows(self, obj: JsonObject) -> bool:
        """Whether the object is within this watch's namespace and selectors."""
        in_namespace = self.namespace is None or key_of(obj)[0] == self.namespace
        return in_namespace and self.matches(obj)


def watch_events(
    store: Store, request: WatchRequest, client_gone: Callable[[], bool]
) -> Iterator[JsonObject]:
    """The watch's events, as the API server streams them, until its timeout, a
    drop_watches(), the store's closing, or the client going away. An expired
    resourceVersion gives one ERROR event (a 410 Status), then the end."""
    deadline = (
        None if request.timeout_seconds is None else time.monotonic() + request.timeout_seconds
    )
    generation = store.watch_generation()
    cursor = request.resource_version
    if cursor is None:
        objects, cursor = store.list_objects(request.resource, request.namespace, request.matches)
        for obj in objects:
            yield _event(ADDED, obj, request.api_version)
    while not client_gone():
        wait = POLL_SECONDS if deadline is None else min(POLL_SECONDS, deadline - time.monotonic())
        if wait <= 0:
            return
        try:
            changes = store.wait_for_changes(cursor, generation, wait)
        except ApiError as e:
            yield _event("ERROR", e.status())
            return
        if changes is None:
            return
        for change in changes:
            cursor = change.resource_version
            event = _seen_by(request, change)
            if event is not None:
                yield event


def _event(kind: str, obj: JsonObject, api_version: str = "") -> JsonObject:
    """The event; the object (never mutated: it may be the store's) at `api_version`."""
    if api_version and obj.get("apiVersion") != api_version:
        obj = {**obj, "apiVersion": api_version}
    return {"type": kind, "object": obj}


def _seen_by(request: WatchRequest, change: Change) -> JsonObject | None:
    """The event this watch sees for a change, as the API server's watch cache filters:
    an object moving into the selection is ADDED, one moving out is DELETED."""
    if change.resource != request.resource:
        return None
    version = request.api_version
    if change.type == DELETED:
        return _event(DELETED, change.object, version) if request.shows(change.object) else None
    previous = change.previous
    before = previous if previous is not None and request.shows(previous) else None
    if request.shows(change.object):
        return _event(ADDED if before is None else MODIFIED, change.object, version)
    if before is None:
        return None
    left = copy.deepcopy(before)
    left["metadata"]["resourceVersion"] = str(change.resource_version)
    return _event(DELETED, left, version)
