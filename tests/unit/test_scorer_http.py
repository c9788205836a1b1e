"""The extender over real HTTP, with the JSON kube-scheduler sends: capitalised keys, full Pod
and Node objects or names only; and what it answers to bad input. The first test writes and
reads that JSON by hand; the others build it with `scorer.wire`."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator, Mapping
from typing import Any

import pytest

from gpulet.standins.objects import container, node_object, pod_object
from scorer.cluster import ClusterView
from scorer.extender import Extender
from scorer.server import ExtenderServer
from scorer.wire import (
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    HostPriority,
    HostPriorityList,
    NodeList,
)
from tests.nodes import shipped

H100 = shipped("dgx-h100")


@pytest.fixture
def server() -> Iterator[ExtenderServer]:
    s = ExtenderServer(Extender(ClusterView()), "127.0.0.1", 0, max_body=4 << 20)
    s.start()
    yield s
    s.stop()


def post(server: ExtenderServer, path: str, body: Any, raw: bytes | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    data = raw if raw is not None else json.dumps(body).encode()
    conn.request("POST", path, data, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    return resp.status, answer


def get(server: ExtenderServer, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    conn.request("GET", path)
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    return resp.status, text


def node_list(*names: str) -> dict[str, Any]:
    return {
        "kind": "NodeList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "1234"},
        "items": [node_object(n, H100) for n in names],
    }


def node_objects(*names: str) -> NodeList:
    return NodeList(tuple(node_object(n, H100) for n in names))


def filter_(server: ExtenderServer, args: ExtenderArgs) -> ExtenderFilterResult:
    code, answer = post(server, "/filter", args.dump())
    assert code == 200, answer
    return ExtenderFilterResult.parse(answer)


def prioritize(server: ExtenderServer, args: ExtenderArgs) -> HostPriorityList:
    code, answer = post(server, "/prioritize", args.dump())
    assert code == 200, answer
    return HostPriorityList.parse(answer)


def bind_args(pod: Mapping[str, Any], node: str) -> ExtenderBindingArgs:
    meta = pod["metadata"]
    return ExtenderBindingArgs(meta["name"], meta["namespace"], meta["uid"], node)


def bind(server: ExtenderServer, pod: Mapping[str, Any], node: str) -> ExtenderBindingResult:
    code, answer = post(server, "/bind", bind_args(pod, node).dump())
    assert code == 200, answer
    return ExtenderBindingResult.parse(answer)


def test_full_objects_in_full_objects_out(server: ExtenderServer) -> None:
    pod = pod_object("infer", container(gpus=1, core=30, memory=8192))
    nodes = node_list("gpu-1", "gpu-2")
    code, answer = post(server, "/filter", {"Pod": pod, "Nodes": nodes, "NodeNames": None})
    assert code == 200 and answer["Error"] == ""
    assert answer["NodeNames"] is None
    assert answer["Nodes"]["items"] == nodes["items"]  # the objects as received
    assert answer["FailedNodes"] == {} and answer["FailedAndUnresolvableNodes"] == {}


def test_names_only_after_the_nodes_were_seen(server: ExtenderServer) -> None:
    pod = pod_object("train", container(gpus=8))
    filter_(server, ExtenderArgs(pod, nodes=node_objects("gpu-1", "gpu-2")))
    answer = filter_(server, ExtenderArgs(pod, node_names=("gpu-2", "gpu-9", "gpu-1")))
    assert answer.node_names == ("gpu-2", "gpu-1") and answer.nodes is None
    unknown = answer.failed_and_unresolvable_nodes["gpu-9"]
    assert unknown == "the extender has not seen node 'gpu-9' (no Node object)"
    assert bind(server, pod, "gpu-1") == ExtenderBindingResult()
    # gpu-1 is now full: the next 8-GPU pod fails there, with the reason, and may preempt.
    other = pod_object("train-2", container(gpus=8))
    answer = filter_(server, ExtenderArgs(other, node_names=("gpu-1", "gpu-2")))
    assert answer.node_names == ("gpu-2",)
    assert answer.failed_nodes["gpu-1"].startswith("needs 8 whole GPUs; 0 of 8 qualify")
    assert answer.failed_and_unresolvable_nodes == {}


def test_prioritize_scores_are_integers_0_to_10(server: ExtenderServer) -> None:
    first = pod_object("a", container(gpus=1, core=30, memory=8192))
    filter_(server, ExtenderArgs(first, nodes=node_objects("gpu-1", "gpu-2")))
    bind(server, first, "gpu-2")
    pod = pod_object("b", container(gpus=1, core=30, memory=8192))
    scores = prioritize(server, ExtenderArgs(pod, node_names=("gpu-1", "gpu-2", "nope"))).by_host()
    assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores.values())
    assert scores["gpu-2"] > scores["gpu-1"]  # binpack: the GPU already in use
    assert scores["nope"] == 0


def test_restricted_pod_gets_gpus_and_nics_behind_the_same_switches(server: ExtenderServer) -> None:
    pod = pod_object(
        "train",
        container("trainer", gpus=4, rdma=4),
        annotations={"gpulet.io/topology-policy": "restricted"},
    )
    filter_(server, ExtenderArgs(pod, nodes=node_objects("gpu-1")))
    assert bind(server, pod, "gpu-1") == ExtenderBindingResult()
    assignment = server.extender.view.assignment(pod["metadata"]["uid"])
    assert assignment is not None
    (trainer,) = assignment.containers
    switch_of = {g.uuid: g.switch for g in H100.gpus}
    nic_switch = {n.key: n.switch for n in H100.nics}
    assert len(trainer.gpus) == 4 and len(trainer.nics) == 4
    assert {switch_of[g.uuid] for g in trainer.gpus} <= {nic_switch[k] for k in trainer.nics}


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        ({"gpus": 1, "core": 0}, "gpu-core must be 1-100 (percent of each GPU), got 0"),
        ({"gpus": 1, "core": 150}, "gpu-core must be 1-100 (percent of each GPU), got 150"),
        ({"gpus": 1, "memory": 900000}, "needs 1 GPU with all core and 900000 MiB free"),
        ({"gpus": 1, "memory": "80Gi"}, "must be a whole number (MiB of each GPU), got '80Gi'"),
    ],
)
def test_invalid_values_fail_every_node_with_the_reason(
    server: ExtenderServer, limits: dict[str, Any], problem: str
) -> None:
    pod = pod_object("bad", container(**limits))
    answer = filter_(server, ExtenderArgs(pod, nodes=node_objects("gpu-1", "gpu-2")))
    assert answer.nodes == NodeList(())
    reasons = answer.failed_and_unresolvable_nodes
    assert set(reasons) == {"gpu-1", "gpu-2"} and all(problem in r for r in reasons.values())
    scores = prioritize(server, ExtenderArgs(pod, node_names=("gpu-1",)))
    assert list(scores) == [HostPriority("gpu-1", 0)]


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        (b'{"Pod": {', "the body is not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"NodeNames": ["a"]}', 'the request has no "Pod"'),
        (b'{"Pod": "x", "NodeNames": ["a"]}', '"Pod" must be a JSON object'),
        (b'{"Pod": {}, "NodeNames": "a"}', '"NodeNames" must be a list of strings'),
        (b'{"Pod": {}}', 'neither "Nodes" nor "NodeNames"'),
        (b'{"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}}', "has no metadata.name"),
        (b"\xff\xfe", "the body is not valid JSON"),
    ],
)
def test_malformed_requests_are_400_and_the_server_keeps_serving(
    server: ExtenderServer, body: bytes, problem: str
) -> None:
    for verb in ("/filter", "/prioritize"):
        code, answer = post(server, verb, None, raw=body)
        assert code == 400 and problem in answer["Error"]
    assert get(server, "/healthz") == (200, "ok\n")


def test_bind_problems(server: ExtenderServer) -> None:
    code, answer = post(server, "/bind", {"PodName": "x", "PodNamespace": "d", "Node": "n"})
    assert code == 400 and answer["Error"] == 'the bind request has no "PodUID"'
    pod = pod_object("never-filtered", container(gpus=1))
    assert "was not in any filter request" in bind(server, pod, "gpu-1").error
    filter_(server, ExtenderArgs(pod, nodes=node_objects("gpu-1")))
    assert "node gpu-7 is not known to the extender" in bind(server, pod, "gpu-7").error


def test_body_limits(server: ExtenderServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        # Refused on the headers alone: the 5 MB are never read.
        s.sendall(b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n{")
        head = b"".join(iter(lambda: s.recv(4096), b"")).decode()  # it closes the connection
    assert head.startswith("HTTP/1.1 413") and "takes 4194304 at most" in head
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(
            b"POST /filter HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        )
        head = s.recv(4096).decode()
    assert head.startswith("HTTP/1.1 411")
    assert get(server, "/healthz")[0] == 200


def test_url_prefix_health_and_metrics(server: ExtenderServer) -> None:
    pod = pod_object("p", container(gpus=1))
    args = ExtenderArgs(pod, nodes=node_objects("gpu-1"))
    code, _ = post(server, "/gpulet/v1/filter", args.dump())
    assert code == 200
    code, answer = post(server, "/gpulet/v1/preempt", {"Pod": pod, "NodeNameToMetaVictims": {}})
    assert (code, answer) == (200, {"NodeNameToMetaVictims": {}})
    code, answer = post(server, "/evict", {})
    assert code == 404 and "no such verb" in answer["Error"]
    code, text = get(server, "/metrics")
    assert code == 200
    assert 'gpulet_scorer_requests_total{code="200",verb="filter"} 1.0' in text
    assert 'gpulet_scorer_requests_total{code="200",verb="preempt"} 1.0' in text
    assert 'gpulet_scorer_requests_total{code="404",verb="other"} 1.0' in text
    assert "gpulet_scorer_nodes 1.0" in text
    assert 'gpulet_scorer_request_seconds_count{verb="filter"} 1.0' in text
