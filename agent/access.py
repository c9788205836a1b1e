"""Who may read the agent's HTTP paths: a bearer token, authenticated by the API server
(TokenReview) and authorized for the path (SubjectAccessReview on a non-resource URL, verb
`get`), as kube-rbac-proxy and controller-runtime's metrics filters do.

Answers are cached, bounded, so that a flood of requests is not a flood of API calls:
tokens by their SHA-256 (never the token itself), authorizations by the reviewed user and
the path. An API server that cannot be asked denies (503), and that is not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Generic, Protocol, TypeVar

from kubernetes.client import ApiException
from urllib3.exceptions import HTTPError

from gpulet.kube.calls import ReviewCalls

log = logging.getLogger("gpulet.agent")

V = TypeVar("V")


@dataclass(frozen=True)
class Decision:
    """`status`: 200 allowed, 401 no or invalid credentials, 403 authenticated but not
    allowed, 503 the API server could not be asked. `reason`: one short word of a fixed set
    (a metric label)."""

    status: int
    reason: str

    @property
    def allowed(self) -> bool:
        return self.status == HTTPStatus.OK


ALLOWED = Decision(HTTPStatus.OK, "allowed")
NO_TOKEN = Decision(HTTPStatus.UNAUTHORIZED, "no-token")
INVALID_TOKEN = Decision(HTTPStatus.UNAUTHORIZED, "invalid-token")
FORBIDDEN = Decision(HTTPStatus.FORBIDDEN, "forbidden")
UNAVAILABLE = Decision(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable")


class Access(Protocol):
    def check(self, authorization: str | None, path: str) -> Decision:
        """May the request with this `Authorization` header (None: none) GET `path`?"""
        ...


class _Unavailable(Exception):
    """The API server could not be asked, or answered something unusable."""


class _Cache(Generic[V]):
    """At most `size` answers, the oldest dropped first, each kept for the time its `ttl`
    gives; one question in flight per key (the others wait for its answer)."""

    def __init__(self, size: int, clock: Callable[[], float]) -> None:
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, V]] = OrderedDict()
        self._asking: dict[str, threading.Lock] = {}

    def get(self, key: str, ask: Callable[[], V], ttl: Callable[[V], float]) -> V:
        with self._lock:
            asking = self._asking.setdefault(key, threading.Lock())
        with asking:
            try:
                with self._lock:
                    entry = self._entries.get(key)
                    if entry is not None and entry[0] > self._clock():
                        return entry[1]
                value = ask()  # may raise: nothing cached
                with self._lock:
                    self._entries.pop(key, None)
                    self._entries[key] = (self._clock() + ttl(value), value)
                    while len(self._entries) > self._size:
                        self._entries.popitem(last=False)
                return value
            finally:
                with self._lock:
                    if self._asking.get(key) is asking:
                        del self._asking[key]

    def __len__(self) -> int:
        return len(self._entries)


class KubernetesAccess:
    """`Authorization: Bearer <token>`, reviewed by the API server through `reviews`
    (whose ServiceAccount needs the ClusterRole `system:auth-delegator`)."""

    def __init__(
        self,
        reviews: ReviewCalls,
        *,
        timeout_s: float = 5.0,
        allowed_ttl_s: float = 60.0,
        denied_ttl_s: float = 10.0,
        cache_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._reviews = reviews
        self._timeout_s = timeout_s
        self._clock = clock
        self._allowed_ttl_s = allowed_ttl_s
        self._denied_ttl_s = denied_ttl_s
        #: sha256(token) -> the user (the TokenReview's status.user), or None: not authenticated.
        self.users: _Cache[dict[str, Any] | None] = _Cache(cache_size, clock)
        #: sha256 of the SubjectAccessReview's spec (user and path), as JSON -> allowed. A
        #: digest, so that long paths cost no more memory than short ones.
        self.grants: _Cache[bool] = _Cache(cache_size, clock)
        self._warned = float("-inf")

    def check(self, authorization: str | None, path: str) -> Decision:
        token = _bearer(authorization)
        if token is None:
            return NO_TOKEN
        try:
            user = self.users.get(
                _digest(token),
                lambda: self._authenticate(token),
                lambda u: self._allowed_ttl_s if u is not None else self._denied_ttl_s,
            )
            if user is None:
                return INVALID_TOKEN
            spec = _access_spec(user, path)
            allowed = self.grants.get(
                _digest(json.dumps(spec, sort_keys=True)),
                lambda: self._authorize(spec),
                lambda ok: self._allowed_ttl_s if ok else self._denied_ttl_s,
            )
        except _Unavailable as e:
            self._warn(str(e))
            return UNAVAILABLE
        if not allowed:
            log.debug("event=access-denied user=%r path=%r", spec.get("user"), path)
            return FORBIDDEN
        return ALLOWED

    def _authenticate(self, token: str) -> dict[str, Any] | None:
        status = self._ask(lambda: self._reviews.review_token(token, timeout_s=self._timeout_s))
        if status.get("authenticated") is not True:
            return None
        user = status.get("user")
        return user if isinstance(user, dict) and user.get("username") else None

    def _authorize(self, spec: Mapping[str, Any]) -> bool:
        status = self._ask(lambda: self._reviews.review_access(spec, timeout_s=self._timeout_s))
        return status.get("allowed") is True

    def _ask(self, call: Callable[[], Mapping[str, Any]]) -> Mapping[str, Any]:
        try:
            review = call()
        except ApiException as e:
            raise _Unavailable(f"HTTP {e.status} {e.reason}") from None
        except (HTTPError, OSError, ValueError) as e:  # unreachable, timed out, not JSON
            raise _Unavailable(f"{type(e).__name__}: {e}") from None
        status = review.get("status")
        if not isinstance(status, dict):
            raise _Unavailable("a review without a status")
        return status

    def _warn(self, problem: str) -> None:
        """Logged at most once a minute: a flood while the API server is away must not
        flood the log."""
        now = self._clock()
        if now - self._warned >= 60.0:
            self._warned = now
            log.warning("event=access-review-failed problem=%r", problem)
        else:
            log.debug("event=access-review-failed problem=%r", problem)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _bearer(authorization: str | None) -> str | None:
    """The token of `Bearer <token>` (the scheme in any case); None for anything else."""
    if authorization is None:
        return None
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def _access_spec(user: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The SubjectAccessReview's spec: this user may GET this non-resource URL?"""
    spec: dict[str, Any] = {
        "nonResourceAttributes": {"path": path, "verb": "get"},
        "user": user.get("username", ""),
    }
    for key in ("uid", "groups", "extra"):
        if user.get(key):
            spec[key] = user[key]
    return spec
