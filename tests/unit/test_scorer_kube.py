"""The extender against an API server (the stand-in, over HTTP, through the real `kubernetes`
client): it learns nodes and bound pods by watching, writes each decision on the pod before
binding it, never grants a slice twice, rebuilds itself after a restart, frees what a deleted
pod held, and decides again when the pod changes under a bind."""

from __future__ import annotations

import http.client
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from gpulet.api.assignment import parse_assignment
from gpulet.api.stamps import stamp
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.objects import container, node_object, pod_object
from scorer.app import Scorer, build
from scorer.config import ScorerConfig
from scorer.wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    HostPriorityList,
    NodeList,
)
from tests.nodes import shipped

H100 = shipped("dgx-h100")
NODES = ("gpu-a", "gpu-b")


@pytest.fixture
def api() -> Iterator[ApiServerStandIn]:
    with ApiServerStandIn() as server:
        for name in NODES:
            server.create_node(node_object(name, H100))
        yield server


def start_scorer(api: ApiServerStandIn) -> Scorer:
    scorer = build(ScorerConfig(host="127.0.0.1", port=0, watch_timeout_s=5), api.configuration())
    scorer.start()
    assert scorer.sync is not None and scorer.sync.wait_ready(10)
    return scorer


@pytest.fixture
def scorer(api: ApiServerStandIn) -> Iterator[Scorer]:
    s = start_scorer(api)
    yield s
    s.stop()


def wait_for(what: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def post(scorer: Scorer, verb: str, body: Any) -> Any:
    """POST `body` (JSON-ready) to the extender's `verb`: the JSON answer (HTTP 200)."""
    conn = http.client.HTTPConnection("127.0.0.1", scorer.server.port, timeout=10)
    conn.request(
        "POST", f"/{verb}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    resp = conn.getresponse()
    assert resp.status == 200
    answer = json.loads(resp.read())
    conn.close()
    return answer


def filter_(
    scorer: Scorer,
    pod: Mapping[str, Any],
    names: Iterable[str] = (),
    *,
    nodes: NodeList | None = None,
) -> ExtenderFilterResult:
    """Filter `pod` on the nodes `names` (kube-scheduler's `nodeCacheCapable: true`), or on
    the Node objects `nodes` (false)."""
    args = ExtenderArgs(pod, node_names=None if nodes is not None else tuple(names), nodes=nodes)
    return ExtenderFilterResult.parse(post(scorer, "filter", args.dump()))


def prioritize(scorer: Scorer, pod: Mapping[str, Any], names: Iterable[str]) -> HostPriorityList:
    args = ExtenderArgs(pod, node_names=tuple(names))
    return HostPriorityList.parse(post(scorer, "prioritize", args.dump()))


def bind_args(pod: Mapping[str, Any], node: str) -> ExtenderBindingArgs:
    meta = pod["metadata"]
    return ExtenderBindingArgs(meta["name"], meta["namespace"], meta["uid"], node)


def bind(scorer: Scorer, args: ExtenderBindingArgs) -> ExtenderBindingResult:
    return ExtenderBindingResult.parse(post(scorer, "bind", args.dump()))


def schedule(scorer: Scorer, api: ApiServerStandIn, pod: dict[str, Any]) -> str | None:
    """What kube-scheduler does with one pod: filter (names only), prioritize, bind to the
    best node. The node, or None when nothing fits."""
    stored = api.create_pod(pod)
    passed = filter_(scorer, stored, NODES).names()
    if not passed:
        return None
    best = max(prioritize(scorer, stored, passed), key=lambda s: s.score).host
    answer = bind(scorer, bind_args(stored, best))
    assert answer == ExtenderBindingResult(), answer
    return best


def granted(api: ApiServerStandIn) -> dict[tuple[str, str], list[tuple[int, int, bool]]]:
    """(node, GPU uuid) -> (core, memory, whole) of every bound pod's assignment."""
    out: dict[tuple[str, str], list[tuple[int, int, bool]]] = defaultdict(list)
    for pod in api.pods():
        node = pod["spec"].get("nodeName")
        text = pod["metadata"].get("annotations", {}).get("gpulet.io/assignment")
        if not node:
            continue
        assert text is not None, f"pod {pod['metadata']['name']} bound without an assignment"
        assignment = parse_assignment(text)
        assert assignment.node == node
        for c in assignment.containers:
            for g in c.gpus:
                out[(node, g.uuid)].append((g.core, g.memory_mib, g.exclusive))
    return out


def assert_never_over_committed(api: ApiServerStandIn) -> None:
    memory = {g.uuid: g.memory_mib for g in H100.gpus}
    for (node, uuid), shares in granted(api).items():
        if any(whole for _, _, whole in shares):
            assert len(shares) == 1, f"{node} {uuid} whole and shared: {shares}"
        assert sum(core for core, _, _ in shares) <= 100, (node, uuid, shares)
        assert sum(mib for _, mib, _ in shares) <= memory[uuid], (node, uuid, shares)


def inference(name: str) -> dict[str, Any]:
    return pod_object(name, container(gpus=1, core=30, memory=20000))


def test_a_stream_of_pods_lands_with_no_slice_granted_twice(
    api: ApiServerStandIn, scorer: Scorer
) -> None:
    # 2 nodes x 8 GPUs x 3 slices of 30% = 48 fit; the 49th does not.
    placed = [schedule(scorer, api, inference(f"infer-{i}")) for i in range(49)]
    assert placed[:48].count("gpu-a") == placed[:48].count("gpu-b") == 24
    assert placed[48] is None
    assert_never_over_committed(api)
    assert len(api.bindings) == 48
    # Binpack: each GPU got its three slices before the next GPU was touched.
    assert sorted(len(s) for s in granted(api).values()) == [3] * 16


def test_whole_gpus_and_aligned_nics(api: ApiServerStandIn, scorer: Scorer) -> None:
    train = pod_object(
        "train",
        container("trainer", gpus=4, rdma=4),
        annotations={"gpulet.io/topology-policy": "restricted"},
    )
    node = schedule(scorer, api, train)
    assert node is not None
    pod = next(p for p in api.pods() if p["metadata"]["name"] == "train")
    (trainer,) = parse_assignment(pod["metadata"]["annotations"]["gpulet.io/assignment"]).containers
    switches = {g.uuid: g.switch for g in H100.gpus}
    nic_switches = {n.key: n.switch for n in H100.nics}
    assert all(g.exclusive and g.core == 100 for g in trainer.gpus)
    assert {switches[g.uuid] for g in trainer.gpus} <= {nic_switches[k] for k in trainer.nics}
    # The other 4 GPUs of that node are all that is left there for an 8-GPU pod: it goes elsewhere.
    assert schedule(scorer, api, pod_object("big", container(gpus=8))) != node


def test_restart_of_the_extender_loses_nothing(api: ApiServerStandIn) -> None:
    first = start_scorer(api)
    for i in range(6):
        schedule(first, api, pod_object(f"whole-{i}", container(gpus=2)))
    first.stop()
    again = start_scorer(api)
    try:
        bound = {p["metadata"]["uid"] for p in api.pods() if p["spec"].get("nodeName")}
        wait_for(lambda: {uid for uid, _, _ in again.server.extender.view.pods()} == bound)
        # 12 of 16 GPUs are held: a 8-GPU pod fits nowhere, a 4-GPU one fits, once.
        assert schedule(again, api, pod_object("eight", container(gpus=8))) is None
        assert schedule(again, api, pod_object("four", container(gpus=4))) is not None
        assert schedule(again, api, pod_object("four-more", container(gpus=1))) is None
        assert_never_over_committed(api)
    finally:
        again.stop()


def test_a_deleted_pod_frees_its_slices_once_it_is_gone(
    api: ApiServerStandIn, scorer: Scorer
) -> None:
    """A deleted pod is Terminating (deletionTimestamp set, still bound) while its kubelet
    stops its containers, which still hold its GPUs: its slices stay taken until the pod is
    gone."""
    for i in range(2):
        assert schedule(scorer, api, pod_object(f"full-{i}", container(gpus=8))) is not None
    assert schedule(scorer, api, pod_object("waiting", container(gpus=8))) is None
    uids = {p["metadata"]["name"]: p["metadata"]["uid"] for p in api.pods()}
    api.delete_pod("default", "full-1")
    # full-0 goes at once, after full-1's deletion began: once the view has seen it go, it
    # has seen full-1 Terminating too.
    api.delete_pod("default", "full-0", grace_period_seconds=0)
    wait_for(
        lambda: uids["full-0"] not in {uid for uid, _, _ in scorer.server.extender.view.pods()}
    )
    assert [uid for uid, _, _ in scorer.server.extender.view.pods()] == [uids["full-1"]]
    pod = next(p for p in api.pods() if p["metadata"]["name"] == "waiting")
    terminating = api.get_pod("default", "full-1") or {}
    passed = filter_(scorer, pod, NODES).names()
    assert len(passed) == 1 and terminating["spec"]["nodeName"] not in passed

    api.finish_pod_deletion("default", "full-1")
    # kube-scheduler retries the pod; it fits anywhere once the watch has shown it gone.
    wait_for(lambda: not list(scorer.server.extender.view.pods()))
    assert len(filter_(scorer, pod, NODES).names()) == 2


def test_finished_pods_free_their_slices_too(api: ApiServerStandIn, scorer: Scorer) -> None:
    node = schedule(scorer, api, pod_object("job", container(gpus=8)))
    pod = next(p for p in api.pods() if p["metadata"]["name"] == "job")
    pod["status"]["phase"] = "Succeeded"
    api.update_pod(pod)
    wait_for(lambda: not list(scorer.server.extender.view.pods()))
    assert node is not None


def test_a_pod_that_changed_under_the_bind_is_decided_again(
    api: ApiServerStandIn, scorer: Scorer
) -> None:
    api.fail_next("PATCH", r"/namespaces/default/pods/retry$", 409)
    assert schedule(scorer, api, inference("retry")) is not None
    patches = [p for m, p in api.requests if m == "PATCH" and p.endswith("/pods/retry")]
    assert len(patches) == 2  # refused once, decided again, written
    assert len(api.bindings) == 1
    assert_never_over_committed(api)


def test_back_to_back_pods_filtered_before_either_binds(
    api: ApiServerStandIn, scorer: Scorer
) -> None:
    """Two pods both filtered and scored against the same free GPU: the second bind
    decides again and takes another."""
    pods = [api.create_pod(inference(f"twin-{i}")) for i in range(2)]
    for pod in pods:
        filter_(scorer, pod, ["gpu-a"])
    for pod in pods:
        assert bind(scorer, bind_args(pod, "gpu-a")) == ExtenderBindingResult()
    shares = granted(api)
    assert sum(len(s) for s in shares.values()) == 2
    assert_never_over_committed(api)


def test_bind_errors_are_reported_not_raised(api: ApiServerStandIn, scorer: Scorer) -> None:
    pod = api.create_pod(inference("gone"))
    api.delete_pod("default", "gone")
    args = bind_args(pod, "gpu-a")
    answer = bind(scorer, args)
    assert answer.error == "pod default/gone does not exist (deleted while scheduling?)"
    pod = api.create_pod(inference("bound-elsewhere"))
    pod["spec"]["nodeName"] = "gpu-b"
    api.update_pod(pod)
    args = replace(args, pod_name="bound-elsewhere", pod_uid=pod["metadata"]["uid"])
    assert "is already bound to node gpu-b" in bind(scorer, args).error
    api.fail_next("POST", r"/bindings?$", 409)
    fresh = api.create_pod(inference("refused"))
    args = replace(args, pod_name="refused", pod_uid=fresh["metadata"]["uid"])
    assert "was refused" in bind(scorer, args).error
    # The refused decision does not hold its slice.
    assert not any(
        uid == fresh["metadata"]["uid"] for uid, _, _ in scorer.server.extender.view.pods()
    )


def test_healthz_waits_for_the_first_lists(api: ApiServerStandIn) -> None:
    api.fail_next("GET", r"^/api/v1/nodes", 500, times=2)
    scorer = build(ScorerConfig(host="127.0.0.1", port=0), api.configuration())
    assert scorer.sync is not None
    for reflector in scorer.sync.reflectors:
        reflector.retry_s = 0.2  # quicker retries than in production
    scorer.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", scorer.server.port, timeout=10)
        conn.request("GET", "/healthz")
        first = conn.getresponse()
        first.read()
        assert first.status == 503
        assert scorer.sync.wait_ready(10)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
    finally:
        scorer.stop()


def test_a_node_whose_agent_stopped_reporting_takes_no_pods_until_it_is_back(
    api: ApiServerStandIn,
) -> None:
    """gpu-c's agent last wrote its heartbeat ten minutes ago: the extender, started now,
    places nothing there and says why; once the agent renews it, the node takes pods again."""
    old = stamp(time.time() - 600)
    api.create_node(node_object("gpu-c", H100, heartbeat=old))
    scorer = start_scorer(api)
    try:
        pod = api.create_pod(inference("p"))
        answer = filter_(scorer, pod, ["gpu-c", "gpu-a"])
        assert answer.node_names == ("gpu-a",)
        reason = answer.failed_and_unresolvable_nodes["gpu-c"]
        assert "has not reported for" in reason and old in reason, reason
        refused = bind(scorer, bind_args(pod, "gpu-c"))
        assert "has not reported for" in refused.error
        assert not api.bindings
        conn = http.client.HTTPConnection("127.0.0.1", scorer.server.port, timeout=10)
        conn.request("GET", "/metrics")
        assert "gpulet_scorer_nodes_quiet 1.0" in conn.getresponse().read().decode()

        node = api.get_node("gpu-c")
        assert node is not None
        node["metadata"]["annotations"]["gpulet.io/heartbeat"] = stamp(time.time())
        api.update_node(node)
        wait_for(lambda: not scorer.server.extender.view.quiet_nodes())
        assert filter_(scorer, pod, ["gpu-c"]).node_names == ("gpu-c",)
    finally:
        scorer.stop()
