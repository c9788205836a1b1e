"""The gpulet.io/assignment annotation and matching an Allocate call to a pending pod."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deviceplugin.assignment import (
    Assignment,
    AssignmentError,
    ContainerAssignment,
    ContainerRequest,
    GpuShare,
    MatchError,
    PendingPod,
    StaticPodSource,
    dump_assignment,
    match,
    parse_assignment,
)
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE
from tests.strategies import examples

GOOD: dict[str, Any] = {
    "version": 1,
    "node": "dgx-07",
    "containers": {
        "main": {
            "gpus": [{"uuid": "GPU-a", "core": 50, "memory_mib": 16384, "exclusive": False}],
            "nics": ["mlx5_0"],
            "numa": [3],
        },
        "sidecar": {"gpus": [], "nics": ["mlx5_0:2"], "numa": []},
    },
}


def with_main(**fields: Any) -> str:
    doc = json.loads(json.dumps(GOOD))
    doc["containers"]["main"].update(fields)
    return json.dumps(doc)


def with_gpu(**fields: Any) -> str:
    gpu = {**GOOD["containers"]["main"]["gpus"][0], **fields}
    return with_main(gpus=[gpu])


def test_parse_good() -> None:
    got = parse_assignment(json.dumps(GOOD))
    assert got.node == "dgx-07"
    main = got.container("main")
    assert main == ContainerAssignment(
        "main", (GpuShare("GPU-a", 50, 16384, False),), ("mlx5_0",), (3,)
    )
    assert main.count(GPU_RESOURCE) == 1 and main.count(RDMA_RESOURCE) == 1
    assert got.container("nope") is None
    assert parse_assignment(dump_assignment(got)) == got


def test_a_batch_container_is_read_as_batch_and_production_is_written_as_before() -> None:
    got = parse_assignment(with_main(**{"class": "batch"})).container("main")
    assert got is not None and got.batch and all(g.batch for g in got.gpus)
    assert parse_assignment(with_main(**{"class": "production"})) == parse_assignment(
        json.dumps(GOOD)
    )
    # An agent older than batch slices reads a production assignment as it always did.
    assert "class" not in dump_assignment(parse_assignment(json.dumps(GOOD)))


assigned_gpus = st.builds(
    GpuShare,
    uuid=st.from_regex(r"GPU-[0-9a-f]{1,36}", fullmatch=True),
    core=st.integers(1, 100),
    memory_mib=st.integers(1, 1 << 20),
)
containers = st.builds(
    ContainerAssignment,
    name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    gpus=st.lists(assigned_gpus, max_size=4, unique_by=lambda g: g.uuid).map(tuple),
    nics=st.lists(
        st.from_regex(r"mlx5_[0-9]{1,2}(:[2-4])?", fullmatch=True), max_size=3, unique=True
    ).map(tuple),
    numa=st.lists(st.integers(0, 7), max_size=2).map(tuple),
)


def _as_batch(c: ContainerAssignment) -> ContainerAssignment:
    return replace(c, gpus=tuple(replace(g, batch=True) for g in c.gpus))


#: Production containers, and batch ones (slices only, at least one GPU).
containers = containers | containers.filter(lambda c: bool(c.gpus)).map(_as_batch)


@given(st.lists(containers, max_size=3, unique_by=lambda c: c.name), st.text(min_size=1))
@settings(max_examples=examples(100))
def test_dump_round_trips(parts: list[ContainerAssignment], node: str) -> None:
    value = Assignment(node, tuple(parts))
    assert parse_assignment(dump_assignment(value)) == value


P = "gpulet.io/assignment: "


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{",
            P + "not valid JSON (Expecting property name enclosed in double quotes"
            " at line 1 column 2)",
        ),
        ("[]", P + "expected a JSON object, got a list"),
        ('{"node": "n", "containers": {}}', P + '"version" is missing'),
        (
            '{"version": "1", "node": "n", "containers": {}}',
            P + '"version" must be an integer, got a string',
        ),
        (
            '{"version": 2, "node": "n", "containers": {}}',
            P + "version 2 is not supported (this agent reads version 1): run an agent and a "
            "scheduler extender of the same release",
        ),
        ('{"version": 1, "containers": {}}', P + '"node" is missing'),
        (
            '{"version": 1, "node": "", "containers": {}}',
            P + '"node" is empty: it names the node the pod was bound to',
        ),
        (
            '{"version": 1, "node": "n", "containers": []}',
            P + '"containers" must be an object, got a list',
        ),
        (
            '{"version": 1, "node": "n", "containers": {}, "x": 1}',
            P + 'unknown field "x" (known: containers, node, version)',
        ),
        ('{"version": 1, "version": 1}', P + 'key "version" appears twice in one object'),
        (with_gpu(core=150), P + 'container "main": core 150 is not in 1..100'),
        (with_gpu(core=0), P + 'container "main": core 0 is not in 1..100'),
        (with_gpu(core=True), P + 'container "main": core must be an integer, got a boolean'),
        (with_gpu(memory_mib=0), P + 'container "main": memory_mib 0 is not in 1..1099511627776'),
        (
            with_gpu(memory_mib=1.5),
            P + 'container "main": memory_mib must be an integer, got a number',
        ),
        (
            with_gpu(uuid="GPU a"),
            P + 'container "main": uuid "GPU a" is not 1..63 characters of A-Z a-z 0-9 -',
        ),
        (
            with_gpu(exclusive="yes"),
            P + 'container "main": "exclusive" must be true or false, got a string',
        ),
        (
            with_gpu(exclusive=True),
            P + 'container "main": GPU-a is exclusive (a whole GPU) but core is 50, not 100',
        ),
        (
            with_main(gpus=[{"uuid": "GPU-a", "core": 5, "memory_mib": 1}]),
            P + 'container "main": "exclusive" is missing',
        ),
        (with_main(gpus={}), P + 'container "main": "gpus" must be a list, got an object'),
        (
            with_main(gpus=[GOOD["containers"]["main"]["gpus"][0]] * 2),
            P
            + 'container "main": a GPU is listed twice; each GPU of a container is a different one',
        ),
        (
            with_main(
                gpus=[
                    {"uuid": "GPU-a", "core": 100, "memory_mib": 1, "exclusive": True},
                    {"uuid": "GPU-b", "core": 100, "memory_mib": 1, "exclusive": False},
                ]
            ),
            P + 'container "main": mixes whole GPUs and slices; a container gets one or the other',
        ),
        (
            with_main(
                gpus=[
                    {"uuid": f"GPU-{i}", "core": 1, "memory_mib": 1, "exclusive": False}
                    for i in range(17)
                ]
            ),
            P + 'container "main": 17 GPUs; a container takes 16 at most',
        ),
        (
            with_main(nics=["mlx5 0"]),
            P + 'container "main": NIC "mlx5 0" is not an RDMA port like mlx5_0 or mlx5_0:2',
        ),
        (with_main(nics=["mlx5_0", "mlx5_0"]), P + 'container "main": NIC mlx5_0 is listed twice'),
        (with_main(numa=[-1]), P + 'container "main": NUMA node -1 is not in 0..65536'),
        (
            with_main(**{"class": "gold"}),
            P + 'container "main": "class" must be "production" or "batch", got "gold"',
        ),
        (
            with_main(**{"class": "batch", "gpus": []}),
            P + 'container "main": a batch container takes slices of one GPU or more, never whole',
        ),
        (
            with_main(
                **{
                    "class": "batch",
                    "gpus": [{"uuid": "GPU-a", "core": 100, "memory_mib": 1, "exclusive": True}],
                }
            ),
            P + 'container "main": a batch container takes slices of one GPU or more, never whole',
        ),
        (
            with_main(extra=1),
            P + 'container "main": unknown field "extra" (known: class, gpus, nics, numa)',
        ),
        (with_main(numa=None), P + 'container "main": "numa" must be a list, got null'),
        (
            json.dumps({"version": 1, "node": "n", "containers": {"main": {"gpus": []}}}),
            P + 'container "main": "nics" is missing',
        ),
        (
            json.dumps({"version": 1, "node": "n", "containers": {"main": 3}}),
            P + 'container "main": expected an object, got a number',
        ),
        (
            json.dumps({"version": 1, "node": "n", "containers": {"": {}}}),
            P + "a container name is empty",
        ),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(AssignmentError) as err:
        parse_assignment(text)
    assert str(err.value) == message


# ---- matching --------------------------------------------------------------------------------


def pod(uid: str, created: float, *containers: ContainerRequest) -> PendingPod:
    return PendingPod(uid, "ns", f"pod-{uid}", "node", created, containers, None)


def c(name: str, gpus: int = 0, rdma: int = 0) -> ContainerRequest:
    return ContainerRequest(name, gpus, rdma)


NOTHING: frozenset[tuple[str, str, str]] = frozenset()


def test_oldest_pod_asking_that_many() -> None:
    pods = [pod("b", 20, c("x", 1)), pod("a", 10, c("x", 2)), pod("c", 30, c("x", 1))]
    found = match(pods, GPU_RESOURCE, 1, NOTHING)
    assert found is not None and (found[0].uid, found[1]) == ("b", "x")
    found = match(pods, GPU_RESOURCE, 2, NOTHING)
    assert found is not None and found[0].uid == "a"
    assert match(pods, GPU_RESOURCE, 3, NOTHING) is None
    assert match(pods, RDMA_RESOURCE, 1, NOTHING) is None


def test_containers_in_order_skipping_those_without_the_resource() -> None:
    p = pod("a", 1, c("init", gpus=1), c("web"), c("main", gpus=2, rdma=1), c("last", gpus=1))
    assert match([p], GPU_RESOURCE, 1, NOTHING) == (p, "init")
    assert match([p], GPU_RESOURCE, 2, NOTHING) is None  # kubelet is at "init", not "main"
    done = {("a", "init", GPU_RESOURCE)}
    assert match([p], GPU_RESOURCE, 2, done) == (p, "main")
    assert match([p], RDMA_RESOURCE, 1, done) == (p, "main")
    done |= {("a", "main", GPU_RESOURCE), ("a", "main", RDMA_RESOURCE)}
    assert match([p], GPU_RESOURCE, 1, done) == (p, "last")
    done |= {("a", "last", GPU_RESOURCE)}
    assert match([p], GPU_RESOURCE, 1, done) is None  # fully allocated


def test_equal_creation_time_breaks_by_uid_only_when_counts_differ() -> None:
    pods = [pod("b", 5, c("x", 1)), pod("a", 5, c("x", 2))]
    assert match(pods, GPU_RESOURCE, 1, NOTHING) == (pods[0], "x")


def test_ambiguous_twins() -> None:
    pods = [pod("b", 5, c("x", 1)), pod("a", 5, c("y", 1)), pod("z", 4, c("x", 2))]
    with pytest.raises(MatchError) as err:
        match(pods, GPU_RESOURCE, 1, NOTHING)
    assert str(err.value) == (
        "cannot tell which pod kubelet is admitting: ns/pod-a, ns/pod-b were created at the "
        "same time and each waits for 1 gpulet.io/gpu"
    )
    # A younger pod with the same count is no ambiguity: kubelet takes the oldest first.
    pods = [pod("b", 5, c("x", 1)), pod("a", 6, c("y", 1))]
    assert match(pods, GPU_RESOURCE, 1, NOTHING) == (pods[0], "x")


def test_stale_when_a_container_would_be_skipped() -> None:
    p = pod("a", 1, c("first", gpus=1, rdma=1), c("second", gpus=1))
    done = {("a", "first", GPU_RESOURCE)}
    # "first" still waits for its RDMA port; kubelet would not go on to "second" before it.
    with pytest.raises(MatchError, match=r'container "second" asks 1 gpulet\.io/gpu, but its'):
        match([p], GPU_RESOURCE, 1, done)


def test_static_source() -> None:
    a, b = pod("a", 1, c("x", 1)), pod("b", 2, c("x", 1))
    source = StaticPodSource([a])
    source.add(b)
    assert list(source.pending_pods()) == [a, b]
    assert source.remove("a") and not source.remove("a")
    assert list(source.pending_pods()) == [b]


def test_a_stale_view_of_a_pod_says_which_container_still_waits() -> None:
    """Kubelet allocates a container's every resource before the next container's: a pod
    whose second container asks while its first still waits is one the agent is behind on."""
    first = ContainerRequest("first", gpus=1, rdma=1)
    second = ContainerRequest("second", gpus=2)
    waiting = PendingPod("u", "team", "job", "node-7", 1.0, (first, second), None, None)
    done = {("u", "first", GPU_RESOURCE)}
    with pytest.raises(MatchError) as caught:
        match([waiting], GPU_RESOURCE, 2, done)
    assert str(caught.value) == (
        'pod team/job container "second" asks 2 gpulet.io/gpu, but its container "first" has '
        "not been allocated all its devices yet: the agent's view of the pod is behind "
        "kubelet's"
    )


def test_what_a_container_asks_and_a_container_the_pod_lacks() -> None:
    assert ContainerRequest("main").asks() == "no gpulet device"
    waiting = PendingPod("u", "team", "job", "node-7", 1.0, (ContainerRequest("main"),), None, None)
    assert waiting.container("other") is None
