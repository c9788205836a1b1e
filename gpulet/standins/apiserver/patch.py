"""PATCH bodies: JSON merge patch (RFC 7386, also standing in for strategic merge patch) and
JSON patch (RFC 6902)."""

from __future__ import annotations

import copy
from typing import Any

from gpulet.standins.apiserver.resources import JsonObject
from gpulet.standins.apiserver.status import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def apply_patch(
    content_type: str, target: JsonObject, patch: Any, *, strategic: bool = True
) -> JsonObject:
    """The target with the patch applied, by the patch type the content type names.
    Strategic merge patch is treated as a merge patch: lists are replaced, not merged;
    `strategic` False refuses it (415), as for custom resources."""
    media_type = content_type.partition(";")[0].strip().lower()
    if media_type == MERGE_PATCH or (strategic and media_type == STRATEGIC_MERGE_PATCH):
        if not isinstance(patch, dict):
            raise bad_request("a merge patch must be a JSON object")
        result: Any = merge_patch(target, patch)
    elif media_type == JSON_PATCH:
        result = json_patch(target, patch)
    else:
        accepted = [JSON_PATCH, MERGE_PATCH] + ([STRATEGIC_MERGE_PATCH] if strategic else [])
        raise ApiError(
            415,
            "the body of the request was in an unknown format - accepted media types include: "
            + ", ".join([*accepted, APPLY_PATCH]),
        )
    if not isinstance(result, dict):
        raise ApiError(422, "the patched object is not a JSON object")
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _OperationFailed(Exception):
    """A JSON patch operation that does not apply to the document."""


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 (add, remove, replace, move, copy, test), applied to a copy of the target.
    A malformed patch is 400 BadRequest; one that does not apply is 422, as the API server
    answers."""
    if not isinstance(operations, list) or not all(isinstance(o, dict) for o in operations):
        raise bad_request("a JSON patch must be a list of operation objects")
    doc = copy.deepcopy(target)
    try:
        for operation in operations:
            doc = _apply(doc, operation)
    except _OperationFailed as e:
        raise ApiError(422, str(e)) from e
    return doc


def _apply(doc: Any, operation: dict[str, Any]) -> Any:
    op = operation.get("op")
    path = _pointer(operation, "path")
    if op == "add":
        return _add(doc, path, _value(operation))
    if op == "remove":
        return _remove(doc, path)
    if op == "replace":
        value = _value(operation)
        return _add(_remove(doc, path), path, value) if path else value
    if op == "move":
        source = _pointer(operation, "from")
        value = _get(doc, source)
        return _add(_remove(doc, source), path, value)
    if op == "copy":
        return _add(doc, path, copy.deepcopy(_get(doc, _pointer(operation, "from"))))
    if op == "test":
        if _get(doc, path) != _value(operation):
            raise _OperationFailed(f"testing value {operation['path']} failed: test failed")
        return doc
    raise bad_request(f"unsupported JSON patch operation: {op!r}")


def _value(operation: dict[str, Any]) -> Any:
    if "value" not in operation:
        raise bad_request(f"JSON patch operation {operation.get('op')!r} lacks a value")
    return operation["value"]


def _pointer(operation: dict[str, Any], member: str) -> list[str]:
    """The reference tokens of an RFC 6901 JSON pointer."""
    text = operation.get(member)
    if not isinstance(text, str) or (text and not text.startswith("/")):
        raise bad_request(f"JSON patch operation has an invalid {member}: {text!r}")
    if not text:
        return []
    return [t.replace("~1", "/").replace("~0", "~") for t in text[1:].split("/")]


def _index(container: list[Any], token: str, *, inserting: bool) -> int:
    if token == "-" and inserting:
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise _OperationFailed(f"invalid array index: {token!r}")
    index = int(token)
    if index > len(container) or (index == len(container) and not inserting):
        raise _OperationFailed(f"array index out of bounds: {index}")
    return index


def _get(doc: Any, path: list[str]) -> Any:
    for token in path:
        if isinstance(doc, dict):
            if token not in doc:
                raise _OperationFailed(f"missing key: {token!r}")
            doc = doc[token]
        elif isinstance(doc, list):
            doc = doc[_index(doc, token, inserting=False)]
        else:
            raise _OperationFailed(f"cannot descend into a scalar at {token!r}")
    return doc


def _add(doc: Any, path: list[str], value: Any) -> Any:
    if not path:
        return value
    parent = _get(doc, path[:-1])
    token = path[-1]
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, inserting=True), value)
    else:
        raise _OperationFailed(f"cannot add to a scalar at {token!r}")
    return doc


def _remove(doc: Any, path: list[str]) -> Any:
    if not path:
        raise _OperationFailed("cannot remove the whole document")
    parent = _get(doc, path[:-1])
    token = path[-1]
    if isinstance(parent, dict):
        if token not in parent:
            raise _OperationFailed(f"missing key: {token!r}")
        del parent[token]
    elif isinstance(parent, list):
        del parent[_index(parent, token, inserting=False)]
    else:
        raise _OperationFailed(f"cannot remove from a scalar at {token!r}")
    return doc
