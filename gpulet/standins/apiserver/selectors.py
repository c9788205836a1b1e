"""fieldSelector and labelSelector, parsed into predicates over stored objects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gpulet.standins.apiserver.resources import JsonObject
from gpulet.standins.apiserver.status import bad_request

Predicate = Callable[[JsonObject], bool]


@dataclass(frozen=True)
class Fields:
    """The fields a kind's field selectors support, each with the value an absent field reads
    as, and how the API server words the refusal of another (`{label}` stands for it)."""

    supported: Mapping[str, str]
    unsupported: str = "field label not supported: {label}"


#: Every kind without a field label conversion of its own (Leases, CustomResourceDefinitions):
#: apimachinery's DefaultMetaV1FieldSelectorConversion.
META_FIELDS = Fields(
    {"metadata.name": "", "metadata.namespace": ""},
    '"{label}" is not a known field selector: only "metadata.name", "metadata.namespace"',
)
#: A custom resource's, namespaced or cluster-scoped (apiextensions' crConverter).
CUSTOM_NAMESPACED_FIELDS = Fields({"metadata.name": "", "metadata.namespace": ""})
CUSTOM_CLUSTER_FIELDS = Fields({"metadata.name": ""})
EVENT_FIELDS = Fields({"metadata.name": "", "metadata.namespace": ""})
POD_FIELDS = Fields(
    {
        "metadata.name": "",
        "metadata.namespace": "",
        "spec.nodeName": "",
        "spec.restartPolicy": "",
        "spec.schedulerName": "",
        "spec.serviceAccountName": "",
        "spec.hostNetwork": "false",
        "status.phase": "",
        "status.podIP": "",
        "status.nominatedNodeName": "",
    }
)
NODE_FIELDS = Fields({"metadata.name": "", "spec.unschedulable": "false"})


def selector(supported: Fields, fields: str, labels: str) -> Predicate:
    """Whether an object matches both selectors (each an AND of comma-separated terms)."""
    tests = [_field_term(supported, t) for t in _terms(fields)]
    tests += [_label_term(t) for t in _terms(labels)]
    return lambda obj: all(test(obj) for test in tests)


def _terms(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _split(term: str) -> tuple[str, str, str] | None:
    """(key, operator, value) for key!=value, key==value or key=value."""
    for op in ("!=", "==", "="):
        key, found, value = term.partition(op)
        if found:
            return key.strip(), op, value.strip()
    return None


def _field_term(supported: Fields, term: str) -> Predicate:
    parts = _split(term)
    if parts is None:
        raise bad_request(f"invalid selector: '{term}'; can't understand '{term}'")
    field, op, wanted = parts
    if field not in supported.supported:
        raise bad_request(supported.unsupported.format(label=field))
    absent = supported.supported[field]
    if op == "!=":
        return lambda obj: _field_value(obj, field, absent) != wanted
    return lambda obj: _field_value(obj, field, absent) == wanted


def _field_value(obj: JsonObject, field: str, absent: str) -> str:
    value: object = obj
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return absent
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _label_term(term: str) -> Predicate:
    if "(" in term or ")" in term:
        raise bad_request(f"unable to parse requirement: set-based selector '{term}'")
    if term.startswith("!"):
        key = term[1:].strip()
        return lambda obj: key not in _labels(obj)
    parts = _split(term)
    if parts is None:
        return lambda obj: term in _labels(obj)
    key, op, wanted = parts
    if not key:
        raise bad_request(f"unable to parse requirement: '{term}'")
    if op == "!=":
        return lambda obj: _labels(obj).get(key) != wanted
    return lambda obj: _labels(obj).get(key) == wanted


def _labels(obj: JsonObject) -> dict[str, str]:
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return labels if isinstance(labels, dict) else {}
