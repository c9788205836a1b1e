"""A tenant, root in its own container, writes into its region while the agent reads it.

The agent here is the real one (its monitor, its /metrics), with the API server and kubelet
stand-ins around it and `--enforce` on. Before the region was read as untrusted input, the
writes below crashed the agent (`devices` past the 16-entry array), hung it (a scribbled
mutex), or stopped it reporting a neighbour that was over its cap."""

from __future__ import annotations

import mmap
import signal
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpulet.standins.objects import container, pod_object
from tests.unit import test_agent_path as path

cluster = path.cluster

#: Offsets in struct gpulet_region (native/limiter/region.h): after magic, version, size.
DEVICES_AT = 16
LOCK_AT = 24
#: device 0's `pace_ns` (dev[] starts at 96; uuid 64, memory 8, core 4, util 4, stamp 8).
PACE_AT = 96 + 88


def admitted(c: path.Cluster, name: str) -> dict[str, Any]:
    """A 30% / 4,096 MiB slice, placed by the extender and allocated by kubelet."""
    pod = path.schedule(c, pod_object(name, container("main", gpus=1, core=30, memory=4096)))
    path.admit(c, pod)
    return pod


def region_file(c: path.Cluster, uid: str) -> Path:
    (grant,) = [g for g in c.agent.core.grants() if g.pod_uid == uid]
    assert grant.region_dir is not None
    return Path(grant.region_dir) / "region"


def scribble(region: Path, writes: list[tuple[int, bytes]]) -> None:
    """What a process in the container can do: map its region and write anything."""
    with region.open("r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        for at, data in writes:
            m[at : at + len(data)] = data


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Stand-ins for the containers' GPU processes: real processes the agent can kill."""
    started = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    yield started
    for p in started:
        p.kill()
        p.wait()


@pytest.mark.parametrize(
    ("writes", "untrusted"),
    [
        pytest.param([(DEVICES_AT, struct.pack("<I", 300))], True, id="devices-300"),
        pytest.param([(DEVICES_AT, struct.pack("<I", 100000))], True, id="devices-100000"),
        pytest.param([(DEVICES_AT, struct.pack("<I", 17))], True, id="devices-17"),
        # The agent never takes the lock, so a scribbled mutex only hangs the tenant's own
        # processes (the limiter's): nothing the agent reads is wrong, nothing is reported.
        pytest.param([(LOCK_AT, b"\xff\xff\xff\x7f")], False, id="mutex"),
        pytest.param(
            [(DEVICES_AT, struct.pack("<I", 300)), (LOCK_AT, b"\x01\x00\x00\x00" * 4)],
            True,
            id="both",
        ),
    ],
)
def test_a_tampered_region_neither_crashes_nor_blinds_the_agent(
    cluster: path.Cluster,
    sleepers: list[subprocess.Popen[bytes]],
    writes: list[tuple[int, bytes]],
    untrusted: bool,
) -> None:
    tenant, neighbour = (admitted(cluster, n) for n in ("tenant", "neighbour"))
    tenant_uid, neighbour_uid = (p["metadata"]["uid"] for p in (tenant, neighbour))
    scribble(region_file(cluster, tenant_uid), writes)
    mine, theirs = sleepers
    cluster.place(tenant, "main", mine.pid)
    cluster.place(neighbour, "main", theirs.pid)
    # The tenant stays under its cap by NVML's count; the neighbour got around its limiter.
    cluster.nvml_shows(
        (mine.pid, path.assigned(tenant).gpus[0].uuid, 1000),
        (theirs.pid, path.assigned(neighbour).gpus[0].uuid, 9000),
    )

    # Not blind: the neighbour over its cap is still caught, and killed.
    assert theirs.wait(timeout=10) == -signal.SIGKILL
    tenant_untrusted = {"pod_uid": tenant_uid, "container": "main"}
    if untrusted:
        # The tenant's region is reported and treated as over its cap: killed too.
        assert mine.wait(timeout=10) == -signal.SIGKILL
        path.wait_for(
            lambda: cluster.value("gpulet_container_region_untrusted", **tenant_untrusted) == 1
        )
        path.wait_for(lambda: len(cluster.api.events()) >= 2)
    else:
        path.wait_for(lambda: len(cluster.api.events()) >= 1)
        assert mine.poll() is None
        assert cluster.value("gpulet_container_region_untrusted", **tenant_untrusted) == 0
    reasons = {e["involvedObject"]["uid"]: e["reason"] for e in cluster.api.events()}
    expected = {neighbour_uid: "GPUMemoryOverCap"}
    if untrusted:
        expected[tenant_uid] = "GPURegionUntrusted"
    assert reasons == expected
    # Neither crashed nor hung: the monitor thread goes on, and /metrics answers.
    monitor = [t for t in threading.enumerate() if "monitor" in t.name]
    assert monitor and all(t.is_alive() for t in monitor)
    assert "gpulet_container_memory_used_bytes" in cluster.metrics()
    assert neighbour_uid in cluster.metrics()


def test_a_tenant_zeroing_its_charges_is_still_held_to_its_cap(
    cluster: path.Cluster, sleepers: list[subprocess.Popen[bytes]]
) -> None:
    """Zeroed slot charges make the region say the container uses nothing; NVML says 4,500
    MiB of a 4,096 MiB cap, and NVML is what the agent believes."""
    tenant = admitted(cluster, "tenant")
    region = region_file(cluster, tenant["metadata"]["uid"])
    scribble(region, [(PACE_AT, bytes(16))])  # and its pacing clock, for good measure
    mine = sleepers[0]
    cluster.run_in(tenant, "main", mine.pid, path.assigned(tenant).gpus[0].uuid, 4500)
    assert mine.wait(timeout=10) == -signal.SIGKILL
    path.wait_for(lambda: bool(cluster.api.events()))
    assert cluster.api.events()[0]["reason"] == "GPUMemoryOverCap"
