"""The API server's errors, and the Status objects it answers with."""

from __future__ import annotations

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
        kind: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason or REASONS.get(code, "Unknown")
        self.details = {k: v for k, v in (("name", name), ("kind", kind)) if v is not None}

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
        if self.details:
            status["details"] = dict(self.details)
        return status


def success(code: int, details: dict[str, str] | None = None) -> dict[str, Any]:
    """A Status reporting success, as a binding or a node's deletion answers."""
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "code": code,
    }
    if details:
        status["details"] = details
    return status


def not_found(plural: str, name: str) -> ApiError:
    return ApiError(404, f'{plural} "{name}" not found', name=name, kind=plural)


def already_exists(plural: str, name: str) -> ApiError:
    return ApiError(
        409, f'{plural} "{name}" already exists', reason="AlreadyExists", name=name, kind=plural
    )


def conflict(plural: str, name: str, cause: str = MODIFIED) -> ApiError:
    """409 Conflict: `plural` may name a subresource, e.g. pods/binding."""
    return ApiError(
        409, f'Operation cannot be fulfilled on {plural} "{name}": {cause}', name=name, kind=plural
    )


def invalid(kind: str, plural: str, name: str, cause: str) -> ApiError:
    """422 Invalid, worded as the API server's validation failures."""
    return ApiError(422, f'{kind} "{name}" is invalid: {cause}', name=name, kind=plural)


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)


def expired(message: str) -> ApiError:
    return ApiError(410, message)
