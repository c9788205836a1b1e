"""The API server stand-in's CustomResourceDefinitions, custom resources, Leases, garbage
collection and traffic log, through the real kubernetes client over HTTP (gpulet's own
ObjectCalls, as the agent and the extender call them)."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest
from kubernetes.client import ApiClient, ApiException
from kubernetes.watch.watch import iter_resp_lines

from gpulet.api import nodetopology as nt
from gpulet.kube.calls import ObjectCalls, leases, node_topologies
from gpulet.kube.crd import node_topology_crd
from gpulet.standins.apiserver import ApiError, ApiServerStandIn
from gpulet.topology.document import to_document
from tests.nodes import shipped

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
GROUP = "test.gpulet.io"
LEASES_EVERYWHERE = "/apis/coordination.k8s.io/v1/leases"
NAMESPACE = "kube-system"
WATCH_LIMIT_S = 5


@pytest.fixture
def api() -> Iterator[ApiServerStandIn]:
    with ApiServerStandIn() as server:
        yield server


@pytest.fixture
def client(api: ApiServerStandIn) -> Iterator[ApiClient]:
    with ApiClient(api.configuration()) as c:
        yield c


@pytest.fixture
def topologies(api: ApiServerStandIn, client: ApiClient) -> ObjectCalls:
    """NodeTopologies, their definition created over HTTP."""
    ObjectCalls(client, CRDS).create(node_topology_crd())
    return node_topologies(client)


def body(response: Any) -> Any:
    return json.loads(response.data)


def failure(call: Any, *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """The HTTP status and Status body (or text) a call fails with."""
    with pytest.raises(ApiException) as e:
        call(*args, **kwargs)
    try:
        return e.value.status, json.loads(e.value.body or "")
    except ValueError:
        return e.value.status, e.value.body


def document(node: str = "gpu-1") -> dict[str, Any]:
    """A real topology document: a simulated DGX H100's."""
    return {**to_document(shipped("dgx-h100")), "node": node}


def topology(api: ApiServerStandIn, node: str = "gpu-1") -> dict[str, Any]:
    """The NodeTopology of a Node created directly (so that its owner exists)."""
    created = api.create_node({"metadata": {"name": node}})
    return nt.node_topology(node, created["metadata"]["uid"], document(node))


def widget_crd(
    *, scope: str = "Cluster", versions: tuple[str, ...] = ("v1",), status: bool = False
) -> dict[str, Any]:
    """A small test-only definition: widgets.test.gpulet.io, the last version stored."""
    schema = {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "required": ["size"],
                "properties": {
                    "size": {"type": "integer", "format": "int64", "minimum": 0},
                    "name": {"type": "string", "maxLength": 5},
                    "tags": {"type": "array", "maxItems": 2, "items": {"type": "string"}},
                    "note": {"type": "string", "nullable": True},
                    "other": {"type": "string"},
                    "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                    "colour": {"type": "string", "default": "blue"},
                },
            },
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": scope,
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [
                {
                    "name": v,
                    "served": True,
                    "storage": v == versions[-1],
                    "schema": {"openAPIV3Schema": schema},
                    **({"subresources": {"status": {}}} if status else {}),
                }
                for v in versions
            ],
        },
    }


def widget(name: str, namespace: str | None = None, **spec: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": meta,
        "spec": {"size": 1, **spec},
    }


def widgets(client: ApiClient, version: str = "v1", namespace: str | None = None) -> ObjectCalls:
    where = f"namespaces/{namespace}/" if namespace else ""
    return ObjectCalls(client, f"/apis/{GROUP}/{version}/{where}widgets")


def lease(
    node: str, namespace: str = NAMESPACE, *, labels: dict[str, str] | None = None
) -> dict[str, Any]:
    """gpulet's heartbeat Lease of `node`, its labels updated by `labels`."""
    renewed = 1_800_000_000.25
    obj = nt.lease(node, namespace, f"{node}/agent", renewed=renewed, acquired=renewed)
    obj["metadata"]["labels"].update(labels or {})
    return obj


def events(calls: ObjectCalls, count: int, **options: Any) -> list[dict[str, Any]]:
    """The first `count` events of a watch (fewer if it ends first)."""
    stream = calls.list(watch=True, timeout_seconds=WATCH_LIMIT_S, **options)
    seen: list[dict[str, Any]] = []
    try:
        for line in iter_resp_lines(stream):  # type: ignore[no-untyped-call]
            seen.append(json.loads(line))
            if len(seen) == count:
                break
    finally:
        stream.close()
    return seen


def seen(watched: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"]["name"]) for e in watched]


def version_of(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


# ---- CustomResourceDefinitions ----


def test_custom_resources_are_served_from_their_definition_until_its_deletion(
    api: ApiServerStandIn, client: ApiClient
) -> None:
    crds, calls = ObjectCalls(client, CRDS), widgets(client)
    # As kube-apiserver answers a path of no group served: Go's plain-text 404.
    assert failure(calls.list) == (404, "404 page not found\n")

    created = body(crds.create(widget_crd()))
    conditions = {c["type"]: c["status"] for c in created["status"]["conditions"]}
    assert conditions == {"NamesAccepted": "True", "Established": "True"}
    assert created["spec"]["names"]["listKind"] == "WidgetList"
    assert body(crds.read(f"widgets.{GROUP}"))["metadata"]["uid"] == created["metadata"]["uid"]
    assert [c["metadata"]["name"] for c in body(crds.list())["items"]] == [f"widgets.{GROUP}"]
    calls.create(widget("a"))
    listed = body(calls.list())
    assert (listed["kind"], listed["apiVersion"]) == ("WidgetList", f"{GROUP}/v1")
    version = listed["metadata"]["resourceVersion"]

    crds.delete(f"widgets.{GROUP}")
    assert failure(calls.read, "a")[0] == 404
    assert api.objects("apiextensions.k8s.io/v1", "customresourcedefinitions") == []
    # Its objects went first, each with a DELETED event.
    crds.create(widget_crd())
    assert seen(events(calls, 1, resource_version=version)) == [("DELETED", "a")]


def test_a_definition_that_does_not_define_is_invalid(client: ApiClient) -> None:
    crds = ObjectCalls(client, CRDS)
    wrong_name = widget_crd()
    wrong_name["metadata"]["name"] = "gadgets.test.gpulet.io"
    no_storage = widget_crd()
    no_storage["spec"]["versions"][0]["storage"] = False
    no_schema = widget_crd()
    del no_schema["spec"]["versions"][0]["schema"]

    for crd, field in [
        (wrong_name, "metadata.name"),
        (no_storage, "spec.versions"),
        (no_schema, "spec.versions[0].schema.openAPIV3Schema"),
    ]:
        code, status = failure(crds.create, crd)
        assert code == 422
        assert [c["field"] for c in status["details"]["causes"]] == [field]


def test_every_served_version_serves_the_same_objects(client: ApiClient) -> None:
    ObjectCalls(client, CRDS).create(widget_crd(versions=("v1", "v2")))
    created = body(widgets(client).create(widget("a")))
    assert created["apiVersion"] == f"{GROUP}/v1"

    at_v2 = body(widgets(client, "v2").read("a"))
    assert at_v2["apiVersion"] == f"{GROUP}/v2"
    assert at_v2["metadata"]["uid"] == created["metadata"]["uid"]
    assert [i["apiVersion"] for i in body(widgets(client, "v2").list())["items"]] == [f"{GROUP}/v2"]
    # A version that is not defined is no path at all.
    assert failure(widgets(client, "v3").list)[0] == 404


def test_namespaced_custom_resources(client: ApiClient) -> None:
    ObjectCalls(client, CRDS).create(widget_crd(scope="Namespaced"))
    widgets(client, namespace="a").create(widget("one", "a"))
    widgets(client, namespace="b").create(widget("one", "b"))

    everywhere = widgets(client)
    assert [i["metadata"]["namespace"] for i in body(everywhere.list())["items"]] == ["a", "b"]
    selected = body(everywhere.list(field_selector="metadata.namespace=b"))["items"]
    assert [i["metadata"]["namespace"] for i in selected] == ["b"]
    assert failure(everywhere.create, widget("two", "a"))[0] == 405
    assert failure(widgets(client, namespace="a").create, widget("x", "b"))[0] == 400


# ---- custom resources: validation and pruning ----


def test_a_node_topology_of_a_real_document_is_accepted(
    api: ApiServerStandIn, topologies: ObjectCalls
) -> None:
    desired = topology(api)
    created = body(topologies.create(desired))

    assert created["spec"] == desired["spec"]
    assert created["metadata"]["generation"] == 1
    assert nt.document_of(created) == {**document(), "apiVersion": nt.API_VERSION, "kind": nt.KIND}
    assert body(topologies.read("gpu-1"))["spec"] == desired["spec"]


def test_unknown_fields_are_pruned(api: ApiServerStandIn, topologies: ObjectCalls) -> None:
    desired = topology(api)
    desired["spec"]["extra"] = {"a": 1}
    desired["spec"]["gpus"][0]["firmware"] = "1.2"
    desired["status"] = {"healthy": True, "idle": []}

    created = body(topologies.create(desired))

    assert "extra" not in created["spec"]
    assert "firmware" not in created["spec"]["gpus"][0]
    assert created["status"] == {"idle": []}
    assert created["spec"]["gpus"][0]["uuid"] == desired["spec"]["gpus"][0]["uuid"]


def test_nulls_defaults_and_preserved_fields(client: ApiClient) -> None:
    ObjectCalls(client, CRDS).create(widget_crd())
    sent = widget("a", note=None, other=None, free={"any": {"thing": [1]}}, bogus=True)

    spec = body(widgets(client).create(sent))["spec"]

    assert spec == {"size": 1, "note": None, "free": {"any": {"thing": [1]}}, "colour": "blue"}


@pytest.mark.parametrize(
    ("spec", "field", "message"),
    [
        (
            {"size": "x"},
            "spec.size",
            'spec.size: Invalid value: "string": spec.size in body must be of type integer: '
            '"string"',
        ),
        ({}, "spec.size", "spec.size: Required value"),
        (
            {"size": -1},
            "spec.size",
            "spec.size: Invalid value: -1: spec.size in body should be greater than or equal to 0",
        ),
        (
            {"size": 2**63},
            "spec.size",
            'spec.size: Invalid value: "number": spec.size in body must be of type integer: '
            '"number"',
        ),
        ({"size": 1, "name": "toolong"}, "spec.name", "Too long: may not be more than 5 bytes"),
        (
            {"size": 1, "tags": ["a", "b", "c"]},
            "spec.tags",
            "spec.tags: Too many: 3: must have at most 2 items",
        ),
        (
            {"size": 1, "tags": [1]},
            "spec.tags[0]",
            'spec.tags[0] in body must be of type string: "integer"',
        ),
    ],
)
def test_an_object_its_schema_refuses_is_invalid(
    client: ApiClient, spec: dict[str, Any], field: str, message: str
) -> None:
    ObjectCalls(client, CRDS).create(widget_crd())
    sent = widget("a")
    sent["spec"] = spec

    code, status = failure(widgets(client).create, sent)

    assert (code, status["reason"]) == (422, "Invalid")
    assert status["message"].startswith(f'Widget.{GROUP} "a" is invalid: ')
    assert message in status["message"]
    assert [c["field"] for c in status["details"]["causes"]] == [field]
    assert failure(widgets(client).read, "a")[0] == 404


def test_a_wrong_type_in_a_node_topology_is_invalid(
    api: ApiServerStandIn, topologies: ObjectCalls
) -> None:
    desired = topology(api)
    desired["spec"]["gpus"][1]["memory_mib"] = "80 GiB"

    code, status = failure(topologies.create, desired)

    assert code == 422
    assert status["details"]["causes"][0]["field"] == "spec.gpus[1].memory_mib"
    assert api.objects(nt.API_VERSION, nt.PLURAL) == []


def test_a_node_topology_with_more_links_than_any_node_is_invalid(
    api: ApiServerStandIn, topologies: ObjectCalls
) -> None:
    """maxProperties, as the real server checks it: a compromised agent's oversized map."""
    desired = topology(api)
    desired["spec"]["links"] = {f"GPU{i}": {} for i in range(400)}

    code, status = failure(topologies.create, desired)

    assert code == 422
    assert status["details"]["causes"][0]["field"] == "spec.links"
    assert api.objects(nt.API_VERSION, nt.PLURAL) == []


def test_api_version_kind_and_name_are_checked(client: ApiClient) -> None:
    ObjectCalls(client, CRDS).create(widget_crd())
    calls = widgets(client)
    no_kind = widget("a")
    del no_kind["kind"]

    code, status = failure(calls.create, {**widget("a"), "kind": "Gadget"})
    assert (code, status["message"]) == (
        422,
        f'Gadget.{GROUP} "a" is invalid: kind: Invalid value: "Gadget": must be Widget',
    )
    code, status = failure(calls.create, {**widget("a"), "apiVersion": f"{GROUP}/v9"})
    assert (code, status["message"]) == (
        400,
        f"the API version in the data ({GROUP}/v9) does not match the expected API version "
        f"({GROUP}/v1)",
    )
    code, status = failure(calls.create, no_kind)
    assert code == 400 and "Object 'Kind' is missing" in status["message"]
    code, status = failure(calls.create, widget("Not_A_Name"))
    assert (code, status["details"]["causes"][0]["field"]) == (422, "metadata.name")
    assert body(calls.list())["items"] == []


# ---- custom resources: writes ----


def test_creating_an_existing_name_is_already_exists(client: ApiClient) -> None:
    ObjectCalls(client, CRDS).create(widget_crd())
    widgets(client).create(widget("a"))

    code, status = failure(widgets(client).create, widget("a", size=2))

    assert (code, status["reason"]) == (409, "AlreadyExists")
    assert status["message"] == f'widgets.{GROUP} "a" already exists'
    assert status["details"] == {"name": "a", "group": GROUP, "kind": "widgets"}


def test_reading_a_missing_object_is_not_found(client: ApiClient) -> None:
    ObjectCalls(client, CRDS).create(widget_crd())

    code, status = failure(widgets(client).read, "a")

    assert (code, status["message"]) == (404, f'widgets.{GROUP} "a" not found')
    assert status["details"] == {"name": "a", "group": GROUP, "kind": "widgets"}
    assert failure(widgets(client).delete, "a")[0] == 404


def test_a_put_needs_the_current_resource_version(client: ApiClient) -> None:
    ObjectCalls(client, CRDS).create(widget_crd())
    calls = widgets(client)
    created = body(calls.create(widget("a")))

    unconditional = copy.deepcopy(created)
    del unconditional["metadata"]["resourceVersion"]
    code, status = failure(calls.replace, "a", unconditional)
    assert (code, status["message"]) == (
        422,
        f'widgets.{GROUP} "a" is invalid: metadata.resourceVersion: Invalid value: 0: '
        "must be specified for an update",
    )

    changed = copy.deepcopy(created)
    changed["spec"]["size"] = 2
    replaced = body(calls.replace("a", changed))
    assert replaced["spec"]["size"] == 2
    assert version_of(replaced) > version_of(created)

    code, status = failure(calls.replace, "a", changed)
    assert (code, status["reason"]) == (409, "Conflict")
    assert failure(calls.replace, "b", changed)[0] == 400  # the name is not the path's
    assert body(calls.read("a"))["spec"]["size"] == 2


def test_generation_counts_changes_to_the_spec(client: ApiClient) -> None:
    ObjectCalls(client, CRDS).create(widget_crd())
    calls = widgets(client)
    assert body(calls.create(widget("a")))["metadata"]["generation"] == 1

    relabelled = body(calls.patch("a", {"metadata": {"labels": {"x": "y"}}}))
    assert relabelled["metadata"]["generation"] == 1
    resized = body(calls.patch("a", {"spec": {"size": 5}}))
    assert (resized["metadata"]["generation"], resized["metadata"]["labels"]) == (2, {"x": "y"})
    again = body(calls.patch("a", {"spec": {"size": 5}}))
    assert again["metadata"]["generation"] == 2


def raw(api: ApiServerStandIn, client: ApiClient, method: str, path: str, **kwargs: Any) -> Any:
    """A request the client's own calls would not send, through its HTTP pool."""
    return client.rest_client.pool_manager.request(method, api.url + path, **kwargs)


def test_a_merge_patch_is_validated_and_a_strategic_one_refused(
    api: ApiServerStandIn, client: ApiClient
) -> None:
    ObjectCalls(client, CRDS).create(widget_crd())
    calls = widgets(client)
    calls.create(widget("a"))

    assert failure(calls.patch, "a", {"spec": {"size": "big"}})[0] == 422
    assert body(calls.patch("a", {"spec": {"size": 3, "bogus": 1}}))["spec"]["size"] == 3
    answer = raw(
        api,
        client,
        "PATCH",
        f"{calls.collection}/a",
        body=b'{"spec": {"size": 4}}',
        headers={"Content-Type": "application/strategic-merge-patch+json"},
    )
    assert answer.status == 415
    assert body(calls.read("a"))["spec"] == {"size": 3, "colour": "blue"}


def test_a_status_subresource_keeps_status_and_spec_apart(client: ApiClient) -> None:
    ObjectCalls(client, CRDS).create(widget_crd(status=True))
    calls = widgets(client)
    calls.create({**widget("a"), "status": {"ready": True}})
    # PATCH .../widgets/a/status
    subresources = ObjectCalls(client, f"{calls.collection}/a")

    assert "status" not in body(calls.read("a"))
    updated = body(subresources.patch("status", {"status": {"ready": True}, "spec": {"size": 9}}))
    assert (updated["status"], updated["spec"]["size"]) == ({"ready": True}, 1)
    assert updated["metadata"]["generation"] == 1
    relabelled = body(calls.patch("a", {"status": {"ready": False}, "spec": {"size": 2}}))
    assert (relabelled["status"], relabelled["spec"]["size"]) == ({"ready": True}, 2)


# ---- Leases ----


def test_a_lease_is_created_and_renewed(api: ApiServerStandIn, client: ApiClient) -> None:
    calls = leases(client, NAMESPACE)
    created = body(calls.create(lease("gpu-1")))
    assert created["spec"]["renewTime"] == "2027-01-15T08:00:00.250000Z"
    assert (created["apiVersion"], created["kind"]) == ("coordination.k8s.io/v1", "Lease")

    renewed = copy.deepcopy(created)
    renewed["spec"]["renewTime"] = "2027-01-15T09:00:20.500000+01:00"
    answer = body(calls.replace(nt.lease_name("gpu-1"), renewed))
    assert answer["spec"]["renewTime"] == "2027-01-15T08:00:20.500000Z"  # UTC, as stored
    assert version_of(answer) > version_of(created)
    assert api.get_object("coordination.k8s.io/v1", "leases", "gpulet-node-gpu-1", NAMESPACE) == (
        answer
    )


def test_a_lease_put_needs_a_resource_version_but_creates_a_missing_one(
    client: ApiClient,
) -> None:
    """As kube-apiserver 1.37: a Lease's PUT is conditional (422 without a resourceVersion),
    and a PUT of a Lease that is not there creates it."""
    calls = leases(client, NAMESPACE)
    made = calls.replace(nt.lease_name("gpu-1"), lease("gpu-1"))
    assert made.status == 201

    code, status = failure(calls.replace, nt.lease_name("gpu-1"), lease("gpu-1"))
    assert code == 422
    assert status["details"]["causes"][0]["field"] == "metadata.resourceVersion"


@pytest.mark.parametrize(
    ("spec", "code", "words"),
    [
        ({"leaseDurationSeconds": 0}, 422, "spec.leaseDurationSeconds: Invalid value: 0: must be"),
        ({"leaseTransitions": -1}, 422, "spec.leaseTransitions: Invalid value: -1"),
        ({"leaseDurationSeconds": "60"}, 400, "cannot unmarshal string into Go struct field"),
        ({"renewTime": "2027-01-15T08:00:00Z"}, 400, 'cannot parse "Z" as ".000000"'),
        ({"renewTime": "2027-01-15T08:00:00.25Z"}, 400, 'cannot parse ".25Z" as ".000000"'),
        ({"acquireTime": "2027-01-15T08:00:00.250000000Z"}, 400, 'as "Z07:00"'),
        ({"acquireTime": "yesterday"}, 400, "parsing time"),
    ],
)
def test_a_lease_the_api_server_refuses(
    client: ApiClient, spec: dict[str, Any], code: int, words: str
) -> None:
    refused = lease("gpu-1")
    refused["spec"].update(spec)

    status = failure(leases(client, NAMESPACE).create, refused)

    assert status[0] == code
    assert words in status[1]["message"]


def test_a_lease_loses_what_it_does_not_have(client: ApiClient) -> None:
    sent = lease("gpu-1")
    sent["spec"]["color"] = "red"
    sent["status"] = {"x": 1}
    sent["spec"]["holderIdentity"] = None

    created = body(leases(client, NAMESPACE).create(sent))

    assert "status" not in created
    assert set(created["spec"]) == {
        "leaseDurationSeconds",
        "acquireTime",
        "renewTime",
        "leaseTransitions",
    }


def test_leases_of_every_namespace(client: ApiClient) -> None:
    leases(client, "a").create(lease("gpu-1", "a"))
    leases(client, "b").create(lease("gpu-1", "b"))
    everywhere = ObjectCalls(client, LEASES_EVERYWHERE)

    listed = body(everywhere.list())
    assert (listed["kind"], [i["metadata"]["namespace"] for i in listed["items"]]) == (
        "LeaseList",
        ["a", "b"],
    )
    assert failure(everywhere.create, lease("gpu-2"))[0] == 405
    assert failure(ObjectCalls(client, "/apis/coordination.k8s.io/v1/nodes").list) == (
        404,
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound",
            "details": {},
            "code": 404,
        },
    )


# ---- selectors and watches ----


def test_field_selectors_on_name_and_namespace(client: ApiClient, api: ApiServerStandIn) -> None:
    for node in ("gpu-1", "gpu-2"):
        leases(client, NAMESPACE).create(lease(node))
    leases(client, "other").create(lease("gpu-1", "other"))
    everywhere = ObjectCalls(client, LEASES_EVERYWHERE)

    named = body(everywhere.list(field_selector="metadata.name=gpulet-node-gpu-1"))["items"]
    assert [i["metadata"]["namespace"] for i in named] == [NAMESPACE, "other"]
    both = "metadata.name=gpulet-node-gpu-1,metadata.namespace=other"
    assert len(body(everywhere.list(field_selector=both))["items"]) == 1
    not_one = body(everywhere.list(field_selector="metadata.name!=gpulet-node-gpu-1"))["items"]
    assert [i["metadata"]["name"] for i in not_one] == ["gpulet-node-gpu-2"]

    code, status = failure(everywhere.list, field_selector="spec.holderIdentity=x")
    assert (code, status["message"]) == (
        400,
        '"spec.holderIdentity" is not a known field selector: only "metadata.name", '
        '"metadata.namespace"',
    )
    ObjectCalls(client, CRDS).create(widget_crd())
    code, status = failure(widgets(client).list, field_selector="metadata.namespace=a")
    assert (code, status["message"]) == (400, "field label not supported: metadata.namespace")
    widgets(client).create(widget("a"))
    widgets(client).create(widget("b"))
    picked = body(widgets(client).list(field_selector="metadata.name=b"))["items"]
    assert [i["metadata"]["name"] for i in picked] == ["b"]


def test_label_selected_watch_sees_only_matching_leases(client: ApiClient) -> None:
    calls = leases(client, NAMESPACE)
    calls.create(lease("before"))
    start = body(calls.list())["metadata"]["resourceVersion"]
    ours = body(calls.create(lease("gpu-1")))
    calls.create(lease("gpu-2", labels={"app.kubernetes.io/name": "someone-else"}))
    ours["spec"]["renewTime"] = "2027-01-15T08:00:20.000000Z"
    calls.replace(ours["metadata"]["name"], ours)
    calls.patch("gpulet-node-gpu-1", {"metadata": {"labels": {"app.kubernetes.io/name": "x"}}})
    calls.patch("gpulet-node-gpu-2", {"metadata": {"labels": nt.LEASE_LABELS}})
    calls.delete("gpulet-node-gpu-2")

    watched = events(calls, 5, resource_version=start, label_selector=nt.LEASE_SELECTOR)

    assert seen(watched) == [
        ("ADDED", "gpulet-node-gpu-1"),
        ("MODIFIED", "gpulet-node-gpu-1"),
        ("DELETED", "gpulet-node-gpu-1"),  # it left the selection
        ("ADDED", "gpulet-node-gpu-2"),  # it came in
        ("DELETED", "gpulet-node-gpu-2"),
    ]
    versions = [version_of(e["object"]) for e in watched]
    assert versions == sorted(versions)
    assert watched[1]["object"]["spec"]["renewTime"] == "2027-01-15T08:00:20.000000Z"


def test_a_watch_of_custom_resources_sees_direct_writes(
    api: ApiServerStandIn, topologies: ObjectCalls
) -> None:
    stream_start = body(topologies.list())["metadata"]["resourceVersion"]
    api.create_object(nt.API_VERSION, nt.PLURAL, topology(api))

    watched = events(topologies, 1, resource_version=stream_start)

    assert seen(watched) == [("ADDED", "gpu-1")]
    assert watched[0]["object"]["apiVersion"] == nt.API_VERSION


# ---- garbage collection ----


def test_deleting_a_node_collects_its_node_topology(
    api: ApiServerStandIn, client: ApiClient, topologies: ObjectCalls
) -> None:
    topologies.create(topology(api, "gpu-1"))
    topologies.create(topology(api, "gpu-2"))
    start = body(topologies.list())["metadata"]["resourceVersion"]

    api.delete_node("gpu-1")

    assert [o["metadata"]["name"] for o in api.objects(nt.API_VERSION, nt.PLURAL)] == ["gpu-2"]
    (gone,) = events(topologies, 1, resource_version=start)
    assert gone["type"] == "DELETED" and gone["object"]["metadata"]["name"] == "gpu-1"
    assert version_of(gone["object"]) > int(start) + 1  # after the Node's own deletion


def test_an_object_whose_owner_does_not_exist_is_collected(
    api: ApiServerStandIn, topologies: ObjectCalls
) -> None:
    wrong_uid = topology(api, "gpu-1")
    wrong_uid["metadata"]["ownerReferences"][0]["uid"] = "a-deleted-nodes-uid"
    no_node = nt.node_topology("gpu-9", "any-uid", document("gpu-9"))

    assert topologies.create(wrong_uid).status == 201  # answered, then collected
    topologies.create(no_node)

    assert api.objects(nt.API_VERSION, nt.PLURAL) == []


def test_an_object_with_an_owner_left_loses_only_the_gone_reference(
    api: ApiServerStandIn, client: ApiClient
) -> None:
    calls = leases(client, NAMESPACE)
    owners = [body(calls.create(lease(n)))["metadata"] for n in ("owner-a", "owner-b")]
    dependent = lease("dependent")
    dependent["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "name": o["name"],
            "uid": o["uid"],
        }
        for o in owners
    ]
    unknown_kind = lease("unknown")
    unknown_kind["metadata"]["ownerReferences"] = [
        {"apiVersion": "example.com/v1", "kind": "Thing", "name": "x", "uid": "u"}
    ]
    calls.create(dependent)
    calls.create(unknown_kind)

    calls.delete(owners[0]["name"])

    kept = body(calls.read("gpulet-node-dependent"))["metadata"]["ownerReferences"]
    assert [r["name"] for r in kept] == [owners[1]["name"]]
    assert calls.read("gpulet-node-unknown").status == 200  # a kind not served: left alone
    calls.delete(owners[1]["name"])
    assert failure(calls.read, "gpulet-node-dependent")[0] == 404


def test_collection_cascades(api: ApiServerStandIn, client: ApiClient) -> None:
    calls = leases(client, NAMESPACE)
    parent = body(calls.create(lease("parent")))["metadata"]
    child = lease("child")
    child["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            **{k: parent[k] for k in ("name", "uid")},
        }
    ]
    child_meta = body(calls.create(child))["metadata"]
    grandchild = lease("grandchild")
    grandchild["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            **{k: child_meta[k] for k in ("name", "uid")},
        }
    ]
    calls.create(grandchild)

    calls.delete(parent["name"])

    assert body(calls.list())["items"] == []


# ---- direct helpers ----


def test_direct_helpers_write_as_http_does(api: ApiServerStandIn, client: ApiClient) -> None:
    api.create_crd(widget_crd())
    created = api.create_object(
        f"{GROUP}/v1", "widgets", {"metadata": {"name": "a"}, "spec": {"size": 1, "x": 2}}
    )
    assert created["spec"] == {"size": 1, "colour": "blue"}
    with pytest.raises(ApiError) as e:
        api.create_object(f"{GROUP}/v1", "widgets", widget("b", size=-1))
    assert e.value.code == 422

    updated = api.update_object(f"{GROUP}/v1", "widgets", {**created, "spec": {"size": 7}})
    assert updated["metadata"]["generation"] == 2
    assert api.get_object(f"{GROUP}/v1", "widgets", "a") == body(widgets(client).read("a"))
    assert [o["spec"]["size"] for o in api.objects(f"{GROUP}/v1", "widgets")] == [7]
    api.delete_object(f"{GROUP}/v1", "widgets", "a")
    assert api.get_object(f"{GROUP}/v1", "widgets", "a") is None

    api.create_object("coordination.k8s.io/v1", "leases", lease("gpu-1"))
    assert api.get_object("coordination.k8s.io/v1", "leases", "gpulet-node-gpu-1", NAMESPACE)
    with pytest.raises(ApiError) as e:
        api.objects("example.com/v1", "things")
    assert e.value.code == 404


# ---- traffic ----


def test_traffic_records_each_request_and_its_bytes(
    api: ApiServerStandIn, client: ApiClient
) -> None:
    client.user_agent = "gpulet-test/1"
    calls = leases(client, NAMESPACE)
    sent = lease("gpu-1")
    answer = calls.create(sent)
    listed = calls.list(label_selector=nt.LEASE_SELECTOR)

    create, listing = api.traffic()
    assert (create.method, create.path, create.user_agent) == (
        "POST",
        f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases",
        "gpulet-test/1",
    )
    assert create.request_bytes == len(json.dumps(sent).encode())
    assert create.response_bytes == len(answer.data)
    path, _, query = listing.path.partition("?")
    assert (path, parse_qs(query)) == (create.path, {"labelSelector": [nt.LEASE_SELECTOR]})
    assert listing.response_bytes == len(listed.data)
    assert api.requests == [(t.method, t.path) for t in api.traffic()]


def test_a_watchs_traffic_grows_as_it_streams(api: ApiServerStandIn, client: ApiClient) -> None:
    calls = leases(client, NAMESPACE)
    calls.create(lease("gpu-1"))
    watched = events(calls, 1)

    def watch_bytes() -> int:
        return next(t.response_bytes for t in api.traffic() if "watch=true" in t.path)

    deadline = time.monotonic() + WATCH_LIMIT_S
    while watch_bytes() == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert watch_bytes() == len(json.dumps(watched[0]).encode()) + 1
