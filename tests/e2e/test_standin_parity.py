"""The API server stand-in (gpulet/standins/apiserver) against the real kube-apiserver: the same
calls through the official client, each behaviour the unit tests rely on checked on both,
and each documented difference (docs/e2e.md) shown to be one."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from gpulet.api import nodetopology as nt
from gpulet.api.stamps import epoch, stamp
from gpulet.kube.calls import ObjectCalls, leases
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.objects import container
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e


class Server:
    """One API server, through the official client, in a namespace of the test's."""

    def __init__(self, name: str, api: client.ApiClient, namespace: str) -> None:
        self.name = name
        self.api = api
        self.core: Any = client.CoreV1Api(api)
        self.namespace = namespace

    def json(self, obj: object) -> Any:
        return self.core.api_client.sanitize_for_serialization(obj)

    def create(self, name: str, *, spec: Any = None, **meta: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, **meta},
            "spec": {"containers": [container("main")], **(spec or {})},
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
        """The pod as the server's JSON."""
        try:
            answer = self.core.read_namespaced_pod(name, self.namespace, _preload_content=False)
            return dict(json.loads(answer.data))
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


# ---- custom resources and Leases (issue 15) ----

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
#: Long enough for the real API server to establish a definition or end a watch.
SETTLE_S = 30


def answer(call: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """(HTTP status, JSON body or text) of a call, failed or not."""
    try:
        response = call(*args, **kwargs)
        return response.status, json.loads(response.data)
    except ApiException as e:
        try:
            return e.status, json.loads(e.body or "")
        except ValueError:
            return e.status, e.body


def settle(check: Callable[[], Any], why: str) -> Any:
    deadline = time.monotonic() + SETTLE_S
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {SETTLE_S} s: {why}")


class Widgets:
    """A test-only custom resource (cluster-scoped, as NodeTopology), in a group of the test's
    own: the real server is shared by the whole session, and the definition of another test
    may still be going away."""

    def __init__(self, server: Server) -> None:
        self.group = f"{server.namespace}.parity.gpulet.test"
        self.crds = ObjectCalls(server.api, CRDS)
        self.calls = ObjectCalls(server.api, f"/apis/{self.group}/v1/widgets")

    def definition(self) -> dict[str, Any]:
        spec = {
            "type": "object",
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "format": "int64", "minimum": 0},
                "note": {"type": "string", "nullable": True},
                "other": {"type": "string"},
            },
        }
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"widgets.{self.group}"},
            "spec": {
                "group": self.group,
                "scope": "Cluster",
                "names": {"plural": "widgets", "kind": "Widget"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {
                            "openAPIV3Schema": {"type": "object", "properties": {"spec": spec}}
                        },
                    }
                ],
            },
        }

    def define(self) -> None:
        """Create the definition; wait until it is Established and its path served."""
        self.crds.create(self.definition())

        def established() -> bool:
            status = json.loads(self.crds.read(f"widgets.{self.group}").data).get("status") or {}
            return any(
                c["type"] == "Established" and c["status"] == "True"
                for c in status.get("conditions") or []
            )

        settle(established, "the definition Established")
        settle(lambda: answer(self.calls.list)[0] == 200, "its objects served")

    def undefine(self) -> None:
        self.crds.delete(f"widgets.{self.group}")

    def widget(self, name: str, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": f"{self.group}/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"size": 1, **spec},
        }


@pytest.fixture
def widgets(server: Server) -> Iterator[Widgets]:
    defined = Widgets(server)
    defined.define()
    yield defined
    defined.undefine()


def lease(server: Server, name: str, **labels: str) -> dict[str, Any]:
    obj = nt.lease(name, server.namespace, f"{name}/agent", renewed=1.8e9, acquired=1.8e9)
    obj["metadata"]["labels"] = labels
    return obj


def test_custom_resources_are_served_from_their_definition_on(server: Server) -> None:
    """Before its definition, a custom resource's path is Go's plain-text 404 (no group
    version there), as after it (once the real server has removed it)."""
    undefined = Widgets(server)
    assert answer(undefined.calls.list) == (404, "404 page not found\n")
    undefined.define()
    assert answer(undefined.calls.list)[0] == 200
    undefined.undefine()
    settle(lambda: answer(undefined.calls.list)[0] == 404, "the definition gone")


def test_creating_an_existing_custom_resource_conflicts(widgets: Widgets) -> None:
    assert answer(widgets.calls.create, widgets.widget("a"))[0] == 201
    code, status = answer(widgets.calls.create, widgets.widget("a", size=2))
    assert (code, status["reason"], status["details"]) == (
        409,
        "AlreadyExists",
        {"name": "a", "group": widgets.group, "kind": "widgets"},
    )
    assert status["message"] == f'widgets.{widgets.group} "a" already exists'


def test_reading_a_missing_custom_resource_is_not_found(widgets: Widgets) -> None:
    code, status = answer(widgets.calls.read, "a")
    assert (code, status["reason"], status["message"]) == (
        404,
        "NotFound",
        f'widgets.{widgets.group} "a" not found',
    )


def test_a_put_at_a_stale_resource_version_conflicts(widgets: Widgets) -> None:
    created = answer(widgets.calls.create, widgets.widget("a"))[1]
    newer = answer(widgets.calls.patch, "a", {"spec": {"size": 2}})[1]
    assert newer["metadata"]["generation"] == 2
    stale = copy.deepcopy(created)
    stale["spec"]["size"] = 3
    code, status = answer(widgets.calls.replace, "a", stale)
    assert (code, status["reason"]) == (409, "Conflict")
    assert answer(widgets.calls.read, "a")[1]["spec"]["size"] == 2


def test_a_put_without_a_resource_version_is_invalid(server: Server, widgets: Widgets) -> None:
    """Found against kube-apiserver 1.37: Leases too refuse an unconditional PUT (422), and
    a PUT of a missing Lease creates it."""
    created = answer(widgets.calls.create, widgets.widget("a"))[1]
    del created["metadata"]["resourceVersion"]
    code, status = answer(widgets.calls.replace, "a", created)
    # kube-apiserver 1.31 writes the missing version as 0x0, 1.37 (and the stand-in) as 0.
    assert (code, status["message"].replace("Invalid value: 0x0:", "Invalid value: 0:")) == (
        422,
        f'widgets.{widgets.group} "a" is invalid: metadata.resourceVersion: Invalid value: 0: '
        "must be specified for an update",
    )
    calls = leases(server.api, server.namespace)
    assert answer(calls.replace, nt.lease_name("gpu-1"), lease(server, "gpu-1"))[0] == 201
    code, status = answer(calls.replace, nt.lease_name("gpu-1"), lease(server, "gpu-1"))
    assert (code, status["details"]["causes"][0]["field"]) == (422, "metadata.resourceVersion")


def test_unknown_fields_are_pruned(widgets: Widgets) -> None:
    code, created = answer(
        widgets.calls.create, widgets.widget("a", bogus=1, note=None, other=None)
    )
    assert (code, created["spec"]) == (201, {"size": 1, "note": None})
    assert created["metadata"]["generation"] == 1


def test_a_wrong_type_is_invalid(widgets: Widgets) -> None:
    code, status = answer(widgets.calls.create, widgets.widget("a", size="big"))
    assert (code, status["reason"], status["details"]["causes"]) == (
        422,
        "Invalid",
        [
            {
                "reason": "FieldValueTypeInvalid",
                "message": 'Invalid value: "string": spec.size in body must be of type '
                'integer: "string"',
                "field": "spec.size",
            }
        ],
    )
    assert status["message"].startswith(f'Widget.{widgets.group} "a" is invalid: spec.size:')
    code, status = answer(widgets.calls.create, {**widgets.widget("b"), "kind": "Gadget"})
    assert (code, status["message"]) == (
        422,
        f'Gadget.{widgets.group} "b" is invalid: kind: Invalid value: "Gadget": must be Widget',
    )


def test_a_lease_is_created_and_renewed(server: Server) -> None:
    calls = leases(server.api, server.namespace)
    sent = lease(server, "gpu-1")
    sent["spec"]["renewTime"] = "2027-01-15T09:00:00.250000+01:00"
    code, created = answer(calls.create, sent)
    assert (code, created["spec"]["renewTime"]) == (201, "2027-01-15T08:00:00.250000Z")
    created["spec"]["renewTime"] = "2027-01-15T08:00:20.500000Z"
    code, renewed = answer(calls.replace, created["metadata"]["name"], created)
    assert (code, renewed["spec"]["renewTime"]) == (200, "2027-01-15T08:00:20.500000Z")

    refused = lease(server, "gpu-2")
    refused["spec"]["renewTime"] = "2027-01-15T08:00:20Z"
    code, status = answer(calls.create, refused)
    assert (code, status["message"]) == (
        400,
        'Lease in version "v1" cannot be handled as a Lease: parsing time '
        '"2027-01-15T08:00:20Z" as "2006-01-02T15:04:05.000000Z07:00": cannot parse "Z" as '
        '".000000"',
    )
    refused["spec"]["renewTime"] = None
    refused["spec"]["leaseDurationSeconds"] = 0
    code, status = answer(calls.create, refused)
    assert (code, status["details"]["causes"][0]["message"]) == (
        422,
        "Invalid value: 0: must be greater than 0",
    )


def test_a_field_selector_on_metadata_name(server: Server, widgets: Widgets) -> None:
    calls = leases(server.api, server.namespace)
    for name in ("gpu-1", "gpu-2"):
        calls.create(lease(server, name))
        widgets.calls.create(widgets.widget(name))
    picked = answer(calls.list, field_selector="metadata.name=gpulet-node-gpu-2")[1]["items"]
    assert [i["metadata"]["name"] for i in picked] == ["gpulet-node-gpu-2"]
    picked = answer(widgets.calls.list, field_selector="metadata.name=gpu-1")[1]["items"]
    assert [i["metadata"]["name"] for i in picked] == ["gpu-1"]

    code, status = answer(calls.list, field_selector="spec.holderIdentity=x")
    assert (code, status["message"]) == (
        400,
        '"spec.holderIdentity" is not a known field selector: only "metadata.name", '
        '"metadata.namespace"',
    )
    code, status = answer(widgets.calls.list, field_selector="metadata.namespace=x")
    assert (code, status["message"]) == (400, "field label not supported: metadata.namespace")


def test_a_label_selected_watch_sees_matching_leases_only(server: Server) -> None:
    calls = leases(server.api, server.namespace)
    calls.create(lease(server, "before"))
    start = answer(calls.list)[1]["metadata"]["resourceVersion"]
    ours = answer(calls.create, lease(server, "gpu-1", **nt.LEASE_LABELS))[1]
    calls.create(lease(server, "gpu-2", app="other"))
    ours["spec"]["renewTime"] = "2027-01-15T08:00:20.000000Z"
    calls.replace(ours["metadata"]["name"], ours)
    calls.patch("gpulet-node-gpu-1", {"metadata": {"labels": {"app.kubernetes.io/name": "x"}}})
    calls.patch("gpulet-node-gpu-2", {"metadata": {"labels": nt.LEASE_LABELS}})
    calls.delete("gpulet-node-gpu-2")

    stream = calls.list(
        watch=True, resource_version=start, timeout_seconds=2, label_selector=nt.LEASE_SELECTOR
    )
    seen = [json.loads(line) for line in iter_resp_lines(stream)]  # type: ignore[no-untyped-call]

    assert [(e["type"], e["object"]["metadata"]["name"]) for e in seen] == [
        ("ADDED", "gpulet-node-gpu-1"),
        ("MODIFIED", "gpulet-node-gpu-1"),
        ("DELETED", "gpulet-node-gpu-1"),
        ("ADDED", "gpulet-node-gpu-2"),
        ("DELETED", "gpulet-node-gpu-2"),
    ]


def test_garbage_collection_of_dependents(server: Server) -> None:
    """The documented difference is when: the stand-in collects at once, the real
    kube-controller-manager seconds later."""
    calls = leases(server.api, server.namespace)

    def owned(name: str, *owners: dict[str, Any]) -> dict[str, Any]:
        obj = lease(server, name)
        obj["metadata"]["ownerReferences"] = [
            {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", **o} for o in owners
        ]
        return obj

    def ref(name: str) -> dict[str, str]:
        meta = answer(calls.create, lease(server, name))[1]["metadata"]
        return {"name": meta["name"], "uid": meta["uid"]}

    first, second = ref("first"), ref("second")
    calls.create(owned("only-first", first))
    calls.create(owned("both", first, second))
    assert answer(calls.create, owned("dangling", {**first, "uid": "not-its-uid"}))[0] == 201

    settle(lambda: answer(calls.read, "gpulet-node-dangling")[0] == 404, "dangling collected")
    calls.delete(first["name"])
    settle(lambda: answer(calls.read, "gpulet-node-only-first")[0] == 404, "dependent collected")

    def trimmed() -> bool:
        refs = answer(calls.read, "gpulet-node-both")[1]["metadata"]["ownerReferences"]
        return [r["name"] for r in refs] == [second["name"]]

    settle(trimmed, "the gone owner's reference removed")


# ---- deletion, server-set fields and no-op writes ----

HOLD = "parity.gpulet.test/hold"


def pod_events(server: Server, since: str) -> list[tuple[str, Any, Any]]:
    """(type, deletionTimestamp, deletionGracePeriodSeconds) of each pod event after
    resourceVersion `since`, for 2 s."""
    stream = server.core.list_namespaced_pod(
        server.namespace,
        watch=True,
        resource_version=since,
        timeout_seconds=2,
        _preload_content=False,
    )
    seen = [json.loads(line) for line in iter_resp_lines(stream)]  # type: ignore[no-untyped-call]
    return [
        (
            e["type"],
            e["object"]["metadata"].get("deletionTimestamp"),
            e["object"]["metadata"].get("deletionGracePeriodSeconds"),
        )
        for e in seen
    ]


def delete_pod(server: Server, name: str, grace: int | None = None) -> dict[str, Any]:
    """DELETE with DeleteOptions in the body (gracePeriodSeconds when given); the answer."""
    body = {"gracePeriodSeconds": grace} if grace is not None else {}
    answer = server.core.delete_namespaced_pod(
        name, server.namespace, body=body, _preload_content=False
    )
    assert answer.status == 200
    return dict(json.loads(answer.data))


def bound(server: Server, name: str, **meta: Any) -> dict[str, Any]:
    created = server.create(name, **meta)
    server.bind(name, "node-x", uid=created["metadata"]["uid"])
    pod = server.read(name)
    assert pod is not None
    return pod


def test_deleting_a_bound_pod_is_graceful(server: Server) -> None:
    """A bound pod is Terminating until its kubelet deletes it with grace 0 (node-x has no
    kubelet: the test is it); a second DELETE may only shorten the grace."""
    pod = bound(server, "web")
    since = pod["metadata"]["resourceVersion"]
    answered = delete_pod(server, "web")
    meta = answered["metadata"]
    assert (answered["kind"], meta["deletionGracePeriodSeconds"]) == ("Pod", 30)
    deadline = epoch(meta["deletionTimestamp"])
    assert deadline is not None and abs(deadline - (time.time() + 30)) < 5
    assert server.read("web") == answered

    longer = delete_pod(server, "web", 60)
    assert longer == answered  # no write
    shorter = delete_pod(server, "web", 10)["metadata"]
    assert shorter["deletionGracePeriodSeconds"] == 10
    assert epoch(shorter["deletionTimestamp"]) == deadline - 20
    assert delete_pod(server, "web", 0)["metadata"]["deletionGracePeriodSeconds"] == 0
    assert server.read("web") is None
    stamps = [meta["deletionTimestamp"], shorter["deletionTimestamp"], stamp(deadline - 30)]
    assert pod_events(server, since) == [
        ("MODIFIED", stamps[0], 30),
        ("MODIFIED", stamps[1], 10),
        ("MODIFIED", stamps[2], 0),
        ("DELETED", stamps[2], 0),
    ]


def test_the_grace_period_is_the_pods_own_by_default(server: Server) -> None:
    created = server.create("web", spec={"terminationGracePeriodSeconds": 5})
    server.bind("web", "node-x", uid=created["metadata"]["uid"])
    assert delete_pod(server, "web")["metadata"]["deletionGracePeriodSeconds"] == 5
    delete_pod(server, "web", 0)


def test_unbound_and_finished_pods_are_deleted_at_once(server: Server) -> None:
    since = server.create("pending")["metadata"]["resourceVersion"]
    gone = delete_pod(server, "pending")
    assert gone["metadata"]["deletionGracePeriodSeconds"] == 0
    assert server.read("pending") is None
    bound(server, "done")
    server.core.patch_namespaced_pod_status(
        "done", server.namespace, {"status": {"phase": "Succeeded"}}
    )
    delete_pod(server, "done", 30)
    assert server.read("done") is None
    events = [(t, grace) for t, _, grace in pod_events(server, since)]
    assert events == [
        ("MODIFIED", 0),
        ("DELETED", 0),
        ("ADDED", None),
        ("MODIFIED", None),
        ("MODIFIED", None),
        ("MODIFIED", 0),
        ("DELETED", 0),
    ]


def test_finalizers_hold_a_deleted_object(server: Server) -> None:
    """Of every kind: a Lease (no graceful deletion) is marked at once, grace 0, and goes
    when an update empties its finalizers; a bound pod's finalizers emptied before its
    grace ends wait for the kubelet's DELETE."""
    calls = leases(server.api, server.namespace)
    held = lease(server, "held")
    held["metadata"]["finalizers"] = [HOLD]
    name = answer(calls.create, held)[1]["metadata"]["name"]
    code, deleted = answer(calls.delete, name)
    assert (code, deleted["kind"], deleted["metadata"]["deletionGracePeriodSeconds"]) == (
        200,
        "Lease",
        0,
    )
    assert answer(calls.delete, name)[1] == deleted  # no write
    code, status = answer(calls.patch, name, {"metadata": {"finalizers": [HOLD, "b.test/c"]}})
    assert (code, status["message"]) == (
        422,
        f'Lease.coordination.k8s.io "{name}" is invalid: metadata.finalizers: Forbidden: no new '
        "finalizers can be added if the object is being deleted, found new finalizers "
        '[]string{"b.test/c"}',
    )
    code, kept = answer(calls.patch, name, {"metadata": {"labels": {"a": "1"}}})
    assert (code, kept["metadata"]["deletionTimestamp"]) == (
        200,
        deleted["metadata"]["deletionTimestamp"],
    )
    assert answer(calls.patch, name, {"metadata": {"finalizers": None}})[0] == 200
    assert answer(calls.read, name)[0] == 404

    bound(server, "web", finalizers=[HOLD])
    assert delete_pod(server, "web")["metadata"]["deletionGracePeriodSeconds"] == 30
    server.core.patch_namespaced_pod("web", server.namespace, {"metadata": {"finalizers": None}})
    assert server.read("web") is not None
    delete_pod(server, "web", 0)
    assert server.read("web") is None

    server.create("held", finalizers=[HOLD])
    assert delete_pod(server, "held")["metadata"]["deletionGracePeriodSeconds"] == 0
    assert server.read("held") is not None
    server.core.patch_namespaced_pod("held", server.namespace, {"metadata": {"finalizers": None}})
    assert server.read("held") is None


def test_the_server_sets_uid_creation_timestamp_and_resource_version(server: Server) -> None:
    body: dict[str, Any] = {"metadata": {"name": "web", "resourceVersion": "1"}}
    body["spec"] = {"containers": [container("main")]}
    with pytest.raises(ApiException) as e:
        server.core.create_namespaced_pod(server.namespace, body)
    status = json.loads(e.value.body or "")
    assert (e.value.status, status["message"]) == (
        500,
        "resourceVersion should not be set on objects to be created",
    )

    created = server.create("web")
    meta = created["metadata"]
    changed = copy.deepcopy(created)
    changed["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    changed["metadata"]["labels"] = {"a": "1"}
    replaced = server.json(server.core.replace_namespaced_pod("web", server.namespace, changed))
    assert replaced["metadata"]["creationTimestamp"] == meta["creationTimestamp"]
    assert replaced["metadata"]["labels"] == {"a": "1"}

    replaced["metadata"]["uid"] = "another"
    with pytest.raises(ApiException) as e:
        server.core.replace_namespaced_pod("web", server.namespace, replaced)
    # The real server's message names its storage error and etcd key in between.
    message = json.loads(e.value.body or "")["message"]
    assert e.value.status == 409
    assert message.startswith('Operation cannot be fulfilled on pods "web": ')
    assert message.endswith(
        f"Precondition failed: UID in precondition: another, UID in object meta: {meta['uid']}"
    )
    with pytest.raises(ApiException) as e:
        server.core.patch_namespaced_pod("web", server.namespace, {"metadata": {"uid": "x"}})
    assert (e.value.status, json.loads(e.value.body or "")["message"]) == (
        422,
        'Pod "web" is invalid: metadata.uid: Invalid value: "x": field is immutable',
    )


def test_a_write_that_changes_nothing_is_no_write(server: Server) -> None:
    calls = leases(server.api, server.namespace)
    created = answer(calls.create, lease(server, "gpu-1", a="0"))[1]
    name, version = created["metadata"]["name"], created["metadata"]["resourceVersion"]
    replaced = answer(calls.replace, name, created)[1]
    patched = answer(calls.patch, name, {"metadata": {"labels": created["metadata"]["labels"]}})[1]
    assert replaced == patched == created

    pod = server.create("web")
    same = server.json(server.core.replace_namespaced_pod("web", server.namespace, pod))
    assert same["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"]
    calls.patch(name, {"metadata": {"labels": {"a": "1"}}})
    stream = calls.list(watch=True, resource_version=version, timeout_seconds=2)
    seen = [json.loads(line) for line in iter_resp_lines(stream)]  # type: ignore[no-untyped-call]
    assert [e["type"] for e in seen] == ["MODIFIED"]
    assert pod_events(server, pod["metadata"]["resourceVersion"]) == []
