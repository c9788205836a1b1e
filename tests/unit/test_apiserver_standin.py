"""The API server stand-in, through the real kubernetes client over HTTP."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import kubernetes.config
import pytest
from kubernetes.client import (
    ApiClient,
    ApiException,
    Configuration,
    CoreV1Api,
    V1Binding,
    V1ListMeta,
    V1Node,
    V1NodeList,
    V1ObjectMeta,
    V1ObjectReference,
    V1Pod,
    V1PodList,
    V1PodSpec,
)
from kubernetes.watch import Watch

from gpulet.standins.apiserver import ApiServerStandIn

STALE = (
    'Operation cannot be fulfilled on pods "web": the object has been modified; '
    "please apply your changes to the latest version and try again"
)
# Long enough never to end a stream that a test expects to end sooner.
WATCH_LIMIT_S = 5


def node(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}}


def pod(
    name: str,
    namespace: str = "default",
    *,
    node_name: str | None = None,
    phase: str | None = None,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}]}
    if node_name is not None:
        spec["nodeName"] = node_name
    obj: dict[str, Any] = {
        "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
        "spec": spec,
    }
    if phase is not None:
        obj["status"] = {"phase": phase}
    return obj


def post_node(v1: CoreV1Api, name: str) -> V1Node:
    return v1.create_node(V1Node.model_validate(node(name)))


def post_pod(v1: CoreV1Api, name: str, namespace: str = "default", **fields: Any) -> V1Pod:
    return v1.create_namespaced_pod(namespace, V1Pod.model_validate(pod(name, namespace, **fields)))


def meta(obj: V1Node | V1Pod) -> V1ObjectMeta:
    assert obj.metadata is not None
    return obj.metadata


def spec(obj: V1Pod) -> V1PodSpec:
    assert obj.spec is not None
    return obj.spec


def list_meta(listed: V1NodeList | V1PodList) -> V1ListMeta:
    assert listed.metadata is not None
    return listed.metadata


def names(objects: Iterable[V1Node] | Iterable[V1Pod]) -> list[str | None]:
    return [meta(o).name for o in objects]


def watch(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """Watch().stream(...), typed."""
    events: Iterator[dict[str, Any]] = Watch().stream(func, *args, **kwargs)  # type: ignore[no-untyped-call]
    return events


def binding(pod_name: str, node_name: str) -> V1Binding:
    return V1Binding(
        metadata=V1ObjectMeta(name=pod_name),
        target=V1ObjectReference(kind="Node", name=node_name),
    )


def failure(e: pytest.ExceptionInfo[ApiException]) -> dict[str, Any]:
    """The Status object an ApiException carries."""
    status: dict[str, Any] = json.loads(e.value.body or "")
    assert status["kind"] == "Status"
    assert status["code"] == e.value.status
    return status


def watched(events: Iterator[dict[str, Any]], count: int | None = None) -> list[tuple[str, str]]:
    """(type, name) of a watch stream's events: `count` of them, or all until it ends."""
    seen = []
    for event in events:
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == count:
            break
    return seen


# ---- objects ----


def test_nodes_are_created_read_listed_and_deleted(v1: CoreV1Api) -> None:
    created = post_node(v1, "gpu-1")
    post_node(v1, "gpu-2")

    assert meta(v1.read_node("gpu-1")).uid == meta(created).uid
    listed = v1.list_node()
    assert names(listed.items) == ["gpu-1", "gpu-2"]
    assert list_meta(listed).resource_version == "2"
    deleted: Any = v1.delete_node("gpu-1")  # the client declares no model: a dict
    assert deleted["status"] == "Success"
    with pytest.raises(ApiException) as e:
        v1.read_node("gpu-1")
    assert e.value.status == 404
    assert failure(e)["reason"] == "NotFound"
    assert failure(e)["details"] == {"name": "gpu-1", "kind": "nodes"}
    with pytest.raises(ApiException) as e:
        post_node(v1, "gpu-2")
    assert failure(e)["reason"] == "AlreadyExists"


def test_stored_objects_carry_what_the_api_server_sets(api: ApiServerStandIn) -> None:
    first = api.create_pod(pod("web"))
    second = api.create_node(
        {"metadata": {"name": "n", "uid": "fixed", "creationTimestamp": "2020-01-01T00:00:00Z"}}
    )

    assert first["kind"] == "Pod" and first["apiVersion"] == "v1"
    assert first["metadata"]["namespace"] == "default"
    assert first["status"]["phase"] == "Pending"
    assert len(first["metadata"]["uid"]) == 36
    time.strptime(first["metadata"]["creationTimestamp"], "%Y-%m-%dT%H:%M:%SZ")  # or ValueError
    assert (first["metadata"]["resourceVersion"], second["metadata"]["resourceVersion"]) == (
        "1",
        "2",
    )
    # A client's own uid and creationTimestamp are replaced, as the real API server does.
    assert second["metadata"]["uid"] not in ("fixed", first["metadata"]["uid"])
    assert len(second["metadata"]["uid"]) == 36
    assert second["metadata"]["creationTimestamp"] != "2020-01-01T00:00:00Z"
    assert "namespace" not in second["metadata"]
    api.delete_pod("default", "web")
    assert api.get_pod("default", "web") is None
    assert api.pods() == []
    assert [n["metadata"]["name"] for n in api.nodes()] == ["n"]


def test_pods_are_listed_by_namespace_and_across_namespaces(v1: CoreV1Api) -> None:
    post_pod(v1, "web")
    post_pod(v1, "job", "batch")

    assert names(v1.list_namespaced_pod("batch").items) == ["job"]
    everywhere = v1.list_pod_for_all_namespaces().items
    assert [(meta(p).namespace, meta(p).name) for p in everywhere] == [
        ("batch", "job"),
        ("default", "web"),
    ]
    assert meta(v1.delete_namespaced_pod("job", "batch")).name == "job"
    assert v1.list_namespaced_pod("batch").items == []


def test_create_rejects_a_namespace_other_than_the_paths(v1: CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod("default", V1Pod.model_validate(pod("web", "batch")))
    assert e.value.status == 400


@pytest.mark.parametrize(
    ("field_selector", "expected"),
    [
        ("spec.nodeName=a", ["default/on-a", "other/also-on-a"]),
        ("spec.nodeName!=a", ["default/on-b", "default/unbound"]),
        ("spec.nodeName=", ["default/unbound"]),
        ("status.phase=Running", ["default/on-a"]),
        ("status.phase!=Pending", ["default/on-a"]),
        ("metadata.name=on-b", ["default/on-b"]),
        ("metadata.namespace=other", ["other/also-on-a"]),
        ("spec.nodeName=a,metadata.namespace=default", ["default/on-a"]),
    ],
)
def test_field_selectors(
    api: ApiServerStandIn, v1: CoreV1Api, field_selector: str, expected: list[str]
) -> None:
    api.create_pod(pod("on-a", node_name="a", phase="Running"))
    api.create_pod(pod("on-b", node_name="b"))
    api.create_pod(pod("unbound"))
    api.create_pod(pod("also-on-a", "other", node_name="a"))

    found = v1.list_pod_for_all_namespaces(field_selector=field_selector).items
    assert [f"{meta(p).namespace}/{meta(p).name}" for p in found] == expected


def test_an_unsupported_field_selector_is_a_bad_request(v1: CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        v1.list_pod_for_all_namespaces(field_selector="spec.priority=1")
    assert e.value.status == 400
    assert failure(e)["message"] == "field label not supported: spec.priority"


@pytest.mark.parametrize(
    ("label_selector", "expected"),
    [
        ("app=web", ["front", "web"]),
        ("app!=web", ["db", "plain"]),
        ("app", ["db", "front", "web"]),
        ("!app", ["plain"]),
        ("app=web,tier=front", ["front"]),
    ],
)
def test_label_selectors(
    api: ApiServerStandIn, v1: CoreV1Api, label_selector: str, expected: list[str]
) -> None:
    api.create_pod(pod("web", labels={"app": "web"}))
    api.create_pod(pod("front", labels={"app": "web", "tier": "front"}))
    api.create_pod(pod("db", labels={"app": "db"}))
    api.create_pod(pod("plain"))

    found = v1.list_namespaced_pod("default", label_selector=label_selector).items
    assert names(found) == expected


# ---- updates ----


def test_patch_of_a_dict_merges_annotations(v1: CoreV1Api) -> None:
    """The client sends a dict as a strategic merge patch; null deletes a key."""
    post_pod(v1, "web")
    v1.patch_namespaced_pod("web", "default", {"metadata": {"annotations": {"a": "1", "b": "2"}}})

    patched = v1.patch_namespaced_pod("web", "default", {"metadata": {"annotations": {"a": None}}})

    assert meta(patched).annotations == {"b": "2"}
    assert spec(patched).containers[0].name == "main"
    assert meta(patched).resource_version == "3"


@pytest.mark.parametrize(
    "content_type",
    [None, "application/merge-patch+json"],
    ids=["strategic-merge-patch (the client's choice)", "merge-patch"],
)
def test_a_patchs_resource_version_is_a_precondition(
    api: ApiServerStandIn, v1: CoreV1Api, content_type: str | None
) -> None:
    current = meta(post_pod(v1, "web")).resource_version

    def annotate(value: str, resource_version: str | None) -> V1Pod:
        body = {"metadata": {"resourceVersion": resource_version, "annotations": {"k": value}}}
        return v1.patch_namespaced_pod("web", "default", body, _content_type=content_type)

    assert meta(annotate("first", current)).annotations == {"k": "first"}
    with pytest.raises(ApiException) as e:
        annotate("second", current)
    assert e.value.status == 409
    assert failure(e)["reason"] == "Conflict"
    assert failure(e)["message"] == STALE
    stored = api.get_pod("default", "web")
    assert stored is not None
    assert stored["metadata"]["annotations"] == {"k": "first"}


def test_json_patch_applies_operations_in_order(v1: CoreV1Api) -> None:
    """The client sends a list as a JSON patch."""
    post_pod(v1, "web", labels={"old": "x"})
    patched = v1.patch_namespaced_pod(
        "web",
        "default",
        [
            {"op": "test", "path": "/metadata/labels/old", "value": "x"},
            {"op": "remove", "path": "/metadata/labels/old"},
            {"op": "add", "path": "/metadata/labels/gpulet.io~1pool", "value": "a"},
            {"op": "replace", "path": "/spec/containers/0/image", "value": "nginx"},
        ],
    )
    assert meta(patched).labels == {"gpulet.io/pool": "a"}
    assert spec(patched).containers[0].image == "nginx"


def test_a_failed_json_patch_test_is_invalid_and_changes_nothing(
    api: ApiServerStandIn, v1: CoreV1Api
) -> None:
    post_pod(v1, "web")
    with pytest.raises(ApiException) as e:
        v1.patch_namespaced_pod(
            "web",
            "default",
            [
                {"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}},
                {"op": "test", "path": "/spec/containers/0/image", "value": "nginx"},
            ],
        )
    assert e.value.status == 422
    assert failure(e)["reason"] == "Invalid"
    stored = api.get_pod("default", "web")
    assert stored is not None
    assert "annotations" not in stored["metadata"]


def test_replace_checks_the_resource_version(v1: CoreV1Api) -> None:
    created = post_pod(v1, "web")
    meta(created).labels = {"v": "1"}
    replaced = v1.replace_namespaced_pod("web", "default", created)
    assert meta(replaced).labels == {"v": "1"}
    assert meta(replaced).uid == meta(created).uid

    meta(created).labels = {"v": "2"}
    with pytest.raises(ApiException) as e:
        v1.replace_namespaced_pod("web", "default", created)
    assert failure(e)["message"] == STALE


def test_status_changes_only_through_the_status_subresource(v1: CoreV1Api) -> None:
    post_pod(v1, "web")
    change = {"metadata": {"labels": {"by": "main"}}, "status": {"phase": "Running"}}
    through_main = v1.patch_namespaced_pod("web", "default", change)
    assert meta(through_main).labels == {"by": "main"}
    assert through_main.status is not None and through_main.status.phase == "Pending"

    change = {"metadata": {"labels": {"by": "status"}}, "status": {"phase": "Succeeded"}}
    through_status = v1.patch_namespaced_pod_status("web", "default", change)
    assert meta(through_status).labels == {"by": "main"}
    assert through_status.status is not None and through_status.status.phase == "Succeeded"


def test_updating_a_missing_object_is_not_found(v1: CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        v1.patch_node("absent", {"metadata": {"labels": {"a": "b"}}})
    assert e.value.status == 404


# ---- bindings ----


def test_binding_by_either_path_assigns_the_pod_once(api: ApiServerStandIn, v1: CoreV1Api) -> None:
    """The API server answers a binding with a Status, which the client cannot read as the
    V1Binding it declares: callers take the raw response (_preload_content=False)."""
    api.create_pod(pod("web"))
    api.create_pod(pod("db"))

    answer: Any = v1.create_namespaced_binding(
        "default", binding("web", "gpu-1"), _preload_content=False
    )
    assert answer.status == 201
    assert json.loads(answer.data)["status"] == "Success"
    answer = v1.create_namespaced_pod_binding(
        "db", "default", binding("db", "gpu-2"), _preload_content=False
    )
    assert answer.status == 201
    assert spec(v1.read_namespaced_pod("web", "default")).node_name == "gpu-1"
    assert spec(v1.read_namespaced_pod("db", "default")).node_name == "gpu-2"

    with pytest.raises(ApiException) as e:
        v1.create_namespaced_binding("default", binding("web", "gpu-2"), _preload_content=False)
    assert e.value.status == 409
    assert failure(e)["message"] == (
        'Operation cannot be fulfilled on pods/binding "web": '
        'pod web is already assigned to node "gpu-1"'
    )
    assert [(b["metadata"]["name"], b["target"]["name"]) for b in api.bindings] == [
        ("web", "gpu-1"),
        ("db", "gpu-2"),
        ("web", "gpu-2"),
    ]


def test_binding_checks_the_pods_uid_and_name(api: ApiServerStandIn, v1: CoreV1Api) -> None:
    api.create_pod(pod("web"))
    stale = binding("web", "gpu-1")
    stale.metadata = V1ObjectMeta(name="web", uid="a-deleted-pods-uid")
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod_binding("web", "default", stale, _preload_content=False)
    assert e.value.status == 409
    assert "Precondition failed: UID in precondition: a-deleted-pods-uid" in failure(e)["message"]
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod_binding(
            "web", "default", binding("db", "gpu-1"), _preload_content=False
        )
    assert e.value.status == 400
    stored = api.get_pod("default", "web")
    assert stored is not None
    assert "nodeName" not in stored["spec"]


def test_binding_a_missing_pod_is_not_found(v1: CoreV1Api) -> None:
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_binding("default", binding("ghost", "gpu-1"), _preload_content=False)
    assert e.value.status == 404


# ---- watches ----


def test_watch_from_a_resource_version_gets_the_later_changes_in_order(v1: CoreV1Api) -> None:
    post_pod(v1, "before")
    since = list_meta(v1.list_namespaced_pod("default")).resource_version
    post_pod(v1, "web")
    post_pod(v1, "elsewhere", "other")
    v1.patch_namespaced_pod("web", "default", {"metadata": {"labels": {"x": "1"}}})
    v1.delete_namespaced_pod("web", "default")
    post_pod(v1, "last")

    stream = watch(
        v1.list_namespaced_pod,
        "default",
        resource_version=since,
        allow_watch_bookmarks=True,
        timeout_seconds=WATCH_LIMIT_S,
    )
    # A DELETE marks even an unbound pod (deletionTimestamp, grace 0) before removing it.
    assert watched(stream, 5) == [
        ("ADDED", "web"),
        ("MODIFIED", "web"),
        ("MODIFIED", "web"),
        ("DELETED", "web"),
        ("ADDED", "last"),
    ]


def test_watch_without_a_resource_version_lists_first_then_streams_live(
    api: ApiServerStandIn, v1: CoreV1Api
) -> None:
    api.create_node(node("a"))
    api.create_node(node("b"))
    seen = []
    started = time.monotonic()
    for event in watch(v1.list_node, timeout_seconds=WATCH_LIMIT_S):
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 2:
            api.update_node(node("a") | {"spec": {"unschedulable": True}})
            api.delete_node("b")
        if len(seen) == 4:
            break
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("DELETED", "b")]
    assert time.monotonic() - started < 2


def test_a_pod_leaving_a_watched_selection_is_deleted_from_it(
    api: ApiServerStandIn, v1: CoreV1Api
) -> None:
    api.create_pod(pod("web"))
    stream = watch(
        v1.list_pod_for_all_namespaces,
        field_selector="spec.nodeName=",
        timeout_seconds=WATCH_LIMIT_S,
    )
    assert watched(stream, 1) == [("ADDED", "web")]
    v1.create_namespaced_binding("default", binding("web", "gpu-1"), _preload_content=False)
    api.create_pod(pod("next"))
    assert watched(stream, 2) == [("DELETED", "web"), ("ADDED", "next")]


def test_watch_events_carry_the_writes_resource_versions(v1: CoreV1Api) -> None:
    post_node(v1, "a")
    patched = v1.patch_node("a", {"metadata": {"labels": {"x": "1"}}})
    stream = watch(v1.list_node, resource_version="0", timeout_seconds=WATCH_LIMIT_S)
    event = next(stream)
    assert event["object"].metadata.resource_version == meta(patched).resource_version
    assert event["raw_object"]["kind"] == "Node"


def test_a_resource_version_older_than_the_history_is_gone() -> None:
    with ApiServerStandIn(history_size=2) as api, ApiClient(api.configuration()) as client:
        v1 = CoreV1Api(client)
        for name in "abcd":
            api.create_node(node(name))

        oldest_kept = watch(v1.list_node, resource_version="2", timeout_seconds=1)
        assert watched(oldest_kept, 2) == [("ADDED", "c"), ("ADDED", "d")]
        with pytest.raises(ApiException) as e:
            watched(watch(v1.list_node, resource_version="1", timeout_seconds=1))
        assert e.value.status == 410


def test_timeout_seconds_ends_the_stream(v1: CoreV1Api) -> None:
    started = time.monotonic()
    assert watched(watch(v1.list_node, timeout_seconds=1)) == []
    assert 1 <= time.monotonic() - started < 3


def test_drop_watches_ends_every_open_stream(api: ApiServerStandIn, v1: CoreV1Api) -> None:
    api.create_node(node("a"))
    pods = watch(v1.list_pod_for_all_namespaces, timeout_seconds=WATCH_LIMIT_S)
    nodes = watch(v1.list_node, timeout_seconds=WATCH_LIMIT_S)
    api.create_pod(pod("web"))
    assert watched(pods, 1) == [("ADDED", "web")]
    assert watched(nodes, 1) == [("ADDED", "a")]

    started = time.monotonic()
    api.drop_watches()
    assert watched(pods) == []
    assert watched(nodes) == []
    assert time.monotonic() - started < 2
    assert watched(watch(v1.list_node, timeout_seconds=WATCH_LIMIT_S), 1) == [("ADDED", "a")]


def test_stop_ends_open_streams() -> None:
    api = ApiServerStandIn()
    api.create_node(node("a"))
    with ApiClient(api.configuration()) as client:
        stream = watch(CoreV1Api(client).list_node, timeout_seconds=WATCH_LIMIT_S)
        assert watched(stream, 1) == [("ADDED", "a")]
        started = time.monotonic()
        api.stop()
        assert watched(stream) == []
        assert time.monotonic() - started < 2


# ---- the stand-in's controls ----


def test_fail_next_fails_only_the_matching_requests(api: ApiServerStandIn, v1: CoreV1Api) -> None:
    post_node(v1, "a")
    api.fail_next("DELETE", r"^/api/v1/nodes/a$", 500, times=2)
    api.fail_next("GET", r"^/api/v1/nodes$", 503)

    assert meta(v1.read_node("a")).name == "a"
    with pytest.raises(ApiException) as e:
        v1.list_node()
    assert (e.value.status, failure(e)["reason"]) == (503, "ServiceUnavailable")
    assert names(v1.list_node().items) == ["a"]
    for _ in range(2):
        with pytest.raises(ApiException) as e:
            v1.delete_node("a")
        assert e.value.status == 500
    v1.delete_node("a")
    assert api.nodes() == []


def test_requests_are_recorded_with_their_query(api: ApiServerStandIn, v1: CoreV1Api) -> None:
    v1.list_namespaced_pod("default", label_selector="app=web")
    post_node(v1, "a")
    assert api.requests == [
        ("GET", "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb"),
        ("POST", "/api/v1/nodes"),
    ]


def test_a_malformed_json_body_is_a_bad_request(api: ApiServerStandIn, v1: CoreV1Api) -> None:
    """The client serializes every body itself; its HTTP pool sends a broken one."""
    api.create_pod(pod("web"))
    pool = v1.api_client.rest_client.pool_manager
    for method, path, content_type in [
        ("POST", "/api/v1/namespaces/default/pods", "application/json"),
        ("PATCH", "/api/v1/namespaces/default/pods/web", "application/merge-patch+json"),
    ]:
        answer = pool.request(
            method, api.url + path, body=b'{"metadata": ', headers={"Content-Type": content_type}
        )
        assert answer.status == 400
        assert json.loads(answer.data)["reason"] == "BadRequest"


def test_a_kubeconfig_for_the_stand_in_loads(api: ApiServerStandIn, tmp_path: Path) -> None:
    api.create_node(node("a"))
    path = tmp_path / "kubeconfig"
    api.write_kubeconfig(path)

    loaded = Configuration()
    kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
        config_file=str(path), client_configuration=loaded
    )

    assert loaded.host == api.url
    with ApiClient(loaded) as client:
        assert names(CoreV1Api(client).list_node().items) == ["a"]


def test_concurrent_writes_take_distinct_resource_versions(v1: CoreV1Api) -> None:
    with ThreadPoolExecutor(8) as pool:
        created = list(pool.map(lambda i: post_pod(v1, f"p{i}"), range(32)))
    versions = {int(str(meta(p).resource_version)) for p in created}
    assert versions == set(range(1, 33))


def test_stand_ins_are_independent() -> None:
    with ApiServerStandIn() as one, ApiServerStandIn() as two:
        one.create_node(node("a"))
        assert one.url != two.url
        with ApiClient(two.configuration()) as client:
            assert CoreV1Api(client).list_node().items == []
