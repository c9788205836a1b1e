"""Reading what a pod asks of gpulet from its Kubernetes JSON."""

from __future__ import annotations

import re

import pytest

from gpulet.placement import GpuPolicy, Request, TopologyPolicy
from gpulet.placement.podspec import DeviceCounts, PodSpecError, pod_ask, pod_counts
from gpulet.standins.objects import container, pod_object


def test_containers_in_kubelet_order_with_their_requests() -> None:
    pod = pod_object(
        "train",
        container("trainer", gpus=4, rdma=4),
        container("sidecar"),
        container("infer", gpus=1, core=30, memory=8192, rdma=1),
        init=(container("warmup", gpus=1, rdma=1),),
        annotations={
            "gpulet.io/topology-policy": "restricted",
            "gpulet.io/gpu-policy": "spread",
            "gpulet.io/numa-pin": "true",
        },
    )
    ask = pod_ask(pod)
    assert [(c.name, c.init) for c in ask.containers] == [
        ("warmup", True),
        ("trainer", False),
        ("sidecar", False),
        ("infer", False),
    ]
    restricted, spread = TopologyPolicy.RESTRICTED, GpuPolicy.SPREAD
    assert ask.containers[1].request == Request(
        gpus=4, rdma=4, topology=restricted, gpu_policy=spread
    )
    assert ask.containers[2].request is None
    assert ask.containers[3].request == Request(
        gpus=1, core=30, memory_mib=8192, rdma=1, topology=restricted, gpu_policy=spread
    )
    assert [c.name for c in ask.wants] == ["warmup", "trainer", "infer"]
    assert ask.numa_pin and ask.ref == "default/train"


def test_requests_are_read_when_limits_are_absent() -> None:
    c = container(gpus=2)
    c["resources"] = {"requests": c["resources"]["requests"]}
    assert pod_ask(pod_object("p", c)).containers[0].request == Request(gpus=2)


def test_same_request_same_key() -> None:
    a = pod_ask(pod_object("a", container(gpus=1, core=20, memory=4096)))
    b = pod_ask(pod_object("b", container(gpus=1, core=20, memory=4096)))
    c = pod_ask(pod_object("c", container(gpus=1, core=21, memory=4096)))
    assert a.key == b.key != c.key


@pytest.mark.parametrize(
    ("pod", "problem"),
    [
        (pod_object("p", container(gpus=1, core=0)), "gpu-core must be 1-100"),
        (pod_object("p", container(gpus=1, core=150)), "got 150"),
        (pod_object("p", container(gpus=1, memory="8Gi")), "MiB of each GPU), got '8Gi'"),
        (pod_object("p", container(gpus=1, memory=0)), "gpu-memory must be at least 1 MiB"),
        (pod_object("p", container(gpus="1.5")), "gpulet.io/gpu must be a whole number"),
        (pod_object("p", container(gpus=-1)), "gpulet.io/gpu must be a whole number, got '-1'"),
        (pod_object("p", container(gpus=1 << 41)), "gpulet.io/gpu must be a whole number"),
        (pod_object("p", container(gpus=1, memory="abc")), "(MiB of each GPU), got 'abc'"),
        (pod_object("p", container(core=50)), "without any gpulet.io/gpu"),
        (
            pod_object(
                "p", container(gpus=2), annotations={"gpulet.io/topology-policy": "restricted"}
            ),
            "restricted needs at least one gpulet.io/rdma",
        ),
        (
            pod_object("p", container(gpus=1), annotations={"gpulet.io/gpu-policy": "pack"}),
            "gpulet.io/gpu-policy must be one of binpack, spread, got 'pack'",
        ),
        (
            pod_object("p", container(gpus=1), annotations={"gpulet.io/numa-pin": "yes"}),
            'gpulet.io/numa-pin must be "true" or "false"',
        ),
        ({"metadata": [], "spec": {}}, "metadata must be a JSON object"),
        ("a pod", "the Pod must be a JSON object"),
    ],
)
def test_invalid_requests_say_what_to_fix(pod: object, problem: str) -> None:
    with pytest.raises(PodSpecError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        pod_ask(pod)


def test_the_container_is_named_in_the_error() -> None:
    pod = pod_object("web", container("main", gpus=1), container("side", gpus=1, core=101))
    with pytest.raises(PodSpecError, match=r"pod default/web container 'side': gpu-core"):
        pod_ask(pod)


def test_values_are_read_as_kubernetes_quantities() -> None:
    """The API server writes a pod's 16000 as "16k"; kubelet allocates "1e0" devices as 1."""
    ask = pod_ask(pod_object("p", container(gpus="1e0", core="50", memory="16k")))
    assert ask.containers[0].request == Request(gpus=1, core=50, memory_mib=16000)


def test_the_counts_of_a_pod_refused_on_other_grounds_can_be_read() -> None:
    """What the node agent matches kubelet's Allocate calls by, pod_ask's refusal aside."""
    pod = pod_object(
        "p",
        container("main", gpus=2, core=150, rdma=1),
        container("side"),
        init=(container("warm", gpus=1),),
        annotations={"gpulet.io/gpu-policy": "pack"},
    )
    with pytest.raises(PodSpecError, match="gpu-policy must be one of"):
        pod_ask(pod)
    assert pod_counts(pod) == (
        DeviceCounts("warm", 1, 0),
        DeviceCounts("main", 2, 1),
        DeviceCounts("side", 0, 0),
    )
    with pytest.raises(PodSpecError, match=r"container 'main': gpulet\.io/gpu must be a whole"):
        pod_counts(pod_object("p", container(gpus="1.5")))


def _asking(resource: str, value: str = "30", **kw: int) -> dict[str, object]:
    c = container("main", **kw)
    c["resources"]["limits"][resource] = value
    return pod_object("p", c)


def _batch(**kw: int | str | None) -> dict[str, object]:
    """A pod asking a batch slice of 30% and 8192 MiB, and whatever `kw` changes."""
    given: dict[str, int | str | None] = {"batch_core": "30", "batch_memory": "8192", **kw}
    return pod_object("p", container("main", **given))  # type: ignore[arg-type]


def test_a_batch_slice_is_read_as_batch_with_its_floor_and_cap() -> None:
    (ask,) = pod_ask(_batch(gpus=2)).wants
    assert ask.request == Request(gpus=2, core=30, memory_mib=8192, batch=True)
    assert not ask.request.whole
    assert pod_counts(_batch(gpus=2)) == (DeviceCounts("main", 2, 0),)


@pytest.mark.parametrize(
    ("pod", "problem"),
    [
        # Either batch resource alone would once have been read as nothing: a whole GPU.
        (_batch(batch_memory=None, gpus=1), "asks for all three of gpulet.io/gpu"),
        (_batch(batch_core=None, gpus=1), "asks for all three of gpulet.io/gpu"),
        (_batch(), "asks for all three of gpulet.io/gpu"),
        (_batch(gpus=1, core=30), "production slice (gpulet.io/gpu-core"),
        (_batch(gpus=1, memory=4096), "never both"),
        (_batch(batch_core="0", gpus=1), "batch-gpu-core must be 1-100"),
        (_batch(batch_core="101", gpus=1), "batch-gpu-core must be 1-100"),
        (_batch(batch_memory="8Gi", gpus=1), "batch-gpu-memory must be a whole number (MiB"),
        (_batch(batch_memory="0", gpus=1), "batch-gpu-memory must be at least 1 MiB"),
    ],
)
def test_a_batch_slice_that_is_not_exactly_one_class_is_refused_with_the_reason(
    pod: dict[str, object], problem: str
) -> None:
    with pytest.raises(PodSpecError, match=re.escape(problem)):
        pod_ask(pod)


def test_an_unknown_gpulet_resource_is_refused_and_others_are_not_gpulets() -> None:
    with pytest.raises(PodSpecError, match=r"unknown resource gpulet\.io/gpu-cores: gpulet serves"):
        pod_ask(_asking("gpulet.io/gpu-cores", gpus=1))
    other = pod_ask(_asking("nvidia.com/gpu", "1", gpus=1, core=30))
    (ask,) = other.wants
    assert ask.request is not None and ask.request.core == 30
