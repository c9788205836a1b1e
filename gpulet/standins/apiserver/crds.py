"""CustomResourceDefinitions (apiextensions.k8s.io/v1): checked and given a status as the
apiextensions server does, and followed (CrdController) so that a definition's custom
resources are served from its creation to its deletion, which deletes them."""

from __future__ import annotations

import copy
from typing import Any

from gpulet.standins.apiserver.kinds import Admit, Kind, Kinds
from gpulet.standins.apiserver.openapi import Schema, admit
from gpulet.standins.apiserver.resources import (
    CRDS,
    JsonObject,
    Resource,
    key_of,
    metadata,
    name_errors,
    now_rfc3339,
)
from gpulet.standins.apiserver.selectors import (
    CUSTOM_CLUSTER_FIELDS,
    CUSTOM_NAMESPACED_FIELDS,
    META_FIELDS,
)
from gpulet.standins.apiserver.status import FieldError, invalid_fields
from gpulet.standins.apiserver.store import DELETED, Change, Store

CRD_KIND_NAME = "CustomResourceDefinition"


def admit_crd(obj: JsonObject, old: JsonObject | None) -> JsonObject:
    """The definition with its defaults and status, or 422 naming what is wrong."""
    crd = copy.deepcopy(obj)
    spec = crd.get("spec")
    errors = name_errors(crd)
    if not isinstance(spec, dict):
        errors.append(FieldError("spec", "FieldValueRequired", "Required value"))
    else:
        errors += _spec_errors(str(metadata(crd).get("name", "")), spec)
    if errors:
        raise invalid_fields(CRD_KIND_NAME, CRDS.group, str(metadata(crd).get("name", "")), errors)
    assert isinstance(spec, dict)
    names = spec["names"]
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", names["kind"] + "List")
    spec.setdefault("conversion", {"strategy": "None"})
    crd["status"] = _status(spec, old)
    return crd


def _spec_errors(name: str, spec: JsonObject) -> list[FieldError]:
    errors = []
    group, names = spec.get("group"), spec.get("names")
    if not isinstance(group, str) or not group:
        errors.append(FieldError("spec.group", "FieldValueRequired", "Required value"))
    if not isinstance(names, dict) or not names.get("plural") or not names.get("kind"):
        errors.append(
            FieldError("spec.names", "FieldValueRequired", "Required value: plural and kind")
        )
    elif group and name != f"{names['plural']}.{group}":
        errors.append(
            FieldError(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
            )
        )
    if spec.get("scope") not in ("Cluster", "Namespaced"):
        errors.append(
            FieldError(
                "spec.scope",
                "FieldValueNotSupported",
                f'Unsupported value: "{spec.get("scope", "")}": supported values: '
                '"Cluster", "Namespaced"',
            )
        )
    versions = spec.get("versions")
    if not isinstance(versions, list) or not versions:
        return [*errors, FieldError("spec.versions", "FieldValueRequired", "Required value")]
    for index, version in enumerate(versions):
        errors += _version_errors(f"spec.versions[{index}]", version)
    if sum(1 for v in versions if isinstance(v, dict) and v.get("storage") is True) != 1:
        errors.append(
            FieldError(
                "spec.versions",
                "FieldValueInvalid",
                "Invalid value: <array>: must have exactly one version marked as storage version",
            )
        )
    return errors


def _version_errors(path: str, version: Any) -> list[FieldError]:
    if not isinstance(version, dict) or not version.get("name"):
        return [FieldError(f"{path}.name", "FieldValueRequired", "Required value")]
    schema = (version.get("schema") or {}).get("openAPIV3Schema")
    if not isinstance(schema, dict):
        return [
            FieldError(
                f"{path}.schema.openAPIV3Schema",
                "FieldValueRequired",
                "Required value: schemas are required",
            )
        ]
    if schema.get("type") != "object":
        return [
            FieldError(
                f"{path}.schema.openAPIV3Schema.type",
                "FieldValueInvalid",
                f'Invalid value: "{schema.get("type", "")}": must be object at the root',
            )
        ]
    return []


def _status(spec: JsonObject, old: JsonObject | None) -> JsonObject:
    """Names accepted and Established at once (the real server takes a moment); the stored
    versions so far."""
    before = (old or {}).get("status") or {}
    stored = list(before.get("storedVersions") or [])
    storage = next(v["name"] for v in spec["versions"] if v.get("storage") is True)
    if storage not in stored:
        stored.append(storage)
    since = now_rfc3339()
    return {
        "acceptedNames": copy.deepcopy(spec["names"]),
        "conditions": [
            _condition("NamesAccepted", "NoConflicts", "no conflicts found", since),
            _condition(
                "Established", "InitialNamesAccepted", "the initial names have been accepted", since
            ),
        ],
        "storedVersions": stored,
    }


def _condition(kind: str, reason: str, message: str, since: str) -> JsonObject:
    return {
        "type": kind,
        "status": "True",
        "lastTransitionTime": since,
        "reason": reason,
        "message": message,
    }


def resource_of(crd: JsonObject) -> Resource:
    """The resource a (valid) definition defines, stored at its storage version."""
    spec = crd["spec"]
    names = spec["names"]
    storage = next(v["name"] for v in spec["versions"] if v.get("storage") is True)
    return Resource(
        names["kind"], names["plural"], spec["scope"] == "Namespaced", spec["group"], storage
    )


def kinds_of(crd: JsonObject) -> list[Kind]:
    """The kinds a definition serves: one per served version."""
    resource = resource_of(crd)
    fields = CUSTOM_NAMESPACED_FIELDS if resource.namespaced else CUSTOM_CLUSTER_FIELDS
    kinds = []
    for version in crd["spec"]["versions"]:
        if version.get("served") is not True:
            continue
        schema = version["schema"]["openAPIV3Schema"]
        status = "status" in (version.get("subresources") or {})
        kinds.append(
            Kind(
                resource,
                version["name"],
                fields,
                custom_admit(resource, schema),
                unconditional_update=False,
                status_subresource=status,
                custom=True,
                checks_type=True,
                tracks_generation=True,
            )
        )
    return kinds


def custom_admit(resource: Resource, schema: Schema) -> Admit:
    """A custom resource's admission: pruned, defaulted and validated by its schema."""

    def admit_custom(obj: JsonObject, old: JsonObject | None) -> JsonObject:
        pruned, errors = admit(obj, schema)
        errors = name_errors(pruned) + errors
        if errors:
            name = str(metadata(pruned).get("name", ""))
            raise invalid_fields(resource.kind, resource.group, name, errors)
        return pruned

    return admit_custom


CRD_KIND = Kind(
    CRDS,
    "v1",
    META_FIELDS,
    admit_crd,
    status_subresource=True,
    delete_answers_object=True,
    checks_type=True,
    tracks_generation=True,
)


class CrdController:
    """Serves each definition's custom resources while it exists (a store observer); its
    deletion deletes them, each with its own DELETED event, as the apiextensions server's
    finalizer does before the definition goes."""

    def __init__(self, store: Store, kinds: Kinds) -> None:
        self._store = store
        self._kinds = kinds

    def observe(self, change: Change) -> None:
        if change.resource != CRDS:
            return
        if change.previous is not None:
            self._kinds.remove(resource_of(change.previous))
        if change.type != DELETED:
            self._kinds.add(kinds_of(change.object))
            return
        resource = resource_of(change.object)
        for obj in self._store.list_objects(resource)[0]:
            self._store.delete(resource, *key_of(obj), uid=obj["metadata"]["uid"])
