"""The API server's errors, and the Status objects it answers with."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}

MODIFIED = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


class ApiError(Exception):
    """A failed API call: answered as a Status with the same HTTP code."""

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        name: str | None = None,
        group: str | None = None,
        kind: str | None = None,
        causes: list[dict[str, str]] | None = None,
        details: dict[str, Any] | None = None,
        plain: bool = False,
    ) -> None:
        """`details` verbatim (even empty), else those of name, group, kind and causes;
        `plain`: answered as the text of `message`, not a Status (404 page not found)."""
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.plain = plain
        if details is None:
            named = (("name", name), ("group", group), ("kind", kind), ("causes", causes))
            details = {k: v for k, v in named if v} or None
        self.details = details

    def status(self) -> dict[str, Any]:
        """The Status object the API server sends for this error."""
        status: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            status["details"] = dict(self.details)
        return status


def success(code: int | None, details: dict[str, str] | None = None) -> dict[str, Any]:
    """A Status reporting success, as a binding (code 201) or a deletion (no code, its
    details) answers."""
    status: dict[str, Any] = {"kind": "Status", "apiVersion": "v1", "metadata": {}}
    status["status"] = "Success"
    if code is not None:
        status["code"] = code
    if details:
        status["details"] = details
    return status


def _qualified(plural: str, group: str) -> str:
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        404, f'{_qualified(plural, group)} "{name}" not found', name=name, group=group, kind=plural
    )


def already_exists(plural: str, name: str, group: str = "") -> ApiError:
    return ApiError(
        409,
        f'{_qualified(plural, group)} "{name}" already exists',
        reason="AlreadyExists",
        name=name,
        group=group,
        kind=plural,
    )


def conflict(plural: str, name: str, cause: str = MODIFIED, group: str = "") -> ApiError:
    """409 Conflict: `plural` may name a subresource, e.g. pods/binding."""
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {_qualified(plural, group)} "{name}": {cause}',
        name=name,
        group=group,
        kind=plural,
    )


def uid_precondition_failed(plural: str, name: str, expected: str, actual: str) -> ApiError:
    """409 Conflict: a request conditional on another uid than the object's."""
    return conflict(
        plural,
        name,
        f"Precondition failed: UID in precondition: {expected}, UID in object meta: {actual}",
    )


def invalid(kind: str, plural: str, name: str, cause: str) -> ApiError:
    """422 Invalid, worded as the API server's validation failures."""
    return ApiError(422, f'{kind} "{name}" is invalid: {cause}', name=name, kind=plural)


@dataclass(frozen=True)
class FieldError:
    """One cause of a 422, as the API server's field errors: `field` the path
    (spec.gpus[0].index), `reason` its type (FieldValueInvalid, FieldValueRequired, ...),
    `detail` the text after the path."""

    field: str
    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.field}: {self.detail}"


def invalid_fields(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    """422 Invalid for the field errors of an object of `kind` in `group`, as the API server
    words it (`NodeTopology.gpulet.io "x" is invalid: [a: ..., b: ...]`) with a cause each."""
    text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    qualified = f"{kind}.{group}" if group else kind
    causes = [{"reason": e.reason, "message": e.detail, "field": e.field} for e in errors]
    return ApiError(
        422,
        f'{qualified} "{name}" is invalid: {text}',
        name=name,
        group=group,
        kind=kind,
        causes=causes,
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def expired(message: str) -> ApiError:
    return ApiError(410, message)
