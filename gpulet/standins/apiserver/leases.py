"""coordination.k8s.io/v1 Leases, as the API server decodes and validates them: fields it
does not know dropped, a wrong type or a time that is not a MicroTime refused while decoding
(400), then spec.leaseDurationSeconds and spec.leaseTransitions checked (422)."""

from __future__ import annotations

import contextlib
import json
import re
from datetime import UTC, datetime
from typing import Any

from gpulet.standins.apiserver.kinds import Kind
from gpulet.standins.apiserver.openapi import Schema, admit, json_type
from gpulet.standins.apiserver.resources import LEASES, JsonObject, name_errors
from gpulet.standins.apiserver.selectors import META_FIELDS
from gpulet.standins.apiserver.status import FieldError, bad_request, invalid_fields

#: metav1.MicroTime's layout: exactly six decimals, and a zone.
MICRO_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"
_MICRO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")
_TIMES = ("acquireTime", "renewTime")
_GO_TYPES = {"holderIdentity": "string", "strategy": "string", "preferredHolder": "string"}

_INT32: Schema = {"type": "integer", "format": "int32"}
_STRING: Schema = {"type": "string"}
LEASE_SCHEMA: Schema = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "properties": {
                "holderIdentity": _STRING,
                "leaseDurationSeconds": _INT32,
                "acquireTime": _STRING,
                "renewTime": _STRING,
                "leaseTransitions": _INT32,
                "strategy": _STRING,
                "preferredHolder": _STRING,
            },
        }
    },
}


def admit_lease(obj: JsonObject, old: JsonObject | None) -> JsonObject:
    """The Lease as the API server stores it (times in UTC), or the error it answers."""
    lease, errors = admit(obj, LEASE_SCHEMA)
    if errors:
        raise bad_request(_undecodable(errors[0], lease))
    spec = lease.get("spec")
    if isinstance(spec, dict):
        for field in _TIMES:
            if field in spec:
                spec[field] = _micro_time(spec[field])
    problems = name_errors(lease) + _spec_errors(spec if isinstance(spec, dict) else {})
    if problems:
        name = str(lease.get("metadata", {}).get("name", ""))
        raise invalid_fields("Lease", LEASES.group, name, problems)
    return lease


def _undecodable(error: FieldError, lease: JsonObject) -> str:
    """The decoding error of a wrongly typed field, as Go's encoding/json words it."""
    value: Any = lease
    for part in error.field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    field = error.field.rsplit(".", 1)[-1]
    go_type = _GO_TYPES.get(field, "int32") if error.field.startswith("spec.") else "struct"
    return (
        'Lease in version "v1" cannot be handled as a Lease: json: cannot unmarshal '
        f"{_go_json(value)} into Go struct field LeaseSpec.{error.field} of type {go_type}"
    )


def _go_json(value: Any) -> str:
    kind = json_type(value)
    return {"integer": "number", "boolean": "bool"}.get(kind, kind)


def _micro_time(value: Any) -> str:
    """A MicroTime in UTC, six decimals; 400 for what metav1.MicroTime does not parse
    (Go's time.Parse with MICRO_LAYOUT: exactly six decimals)."""
    text = value if isinstance(value, str) else json.dumps(value)
    parsed = None
    if _MICRO.fullmatch(text):
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed is None:
        raise bad_request(
            'Lease in version "v1" cannot be handled as a Lease: parsing time '
            f'"{text}" as "{MICRO_LAYOUT}": {_parse_failure(text)}'
        )
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_failure(text: str) -> str:
    """Where Go's time.Parse stops, as it words it, for the usual mistakes."""
    rest = text[19:]
    if not re.match(r"\.\d{6}", rest):
        return f'cannot parse "{rest}" as ".000000"'
    return f'cannot parse "{rest[7:]}" as "Z07:00"'


def _spec_errors(spec: JsonObject) -> list[FieldError]:
    errors = []
    duration = spec.get("leaseDurationSeconds")
    if isinstance(duration, int) and duration <= 0:
        errors.append(
            FieldError(
                "spec.leaseDurationSeconds",
                "FieldValueInvalid",
                f"Invalid value: {duration}: must be greater than 0",
            )
        )
    transitions = spec.get("leaseTransitions")
    if isinstance(transitions, int) and transitions < 0:
        errors.append(
            FieldError(
                "spec.leaseTransitions",
                "FieldValueInvalid",
                f"Invalid value: {transitions}: must be greater than or equal to 0",
            )
        )
    if spec.get("preferredHolder") and not spec.get("strategy"):
        errors.append(
            FieldError(
                "spec.preferredHolder",
                "FieldValueForbidden",
                "Forbidden: may only be specified if `strategy` is defined",
            )
        )
    return errors


#: PUT needs a resourceVersion, as for custom resources (kube-apiserver 1.37 answers 422
#: without one), and creates a Lease that is not there.
LEASE_KIND = Kind(
    LEASES,
    "v1",
    META_FIELDS,
    admit_lease,
    unconditional_update=False,
    create_on_update=True,
    checks_type=True,
)
