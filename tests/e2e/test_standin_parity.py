"""The API server stand-in (gpulet/standins/apiserver) against the real kube-apiserver: the same
calls through the official client, each behaviour the unit tests rely on checked on both,
and each documented difference (docs/e2e.md) shown to be one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.objects import container
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e


class Server:
    """One API server, through the official client, in a namespace of the test's."""

    def __init__(self, name: str, api: client.ApiClient, namespace: str) -> None:
        self.name = name
        self.core: Any = client.CoreV1Api(api)
        self.namespace = namespace

    def json(self, obj: object) -> Any:
        return self.core.api_client.sanitize_for_serialization(obj)

    def create(self, name: str, **meta: str) -> dict[str, Any]:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, **meta},
            "spec": {"containers": [container("main")]},
        }
        return dict(self.json(self.core.create_namespaced_pod(self.namespace, body)))

    def bind(self, name: str, node: str, *, legacy: bool = False, **meta: str) -> None:
        """Bind through the pods/{name}/binding subresource (kube-scheduler's and gpulet's
        way), or the older bindings collection."""
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, **meta},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        if legacy:
            self.core.create_namespaced_binding(self.namespace, body, _preload_content=False)
        else:
            self.core.create_namespaced_pod_binding(
                name, self.namespace, body, _preload_content=False
            )

    def read(self, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.json(self.core.read_namespaced_pod(name, self.namespace)))
        except ApiException as e:
            if e.status == 404:
                return None
            raise


@pytest.fixture(params=["real", "stand-in"])
def server(request: pytest.FixtureRequest, world: World, ns: str) -> Iterator[Server]:
    if request.param == "real":
        yield Server("real", world.core.api_client, ns)
        return
    with ApiServerStandIn() as standin:
        yield Server("stand-in", client.ApiClient(standin.configuration()), ns)


def test_create_sets_uid_and_creation_timestamp(server: Server) -> None:
    mine = {"uid": "chosen-by-the-client", "creationTimestamp": "2020-01-01T00:00:00Z"}
    created = server.create("web", **mine)
    assert created["metadata"]["uid"] not in ("", mine["uid"])
    assert created["metadata"]["creationTimestamp"] != mine["creationTimestamp"]
    assert created["status"]["phase"] == "Pending"


def test_a_second_binding_conflicts(server: Server) -> None:
    created = server.create("web")
    uid = created["metadata"]["uid"]
    server.bind("web", "node-1", uid=uid)
    with pytest.raises(ApiException) as e:
        server.bind("web", "node-2", uid=uid)
    assert e.value.status == 409
    stored = server.read("web")
    assert stored is not None and stored["spec"]["nodeName"] == "node-1"


def test_a_binding_is_conditional_on_uid_and_resource_version(server: Server) -> None:
    created = server.create("web")
    with pytest.raises(ApiException) as e:
        server.bind("web", "node-1", uid="a-deleted-pods-uid")
    assert e.value.status == 409
    server.core.patch_namespaced_pod("web", server.namespace, {"metadata": {"labels": {"a": "1"}}})
    stale = created["metadata"]["resourceVersion"]
    with pytest.raises(ApiException) as e:
        server.bind("web", "node-1", uid=created["metadata"]["uid"], resourceVersion=stale)
    assert e.value.status == 409
    stored = server.read("web")
    assert stored is not None and not stored["spec"].get("nodeName")


def test_the_bindings_collection_ignores_the_uid(server: Server) -> None:
    """Found against kube-apiserver 1.37: POST .../bindings replaces a Binding's uid (it is a
    create), so a stale uid there binds whatever pod has the name now. gpulet binds through
    the pods/{name}/binding subresource, which checks it."""
    server.create("web")
    server.bind("web", "node-1", legacy=True, uid="a-deleted-pods-uid")
    stored = server.read("web")
    assert stored is not None and stored["spec"]["nodeName"] == "node-1"


def test_a_merge_patch_at_a_stale_resource_version_conflicts(server: Server) -> None:
    created = server.create("web")
    stale = created["metadata"]["resourceVersion"]
    server.core.patch_namespaced_pod("web", server.namespace, {"metadata": {"labels": {"a": "1"}}})
    body = {"metadata": {"resourceVersion": stale, "annotations": {"b": "2"}}}
    with pytest.raises(ApiException) as e:
        server.core.patch_namespaced_pod("web", server.namespace, body)
    assert e.value.status == 409


def test_deleting_a_bound_pod(server: Server) -> None:
    """The documented difference: the real API server keeps a bound pod, Terminating, until
    its kubelet confirms its containers stopped (node-x has none); the stand-in deletes it
    at once."""
    created = server.create("web")
    server.bind("web", "node-x", uid=created["metadata"]["uid"])
    server.core.delete_namespaced_pod("web", server.namespace)
    after = server.read("web")
    if server.name == "real":
        assert after is not None and "deletionTimestamp" in after["metadata"]
        assert after["metadata"]["deletionGracePeriodSeconds"] == 30
    else:
        assert after is None
