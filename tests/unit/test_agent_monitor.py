"""The monitor's check for processes on a slice that run without the limiter: a real region,
a /proc under a temp root, NVML's list from a fake, and a clock the test moves."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.cgroups import ProcessTable
from agent.monitor import UNLIMITED_AFTER_S, Monitor
from agent.usage import ProcessUsage
from deviceplugin.grants import GpuShare, Grant
from gpulet.api.resources import GPU_RESOURCE
from native.region import DeviceLimit, Limits, Region, setup

UID = "0c9d4f6e-1111-4222-8333-444455556666"
CID = "ab" * 32
GPU = "GPU-11111111-2222-3333-4444-555555555555"


class Usage:
    def __init__(self) -> None:
        self.processes: list[ProcessUsage] = []

    def sample(self) -> list[ProcessUsage]:
        return list(self.processes)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def region_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "region"
    setup(directory, Limits((DeviceLimit(GPU, 4096, 30),)))
    return directory


def run_in_container(proc: Path, host_pid: int, own_pid: int) -> None:
    """Process `host_pid` runs in the container, as pid `own_pid` inside it."""
    here = proc / str(host_pid)
    here.mkdir(parents=True)
    pod_slice = f"kubepods-burstable-pod{UID.replace('-', '_')}.slice"
    (here / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-burstable.slice/{pod_slice}/cri-containerd-{CID}.scope\n"
    )
    (here / "status").write_text(f"Name:\tpython3\nNSpid:\t{host_pid}\t{own_pid}\n")


def monitor(
    tmp_path: Path, region_dir: Path, usage: Usage, clock: Clock, exclusive: bool = False
) -> Monitor:
    share = GpuShare(GPU, 0, 100 if exclusive else 30, 4096, exclusive)
    grant = Grant(GPU_RESOURCE, ("x::00",), (share,), (), UID, "main", str(region_dir))
    pod = {
        "metadata": {"uid": UID, "name": "p", "namespace": "default"},
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": "main", "containerID": f"containerd://{CID}"}],
        },
    }
    return Monitor(
        usage, ProcessTable(tmp_path / "proc"), lambda: [grant], lambda: [pod], clock=clock
    )


def unlimited(m: Monitor) -> tuple[int, ...]:
    (use,) = m.latest.containers
    return use.unlimited


def test_a_process_that_never_attached_is_reported_after_the_grace(
    tmp_path: Path, region_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    usage, clock = Usage(), Clock()
    run_in_container(tmp_path / "proc", 5001, 7)
    usage.processes = [ProcessUsage(GPU, 5001, 900, 50)]
    m = monitor(tmp_path, region_dir, usage, clock)
    m.tick()
    assert unlimited(m) == ()  # it may be making its context: not yet
    clock.now += UNLIMITED_AFTER_S
    with caplog.at_level(logging.WARNING, logger="gpulet.agent"):
        m.tick()
        m.tick()
    assert unlimited(m) == (5001,)
    logged = [r.getMessage() for r in caplog.records if "unlimited-process" in r.getMessage()]
    assert len(logged) == 1 and "pid=5001" in logged[0]  # once per process, not per tick


def test_a_process_attached_to_the_region_is_not(tmp_path: Path, region_dir: Path) -> None:
    usage, clock = Usage(), Clock()
    run_in_container(tmp_path / "proc", 5002, 8)
    usage.processes = [ProcessUsage(GPU, 5002, 900, 50)]
    with Region.open(region_dir) as region:
        region.attach(pid=8, comm="python3")  # what the limiter does in that process
        m = monitor(tmp_path, region_dir, usage, clock)
        m.tick()
        clock.now += 2 * UNLIMITED_AFTER_S
        m.tick()
        assert unlimited(m) == ()


def test_whole_gpus_and_unreadable_pids_are_not_judged(tmp_path: Path, region_dir: Path) -> None:
    usage, clock = Usage(), Clock()
    run_in_container(tmp_path / "proc", 5003, 9)
    usage.processes = [ProcessUsage(GPU, 5003, 900, 50)]
    whole = monitor(tmp_path, region_dir, usage, clock, exclusive=True)
    whole.tick()
    clock.now += 2 * UNLIMITED_AFTER_S
    whole.tick()
    assert unlimited(whole) == ()  # a whole GPU has no limiter to miss
    (tmp_path / "proc" / "5003" / "status").unlink()  # no NSpid to go by
    sliced = monitor(tmp_path, region_dir, usage, clock)
    sliced.tick()
    clock.now += 2 * UNLIMITED_AFTER_S
    sliced.tick()
    assert unlimited(sliced) == ()
