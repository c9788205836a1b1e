"""A custom resource's OpenAPI v3 (structural) schema, applied as the apiextensions server
applies it: unknown fields pruned (but where `x-kubernetes-preserve-unknown-fields`), null
values of non-nullable properties dropped, defaults set, then the object validated. Covers
type, nullable, required, properties, additionalProperties, items, enum, min/max(Length,
Items), minimum/maximum, pattern, format int32/int64, x-kubernetes-int-or-string; not
anyOf/allOf/oneOf/not, CEL rules (x-kubernetes-validations) or list types."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from gpulet.standins.apiserver.resources import JsonObject
from gpulet.standins.apiserver.status import FieldError

Schema = dict[str, Any]

#: Kept at the root whatever the schema says; metadata is the API server's to check.
ROOT_FIELDS = ("apiVersion", "kind", "metadata")
_PRESERVE = "x-kubernetes-preserve-unknown-fields"
_INT_OR_STRING = "x-kubernetes-int-or-string"
_RANGES = {"int32": 2**31, "int64": 2**63}


def admit(obj: JsonObject, schema: Schema) -> tuple[JsonObject, list[FieldError]]:
    """The object pruned and defaulted by the schema of its root, and what is wrong with
    it (empty: valid)."""
    obj = copy.deepcopy(obj)
    kept = {k: obj.pop(k) for k in ROOT_FIELDS if k in obj}
    obj = prune(obj, schema)
    _drop_nulls(obj, schema)
    errors = validate(obj, schema, "", root=True)
    return kept | obj, errors


def prune(value: Any, schema: Schema) -> Any:
    """`value` without the fields its schema does not specify (in place)."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key in list(value):
            if key in properties:
                value[key] = prune(value[key], properties[key])
            elif isinstance(additional, dict):
                value[key] = prune(value[key], additional)
            elif not (schema.get(_PRESERVE) or additional is True):
                del value[key]
        for key, sub in properties.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"]) for item in value]
    elif isinstance(value, float) and value.is_integer() and _types(schema) == ("integer",):
        return int(value)
    return value


def _drop_nulls(value: Any, schema: Schema) -> None:
    """Drop the null properties the schema does not call nullable (nor defaults), as the
    apiextensions server does before it validates."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        for key in list(value):
            sub = properties.get(key)
            if sub is not None and value[key] is None and not sub.get("nullable"):
                del value[key]
            elif sub is not None:
                _drop_nulls(value[key], sub)
            elif isinstance(additional, dict):
                _drop_nulls(value[key], additional)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _drop_nulls(item, schema["items"])


def validate(value: Any, schema: Schema, path: str, *, root: bool = False) -> list[FieldError]:
    """What is wrong with `value` by `schema`; `path` names it in the errors."""
    if value is None and (schema.get("nullable") or not _types(schema)):
        return []
    wrong = _type_error(value, schema, path)
    if wrong is not None:
        return [wrong]
    errors = _scalar_errors(value, schema, path)
    if isinstance(value, dict):
        errors += _object_errors(value, schema, path, root=root)
    elif isinstance(value, list):
        errors += _array_errors(value, schema, path)
    return errors


def json_type(value: Any) -> str:
    """The JSON type of a decoded value, as the validator names it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _types(schema: Schema) -> tuple[str, ...]:
    if schema.get(_INT_OR_STRING):
        return ("integer", "string")
    declared = schema.get("type")
    return (declared,) if isinstance(declared, str) and declared else ()


def _type_error(value: Any, schema: Schema, path: str) -> FieldError | None:
    types = _types(schema)
    actual = json_type(value)
    fits = not types or actual in types or (actual == "integer" and "number" in types)
    limit = _RANGES.get(schema.get("format", ""))
    if fits and actual == "integer" and limit is not None and not -limit <= value < limit:
        fits, actual = False, "number"
    if fits:
        return None
    detail = f'{path} in body must be of type {" or ".join(types)}: "{actual}"'
    return FieldError(path, "FieldValueTypeInvalid", f'Invalid value: "{actual}": {detail}')


def _scalar_errors(value: Any, schema: Schema, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    enum = schema.get("enum")
    if isinstance(enum, list) and value not in enum:
        supported = ", ".join(json.dumps(e) for e in enum)
        errors.append(
            FieldError(
                path,
                "FieldValueNotSupported",
                f"Unsupported value: {json.dumps(value)}: supported values: {supported}",
            )
        )
    if isinstance(value, str):
        errors += _string_errors(value, schema, path)
    elif isinstance(value, int | float) and not isinstance(value, bool):
        errors += _number_errors(value, schema, path)
    return errors


def _string_errors(value: str, schema: Schema, path: str) -> list[FieldError]:
    errors = []
    longest, shortest = schema.get("maxLength"), schema.get("minLength")
    if isinstance(longest, int) and len(value) > longest:
        errors.append(
            FieldError(path, "FieldValueTooLong", f"Too long: may not be more than {longest} bytes")
        )
    if isinstance(shortest, int) and len(value) < shortest:
        errors.append(
            _invalid(value, path, f"{path} in body should be at least {shortest} chars long")
        )
    pattern = schema.get("pattern")
    if isinstance(pattern, str) and re.search(pattern, value) is None:
        errors.append(_invalid(value, path, f"{path} in body should match '{pattern}'"))
    return errors


def _number_errors(value: float, schema: Schema, path: str) -> list[FieldError]:
    errors = []
    least, most = schema.get("minimum"), schema.get("maximum")
    if isinstance(least, int | float) and value < least:
        errors.append(
            _invalid(value, path, f"{path} in body should be greater than or equal to {least}")
        )
    if isinstance(most, int | float) and value > most:
        errors.append(
            _invalid(value, path, f"{path} in body should be less than or equal to {most}")
        )
    return errors


def _object_errors(value: JsonObject, schema: Schema, path: str, *, root: bool) -> list[FieldError]:
    errors = []
    properties = schema.get("properties") or {}
    for key in schema.get("required") or ():
        if key not in value and not (root and key in ROOT_FIELDS):
            errors.append(FieldError(_child(path, key), "FieldValueRequired", "Required value"))
    most = schema.get("maxProperties")
    if isinstance(most, int) and len(value) > most:
        errors.append(
            FieldError(
                path, "FieldValueTooMany", f"Too many: {len(value)}: must have at most {most} items"
            )
        )
    additional = schema.get("additionalProperties")
    for key, item in value.items():
        sub = properties.get(key, additional if isinstance(additional, dict) else None)
        if sub is not None:
            errors += validate(item, sub, _child(path, key))
    return errors


def _array_errors(value: list[Any], schema: Schema, path: str) -> list[FieldError]:
    errors = []
    most, least = schema.get("maxItems"), schema.get("minItems")
    if isinstance(most, int) and len(value) > most:
        errors.append(
            FieldError(
                path, "FieldValueTooMany", f"Too many: {len(value)}: must have at most {most} items"
            )
        )
    if isinstance(least, int) and len(value) < least:
        errors.append(_invalid(value, path, f"{path} in body should have at least {least} items"))
    items = schema.get("items")
    if isinstance(items, dict):
        for index, item in enumerate(value):
            errors += validate(item, items, f"{path}[{index}]")
    return errors


def _invalid(value: Any, path: str, detail: str) -> FieldError:
    shown = json.dumps(value) if isinstance(value, str) else _go_value(value)
    return FieldError(path, "FieldValueInvalid", f"Invalid value: {shown}: {detail}")


def _go_value(value: Any) -> str:
    if isinstance(value, list | dict):
        return "<" + json_type(value) + ">"
    return json.dumps(value)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
