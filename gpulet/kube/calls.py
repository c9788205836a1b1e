"""The few core/v1 calls gpulet makes, and the agent's two reviews, through the official
client's `ApiClient` (its configuration, authentication, TLS, connection pool and error type)
but without the generated `CoreV1Api` (or `AuthenticationV1Api`, ...) class: that class's
code alone is about 20 MiB of memory, which the node agent, on every GPU node, should not pay
for the calls it makes.

Every core call returns the raw urllib3 response (`.data` once read, or a stream for
watches), and a review the review answered (JSON); each raises
`kubernetes.client.ApiException` for a status other than 2xx, as the generated methods do
with `_preload_content=False`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kubernetes.client import ApiClient, ApiException

from gpulet import __version__
from gpulet.api import nodetopology as nt

_AUTH = ["BearerToken"]
_MERGE_PATCH = "application/merge-patch+json"


def api_client(configuration: Any, component: str) -> ApiClient:
    """A client that names itself `gpulet-<component>/<version>` (its User-Agent): what the
    API server's audit log, API Priority and Fairness and managedFields call it."""
    api = ApiClient(configuration)
    api.user_agent = f"gpulet-{component}/{__version__}"
    return api


def _read(response: Any) -> Any:
    """`response` with its body read, so that its connection goes back to the pool. A write's
    answer that nobody reads holds the connection, and the API server's goroutine writing to
    it, until the response is collected (the server logs a broken pipe then)."""
    _ = response.data
    return response


class _Calls:
    def __init__(self, api: ApiClient) -> None:
        self._api = api

    @property
    def client(self) -> ApiClient:
        """The client the calls go through (its configuration and connection pool)."""
        return self._api

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        body: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout_s: float | None = None,
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        request = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=query or [],
            header_params=headers,
            body=json.loads(json.dumps(body)) if body is not None else None,
            auth_settings=_AUTH,
        )
        response = self._api.call_api(*request, _request_timeout=timeout_s)
        if not 200 <= response.status <= 299:
            response.read()  # type: ignore[no-untyped-call]
            raise ApiException(http_resp=response)
        return response.response


class CoreCalls(_Calls):
    def list_nodes(self, **options: Any) -> Any:
        return self._call("GET", "/api/v1/nodes", query=_list_query(options))

    def read_node(self, name: str) -> Any:
        return _read(self._call("GET", f"/api/v1/nodes/{name}"))

    def list_pods(
        self,
        field_selector: str | None = None,
        *,
        client_timeout_s: float | None = None,
        **options: Any,
    ) -> Any:
        """`client_timeout_s`: how long to wait for the answer (None: as long as it takes,
        for a watch); the server's own `timeout_seconds` bounds only what it sends."""
        query = _list_query(options)
        if field_selector is not None:
            query.append(("fieldSelector", field_selector))
        return self._call("GET", "/api/v1/pods", query=query, timeout_s=client_timeout_s)

    def read_pod(self, namespace: str, name: str) -> Any:
        return self._call("GET", f"/api/v1/namespaces/{namespace}/pods/{name}")

    def patch_pod(self, namespace: str, name: str, body: Mapping[str, Any]) -> Any:
        """A JSON merge patch (RFC 7386): with `metadata.resourceVersion` in `body`, the API
        server applies it only to that version of the pod (409 otherwise)."""
        path = f"/api/v1/namespaces/{namespace}/pods/{name}"
        return _read(self._call("PATCH", path, body=body, content_type=_MERGE_PATCH))

    def patch_node(self, name: str, body: Mapping[str, Any]) -> Any:
        path = f"/api/v1/nodes/{name}"
        return _read(self._call("PATCH", path, body=body, content_type=_MERGE_PATCH))

    def patch_node_status(self, name: str, body: Mapping[str, Any]) -> Any:
        """A JSON merge patch of the Node's status subresource."""
        path = f"/api/v1/nodes/{name}/status"
        return _read(self._call("PATCH", path, body=body, content_type=_MERGE_PATCH))

    def create_binding(self, namespace: str, name: str, uid: str, node: str) -> Any:
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/binding"
        return _read(self._call("POST", path, body=body))

    def evict_pod(
        self, namespace: str, name: str, uid: str, *, grace_period_s: int | None = None
    ) -> Any:
        """A policy/v1 Eviction of the pod (only this pod: its uid is a precondition), which
        PodDisruptionBudgets may refuse (429)."""
        options: dict[str, Any] = {"preconditions": {"uid": uid}}
        if grace_period_s is not None:
            options["gracePeriodSeconds"] = grace_period_s
        body = {
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": name, "namespace": namespace},
            "deleteOptions": options,
        }
        path = f"/api/v1/namespaces/{namespace}/pods/{name}/eviction"
        return _read(self._call("POST", path, body=body))

    def create_event(self, namespace: str, body: Mapping[str, Any]) -> Any:
        return _read(self._call("POST", f"/api/v1/namespaces/{namespace}/events", body=body))


class ObjectCalls(_Calls):
    """The calls on one collection of objects of any group (a custom resource's, Leases of one
    namespace): `collection` is its path, e.g. `/apis/gpulet.io/v1/nodetopologies` or
    `/apis/coordination.k8s.io/v1/namespaces/kube-system/leases`. Writes and reads return the
    response with its body read (`.data`); `list` with the Reflector's options may stream."""

    def __init__(self, api: ApiClient, collection: str) -> None:
        super().__init__(api)
        self.collection = collection.rstrip("/")

    def list(self, *, client_timeout_s: float | None = None, **options: Any) -> Any:
        """A list, or with `watch=True` a watch; `label_selector` and `field_selector` are
        taken with the Reflector's options."""
        return self._call(
            "GET", self.collection, query=_list_query(options), timeout_s=client_timeout_s
        )

    def read(self, name: str) -> Any:
        return _read(self._call("GET", f"{self.collection}/{name}"))

    def find(self, name: str) -> dict[str, Any] | None:
        """The object `name`, as JSON, or None where there is none (404)."""
        try:
            return json_object(self.read(name).data)
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def create(self, body: Mapping[str, Any]) -> Any:
        return _read(self._call("POST", self.collection, body=body))

    def replace(self, name: str, body: Mapping[str, Any]) -> Any:
        """A PUT: with `metadata.resourceVersion` in `body`, only over that version (409)."""
        return _read(self._call("PUT", f"{self.collection}/{name}", body=body))

    def patch(self, name: str, body: Mapping[str, Any]) -> Any:
        """A JSON merge patch (RFC 7386)."""
        path = f"{self.collection}/{name}"
        return _read(self._call("PATCH", path, body=body, content_type=_MERGE_PATCH))

    def delete(self, name: str) -> Any:
        return _read(self._call("DELETE", f"{self.collection}/{name}"))


def node_topologies(api: ApiClient) -> ObjectCalls:
    """The cluster's NodeTopology objects (`nodetopologies.gpulet.io`)."""
    return ObjectCalls(api, nt.COLLECTION_PATH)


def leases(api: ApiClient, namespace: str) -> ObjectCalls:
    """The Leases of `namespace` (`coordination.k8s.io/v1`)."""
    return ObjectCalls(api, f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases")


class ReviewCalls(_Calls):
    """The reviews a server that delegates its authentication and authorization to the API
    server makes (the ClusterRole `system:auth-delegator` allows both). Each returns the
    review the API server answered, as JSON."""

    def review_token(self, token: str, *, timeout_s: float) -> dict[str, Any]:
        """A TokenReview: `status.authenticated` and `status.user` say whose `token` is."""
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token},
        }
        path = "/apis/authentication.k8s.io/v1/tokenreviews"
        return json_object(self._call("POST", path, body=body, timeout_s=timeout_s).data)

    def review_access(self, spec: Mapping[str, Any], *, timeout_s: float) -> dict[str, Any]:
        """A SubjectAccessReview of `spec` (user, groups, ..., and the attributes asked
        about): `status.allowed` says whether that user may."""
        body = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": dict(spec),
        }
        path = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
        return json_object(self._call("POST", path, body=body, timeout_s=timeout_s).data)


def json_object(data: bytes) -> dict[str, Any]:
    """The JSON object an answer's body is; ValueError for anything else."""
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise ValueError("the API server answered something other than a JSON object")
    return obj


def status_message(e: ApiException) -> str:
    """The message of the Status the API server answered an error with ("" for none)."""
    try:
        status = json.loads(e.body or "{}")
    except (TypeError, ValueError):
        return ""
    return str(status.get("message") or "") if isinstance(status, dict) else ""


def _list_query(options: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The list and watch options the Reflector passes, as the API's query parameters."""
    names = {
        "watch": "watch",
        "resource_version": "resourceVersion",
        "timeout_seconds": "timeoutSeconds",
        "allow_watch_bookmarks": "allowWatchBookmarks",
        "label_selector": "labelSelector",
        "field_selector": "fieldSelector",
    }
    query = []
    for key, value in options.items():
        if key == "_preload_content" or value is None:
            continue  # always raw here
        if key not in names:
            raise TypeError(f"unknown list option {key!r}")
        text = str(value).lower() if isinstance(value, bool) else str(value)
        query.append((names[key], text))
    return query
