"""Every pod in docs/pod-spec.md, read by the extender's own reader (`pod_ask`): each asks
what the page says it asks, each error example is refused with the message the page shows,
every message in the page's table is the reader's own, and on an empty DGX H100 each example
gets what the page says it gets (`scorer.decide`, as the extender decides)."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpulet.api.resources import MANAGED_RESOURCES
from gpulet.api.share import Idle
from gpulet.placement import Capacity, NodeState, Placer, Request, TopologyPolicy
from gpulet.placement.podspec import ContainerAsk, PodSpecError, pod_ask
from gpulet.standins.objects import container, pod_object
from gpulet.topology import format_cpulist
from scorer.cluster import NodeInfo, tally
from scorer.decide import Decision, decide
from tests.nodes import shipped

DOC = Path(__file__).resolve().parents[2] / "docs" / "pod-spec.md"
_YAML_BLOCK = re.compile(r"^```yaml\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_TEXT_BLOCK = re.compile(r"^```text\n(.*?)^```$", re.MULTILINE | re.DOTALL)

#: What the page says each example asks: its containers in kubelet's order, and numa-pin.
ASKS: dict[str, tuple[tuple[ContainerAsk, ...], bool]] = {
    "infer": ((ContainerAsk("server", Request(gpus=1, core=30, memory_mib=8192)),), False),
    "train": (
        (ContainerAsk("trainer", Request(gpus=4, rdma=4, topology=TopologyPolicy.RESTRICTED)),),
        False,
    ),
    "pinned": (
        (
            ContainerAsk("worker", Request(gpus=2, topology=TopologyPolicy.SINGLE_NUMA)),
            ContainerAsk("log-shipper", None),
        ),
        True,
    ),
    "offline-eval": (
        (ContainerAsk("eval", Request(gpus=1, core=20, memory_mib=16384, batch=True)),),
        False,
    ),
}

#: The page's error examples and the message it shows for each.
REFUSED = {
    "infer-gib": (
        "pod team-a/infer-gib container 'server': gpulet.io/gpu-memory must be a whole number "
        "(MiB of each GPU), got '8Gi'"
    ),
}


@cache
def _doc() -> str:
    return DOC.read_text()


@cache
def _prose() -> str:
    """The page with its line breaks and runs of spaces made single spaces."""
    return " ".join(_doc().split())


@cache
def _pods() -> dict[str, dict[str, Any]]:
    """Every ```yaml block of the page, each a Pod, by name."""
    pods: dict[str, dict[str, Any]] = {}
    for block in _YAML_BLOCK.findall(_doc()):
        pod = yaml.safe_load(block)
        assert isinstance(pod, dict), block
        assert (pod.get("apiVersion"), pod.get("kind")) == ("v1", "Pod"), block
        name = pod["metadata"]["name"]
        assert name not in pods, f"two examples are named {name}"
        pods[name] = pod
    return pods


def _as_the_api_server_sends(pod: dict[str, Any]) -> dict[str, Any]:
    """`pod` with every resource quantity a string, as the API server writes it back (a
    YAML `1` is an integer until then)."""
    sent = copy.deepcopy(pod)
    spec = sent["spec"]
    for c in [*spec.get("initContainers", []), *spec["containers"]]:
        for kind in ("limits", "requests"):
            values = c.get("resources", {}).get(kind, {})
            for key, value in values.items():
                values[key] = str(value)
    return sent


def test_every_example_is_known_here() -> None:
    assert set(_pods()) == set(ASKS) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(ASKS))
@pytest.mark.parametrize("form", ["as written", "as the API server sends it"])
def test_example_asks_what_the_page_says(name: str, form: str) -> None:
    pod = _pods()[name]
    if form != "as written":
        pod = _as_the_api_server_sends(pod)
    ask = pod_ask(pod)
    containers, numa_pin = ASKS[name]
    assert (ask.namespace, ask.name) == ("team-a", name)
    assert ask.containers == containers
    assert ask.numa_pin is numa_pin


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_error_example_is_refused_with_the_message_shown(name: str) -> None:
    message = REFUSED[name]
    assert message in [b.strip() for b in _TEXT_BLOCK.findall(_doc())]
    for pod in (_pods()[name], _as_the_api_server_sends(_pods()[name])):
        with pytest.raises(PodSpecError) as refused:
            pod_ask(pod)
        assert str(refused.value) == message


_POD = "pod team-a/infer: "
_SERVER = "pod team-a/infer container 'server': "


@pytest.mark.parametrize(
    ("pod", "prefix", "message"),
    [
        (
            pod_object(
                "infer",
                container("server", gpus=1),
                namespace="team-a",
                annotations={"gpulet.io/topology-policy": "strict"},
            ),
            _POD,
            "gpulet.io/topology-policy must be one of best-effort, restricted, single-numa, "
            "got 'strict'",
        ),
        (
            pod_object(
                "infer",
                container("server", gpus=1),
                namespace="team-a",
                annotations={"gpulet.io/gpu-policy": "pack"},
            ),
            _POD,
            "gpulet.io/gpu-policy must be one of binpack, spread, got 'pack'",
        ),
        (
            pod_object(
                "infer",
                container("server", gpus=1),
                namespace="team-a",
                annotations={"gpulet.io/numa-pin": "yes"},
            ),
            _POD,
            'gpulet.io/numa-pin must be "true" or "false", got \'yes\'',
        ),
        (
            pod_object("infer", container("server", gpus="1.5"), namespace="team-a"),
            _SERVER,
            "gpulet.io/gpu must be a whole number, got '1.5'",
        ),
        (
            pod_object("infer", container("server", gpus=1, core="0.5"), namespace="team-a"),
            _SERVER,
            "gpulet.io/gpu-core must be a whole number (percent of each GPU), got '0.5'",
        ),
        (
            pod_object("infer", container("server", gpus=1, memory="8Gi"), namespace="team-a"),
            _SERVER,
            "gpulet.io/gpu-memory must be a whole number (MiB of each GPU), got '8Gi'",
        ),
        (
            pod_object("infer", container("server", gpus=1, core=150), namespace="team-a"),
            _SERVER,
            "gpu-core must be 1-100 (percent of each GPU), got 150",
        ),
        (
            pod_object("infer", container("server", gpus=1, memory=0), namespace="team-a"),
            _SERVER,
            "gpu-memory must be at least 1 MiB, got 0",
        ),
        (
            pod_object("infer", container("server", core=30), namespace="team-a"),
            _SERVER,
            "gpulet.io/gpu-core or gpulet.io/gpu-memory without any gpulet.io/gpu",
        ),
        (
            pod_object("infer", container("server", core=30, rdma=1), namespace="team-a"),
            _SERVER,
            "gpu-core or gpu-memory given without any gpulet.io/gpu",
        ),
        (
            pod_object(
                "infer",
                container("server", gpus=1, core=30, batch_core=30, batch_memory=8192),
                namespace="team-a",
            ),
            _SERVER,
            "a container is a production slice (gpulet.io/gpu-core, gpulet.io/gpu-memory) or "
            "a batch slice (gpulet.io/batch-gpu-core, gpulet.io/batch-gpu-memory), never both",
        ),
        (
            pod_object("infer", container("server", gpus=1, batch_core=30), namespace="team-a"),
            _SERVER,
            "a batch slice asks for all three of gpulet.io/gpu, gpulet.io/batch-gpu-core (its "
            "floor, percent of each GPU) and gpulet.io/batch-gpu-memory (its cap, MiB of each "
            "GPU)",
        ),
        (
            pod_object(
                "infer",
                container("server", gpus=1, batch_core=0, batch_memory=8192),
                namespace="team-a",
            ),
            _SERVER,
            "batch-gpu-core must be 1-100 (percent of each GPU), got 0",
        ),
        (
            pod_object(
                "infer",
                container("server", gpus=1, core=30, memory=8192)
                | {"resources": {"limits": {"gpulet.io/gpu": "1", "gpulet.io/gpu-cores": "30"}}},
                namespace="team-a",
            ),
            _SERVER,
            "unknown resource gpulet.io/gpu-cores: gpulet serves gpulet.io/batch-gpu-core, "
            "gpulet.io/batch-gpu-memory, gpulet.io/gpu, gpulet.io/gpu-core, gpulet.io/gpu-memory, "
            "gpulet.io/rdma",
        ),
        (
            pod_object(
                "infer",
                container("server", gpus=2),
                namespace="team-a",
                annotations={"gpulet.io/topology-policy": "restricted"},
            ),
            _SERVER,
            "topology-policy restricted needs at least one gpulet.io/rdma: every GPU must share "
            "a PCIe switch with one of the container's NICs",
        ),
    ],
)
def test_the_error_table_is_the_readers_own(pod: dict[str, Any], prefix: str, message: str) -> None:
    assert f"| `{message}` |" in _doc()
    with pytest.raises(PodSpecError) as refused:
        pod_ask(pod)
    assert str(refused.value) == prefix + message


def test_the_page_names_every_resource() -> None:
    for resource in MANAGED_RESOURCES:
        assert f"| `{resource}` |" in _doc()


def _on_empty_dgx_h100(name: str) -> Decision:
    topo = shipped("dgx-h100")
    node = NodeInfo(topo.node, topo, Placer(topo, Capacity()), Capacity())
    decided = decide(node, NodeState(), pod_ask(_pods()[name]))
    assert isinstance(decided, Decision), decided
    return decided


def _gpus(decision: Decision, container_name: str) -> list[tuple[int, int, int, bool]]:
    """(index, core, MiB, whole) of each GPU the container is assigned."""
    index = {g.uuid: g.index for g in shipped("dgx-h100").gpus}
    entry = decision.assignment.container(container_name)
    assert entry is not None
    return [(index[g.uuid], g.core, g.memory_mib, g.exclusive) for g in entry.gpus]


def test_the_dgx_h100_the_examples_are_placed_on() -> None:
    topo = shipped("dgx-h100")
    assert len(topo.gpus) == 8
    assert len({g.switch for g in topo.gpus}) == 8
    assert {g.index for g in topo.gpus if g.numa == 0} == {0, 1, 2, 3}
    numa0 = next(n for n in topo.numa_nodes if n.id == 0)
    assert f"CPUs `{format_cpulist(numa0.cpus)}`" in _prose()


def test_the_inference_slice_gets_gpu0_at_30_percent_and_8192_mib() -> None:
    decision = _on_empty_dgx_h100("infer")
    assert _gpus(decision, "server") == [(0, 30, 8192, False)]
    assert "It gets GPU0 at 30% and 8192 MiB" in _prose()


def test_the_training_job_gets_gpus_0_to_3_each_with_a_port_behind_its_switch() -> None:
    topo = shipped("dgx-h100")
    decision = _on_empty_dgx_h100("train")
    assert [(i, whole) for i, _, _, whole in _gpus(decision, "trainer")] == [
        (0, True),
        (1, True),
        (2, True),
        (3, True),
    ]
    entry = decision.assignment.container("trainer")
    assert entry is not None
    assert entry.nics == ("mlx5_0", "mlx5_3", "mlx5_4", "mlx5_5")
    assert entry.numa == (0,)
    port_switches = {n.switch for n in topo.nics if n.key in entry.nics}
    gpus = {g.index: g for g in topo.gpus}
    assert all(gpus[i].switch in port_switches for i in range(4))
    assert "GPU0 to GPU3, whole, with the ports `mlx5_0`, `mlx5_3`, `mlx5_4` and `mlx5_5`" in (
        _prose()
    )


def test_the_batch_slice_goes_beside_the_inference_slice() -> None:
    """On the node of the inference example, every GPU measured idle but for the margins:
    the batch slice packs onto GPU0, which production already uses."""
    topo = shipped("dgx-h100")
    node = NodeInfo(topo.node, topo, Placer(topo, Capacity()), Capacity())
    infer = _on_empty_dgx_h100("infer").assignment
    (share,) = infer.containers[0].gpus
    room = {g.index: Idle(90, g.memory_mib * 9 // 10) for g in topo.gpus}
    state = replace(tally(node, [infer]), idle=room)
    decided = decide(node, state, pod_ask(_pods()["offline-eval"]))
    assert isinstance(decided, Decision), decided
    (batch,) = decided.assignment.containers[0].gpus
    assert (
        batch.uuid == share.uuid and batch.batch and (batch.core, batch.memory_mib) == (20, 16384)
    )
    assert "On the node of the inference example it goes to GPU0" in _prose()


def test_the_pinned_pod_gets_gpus_0_and_1_on_numa_node_0() -> None:
    decision = _on_empty_dgx_h100("pinned")
    assert [(i, whole) for i, _, _, whole in _gpus(decision, "worker")] == [(0, True), (1, True)]
    entry = decision.assignment.container("worker")
    assert entry is not None
    assert entry.numa == (0,)
    # The sidecar asks for nothing, so the assignment has nothing for it to pin.
    assert decision.assignment.container("log-shipper") is None
    assert "It gets GPU0 and GPU1 on NUMA node 0" in _prose()
