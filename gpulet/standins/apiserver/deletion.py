"""Deletion and the metadata that goes with it, as kube-apiserver's generic registry has them
(rest.BeforeDelete, Store.Delete, rest.BeforeUpdate, ValidateObjectMetaUpdate).

A DELETE of a kind with graceful deletion (pods) sets metadata.deletionTimestamp (now plus
the grace period) and metadata.deletionGracePeriodSeconds, and removes the object only when
that grace is 0 (a pod's kubelet deletes it so once its containers stopped). A later DELETE
may only shorten the grace. An object with metadata.finalizers, of any kind, is never
removed by a DELETE: it is marked (grace 0 where its kind has no graceful deletion) and goes
when an update empties its finalizers with its grace at 0."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from gpulet.api.stamps import epoch, stamp
from gpulet.standins.apiserver.resources import PODS, JsonObject, Resource
from gpulet.standins.apiserver.status import FieldError, invalid_fields

#: A kind's graceful deletion: (the object, the DELETE's gracePeriodSeconds or None) to the
#: grace period in seconds (0: now).
GracePeriod = Callable[[JsonObject, int | None], int]

#: A pod's grace period when neither the DELETE nor its spec names one (the API server
#: defaults spec.terminationGracePeriodSeconds to it; the stand-in does not store it).
DEFAULT_POD_GRACE_S = 30


def pod_grace(pod: JsonObject, requested: int | None) -> int:
    """The DELETE's grace, else the pod's terminationGracePeriodSeconds; 0 for a pod on no
    node or one that has finished (Succeeded, Failed)."""
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
        return 0
    if requested is not None:
        return requested
    return int(spec.get("terminationGracePeriodSeconds", DEFAULT_POD_GRACE_S))


GRACEFUL: dict[Resource, GracePeriod] = {PODS: pod_grace}

# _graceful's answer when a deletion is already under way with no shorter grace asked for.
_PENDING = -1


def plan(
    resource: Resource, current: JsonObject, requested: int | None, now: float
) -> tuple[JsonObject | None, bool]:
    """What a DELETE does to the stored object `current` (requested: its gracePeriodSeconds):
    (the object to write first, or None for no write; whether it is then removed)."""
    if requested is not None and requested < 0:
        requested = 1  # as the API server treats a negative grace
    marked = copy.deepcopy(current)
    meta = marked["metadata"]
    held = bool(meta.get("finalizers"))
    grace = _graceful(resource, marked, requested, now)
    if grace == _PENDING:
        return None, False
    if grace is None:
        if not held:
            return None, True
        _mark_now(meta, now)
        return marked, False
    return marked, grace == 0 and not held


def _graceful(resource: Resource, obj: JsonObject, requested: int | None, now: float) -> int | None:
    """The grace period set on obj (deletionTimestamp and deletionGracePeriodSeconds);
    None where the kind has none or a deletion at grace 0 is under way, _PENDING where
    one under way stays as it is."""
    rule = GRACEFUL.get(resource)
    if rule is None:
        return None
    meta = obj["metadata"]
    if meta.get("deletionTimestamp"):
        old = meta.get("deletionGracePeriodSeconds")
        if not old:
            return None
        if requested is None or requested >= old:
            return _PENDING
        begun = (epoch(meta["deletionTimestamp"]) or now) - old
        _mark(meta, begun + requested, requested)
        return requested
    period = rule(obj, requested)
    _mark(meta, now + period, period)
    if int(meta.get("generation") or 0) > 0:
        meta["generation"] += 1
    return period


def _mark(meta: JsonObject, deadline: float, grace: int) -> None:
    meta["deletionTimestamp"] = stamp(deadline)
    meta["deletionGracePeriodSeconds"] = grace


def _mark_now(meta: JsonObject, now: float) -> None:
    """Marked as being deleted now, at grace 0 (a kind without graceful deletion, held by
    its finalizers); an earlier deletionTimestamp is kept."""
    if not meta.get("deletionTimestamp") and int(meta.get("generation") or 0) > 0:
        meta["generation"] += 1
    marked = epoch(meta.get("deletionTimestamp"))
    _mark(meta, now if marked is None or marked > now else marked, 0)


def released(updated: JsonObject, current: JsonObject) -> bool:
    """Whether an update removes the object: it empties the finalizers of one being deleted
    whose grace is over (0)."""
    before = current["metadata"]
    return (
        not updated["metadata"].get("finalizers")
        and bool(before.get("deletionTimestamp"))
        and not before.get("deletionGracePeriodSeconds")
    )


def keep_system_fields(resource: Resource, meta: JsonObject, before: JsonObject) -> None:
    """An update's metadata (`meta`, changed in place) against the stored `before`: uid
    (kept when left out), creationTimestamp, deletionTimestamp and its grace are the
    server's; changing uid or the grace, or setting deletionTimestamp, is 422 Invalid, as is
    a new finalizer once deletion has begun."""
    if not meta.get("uid"):
        meta["uid"] = before.get("uid")
    if "creationTimestamp" in before:
        meta["creationTimestamp"] = before["creationTimestamp"]
    if "deletionTimestamp" in before:
        meta["deletionTimestamp"] = before["deletionTimestamp"]
        if (
            meta.get("deletionGracePeriodSeconds") is None
            and "deletionGracePeriodSeconds" in before
        ):
            meta["deletionGracePeriodSeconds"] = before["deletionGracePeriodSeconds"]
    errors = [
        _immutable(field, meta.get(field))
        for field in ("uid", "deletionTimestamp", "deletionGracePeriodSeconds")
        if meta.get(field) != before.get(field)
    ]
    added = sorted(set(meta.get("finalizers") or []) - set(before.get("finalizers") or []))
    if added and before.get("deletionTimestamp"):
        listed = ", ".join(f'"{f}"' for f in added)
        errors.append(
            FieldError(
                "metadata.finalizers",
                "FieldValueForbidden",
                "Forbidden: no new finalizers can be added if the object is being deleted, "
                f"found new finalizers []string{{{listed}}}",
            )
        )
    if errors:
        raise invalid_fields(resource.kind, resource.group, str(before.get("name", "")), errors)


def _immutable(field: str, value: Any) -> FieldError:
    shown = f'"{value}"' if isinstance(value, str) else str(value)
    return FieldError(
        f"metadata.{field}", "FieldValueInvalid", f"Invalid value: {shown}: field is immutable"
    )
