"""The node agent and the extender read a pod's gpulet requests with one reader
(`gpulet.placement.podspec`): they agree on what every pod asks, or both refuse it. A pod the
extender refuses can reach a node only by bypassing the scheduler; the agent grants it
nothing, says so once in its log, and its watch goes on."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubernetes import client

from agent.kube import ApiPodSource, container_requests, pending_pod
from deviceplugin.assignment import ContainerRequest, GpuShare, StaticPodSource
from deviceplugin.core import AllocateError, DevicePluginCore
from deviceplugin.ledger import Ledger
from deviceplugin.resources import GPU_RESOURCE, PluginConfig
from gpulet.api.resources import CORE_RESOURCE, MEMORY_RESOURCE, RDMA_RESOURCE
from gpulet.kube.calls import CoreCalls
from gpulet.placement.podspec import PodSpecError, pod_ask, pod_counts
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.objects import container, pod_object
from tests.strategies import examples
from tests.unit.test_tenant_allocate import A100, G0, MEM, NODE, kubelet_ids, tenant_pod

RESOURCES = (GPU_RESOURCE, CORE_RESOURCE, MEMORY_RESOURCE, RDMA_RESOURCE)

#: Quantities and the value Kubernetes gives each (apimachinery's ParseQuantity, v0.30):
#: what kubelet counts for a device resource; None where the quantity is not a whole number,
#: or is invalid, or is more than the reader takes (2**40).
KUBERNETES = {
    "0": 0,
    "1": 1,
    "+1": 1,
    "-0": 0,
    "007": 7,
    "1500": 1500,
    # The API server writes 1000 as "1k" and 16000 as "16k".
    "1k": 1000,
    "16k": 16000,
    "1.5k": 1500,
    "1.0": 1,
    "2.000": 2,
    "1.": 1,
    "1000m": 1,
    "1000000000n": 1,
    "1e0": 1,
    "3e-0": 3,
    "5e1": 50,
    "1e3": 1000,
    "1E3": 1000,
    "1Ki": 1024,
    "8Gi": 8589934592,
    "1099511627776": 1 << 40,
    "1.5": None,
    ".5": None,
    "1500m": None,
    "1e-3": None,
    "12e-1": None,
    "1n": None,
    "1000u": None,
    "-1": None,
    "1099511627777": None,
    "1T": 10**12,
    "2T": None,
    "1E": None,
    "2Ti": None,
    "1e99999999": None,
    "abc": None,
    "": None,
    " 1": None,
    "0x10": None,
    "1_000": None,
    "\uff11": None,
    "1ki": None,
    "1K": None,
}


# ---- the two readers ---------------------------------------------------------------------


def extender_reads(pod: Any) -> tuple[tuple[ContainerRequest, ...] | None, str | None]:
    """What the extender reads: each container's ask, or why the pod is refused."""
    try:
        ask = pod_ask(pod)
    except PodSpecError as e:
        return None, str(e)
    out = []
    for c in ask.containers:
        r = c.request
        out.append(
            ContainerRequest(c.name)
            if r is None
            else ContainerRequest(c.name, r.gpus, r.rdma, r.core, r.memory_mib)
        )
    return tuple(out), None


def assert_agree(pod: Any) -> None:
    """The agent reads `pod` as the extender does, and gives a pod the extender refuses
    nothing: any Allocate matched to it is refused with the extender's reason."""
    asked, refused = extender_reads(pod)
    containers, problem = container_requests(pod)
    pending = pending_pod(pod, NODE)  # never raises, whatever the pod
    assert problem == refused
    if refused is None:
        assert containers == asked
        assert pending is None or (pending.containers == asked and pending.problem is None)
        assert pod_counts(pod) == tuple((c.name, c.gpus, c.rdma) for c in containers)
        return
    assert pending is None or pending.problem == refused
    try:
        counts = pod_counts(pod)
    except PodSpecError:
        assert pending is None  # what kubelet counts is not known: never matched
        return
    # Matched by the counts kubelet allocates, as the one reader reads them.
    assert containers == tuple(ContainerRequest(n, g, r) for n, g, r in counts)


# ---- examples ----------------------------------------------------------------------------


def devices(gpus: object, rdma: object) -> dict[str, Any]:
    """A container "main" asking `gpus` and `rdma`, as given (limits and requests alike)."""
    values = {GPU_RESOURCE: gpus, RDMA_RESOURCE: rdma}
    return with_resources(container(), values, dict(values))


def with_resources(
    c: dict[str, Any], limits: dict[str, Any], requests: dict[str, Any]
) -> dict[str, Any]:
    c["resources"] = {"limits": limits, "requests": requests}
    return c


EXAMPLES = {
    "whole-gpus": pod_object("p", container(gpus=2, rdma=2)),
    "a-slice": pod_object("p", container(gpus=1, core=30, memory=8192)),
    "no-gpulet-resource": pod_object("p", container()),
    "init-and-app": pod_object(
        "p", container("app", gpus=1), container("side"), init=(container("warm", gpus=2),)
    ),
    "1.5-gpus": pod_object("p", container(gpus="1.5")),
    "abc-memory": pod_object("p", container(gpus=1, memory="abc")),
    "8Gi-memory": pod_object("p", container(gpus=1, memory="8Gi")),
    "negative-gpus": pod_object("p", container(gpus=-1)),
    "negative-core": pod_object("p", container(gpus=1, core=-5)),
    "huge-gpus": pod_object("p", container(gpus=10**30)),
    "huge-memory": pod_object("p", container(gpus=1, memory=(1 << 40) + 1)),
    "16k-memory": pod_object("p", container(gpus=1, memory="16k")),
    "1k-gpus": pod_object("p", container(gpus="1k")),
    "1e0-gpus": pod_object("p", container(gpus="1e0")),
    "plus-one-rdma": pod_object("p", devices(1, "+1")),
    "json-number": pod_object("p", with_resources(container(), {GPU_RESOURCE: 2}, {})),
    "json-bool": pod_object("p", with_resources(container(), {GPU_RESOURCE: True}, {})),
    "requests-only": pod_object("p", with_resources(container(), {}, {GPU_RESOURCE: "3"})),
    "requests-differ": pod_object(
        "p", with_resources(container(), {GPU_RESOURCE: "1"}, {GPU_RESOURCE: "2"})
    ),
    "bad-request-good-limit": pod_object(
        "p", with_resources(container(), {GPU_RESOURCE: "1"}, {GPU_RESOURCE: "abc"})
    ),
    "core-without-gpu": pod_object("p", container(core=50)),
    "bad-init-good-app": pod_object(
        "p", container("app", gpus=1), init=(container("warm", gpus="1.5"),)
    ),
    "bad-policy": pod_object("p", container(gpus=1), annotations={"gpulet.io/gpu-policy": "pack"}),
    "bad-policy-no-gpu": pod_object("p", container(), annotations={"gpulet.io/gpu-policy": "pack"}),
    "containers-not-a-list": {"metadata": {"name": "p"}, "spec": {"containers": {}}},
    "container-not-an-object": {"metadata": {"name": "p"}, "spec": {"containers": ["c"]}},
    "resources-not-an-object": pod_object("p", {"name": "c", "resources": "1"}),
    "metadata-a-list": {"metadata": ["p"], "spec": {}},
    "status-a-list": {**pod_object("p", container(gpus=1)), "status": ["Pending"]},
    "spec-a-string": {"metadata": {"name": "p"}, "spec": "x"},
}


@pytest.mark.parametrize("pod", EXAMPLES.values(), ids=EXAMPLES.keys())
def test_the_agent_and_the_extender_agree_on_what_a_pod_asks(pod: Any) -> None:
    assert_agree(pod)


@pytest.mark.parametrize(("text", "value"), KUBERNETES.items(), ids=repr)
def test_device_counts_are_what_kubelet_counts(text: str, value: int | None) -> None:
    """Kubelet allocates a container the Kubernetes value of its device count; the agent
    matches each Allocate by the count it reads, so it reads the same number (the API server
    writes 1000 as "1k"), or refuses the pod and never matches it."""
    pod = pod_object("p", devices(text, text))
    if value is None:
        with pytest.raises(PodSpecError, match=r"gpulet\.io/gpu must be a whole number"):
            pod_counts(pod)
        assert pending_pod(pod, NODE) is None
        return
    assert pod_counts(pod) == (("main", value, value),)
    ask = pod_ask(pod).containers[0].request
    assert value == 0 or (ask is not None and (ask.gpus, ask.rdma) == (value, value))


@pytest.mark.parametrize(
    ("text", "mib"),
    [("8192", 8192), ("16k", 16000), ("81920", 81920), ("80k", 80000), ("4e3", 4000)],
)
def test_gpu_memory_is_read_as_the_api_server_writes_it(text: str, mib: int) -> None:
    """A pod asking 16000 MiB reaches the extender as "16k"."""
    ask = pod_ask(pod_object("p", container(gpus=1, memory=text))).containers[0].request
    assert ask is not None and ask.memory_mib == mib


@pytest.mark.parametrize("text", ["8Gi", "1Ki", "80Gi", "1.5", "0.5", "abc", "-1"])
def test_gpu_memory_with_a_binary_suffix_or_a_fraction_is_refused(text: str) -> None:
    """`8Gi` is a whole Kubernetes quantity, but as MiB it could mean 8 GiB or 8 Gi MiB."""
    pod = pod_object("p", container(gpus=1, memory=text))
    with pytest.raises(PodSpecError, match=r"gpu-memory must be a whole number \(MiB"):
        pod_ask(pod)
    assert pod_counts(pod) == (("main", 1, 0),)


# ---- generated pods ----------------------------------------------------------------------

QUANTITIES = st.one_of(
    st.sampled_from(sorted(KUBERNETES)),
    st.integers(-3, 1 << 41).map(str),
    st.integers(-3, 200),
    st.text("0123456789.+-eEkKMGTimnu ", max_size=6),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.lists(st.integers(0, 3), max_size=2),
)


@st.composite
def resource_maps(draw: st.DrawFn) -> Any:
    out = {}
    for resource in draw(st.lists(st.sampled_from(RESOURCES), unique=True, max_size=4)):
        out[resource] = draw(QUANTITIES)
    return out


@st.composite
def containers(draw: st.DrawFn) -> Any:
    name = draw(st.sampled_from(["main", "side", "warm", ""]))
    shape = draw(st.sampled_from(["limits", "requests", "both", "same", "junk"]))
    limits, requests = draw(resource_maps()), draw(resource_maps())
    resources: Any = {
        "limits": {"limits": limits},
        "requests": {"requests": requests},
        "both": {"limits": limits, "requests": requests},
        "same": {"limits": limits, "requests": dict(limits)},
        "junk": draw(st.sampled_from([None, [], "x", {"limits": []}, {"requests": "1"}])),
    }[shape]
    return {"name": name, "resources": resources}


ANNOTATIONS = st.dictionaries(
    st.sampled_from(
        ["gpulet.io/topology-policy", "gpulet.io/gpu-policy", "gpulet.io/numa-pin", "other"]
    ),
    st.sampled_from(
        ["best-effort", "restricted", "binpack", "spread", "pack", "true", "false", "yes", ""]
    ),
    max_size=3,
)


@st.composite
def pods(draw: st.DrawFn) -> Any:
    pod = pod_object(
        "p",
        *draw(st.lists(containers(), max_size=3)),
        init=tuple(draw(st.lists(containers(), max_size=2))),
        annotations=draw(ANNOTATIONS),
        uid="uid-p",
    )
    pod["status"] = {"phase": draw(st.sampled_from(["Pending", "Running", None]))}
    junk = draw(st.sampled_from([None, "metadata", "spec", "status", "containers", "item"]))
    if junk in ("metadata", "spec", "status"):
        pod[junk] = draw(st.sampled_from([[], "x", 3]))
    elif junk == "containers":
        pod["spec"]["containers"] = draw(st.sampled_from([{}, "x", 3]))
    elif junk == "item":
        pod["spec"]["containers"].append(draw(st.sampled_from([[], "x", 3, None])))
    return pod


@settings(max_examples=examples(500), deadline=None)
@given(pods())
def test_for_any_pod_the_agent_and_the_extender_agree(pod: Any) -> None:
    assert_agree(pod)


@settings(max_examples=examples(300), deadline=None)
@given(st.sampled_from(sorted(KUBERNETES)), st.sampled_from(sorted(KUBERNETES)))
def test_the_counts_kubelet_allocates_are_what_the_agent_matches(gpus: str, rdma: str) -> None:
    pod = pod_object("p", devices(gpus, rdma))
    want = (KUBERNETES[gpus], KUBERNETES[rdma])
    if None in want:
        with pytest.raises(PodSpecError):
            pod_counts(pod)
        assert pending_pod(pod, NODE) is None
    else:
        assert pod_counts(pod) == (("main", *want),)


# ---- what the agent does with a pod the extender refuses ---------------------------------


def core_with(tmp: Path, pod: dict[str, Any]) -> DevicePluginCore:
    found = pending_pod(pod, NODE)
    cfg = PluginConfig(
        node_name=NODE,
        region_root=tmp / "containers",
        limiter_host_path=tmp / "lib.so",
        preload_host_path=tmp / "preload",
    )
    source = StaticPodSource(() if found is None else (found,))
    return DevicePluginCore(A100, cfg, Ledger(), pods=source)


@pytest.mark.parametrize(
    ("ask", "count", "refusal"),
    [
        pytest.param(
            {"gpus": 1, "memory": "abc"},
            1,
            "pod team/forged container 'main': gpulet.io/gpu-memory must be a whole number "
            "(MiB of each GPU), got 'abc'",
            id="abc-memory",
        ),
        pytest.param(
            {"gpus": 1, "core": 150},
            1,
            "pod team/forged container 'main': gpu-core must be 1-100 (percent of each GPU), "
            "got 150",
            id="core-150",
        ),
        pytest.param(
            {"gpus": "1.5"},
            2,
            "no pod bound to node node-7 waits for 2 gpulet.io/gpu",
            id="1.5-gpus",
        ),
        pytest.param(
            {"gpus": str((1 << 40) + 1)},
            1,
            "no pod bound to node node-7 waits for 1 gpulet.io/gpu",
            id="huge-gpus",
        ),
    ],
)
def test_a_pod_the_extender_refuses_gets_nothing(
    tmp_path: Path, ask: dict[str, Any], count: int, refusal: str
) -> None:
    """Bound by hand with an assignment that would be honoured for a valid pod: every
    Allocate for it is refused, with the extender's reason where the agent can tell the
    Allocate is for it (its counts can be read)."""
    pod = tenant_pod("forged", ask, (GpuShare(G0, 100, MEM),))
    core = core_with(tmp_path, pod)
    with pytest.raises(AllocateError) as refused:
        core.allocate(GPU_RESOURCE, kubelet_ids(GPU_RESOURCE, count))
    assert str(refused.value).startswith(refusal)
    assert core.grants() == ()


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def bound(name: str, *containers: dict[str, Any], **kw: Any) -> dict[str, Any]:
    pod = pod_object(name, *containers, **kw)
    pod["spec"]["nodeName"] = NODE
    pod["status"] = {"phase": "Pending"}
    return pod


def refused_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=pod-refused" in r.getMessage()]


def test_the_watch_logs_a_refused_pod_once_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    """Bound by hand (no scheduler, no extender): pods the extender would refuse. The agent's
    watch shows each, logs one line for each that asks for a gpulet device, and goes on."""
    caplog.set_level(logging.INFO, logger="gpulet.agent")
    bad = bound("bad", container(gpus=1, memory="abc"))
    huge = bound("huge", container(gpus=str(1 << 41)))
    junk = bound("junk", container(gpus=1))
    junk["metadata"]["annotations"] = ["not", "an", "object"]
    cpu = bound("cpu", container(), annotations={"gpulet.io/gpu-policy": "pack"})
    good = bound("good", container(gpus=1))
    with ApiServerStandIn() as api:
        core = CoreCalls(client.ApiClient(api.configuration()))
        source = ApiPodSource(core, NODE, watch_timeout_s=5)
        source.start()
        try:
            assert source.wait_ready(10)
            uid = {
                p["metadata"]["name"]: api.create_pod(p)["metadata"]["uid"]
                for p in (bad, huge, junk, cpu, good)
            }
            wait_for(lambda: source.pod(uid["good"]) is not None)
            # A second event for the same pod, and a catch-up that lists it: no second line.
            again = api.get_pod("default", "bad")
            assert again is not None
            again["metadata"]["labels"] = {"touched": "yes"}
            api.update_pod(again)
            wait_for(lambda: bool((source.pod(uid["bad"]) or {})["metadata"].get("labels")))
            source.refresh()
            pending = {p.ref: p for p in source.pending_pods()}
        finally:
            source.stop()
    assert set(pending) == {"default/bad", "default/junk", "default/good"}
    assert pending["default/good"].problem is None
    assert pending["default/bad"].problem and pending["default/junk"].problem
    assert sorted(refused_lines(caplog)) == [
        f"event=pod-refused pod=default/bad pod_uid={uid['bad']} matched=true "
        "reason=\"pod default/bad container 'main': gpulet.io/gpu-memory must be a whole "
        "number (MiB of each GPU), got 'abc'\"",
        f"event=pod-refused pod=default/huge pod_uid={uid['huge']} matched=false "
        "reason=\"pod default/huge container 'main': gpulet.io/gpu must be a whole number, "
        "got '2199023255552'\"",
        f"event=pod-refused pod=default/junk pod_uid={uid['junk']} matched=true "
        "reason='metadata.annotations must be a JSON object, got list'",
    ]
    assert not [r for r in caplog.records if "sync-error" in r.getMessage()]


def test_a_pod_that_breaks_the_reader_does_not_stop_the_watch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Were reading a pod to raise other than PodSpecError (a bug), the watch's callback
    logs it and keeps the pod; the watch goes on."""

    def broken(pod: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr("agent.kube.pod_ask", broken)
    source = ApiPodSource(CoreCalls(client.ApiClient(client.Configuration())), NODE)
    source._apply("ADDED", bound("p", container(gpus=1)) | {"metadata": {"uid": "u"}})
    assert source.pod("u") is not None
    assert any("event=pod-unreadable error='a bug'" in r.getMessage() for r in caplog.records)
