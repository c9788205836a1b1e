"""The monitor: its check for processes on a slice that run without the limiter, its reading
of regions as untrusted input, its compute judge, and its guard around each container. A real
region, a /proc under a temp root, NVML's list from a fake, and a clock the test moves."""

from __future__ import annotations

import logging
import mmap
import os
import signal
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from agent.backstop import OverShare
from agent.cgroups import ProcessTable
from agent.monitor import UNLIMITED_AFTER_S, Finding, Monitor, Violation
from agent.usage import ProcessUsage
from deviceplugin.grants import GpuShare, Grant
from deviceplugin.regions import limits_of
from gpulet.api.resources import GPU_RESOURCE
from native.region import DeviceLimit, Inspection, Limits, Region, StrPath, inspect, setup
from tests.procfs import run_in

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
    run_in(proc, host_pid, UID, CID, own_pid)


def monitor(
    tmp_path: Path,
    region_dir: Path,
    usage: Usage,
    clock: Clock,
    exclusive: bool = False,
    *,
    core: int = 30,
    enforce: str = "report",
    report: Callable[[Finding], None] = lambda f: None,
    kill: Callable[[int, int], None] = lambda pid, sig: None,
    processes: ProcessTable | None = None,
    batch_share: Callable[[str, str, str], int | None] | None = None,
) -> Monitor:
    batch = batch_share is not None
    share = GpuShare(GPU, 100 if exclusive else core, 4096, exclusive, index=0, batch=batch)
    grant = Grant(GPU_RESOURCE, ("x::00",), (share,), (), UID, "main", str(region_dir))
    if batch:
        setup(region_dir, limits_of((share,)))
    return Monitor(
        usage,
        processes or ProcessTable(tmp_path / "proc"),
        lambda: [grant],
        lambda: [pod(UID, CID)],
        clock=clock,
        enforce=enforce,
        report=report,
        kill=kill,
        batch_share=batch_share or (lambda *key: None),
    )


def pod(uid: str, cid: str, name: str = "main") -> dict[str, object]:
    return {
        "metadata": {"uid": uid, "name": "p", "namespace": "default"},
        "status": {
            "phase": "Running",
            "containerStatuses": [{"name": name, "containerID": f"containerd://{cid}"}],
        },
    }


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


# ---- compute over the share ----------------------------------------------------------------


@pytest.mark.parametrize(("core", "exclusive", "judged"), [(30, False, True), (100, False, False),
                                                             (30, True, False)])  # fmt: skip
def test_a_container_over_its_share_for_a_window_is_reported(
    tmp_path: Path, region_dir: Path, core: int, exclusive: bool, judged: bool
) -> None:
    """Whole GPUs and shares of 100% are never judged."""
    usage, clock, found = Usage(), Clock(), list[Finding]()
    run_in_container(tmp_path / "proc", 5004, 10)
    usage.processes = [ProcessUsage(GPU, 5004, 900, 60)]
    m = monitor(tmp_path, region_dir, usage, clock, exclusive, core=core, report=found.append)
    for _ in range(12):
        clock.now += 1.0
        m.tick()
    over = [f for f in found if isinstance(f, OverShare)]
    if not judged:
        assert over == [] and m.compute.status == {}
        return
    (caught,) = over
    assert (caught.share, round(caught.mean_percent), caught.action) == (30, 60, "reported")
    assert m.compute.status[(UID, "main", GPU)].over


@pytest.mark.parametrize(("given", "over"), [(80, False), (40, True), (None, True), (100, False)])
def test_a_batch_slice_is_held_to_the_share_the_controller_gave_it(
    tmp_path: Path, region_dir: Path, given: int | None, over: bool
) -> None:
    """A batch slice (floor 30%) keeping its GPU 60% busy: within a share of 80% the
    controller gave it, over one of 40%, and over its floor while none was given; a share
    of 100% is not judged. The share is asked of the controller per container and GPU."""
    usage, clock, found = Usage(), Clock(), list[Finding]()
    asked: list[tuple[str, str, str]] = []

    def share(pod: str, name: str, uuid: str) -> int | None:
        asked.append((pod, name, uuid))
        return given

    run_in_container(tmp_path / "proc", 5004, 10)
    usage.processes = [ProcessUsage(GPU, 5004, 900, 60)]
    m = monitor(tmp_path, region_dir, usage, clock, batch_share=share, report=found.append)
    for _ in range(12):
        clock.now += 1.0
        m.tick()
    assert bool([f for f in found if isinstance(f, OverShare)]) == over
    assert set(asked) == {(UID, "main", GPU)}


# ---- the region as untrusted input -----------------------------------------------------------

#: In the region file: device 0's core_percent (docs/limiter.md).
CORE_AT = 96 + 72


def tamper(region_dir: Path, at: int, fmt: str, value: int) -> None:
    with (region_dir / "region").open("r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        struct.pack_into(fmt, m, at, value)


@pytest.mark.parametrize("enforce", ["report", "on", "kill"])
def test_a_tampered_region_is_reported_once_and_treated_as_over_its_cap(
    tmp_path: Path, region_dir: Path, enforce: str, caplog: pytest.LogCaptureFixture
) -> None:
    usage, clock, found = Usage(), Clock(), list[Finding]()
    killed: list[tuple[int, int]] = []
    run_in_container(tmp_path / "proc", 5005, 11)
    usage.processes = [ProcessUsage(GPU, 5005, 900, 20)]
    m = monitor(
        tmp_path,
        region_dir,
        usage,
        clock,
        enforce=enforce,
        report=found.append,
        kill=lambda pid, sig: killed.append((pid, sig)),
    )
    m.tick()
    assert not found and m.untrusted == {}
    tamper(region_dir, CORE_AT, "<I", 100)  # the tenant raises its own share
    with caplog.at_level(logging.WARNING, logger="gpulet.agent"):
        m.tick()  # one doubtful sample could be a torn read of an honest region
        assert not found and m.untrusted == {}
        m.tick()
        m.tick()
    (violation,) = found  # once per container
    assert isinstance(violation, Violation) and violation.cause == "region"
    assert violation.problems == ("device 0: core_percent 100, granted 30",)
    assert m.untrusted == {(UID, "main"): violation.problems}
    assert m.violations[(UID, "main")] == 2  # counted every sample, as over its cap
    logged = [r.getMessage() for r in caplog.records if "region-untrusted" in r.getMessage()]
    assert len(logged) == 1 and "core_percent 100, granted 30" in logged[0]
    if enforce == "report":
        assert killed == [] and not violation.killed
    else:
        assert killed == [(5005, signal.SIGKILL)] * 2 and violation.killed
    tamper(region_dir, CORE_AT, "<I", 30)  # put back: trusted again, not reported again
    m.tick()
    assert m.untrusted == {} and len(found) == 1


def test_a_region_in_doubt_while_its_grant_lasts_is_untrusted_from_its_second_sample(
    tmp_path: Path, region_dir: Path
) -> None:
    usage, clock, found = Usage(), Clock(), list[Finding]()
    run_in_container(tmp_path / "proc", 5006, 12)
    usage.processes = [ProcessUsage(GPU, 5006, 900, 20)]
    m = monitor(tmp_path, region_dir, usage, clock, report=found.append)
    (region_dir / "region").unlink()  # or a pod being deleted, in the first sample
    m.tick()
    assert not found
    (region_dir / "region").symlink_to("/etc/shadow")  # the tenant's swap
    m.tick()
    (violation,) = found
    assert isinstance(violation, Violation) and violation.cause == "region"
    assert violation.problems and "region" in violation.problems[0]


def test_no_mapping_of_a_region_is_kept_and_feedback_still_goes_in(
    tmp_path: Path, region_dir: Path
) -> None:
    usage, clock = Usage(), Clock()
    run_in_container(tmp_path / "proc", 5007, 13)
    usage.processes = [ProcessUsage(GPU, 5007, 900, 42)]
    m = monitor(tmp_path, region_dir, usage, clock)
    m.tick()
    maps = Path("/proc/self/maps").read_text()
    assert str(region_dir / "region") not in maps
    with Region.open(region_dir) as region:
        assert region.snapshot().devices[0].util_percent == 42


def test_each_gpu_gets_its_feedback_from_one_read_of_the_region(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container on two GPUs: its region is inspected once a sample, and that one call
    writes the utilisation measured on each GPU, each to its own device."""
    other = "GPU-22222222-2222-3333-4444-555555555555"
    directory = tmp_path / "region"
    setup(directory, Limits((DeviceLimit(GPU, 4096, 30), DeviceLimit(other, 2048, 50))))
    usage, clock = Usage(), Clock()
    run_in_container(tmp_path / "proc", 5010, 16)
    usage.processes = [ProcessUsage(GPU, 5010, 900, 42), ProcessUsage(other, 5010, 100, 17)]
    shares = (GpuShare(GPU, 30, 4096, False, index=0), GpuShare(other, 50, 2048, False, index=1))
    grant = Grant(GPU_RESOURCE, ("x::00", "x::10"), shares, (), UID, "main", str(directory))
    calls: list[Mapping[int, float] | None] = []

    def counting(
        where: StrPath, expected: Limits | None = None, feedback: Mapping[int, float] | None = None
    ) -> Inspection:
        calls.append(feedback)
        return inspect(where, expected, feedback)

    monkeypatch.setattr("agent.monitor.inspect", counting)
    m = Monitor(
        usage,
        ProcessTable(tmp_path / "proc"),
        lambda: [grant],
        lambda: [pod(UID, CID)],
        clock=clock,
    )
    m.tick()
    assert calls == [{0: 42.0, 1: 17.0}]
    assert not m.untrusted
    with Region.open(directory) as region:
        assert [d.util_percent for d in region.snapshot().devices] == [42.0, 17.0]


def test_no_feedback_goes_into_a_region_that_is_not_what_its_grant_made_it(
    tmp_path: Path, region_dir: Path
) -> None:
    """The feedback is written by the call that inspects the region, to the file it just
    read, and only when that found nothing wrong."""
    usage, clock = Usage(), Clock()
    run_in_container(tmp_path / "proc", 5011, 17)
    usage.processes = [ProcessUsage(GPU, 5011, 900, 42)]
    m = monitor(tmp_path, region_dir, usage, clock)
    fd = os.open(region_dir / "region", os.O_RDWR)
    try:
        with mmap.mmap(fd, 0) as mem:  # the tenant writes 3 devices over its 1
            struct.pack_into("<I", mem, 16, 3)
            m.tick()
            util_permille, stamp = struct.unpack_from("<IQ", mem, 96 + 76)
            assert (util_permille, stamp) == (0, 0)  # never written
            struct.pack_into("<I", mem, 16, 1)  # put back: trusted again
            m.tick()
            util_permille, stamp = struct.unpack_from("<IQ", mem, 96 + 76)
            assert util_permille == 420 and stamp > 0
    finally:
        os.close(fd)


# ---- one container's trouble ------------------------------------------------------------------


class FlakyTable(ProcessTable):
    """/proc as usual, but reading one process's own pid raises what nothing expects."""

    def namespace_pid(self, pid: int) -> int | None:
        if pid == 5008:
            raise RuntimeError("injected")
        return super().namespace_pid(pid)


def test_an_unexpected_error_in_one_container_is_logged_and_the_pass_goes_on(
    tmp_path: Path, region_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    usage, clock = Usage(), Clock()
    other_uid, other_cid = "1c9d4f6e-1111-4222-8333-444455556666", "cd" * 32
    run_in_container(tmp_path / "proc", 5008, 14)
    here = tmp_path / "proc" / "5009"
    here.mkdir(parents=True)
    (here / "cgroup").write_text(f"0::/kubepods/pod{other_uid}/{other_cid}\n")
    (here / "status").write_text("NSpid:\t5009\t15\n")
    other_dir = tmp_path / "other"
    setup(other_dir, Limits((DeviceLimit(GPU, 4096, 30),)))
    share = GpuShare(GPU, 30, 4096, False, index=0)
    grants = [
        Grant(GPU_RESOURCE, ("x::00",), (share,), (), UID, "main", str(region_dir)),
        Grant(GPU_RESOURCE, ("x::01",), (share,), (), other_uid, "main", str(other_dir)),
    ]
    usage.processes = [ProcessUsage(GPU, 5008, 900, 20), ProcessUsage(GPU, 5009, 800, 25)]
    m = Monitor(
        usage,
        FlakyTable(tmp_path / "proc"),
        lambda: grants,
        lambda: [pod(UID, CID), pod(other_uid, other_cid)],
        clock=clock,
    )
    with caplog.at_level(logging.WARNING, logger="gpulet.agent"):
        assert m.tick() == []
    assert [c.pod_uid for c in m.latest.containers] == [other_uid]  # the other one was seen
    errors = [r.getMessage() for r in caplog.records if "event=monitor-error" in r.getMessage()]
    assert len(errors) == 1 and f"pod_uid={UID}" in errors[0] and "injected" in errors[0]
    with Region.open(other_dir) as region:
        assert region.snapshot().devices[0].util_percent == 25
