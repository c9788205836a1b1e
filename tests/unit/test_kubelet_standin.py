"""The kubelet stand-in against a small test-only device plugin, over real unix sockets."""

from __future__ import annotations

import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import grpc
import pytest

from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.api import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from deviceplugin.api import podresources_v1_pb2 as pr
from deviceplugin.api import podresources_v1_pb2_grpc as pr_grpc
from gpulet.standins.kubelet import (
    CHECKPOINT_FILE,
    HEALTHY,
    KUBELET_ERROR_CODE,
    UNHEALTHY,
    VERSION,
    AllocateFailed,
    Device,
    KubeletStandIn,
    PluginOptions,
    PodRef,
    PreStartFailed,
    StandInError,
    StandInView,
    choose_devices,
    is_extended_resource_name,
)

RESOURCE = "example.com/gpu"
WAIT_S = 5.0
POD_A = PodRef("uid-a", "default", "pod-a")
POD_B = PodRef("uid-b", "team", "pod-b")

Preference = Callable[[Sequence[str], int], list[str]]


def highest(available: Sequence[str], size: int) -> list[str]:
    return sorted(available, reverse=True)[:size]


def fake_devices(count: int = 4) -> list[pb.Device]:
    """dev-0..dev-N, two to a NUMA node."""
    return [
        pb.Device(
            ID=f"dev-{i}",
            health=HEALTHY,
            topology=pb.TopologyInfo(nodes=[pb.NUMANode(ID=i // 2)]),
        )
        for i in range(count)
    ]


class FakePlugin(pb_grpc.DevicePluginServicer):
    """A test-only device plugin on `socket`: prefers the highest IDs, answers Allocate with
    one DeviceSpec per ID and an env var, rejects unknown IDs, and records every request."""

    def __init__(self, socket: Path, *, pre_start: bool = False) -> None:
        self.socket = socket
        self.options = pb.DevicePluginOptions(
            pre_start_required=pre_start, get_preferred_allocation_available=True
        )
        self.prefer: Preference = highest
        self.allocate_error: tuple[grpc.StatusCode, str] | None = None
        self.pre_start_error: tuple[grpc.StatusCode, str] | None = None
        self.options_calls = 0
        self.preferred_requests: list[pb.PreferredAllocationRequest] = []
        self.allocate_requests: list[pb.AllocateRequest] = []
        self.pre_start_requests: list[pb.PreStartContainerRequest] = []
        self.streams_ended = 0
        self._devices = fake_devices()
        self._version = 0
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None

    def serve(self) -> None:
        server = grpc.server(ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_DevicePluginServicer_to_server(self, server)
        server.add_insecure_port(f"unix:{self.socket}")
        server.start()
        self._server = server

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None

    def update(self, devices: list[pb.Device]) -> None:
        """Sends `devices` on every open ListAndWatch stream."""
        with self._cond:
            self._devices = devices
            self._version += 1
            self._cond.notify_all()

    def wait_streams_ended(self, count: int) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.streams_ended >= count, WAIT_S)

    def _should_wake(self, sent: int, context: grpc.ServicerContext) -> bool:
        return self._version != sent or not context.is_active()

    def _stream_ended(self) -> None:
        with self._cond:
            self.streams_ended += 1
            self._cond.notify_all()

    def GetDevicePluginOptions(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> pb.DevicePluginOptions:
        self.options_calls += 1
        return self.options

    def ListAndWatch(
        self, request: pb.Empty, context: grpc.ServicerContext
    ) -> Iterator[pb.ListAndWatchResponse]:
        context.add_callback(self._stream_ended)
        sent = -1
        while True:
            with self._cond:
                self._cond.wait_for(partial(self._should_wake, sent, context))
                if not context.is_active():
                    return
                sent, devices = self._version, list(self._devices)
            yield pb.ListAndWatchResponse(devices=devices)

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: grpc.ServicerContext
    ) -> pb.PreferredAllocationResponse:
        self.preferred_requests.append(request)
        return pb.PreferredAllocationResponse(
            container_responses=[
                pb.ContainerPreferredAllocationResponse(
                    deviceIDs=self.prefer(r.available_deviceIDs, r.allocation_size)
                )
                for r in request.container_requests
            ]
        )

    def Allocate(
        self, request: pb.AllocateRequest, context: grpc.ServicerContext
    ) -> pb.AllocateResponse:
        self.allocate_requests.append(request)
        if self.allocate_error is not None:
            context.abort(*self.allocate_error)
        known = {d.ID for d in self._devices}
        responses = []
        for r in request.container_requests:
            unknown = sorted(set(r.devices_ids) - known)
            if unknown:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unknown devices {unknown}")
            responses.append(
                pb.ContainerAllocateResponse(
                    envs={"FAKE_VISIBLE_DEVICES": ",".join(r.devices_ids)},
                    devices=[
                        pb.DeviceSpec(
                            container_path=f"/dev/{i}", host_path=f"/dev/{i}", permissions="rw"
                        )
                        for i in r.devices_ids
                    ],
                )
            )
        return pb.AllocateResponse(container_responses=responses)

    def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: grpc.ServicerContext
    ) -> pb.PreStartContainerResponse:
        self.pre_start_requests.append(request)
        if self.pre_start_error is not None:
            context.abort(*self.pre_start_error)
        return pb.PreStartContainerResponse()


# ---- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """pytest's tmp_path can push a unix socket path past its 107-byte limit: use /tmp/klXXX."""
    path = Path(tempfile.mkdtemp(prefix="kl"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(short_dir: Path) -> Iterator[KubeletStandIn]:
    with KubeletStandIn(short_dir / "dp", short_dir / "pr", dial_timeout=0.5) as standin:
        yield standin


@pytest.fixture
def plugin(kubelet: KubeletStandIn) -> Iterator[FakePlugin]:
    fake = FakePlugin(kubelet.plugin_dir / "fake.sock")
    fake.serve()
    yield fake
    fake.stop()


def register(
    kubelet: KubeletStandIn,
    endpoint: str,
    *,
    resource: str = RESOURCE,
    version: str = VERSION,
    options: pb.DevicePluginOptions | None = None,
) -> None:
    with grpc.insecure_channel(f"unix:{kubelet.socket_path}") as channel:
        pb_grpc.RegistrationStub(channel).Register(
            pb.RegisterRequest(
                version=version, endpoint=endpoint, resource_name=resource, options=options
            ),
            timeout=WAIT_S,
        )


def has_devices(count: int, messages: int = 1) -> Callable[[StandInView], bool]:
    return lambda v: len(v.devices(RESOURCE)) == count and v.messages(RESOURCE) >= messages


@pytest.fixture
def registered(kubelet: KubeletStandIn, plugin: FakePlugin) -> FakePlugin:
    register(kubelet, plugin.socket.name, options=plugin.options)
    assert kubelet.wait_for(has_devices(4), WAIT_S)
    return plugin


# ---- registration ---------------------------------------------------------------------------


def test_registration_round_trip(kubelet: KubeletStandIn, registered: FakePlugin) -> None:
    assert kubelet.resources() == [RESOURCE]
    [record] = kubelet.registrations(RESOURCE)
    assert (record.version, record.endpoint, record.resource_name) == (
        VERSION,
        "fake.sock",
        RESOURCE,
    )
    assert record.options == record.plugin_options == PluginOptions(False, True)
    assert registered.options_calls == 1
    assert kubelet.messages(RESOURCE) == 1
    assert kubelet.devices(RESOURCE) == {
        f"dev-{i}": Device(f"dev-{i}", HEALTHY, (i // 2,)) for i in range(4)
    }
    # The files a real kubelet keeps beside its socket.
    assert (kubelet.plugin_dir / CHECKPOINT_FILE).is_file()
    assert (kubelet.plugin_dir / "DEPRECATION").is_file()


@pytest.mark.parametrize(
    ("version", "resource", "message"),
    [
        ("v1alpha", RESOURCE, 'requested API version "v1alpha" is not supported by kubelet'),
        (VERSION, "gpu", 'the ResourceName "gpu" is invalid'),
        (VERSION, "kubernetes.io/gpu", "is invalid"),
        (VERSION, "example.com/gpu_", "is invalid"),
        (VERSION, "example.com/a/b", "is invalid"),
    ],
)
def test_register_rejected(
    kubelet: KubeletStandIn, plugin: FakePlugin, version: str, resource: str, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        register(kubelet, plugin.socket.name, resource=resource, version=version)
    assert caught.value.code() == KUBELET_ERROR_CODE
    assert message in (caught.value.details() or "")
    assert plugin.options_calls == 0
    assert kubelet.resources() == []


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("example.com/gpu", True),
        ("gpulet.io/gpu-memory.mib", True),
        ("gpu", False),
        ("example.com/", False),
        ("/gpu", False),
        ("Example.com/gpu", False),
        ("foo.kubernetes.io/gpu", False),
        ("requests.example.com/gpu", False),
        ("example.com/" + "g" * 64, False),
    ],
)
def test_extended_resource_names(name: str, valid: bool) -> None:
    assert is_extended_resource_name(name) is valid


def test_register_before_the_plugin_serves_fails(kubelet: KubeletStandIn) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        register(kubelet, "absent.sock")
    assert caught.value.code() == KUBELET_ERROR_CODE
    assert "failed to dial device plugin" in (caught.value.details() or "")
    assert kubelet.resources() == []


def test_reregistration_replaces_the_stream(
    kubelet: KubeletStandIn, registered: FakePlugin
) -> None:
    register(kubelet, registered.socket.name)
    assert registered.wait_streams_ended(1)  # kubelet cancelled the first stream
    assert kubelet.wait_for(lambda v: v.messages(RESOURCE) == 1, WAIT_S)
    assert len(kubelet.registrations(RESOURCE)) == 2
    assert kubelet.stream_end(RESOURCE) is None
    assert all(d.healthy for d in kubelet.devices(RESOURCE).values())


# ---- ListAndWatch ---------------------------------------------------------------------------


def test_device_update_is_seen(kubelet: KubeletStandIn, registered: FakePlugin) -> None:
    devices = fake_devices()
    devices[1].health = UNHEALTHY
    registered.update(devices)
    assert kubelet.wait_for(
        lambda v: v.messages(RESOURCE) == 2 and not v.devices(RESOURCE)["dev-1"].healthy, WAIT_S
    )
    registered.update(fake_devices(2))  # a message replaces the whole set
    assert kubelet.wait_for(has_devices(2, messages=3), WAIT_S)
    assert sorted(kubelet.devices(RESOURCE)) == ["dev-0", "dev-1"]


def test_stream_end_leaves_devices_unhealthy(
    kubelet: KubeletStandIn, registered: FakePlugin
) -> None:
    registered.stop()
    assert kubelet.wait_for(lambda v: v.resources[RESOURCE].stream_end is not None, WAIT_S)
    assert kubelet.resources() == [RESOURCE]  # capacity stays, allocatable drops to 0
    assert {d.health for d in kubelet.devices(RESOURCE).values()} == {UNHEALTHY}
    with pytest.raises(StandInError, match="no healthy devices"):
        kubelet.allocate(POD_A, "main", RESOURCE, 1)


# ---- allocation -----------------------------------------------------------------------------


def test_allocate_follows_the_preference_and_never_shares(
    kubelet: KubeletStandIn, registered: FakePlugin
) -> None:
    response = kubelet.allocate(POD_A, "main", RESOURCE, 2)
    [asked] = registered.preferred_requests[0].container_requests
    assert list(asked.available_deviceIDs) == ["dev-0", "dev-1", "dev-2", "dev-3"]
    assert (list(asked.must_include_deviceIDs), asked.allocation_size) == ([], 2)
    [sent] = registered.allocate_requests[0].container_requests
    assert sorted(sent.devices_ids) == ["dev-2", "dev-3"]
    [answer] = response.container_responses
    assert len(answer.devices) == 2 and "FAKE_VISIBLE_DEVICES" in answer.envs

    kubelet.allocate(POD_B, "main", RESOURCE, 2)
    [asked] = registered.preferred_requests[1].container_requests
    assert list(asked.available_deviceIDs) == ["dev-0", "dev-1"]
    first, second = kubelet.allocations()
    assert set(first.device_ids) == {"dev-2", "dev-3"}
    assert set(second.device_ids) == {"dev-0", "dev-1"}
    assert first.pod == POD_A and first.devices[0].numa_nodes == (1,)

    with pytest.raises(StandInError, match="insufficient"):
        kubelet.allocate(POD_B, "sidecar", RESOURCE, 1)
    assert len(registered.allocate_requests) == 2


def test_an_init_containers_devices_are_reused_as_kubelet_reuses_them(
    kubelet: KubeletStandIn, registered: FakePlugin
) -> None:
    """devicesToAllocate: the pod's next containers take what its init containers got first;
    when that is enough the plugin is not asked, else it is asked with them as
    must_include_deviceIDs; an app container's devices are not reusable after it."""
    kubelet.allocate(POD_A, "init", RESOURCE, 1, init=True)
    (init_ids,) = (r.device_ids for r in kubelet.allocations())
    asked_before = len(registered.preferred_requests)
    kubelet.allocate(POD_A, "main", RESOURCE, 1)
    assert len(registered.preferred_requests) == asked_before  # enough: no preference asked
    kubelet.allocate(POD_A, "second-init", RESOURCE, 2, init=True)
    [asked] = registered.preferred_requests[-1].container_requests
    assert list(asked.must_include_deviceIDs) == []  # the app container took the reused one
    second_init = kubelet.allocations()[-1].device_ids
    kubelet.allocate(POD_A, "big", RESOURCE, 3)
    [asked] = registered.preferred_requests[-1].container_requests
    assert sorted(asked.must_include_deviceIDs) == sorted(second_init)
    assert set(second_init) <= set(asked.available_deviceIDs)
    assert asked.allocation_size == 3
    init, main, _, big = kubelet.allocations()
    assert main.device_ids == init.device_ids == init_ids
    assert set(second_init) < set(big.device_ids)


def test_shortfall_is_filled_and_unknown_preferences_ignored(
    kubelet: KubeletStandIn, registered: FakePlugin
) -> None:
    registered.prefer = lambda available, size: ["bogus", "dev-2"]
    kubelet.allocate(POD_A, "main", RESOURCE, 3)
    [record] = kubelet.allocations()
    assert record.device_ids == ("dev-2", "dev-0", "dev-1")
    assert choose_devices({"a", "b"}, ["b", "b", "x"], 1) == ["b"]


def test_a_restarted_container_keeps_its_devices(
    kubelet: KubeletStandIn, registered: FakePlugin
) -> None:
    first = kubelet.allocate(POD_A, "main", RESOURCE, 2)
    assert kubelet.allocate(POD_A, "main", RESOURCE, 2) == first
    assert len(registered.allocate_requests) == 1
    with pytest.raises(StandInError, match="changed request"):
        kubelet.allocate(POD_A, "main", RESOURCE, 3)


def test_allocate_error_records_nothing(kubelet: KubeletStandIn, registered: FakePlugin) -> None:
    registered.allocate_error = (grpc.StatusCode.RESOURCE_EXHAUSTED, "no memory left")
    with pytest.raises(AllocateFailed) as caught:
        kubelet.allocate(POD_A, "main", RESOURCE, 1)
    assert (caught.value.stage, caught.value.code, caught.value.details) == (
        "Allocate",
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "no memory left",
    )
    assert kubelet.allocations() == []

    registered.allocate_error = None
    with pytest.raises(AllocateFailed) as caught:
        kubelet.allocate_ids(POD_A, "main", RESOURCE, ["dev-0", "dev-9"])
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert kubelet.allocations() == []

    def broken(available: Sequence[str], size: int) -> list[str]:
        raise RuntimeError("no preference today")

    registered.prefer = broken
    with pytest.raises(AllocateFailed) as caught:
        kubelet.allocate(POD_A, "main", RESOURCE, 1)
    assert (caught.value.stage, caught.value.code) == (
        "GetPreferredAllocation",
        grpc.StatusCode.UNKNOWN,
    )
    assert kubelet.allocations() == []
    registered.prefer = highest
    assert kubelet.allocate(POD_A, "main", RESOURCE, 4).container_responses


def test_pre_start_container_when_required(kubelet: KubeletStandIn) -> None:
    plugin = FakePlugin(kubelet.plugin_dir / "pre.sock", pre_start=True)
    plugin.serve()
    try:
        register(kubelet, "pre.sock")  # no options in the request: kubelet asks the plugin
        assert kubelet.wait_for(has_devices(4), WAIT_S)
        [record] = kubelet.registrations(RESOURCE)
        assert record.options == PluginOptions()
        assert record.plugin_options == PluginOptions(True, True)
        kubelet.allocate(POD_A, "main", RESOURCE, 1)
        [request] = plugin.pre_start_requests
        assert list(request.devices_ids) == ["dev-3"]

        plugin.pre_start_error = (grpc.StatusCode.UNAVAILABLE, "driver not ready")
        with pytest.raises(PreStartFailed, match="driver not ready"):
            kubelet.allocate(POD_B, "main", RESOURCE, 1)
        assert len(kubelet.allocations()) == 2  # admitted; only the container start failed
    finally:
        plugin.stop()


# ---- restart --------------------------------------------------------------------------------


def test_restart_wipes_sockets_and_accepts_reregistration(
    kubelet: KubeletStandIn, registered: FakePlugin
) -> None:
    kubelet.allocate(POD_A, "main", RESOURCE, 1)
    since = kubelet.restart()
    assert not registered.socket.exists()
    assert kubelet.socket_path.is_socket()
    assert (kubelet.plugin_dir / CHECKPOINT_FILE).is_file()
    assert registered.wait_streams_ended(1)
    assert kubelet.resources() == []
    assert len(kubelet.allocations()) == 1  # the checkpoint survives
    assert not kubelet.registered_since(RESOURCE, since)

    registered.stop()
    registered.serve()
    register(kubelet, registered.socket.name)
    assert kubelet.registered_since(RESOURCE, since)
    assert kubelet.wait_for(has_devices(4), WAIT_S)
    with pytest.raises(StandInError, match="insufficient"):
        kubelet.allocate(POD_B, "main", RESOURCE, 4)  # dev-3 is still held by pod-a


# ---- pod resources --------------------------------------------------------------------------


def device_ids(devices: Sequence[pr.ContainerDevices]) -> list[str]:
    return sorted(i for d in devices for i in d.device_ids)


def test_pod_resources(kubelet: KubeletStandIn, registered: FakePlugin) -> None:
    kubelet.allocate(POD_A, "main", RESOURCE, 2)
    kubelet.allocate(POD_A, "sidecar", RESOURCE, 1)
    kubelet.allocate(POD_B, "main", RESOURCE, 1)
    assert kubelet.pod_resources_socket is not None
    with grpc.insecure_channel(f"unix:{kubelet.pod_resources_socket}") as channel:
        lister = pr_grpc.PodResourcesListerStub(channel)
        listed = lister.List(pr.ListPodResourcesRequest(), timeout=WAIT_S).pod_resources
        assert [(p.namespace, p.name) for p in listed] == [("default", "pod-a"), ("team", "pod-b")]
        main, sidecar = listed[0].containers
        assert (main.name, device_ids(main.devices)) == ("main", ["dev-2", "dev-3"])
        assert (sidecar.name, device_ids(sidecar.devices)) == ("sidecar", ["dev-1"])
        assert {d.resource_name for d in main.devices} == {RESOURCE}
        assert [n.ID for d in main.devices for n in d.topology.nodes] == [1, 1]

        got = lister.Get(
            pr.GetPodResourcesRequest(pod_name="pod-b", pod_namespace="team"), timeout=WAIT_S
        )
        assert device_ids(got.pod_resources.containers[0].devices) == ["dev-0"]
        with pytest.raises(grpc.RpcError) as caught:
            lister.Get(pr.GetPodResourcesRequest(pod_name="nope", pod_namespace="team"))
        assert caught.value.code() == KUBELET_ERROR_CODE
        assert "not found" in (caught.value.details() or "")

        allocatable = lister.GetAllocatableResources(pr.AllocatableResourcesRequest())
        assert device_ids(allocatable.devices) == ["dev-0", "dev-1", "dev-2", "dev-3"]
        assert sorted(n.ID for d in allocatable.devices for n in d.topology.nodes) == [0, 0, 1, 1]

    assert kubelet.release(POD_A.uid) == 2
    kubelet.restart(gap=0.0)
    with grpc.insecure_channel(f"unix:{kubelet.pod_resources_socket}") as channel:
        lister = pr_grpc.PodResourcesListerStub(channel)
        listed = lister.List(pr.ListPodResourcesRequest(), timeout=WAIT_S).pod_resources
        assert [p.name for p in listed] == ["pod-b"]
        allocatable = lister.GetAllocatableResources(pr.AllocatableResourcesRequest())
        assert list(allocatable.devices) == []  # forgotten until the plugin registers again
