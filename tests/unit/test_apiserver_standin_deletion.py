"""The API server stand-in's deletion (graceful for bound pods, held by finalizers for every
kind), the fields only it sets, and writes that change nothing; each checked against the
real kube-apiserver by tests/e2e/test_standin_parity.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes.client import ApiClient, ApiException
from kubernetes.watch.watch import iter_resp_lines

from gpulet.api import nodetopology as nt
from gpulet.api.stamps import epoch
from gpulet.kube.calls import ObjectCalls, leases
from gpulet.standins.apiserver import ApiServerStandIn
from tests.e2e.test_standin_parity import answer

HOLD = "example.com/hold"


def pod(name: str, node: str | None = "gpu-1", **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"containers": [{"name": "main", "image": "busybox"}], **spec}
    if node:
        body["nodeName"] = node
    return {"metadata": {"name": name, "namespace": "default"}, "spec": body}


def delete(v1: Any, name: str, **options: Any) -> dict[str, Any]:
    """DELETE the pod with these DeleteOptions in the body; the answer's JSON."""
    answer = v1.delete_namespaced_pod(name, "default", body=options, _preload_content=False)
    return dict(json.loads(answer.data))


def events(v1: Any, since: str) -> list[tuple[str, Any]]:
    """(type, deletionGracePeriodSeconds) of every pod event after `since`."""
    stream = v1.list_namespaced_pod(
        "default", watch=True, resource_version=since, timeout_seconds=1, _preload_content=False
    )
    seen = [json.loads(line) for line in iter_resp_lines(stream)]  # type: ignore[no-untyped-call]
    return [(e["type"], e["object"]["metadata"].get("deletionGracePeriodSeconds")) for e in seen]


def version(obj: dict[str, Any] | None) -> str:
    assert obj is not None
    return str(obj["metadata"]["resourceVersion"])


def test_a_bound_pod_is_terminating_until_its_kubelet_deletes_it(
    api: ApiServerStandIn, v1: Any
) -> None:
    since = version(api.create_pod(pod("web")))
    answered = delete(v1, "web")
    deadline = epoch(answered["metadata"]["deletionTimestamp"])
    created = epoch(answered["metadata"]["creationTimestamp"])
    assert deadline is not None and created is not None
    assert (answered["kind"], answered["metadata"]["deletionGracePeriodSeconds"]) == ("Pod", 30)
    assert 29 <= deadline - created <= 31
    assert api.get_pod("default", "web") == answered

    assert delete(v1, "web", gracePeriodSeconds=60) == answered  # only a shorter one counts
    shorter = delete(v1, "web", gracePeriodSeconds=10)["metadata"]
    assert epoch(shorter["deletionTimestamp"]) == deadline - 20
    api.finish_pod_deletion("default", "web")
    assert api.get_pod("default", "web") is None
    assert events(v1, since) == [
        ("MODIFIED", 30),
        ("MODIFIED", 10),
        ("MODIFIED", 0),
        ("DELETED", 0),
    ]


def test_the_grace_period_comes_from_the_request_else_the_pod(
    api: ApiServerStandIn, v1: Any
) -> None:
    api.create_pod(pod("own", terminationGracePeriodSeconds=5))
    assert api.delete_pod("default", "own")["metadata"]["deletionGracePeriodSeconds"] == 5
    api.create_pod(pod("asked"))
    v1.delete_namespaced_pod("asked", "default", grace_period_seconds=7)  # in the query
    asked = api.get_pod("default", "asked")
    assert asked is not None and asked["metadata"]["deletionGracePeriodSeconds"] == 7


def test_unbound_finished_and_graceless_pods_go_at_once(api: ApiServerStandIn, v1: Any) -> None:
    api.create_pod(pod("pending", node=None))
    api.create_pod(pod("done"))
    api.update_pod({**pod("done"), "status": {"phase": "Succeeded"}})
    api.create_pod(pod("killed"))
    assert delete(v1, "pending")["metadata"]["deletionGracePeriodSeconds"] == 0
    delete(v1, "done", gracePeriodSeconds=30)
    delete(v1, "killed", gracePeriodSeconds=0)
    assert api.pods() == []


def test_a_delete_is_conditional_on_its_preconditions(api: ApiServerStandIn, v1: Any) -> None:
    created = api.create_pod(pod("web", node=None))
    with pytest.raises(ApiException) as e:
        delete(v1, "web", preconditions={"uid": "another"})
    assert e.value.status == 409
    with pytest.raises(ApiException) as e:
        delete(v1, "web", preconditions={"resourceVersion": "0"})
    assert e.value.status == 409
    delete(v1, "web", preconditions={"uid": created["metadata"]["uid"]})
    assert api.pods() == []


def test_finalizers_hold_a_deleted_object_of_any_kind(api: ApiServerStandIn) -> None:
    calls: ObjectCalls = leases(ApiClient(api.configuration()), "default")
    held = nt.lease("gpu-1", "default", "gpu-1/agent", renewed=1.8e9, acquired=1.8e9)
    held["metadata"]["finalizers"] = [HOLD]
    name = calls.create(held) and nt.lease_name("gpu-1")
    code, deleted = answer(calls.delete, name)
    assert (code, deleted["kind"], deleted["metadata"]["deletionGracePeriodSeconds"]) == (
        200,
        "Lease",
        0,
    )
    assert answer(calls.delete, name)[1] == deleted  # no second write
    code, status = answer(calls.patch, name, {"metadata": {"finalizers": [HOLD, "b.test/c"]}})
    assert (code, status["details"]["causes"][0]["field"]) == (422, "metadata.finalizers")
    assert answer(calls.patch, name, {"metadata": {"finalizers": None}})[0] == 200
    assert answer(calls.read, name)[0] == 404

    api.create_node({"metadata": {"name": "n", "finalizers": [HOLD]}})
    api.delete_node("n")
    kept = api.get_node("n")
    assert kept is not None and "deletionTimestamp" in kept["metadata"]
    api.update_node({"metadata": {"name": "n"}})
    assert api.get_node("n") is None


def test_a_bound_pods_emptied_finalizers_wait_for_its_kubelet(api: ApiServerStandIn) -> None:
    api.create_pod({**pod("web"), "metadata": {"name": "web", "finalizers": [HOLD]}})
    api.delete_pod("default", "web")
    released = api.get_pod("default", "web") or {}
    released["metadata"].pop("finalizers")
    api.update_pod(released)
    assert api.get_pod("default", "web") is not None  # its grace is not over
    api.finish_pod_deletion("default", "web")
    assert api.get_pod("default", "web") is None


def test_only_the_server_sets_uid_creation_and_deletion_fields(
    api: ApiServerStandIn, v1: Any
) -> None:
    with pytest.raises(ApiException) as e:
        v1.create_namespaced_pod(
            "default", {**pod("web"), "metadata": {"name": "web", "resourceVersion": "1"}}
        )
    assert (e.value.status, json.loads(e.value.body or "")["message"]) == (
        500,
        "resourceVersion should not be set on objects to be created",
    )
    created = api.create_pod(pod("web"))
    changed = json.loads(json.dumps(created))
    changed["metadata"]["creationTimestamp"] = "2020-01-01T00:00:00Z"
    changed["metadata"]["labels"] = {"a": "1"}
    replaced = api.update_pod(changed)
    assert replaced["metadata"]["creationTimestamp"] == created["metadata"]["creationTimestamp"]

    replaced["metadata"]["uid"] = "another"
    with pytest.raises(ApiException) as e:
        v1.replace_namespaced_pod("web", "default", replaced)
    assert e.value.status == 409
    for meta in ({"uid": "x"}, {"deletionTimestamp": "2030-01-01T00:00:00Z"}):
        with pytest.raises(ApiException) as e:
            v1.patch_namespaced_pod("web", "default", {"metadata": meta})
        assert e.value.status == 422
    assert api.get_pod("default", "web") == replaced | {
        "metadata": replaced["metadata"] | {"uid": created["metadata"]["uid"]}
    }


def test_a_write_that_changes_nothing_is_no_write(api: ApiServerStandIn, v1: Any) -> None:
    created = api.create_pod(pod("web"))
    assert api.update_pod(created) == created
    patched = v1.patch_namespaced_pod("web", "default", {"spec": {"nodeName": "gpu-1"}})
    assert patched.metadata.resource_version == version(created)
    replaced = v1.replace_namespaced_pod("web", "default", created)
    assert replaced.metadata.resource_version == version(created)
    assert events(v1, version(created)) == []
