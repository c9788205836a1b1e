"""Batch pods give memory back by leaving (agent.eviction): on a GPU whose free memory fell
under the watermark, the newest batch pods there are evicted until what they hold lifts it
back over; never a production pod, never a pod twice. The Eviction goes through the real
client to the API server stand-in, which deletes the pod as kube-apiserver does without a
PodDisruptionBudget."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes.client import ApiClient, ApiException

from agent.eviction import MIN_MIB, BatchEvictor, Eviction, to_evict, watermark
from agent.monitor import ContainerGpu, Sample
from deviceplugin.grants import Grant
from gpulet.api.resources import GPU_RESOURCE
from gpulet.api.share import GpuShare
from gpulet.kube.calls import CoreCalls
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.objects import container, pod_object
from tests.nodes import shipped

TOPO = shipped("pcie-4gpu")
G0, G1 = TOPO.gpus[0], TOPO.gpus[1]
MEMORY = {g.uuid: g.memory_mib for g in TOPO.gpus}
LINE = watermark(G0.memory_mib)


def batch(pod: str, at: float, *gpus: str) -> Grant:
    shares = tuple(GpuShare(u, 10, 8000, batch=True) for u in gpus or (G0.uuid,))
    return Grant(GPU_RESOURCE, (f"x::{pod}",), shares, pod_uid=pod, container="main",
                 granted_at=at)  # fmt: skip


def production(pod: str, at: float) -> Grant:
    shares = (GpuShare(G0.uuid, 50, 30000),)
    return Grant(GPU_RESOURCE, (f"y::{pod}",), shares, pod_uid=pod, container="main",
                 granted_at=at)  # fmt: skip


def sample(free: int, held: dict[str, int], uuid: str = G0.uuid) -> Sample:
    """GPU `uuid` with `free` MiB left, each pod in `held` holding that much of it."""
    return Sample(
        containers=[
            ContainerGpu(pod, "main", uuid, mib, 8000, 10, 50.0, (1000 + n,))
            for n, (pod, mib) in enumerate(held.items())
        ],
        gpu_used_mib={uuid: MEMORY[uuid] - free},
    )


GRANTS = [
    batch("old", 1.0),
    production("prod", 2.0),
    batch("mid", 3.0),
    batch("new", 4.0),
]


def test_the_watermark_is_five_percent_of_the_gpu_and_at_least_a_gib() -> None:
    assert watermark(80000) == 4000 and watermark(8000) == MIN_MIB


def test_nothing_is_evicted_while_the_gpu_keeps_its_watermark() -> None:
    assert to_evict(sample(LINE, {"old": 4000}), GRANTS, MEMORY, set()) == []


def test_the_newest_batch_pods_go_until_the_watermark_is_back_and_production_stays() -> None:
    held = {"old": 4000, "prod": 20000, "mid": 1500, "new": 1000}
    gone = to_evict(sample(LINE - 2000, held), GRANTS, MEMORY, set())
    assert [e.pod_uid for e in gone] == ["new", "mid"]  # 1000 + 1500 >= 2000
    assert gone[0].pids == (1003,) and gone[0].held_mib == 1000
    assert gone[0].free_mib == LINE - 2000 and gone[0].watermark_mib == LINE
    assert "production slices grew into their reservations" in gone[0].message
    # All batch gone and still short: every batch pod, never the production one.
    small = {"old": 100, "prod": 20000, "mid": 100, "new": 100}
    everything = to_evict(sample(0, small), GRANTS, MEMORY, set())
    assert [e.pod_uid for e in everything] == ["new", "mid", "old"]


def test_a_pod_already_evicted_is_not_again_and_a_pod_on_two_gpus_goes_once() -> None:
    assert [e.pod_uid for e in to_evict(sample(0, {}), GRANTS, MEMORY, {"new", "mid"})] == ["old"]
    both = [batch("wide", 5.0, G0.uuid, G1.uuid)]
    short = Sample(gpu_used_mib={G0.uuid: MEMORY[G0.uuid], G1.uuid: MEMORY[G1.uuid]})
    assert [e.pod_uid for e in to_evict(short, both, MEMORY, set())] == ["wide"]


def test_the_evictor_remembers_until_the_grant_goes_and_a_failure_is_not_retried(
    caplog: pytest.LogCaptureFixture,
) -> None:
    asked: list[Eviction] = []

    def evict(e: Eviction) -> None:
        asked.append(e)
        raise RuntimeError("API server down")

    evictor = BatchEvictor(TOPO, evict)
    short = sample(0, {"new": 1000})
    evictor.observe(short, GRANTS)
    evictor.observe(short, GRANTS)
    assert [e.pod_uid for e in asked] == ["new", "mid", "old"]
    assert evictor.counts == {"memory": 3}  # gpulet_batch_evictions_total{reason="memory"}
    assert "event=batch-evict-failed" in caplog.text and "event=batch-evicted" in caplog.text
    evictor.observe(short, GRANTS[1:])  # "old" ended; "new" and "mid" are still evicted
    assert evictor.evicted == {"new", "mid"}


@pytest.fixture
def api() -> Iterator[tuple[ApiServerStandIn, CoreCalls]]:
    with ApiServerStandIn() as server:
        yield server, CoreCalls(ApiClient(server.configuration()))


def test_an_eviction_deletes_the_pod_gracefully_and_names_its_pod(
    api: tuple[ApiServerStandIn, CoreCalls],
) -> None:
    server, core = api
    pod = pod_object("b", container(gpus=1, batch_core=10, batch_memory=8000), uid="u-b")
    created = server.create_pod(pod)
    uid = created["metadata"]["uid"]
    with pytest.raises(ApiException) as other:
        core.evict_pod("default", "b", "another-uid")
    assert other.value.status == 409
    core.evict_pod("default", "b", uid, grace_period_s=5)
    gone = server.get_pod("default", "b")
    assert gone is None or gone["metadata"].get("deletionGracePeriodSeconds") == 5
    with pytest.raises(ApiException) as missing:
        core.evict_pod("default", "nope", "u")
    assert missing.value.status == 404
    assert ("POST", "/api/v1/namespaces/default/pods/b/eviction") in server.requests


def test_every_batch_pod_leaves_a_gpu_granted_whole_whatever_its_memory() -> None:
    """The extender may give production a GPU where only batch slices run (they are not
    reservations): once its grant is there, every batch pod on that GPU is evicted, the
    memory plenty; the other GPUs' batch pods stay."""
    whole = Grant(GPU_RESOURCE, ("z::train",), (GpuShare.held_whole(G0.uuid, G0.memory_mib),),
                  pod_uid="train", container="main", granted_at=9.0)  # fmt: skip
    grants = [batch("old", 1.0), batch("new", 4.0), batch("other", 5.0, G1.uuid), whole]
    gone = to_evict(sample(G0.memory_mib // 2, {"old": 100}), grants, MEMORY, set())
    assert sorted(e.pod_uid for e in gone) == ["new", "old"]
    assert all(e.whole and "granted whole to a production pod" in e.message for e in gone)


def test_the_watermark_is_a_setting() -> None:
    """`--batch-watermark-percent 10`: a GPU with 8% free keeps its batch pods at the
    default 5%, and loses the newest at 10%."""
    free = G0.memory_mib * 8 // 100
    short = sample(free, {"new": 4000})
    assert BatchEvictor(TOPO, lambda e: None).observe(short, GRANTS) == []
    raised = BatchEvictor(TOPO, lambda e: None, permille=100).observe(short, GRANTS)
    assert [e.pod_uid for e in raised] == ["new"]
    assert raised[0].watermark_mib == max(MIN_MIB, G0.memory_mib // 10)
