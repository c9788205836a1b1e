"""The DevicePlugin servicer (`PluginServer`) on its own: its methods called directly, with
no gRPC server and no socket, against a fake core that implements `PluginCore`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import grpc
import pytest

from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.container import ContainerView, DeviceNode, MountSpec
from deviceplugin.decisions import AllocateError
from deviceplugin.inventory import Advertised
from deviceplugin.resources import GPU_RESOURCE
from deviceplugin.server import HEALTHY, UNHEALTHY, PluginCore, PluginServer


class FakeCore:
    """Answers from what the test sets; records what it was asked."""

    def __init__(self) -> None:
        self.listed: list[Advertised] = []
        self.preferences: dict[tuple[str, ...], list[str] | AllocateError] = {}
        self.views: dict[tuple[str, ...], ContainerView | AllocateError] = {}
        self.asked: list[tuple[str, tuple[str, ...]]] = []

    def devices(self, resource: str) -> list[Advertised]:
        return list(self.listed)

    def preferred(
        self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        self.asked.append((resource, tuple(available)))
        answer = self.preferences[tuple(available)]
        if isinstance(answer, AllocateError):
            raise answer
        return [*must_include, *answer][:size]

    def allocate(self, resource: str, device_ids: Sequence[str]) -> ContainerView:
        self.asked.append((resource, tuple(device_ids)))
        answer = self.views[tuple(device_ids)]
        if isinstance(answer, AllocateError):
            raise answer
        return answer


class Aborted(Exception):
    """What `context.abort` raises (gRPC raises an exception of its own there)."""


class FakeContext:
    """The parts of a `grpc.ServicerContext` the servicer uses."""

    def __init__(self) -> None:
        self.active = True
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def is_active(self) -> bool:
        return self.active

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise Aborted(details)


def servicer(core: FakeCore) -> tuple[PluginServer, FakeContext]:
    plugin: PluginCore = core  # the fake implements the protocol (mypy checks it here)
    return PluginServer(plugin, GPU_RESOURCE, Path("/nonexistent"), "t.sock"), FakeContext()


def ctx(context: FakeContext) -> grpc.ServicerContext:
    return cast(grpc.ServicerContext, context)


VIEW_A = ContainerView(
    devices=(
        DeviceNode("/dev/nvidia0", "/sim/dev/nvidia0", "rw"),
        DeviceNode("/dev/nvidiactl", "/sim/dev/nvidiactl", "rw"),
    ),
    envs={"NVIDIA_VISIBLE_DEVICES": "GPU-a", "GPULET_REGION_DIR": "/run/gpulet"},
    mounts=(
        MountSpec("/run/gpulet", "/regions/u/main", read_only=False),
        MountSpec("/run/gpulet/limits", "/regions/u/main/limits", read_only=True),
    ),
)
VIEW_B = ContainerView(devices=(), envs={"NCCL_IB_HCA": "=mlx5_0"}, mounts=())


def allocate_request(*containers: Sequence[str]) -> pb.AllocateRequest:
    return pb.AllocateRequest(
        container_requests=[pb.ContainerAllocateRequest(devices_ids=list(c)) for c in containers]
    )


# ---- Allocate ----------------------------------------------------------------------------------


def test_allocate_maps_each_view_to_its_container_response() -> None:
    core = FakeCore()
    core.views = {("a::00",): VIEW_A, ("b::00", "b::01"): VIEW_B}
    server, context = servicer(core)
    got = server.Allocate(allocate_request(["a::00"], ["b::00", "b::01"]), ctx(context))
    assert core.asked == [(GPU_RESOURCE, ("a::00",)), (GPU_RESOURCE, ("b::00", "b::01"))]
    first, second = got.container_responses
    assert dict(first.envs) == dict(VIEW_A.envs)
    assert [(d.container_path, d.host_path, d.permissions) for d in first.devices] == [
        ("/dev/nvidia0", "/sim/dev/nvidia0", "rw"),
        ("/dev/nvidiactl", "/sim/dev/nvidiactl", "rw"),
    ]
    assert [(m.container_path, m.host_path, m.read_only) for m in first.mounts] == [
        ("/run/gpulet", "/regions/u/main", False),
        ("/run/gpulet/limits", "/regions/u/main/limits", True),
    ]
    assert dict(second.envs) == {"NCCL_IB_HCA": "=mlx5_0"}
    assert (list(second.devices), list(second.mounts)) == ([], [])
    assert context.aborted is None


def test_a_refused_allocate_aborts_with_failed_precondition_and_why() -> None:
    core = FakeCore()
    core.views = {("a::00",): VIEW_A, ("b::00",): AllocateError("GPU1 is held whole by x")}
    server, context = servicer(core)
    with pytest.raises(Aborted):
        server.Allocate(allocate_request(["a::00"], ["b::00"]), ctx(context))
    assert context.aborted == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "gpulet: GPU1 is held whole by x",
    )


# ---- GetPreferredAllocation --------------------------------------------------------------------


def preference_request(
    *asks: tuple[Sequence[str], Sequence[str], int],
) -> pb.PreferredAllocationRequest:
    return pb.PreferredAllocationRequest(
        container_requests=[
            pb.ContainerPreferredAllocationRequest(
                available_deviceIDs=list(available),
                must_include_deviceIDs=list(must),
                allocation_size=size,
            )
            for available, must, size in asks
        ]
    )


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(["a::00", "b::00"], ["m::00", "a::00"], id="preference"),
        pytest.param(AllocateError("cannot tell which pod"), [], id="refused-is-no-preference"),
    ],
)
def test_preferred_allocation(answer: list[str] | AllocateError, expected: list[str]) -> None:
    core = FakeCore()
    core.preferences = {("a::00", "b::00"): answer, ("c::00",): ["c::00"]}
    server, context = servicer(core)
    got = server.GetPreferredAllocation(
        preference_request((["a::00", "b::00"], ["m::00"], 2), (["c::00"], [], 1)), ctx(context)
    )
    assert [list(r.deviceIDs) for r in got.container_responses] == [expected, ["c::00"]]
    assert context.aborted is None


def test_options_and_pre_start() -> None:
    server, context = servicer(FakeCore())
    options = server.GetDevicePluginOptions(pb.Empty(), ctx(context))
    assert options.get_preferred_allocation_available and not options.pre_start_required
    assert server.PreStartContainer(pb.PreStartContainerRequest(), ctx(context)) == (
        pb.PreStartContainerResponse()
    )


# ---- ListAndWatch ------------------------------------------------------------------------------


def listed(response: pb.ListAndWatchResponse) -> list[tuple[str, str, list[int] | None]]:
    return [
        (
            d.ID,
            d.health,
            [n.ID for n in d.topology.nodes] if d.HasField("topology") else None,
        )
        for d in response.devices
    ]


def test_list_and_watch_sends_the_list_and_resends_it_when_changed() -> None:
    core = FakeCore()
    core.listed = [Advertised("a::00", True, 0), Advertised("a::01", True, 0)]
    server, context = servicer(core)
    stream: Iterator[pb.ListAndWatchResponse] = server.ListAndWatch(pb.Empty(), ctx(context))
    assert listed(next(stream)) == [("a::00", HEALTHY, [0]), ("a::01", HEALTHY, [0])]

    core.listed = [Advertised("a::00", False, 0), Advertised("b::00", True, None)]
    server.changed()
    assert listed(next(stream)) == [("a::00", UNHEALTHY, [0]), ("b::00", HEALTHY, None)]

    server.stop()  # never served: only the open streams end
    assert next(stream, None) is None


def test_list_and_watch_ends_when_kubelet_goes_away() -> None:
    core = FakeCore()
    core.listed = [Advertised("a::00", True, 1)]
    server, context = servicer(core)
    stream = server.ListAndWatch(pb.Empty(), ctx(context))
    assert listed(next(stream)) == [("a::00", HEALTHY, [1])]
    context.active = False
    server.changed()
    assert next(stream, None) is None
