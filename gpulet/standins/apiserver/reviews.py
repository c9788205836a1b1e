"""TokenReview and SubjectAccessReview, as the API server answers them for a server that
delegates its authentication and authorization to it: tokens the test gives (each a user),
and grants of non-resource URLs the test gives (RBAC's `nonResourceURLs`, to a user or a
group). Every other path goes on to the REST API."""

from __future__ import annotations

import copy
import threading
from collections.abc import Mapping, Sequence

from gpulet.standins.apiserver.resources import JsonObject
from gpulet.standins.apiserver.rest import Reply, Request, RestApi, json_object
from gpulet.standins.apiserver.status import ApiError, bad_request, invalid
from gpulet.standins.apiserver.watch import WatchRequest

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
#: Added by the API server to every authenticated user's groups.
AUTHENTICATED = "system:authenticated"


class Reviews:
    def __init__(self, core: RestApi) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._users: dict[str, JsonObject] = {}
        self._grants: set[tuple[str, str, str]] = set()

    def add_token(
        self,
        token: str,
        username: str,
        *,
        uid: str = "",
        groups: Sequence[str] = (),
        extra: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        user: JsonObject = {"username": username, "groups": [*groups, AUTHENTICATED]}
        if uid:
            user["uid"] = uid
        if extra:
            user["extra"] = {k: list(v) for k, v in extra.items()}
        with self._lock:
            self._users[token] = user

    def allow(self, subject: str, path: str, verb: str = "get") -> None:
        """`subject` (a user name or a group) may `verb` the non-resource URL `path` (a
        trailing `*` matches any rest, `*` as the verb any verb), as a ClusterRole's
        `nonResourceURLs` rule bound to it."""
        with self._lock:
            self._grants.add((subject, path, verb))

    def serve(self, request: Request) -> Reply | WatchRequest:
        if request.path not in (TOKEN_REVIEWS, ACCESS_REVIEWS):
            return self._core.serve(request)
        if request.method != "POST":
            raise ApiError(405, "the server does not allow this method on the requested resource")
        review = json_object(request.body)
        spec = review.get("spec")
        if not isinstance(spec, dict):
            raise bad_request("spec must be an object")
        if request.path == TOKEN_REVIEWS:
            status = self._authenticate(spec)
            group = "authentication.k8s.io/v1"
            kind = "TokenReview"
        else:
            status = self._authorize(spec)
            group = "authorization.k8s.io/v1"
            kind = "SubjectAccessReview"
        answer = {
            "kind": kind,
            "apiVersion": group,
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        return Reply(201, answer)

    def _authenticate(self, spec: JsonObject) -> JsonObject:
        token = spec.get("token")
        if not token:
            raise bad_request("token is required for TokenReview in authentication")
        with self._lock:
            user = copy.deepcopy(self._users.get(str(token)))
        if user is None:
            return {"user": {}}  # `authenticated: false` is left out, as the API server does
        return {"authenticated": True, "user": user}

    def _authorize(self, spec: JsonObject) -> JsonObject:
        kind = "SubjectAccessReview.authorization.k8s.io"
        user, groups = spec.get("user") or "", spec.get("groups") or []
        if not user and not groups:
            raise invalid(
                kind,
                "subjectaccessreviews",
                "",
                'spec.user: Invalid value: "": at least one of user or group must be specified',
            )
        attributes = spec.get("nonResourceAttributes")
        if spec.get("resourceAttributes") or not isinstance(attributes, dict):
            raise invalid(
                kind,
                "subjectaccessreviews",
                "",
                "spec.nonResourceAttributes: the stand-in reviews non-resource URLs only",
            )
        path, verb = str(attributes.get("path", "")), str(attributes.get("verb", ""))
        subjects = {user, *groups}
        with self._lock:
            grants = list(self._grants)
        for subject, pattern, allowed_verb in grants:
            if subject in subjects and _matches(pattern, path) and allowed_verb in (verb, "*"):
                return {"allowed": True, "reason": f"allowed by a grant to {subject!r}"}
        return {"allowed": False}


def _matches(pattern: str, path: str) -> bool:
    """RBAC's match of a non-resource URL: exact, or a prefix ending in `*`."""
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    return path == pattern
