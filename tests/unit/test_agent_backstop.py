"""The compute backstop (agent/backstop.py): the window's mean, the integral controller, the
duty cycle and the judge, on a clock the test moves; the freezer on real cgroups where this
machine has them; and, marked slow, the whole of it against real processes: a tenant that
zeroes its limiter's pacing clock, on the fake GPU, in a real cgroup."""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.backstop import (
    CgroupFreezer,
    ComputeBackstop,
    ComputeSettings,
    DutyController,
    DutyCycle,
    Freezing,
    OverShare,
    ShareKey,
    ShareUse,
    Window,
    locate_freezer,
    thaw_left_frozen,
)
from agent.cgroups import CgroupError, ContainerRef
from agent.monitor import Violation
from agent.node_agent import _event
from gpulet.cli.agent import run as agent_run
from tests.backstop_harness import Tenant, cgroup_version_usable, container_cgroup, usable_versions
from tests.backstop_harness import run as run_containers
from tests.deploy import agent_container, agent_flags, needs_helm, render

UID = "0c9d4f6e-1111-4222-8333-444455556666"
CID = "ab" * 32
REF = ContainerRef(UID, CID)
GPU = "GPU-11111111-2222-3333-4444-555555555555"


Log = list[tuple[float, str, str]]


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeFreezer:
    """Records what was written, with the fake clock's time; `fail` makes writes fail."""

    def __init__(self, name: str, clock: Clock, log: list[tuple[float, str, str]]) -> None:
        self._name, self._clock, self._log = name, clock, log
        self.fail: OSError | None = None
        self.frozen = False
        #: The containers it was located for (by `enforced`'s locate).
        self.located: list[ContainerRef] = []

    @property
    def name(self) -> str:
        return self._name

    def freeze(self) -> None:
        if self.fail is not None:
            raise self.fail
        self.frozen = True
        self._log.append((round(self._clock.now - 1000.0, 6), "freeze", self._name))

    def thaw(self) -> None:
        self.frozen = False
        self._log.append((round(self._clock.now - 1000.0, 6), "thaw", self._name))


def fake_duty(clock: Clock, on_pause: Callable[[float], None] | None = None) -> DutyCycle:
    """A duty cycle whose pauses move the fake clock (after `on_pause`, the monitor's turn)."""

    def pause(seconds: float) -> None:
        if on_pause is not None:
            on_pause(clock.now - 1000.0)
        clock.now += seconds

    return DutyCycle(0.1, clock=clock, pause=pause)


# ---- the window ----------------------------------------------------------------------------


def test_the_window_has_no_mean_until_it_is_covered() -> None:
    w = Window(10.0, 1.0, 5.0)
    for t in range(1, 10):
        w.add(float(t), 50.0)
        assert w.mean() is None  # 9 s of 10
    w.add(10.0, 50.0)
    assert w.mean() == pytest.approx(50.0)


def test_the_windows_mean_weighs_each_sample_by_the_time_it_covers() -> None:
    w = Window(10.0, 1.0, 5.0)
    t = 0.0
    for _ in range(8):
        t += 1.0
        w.add(t, 20.0)
    t += 2.0  # a late sample covers the two seconds since the one before
    w.add(t, 80.0)
    assert w.mean() == pytest.approx((8 * 20 + 2 * 80) / 10)
    for _ in range(10):  # the old samples leave the window
        t += 1.0
        w.add(t, 30.0)
    assert w.mean() == pytest.approx(30.0)


def test_a_long_gap_starts_the_window_again() -> None:
    w = Window(10.0, 1.0, 5.0)
    for t in range(1, 11):
        w.add(float(t), 90.0)
    assert w.mean() == pytest.approx(90.0)
    w.add(30.0, 10.0)  # 20 s without a sample (usage unreadable): not 20 s of 10%
    assert w.mean() is None


# ---- the controller ------------------------------------------------------------------------


def plant(demand: float) -> Callable[[float], float]:
    """What the fake GPU showed: a container frozen `f` of the time uses demand * (1 - f)."""
    return lambda f: demand * (1.0 - f)


@pytest.mark.parametrize("demand", [45.0, 83.0, 100.0])
def test_the_controller_settles_the_utilisation_at_the_share(demand: float) -> None:
    s = ComputeSettings()
    c = DutyController(30, s, mean=demand, now=0.0)
    assert c.fraction == pytest.approx(1 - 30 / demand)  # sized from the overshoot
    util = plant(demand)
    seen = []
    for t in range(1, 31):
        seen.append(util(c.fraction))
        c.update(seen[-1], float(t))
    assert all(u <= 30 + 0.5 for u in seen)
    assert seen[-1] == pytest.approx(30, abs=0.5)


def test_the_controller_pushes_harder_when_freezing_does_less_than_expected() -> None:
    """On a real GPU queued work drains while the container is frozen: the same fraction
    takes off less than it should. The integral term finds the fraction that does it."""
    c = DutyController(30, ComputeSettings(), mean=80.0, now=0.0)
    drained = 8.0  # points of utilisation the frozen time still shows
    for t in range(1, 40):
        c.update(80.0 * (1 - c.fraction) + drained * c.fraction, float(t))
    assert 80.0 * (1 - c.fraction) + drained * c.fraction == pytest.approx(30, abs=0.5)


def test_the_controller_lets_go_gradually_once_the_container_keeps_under_its_share() -> None:
    s = ComputeSettings()
    c = DutyController(30, s, mean=80.0, now=0.0)
    start = c.fraction
    steps = []
    t = 0
    while not c.released(float(t)):
        t += 1
        before = c.fraction
        c.update(20.0 * (1 - c.fraction), float(t))  # honest now: 20% when unfrozen
        steps.append(before - c.fraction)
        assert t < 100
    assert max(steps) <= s.release_step + 1e-9  # never let go at once
    assert t >= start / s.release_step + s.window_s - 1  # a whole quiet window at 0 first


def test_the_controller_never_freezes_a_whole_period() -> None:
    s = ComputeSettings()
    c = DutyController(1, s, mean=100.0, now=0.0)
    for t in range(1, 20):
        c.update(100.0, float(t))  # unmoved, whatever it does
    assert c.fraction == s.max_fraction


# ---- the duty cycle ------------------------------------------------------------------------


def test_each_container_is_frozen_for_its_fraction_of_the_period() -> None:
    clock, log = Clock(), Log()
    a, b = FakeFreezer("a", clock, log), FakeFreezer("b", clock, log)
    duty = fake_duty(clock)
    duty.set_plan({"a": (a, 0.3), "b": (b, 0.7), "c": (FakeFreezer("c", clock, log), 0.0)})
    duty.cycle()
    assert log == [
        (0.0, "freeze", "a"),
        (0.0, "freeze", "b"),
        (0.03, "thaw", "a"),
        (0.07, "thaw", "b"),
    ]
    assert clock.now - 1000.0 == pytest.approx(0.1)  # then the rest of the period
    duty.cycle()
    assert [e for e in log[4:] if e[1] == "freeze"] == [(0.1, "freeze", "a"), (0.1, "freeze", "b")]


def test_a_container_out_of_the_plan_is_thawed_at_once() -> None:
    clock, log = Clock(), Log()
    a = FakeFreezer("a", clock, log)
    woken: list[bool] = []

    def pause(seconds: float) -> None:
        if not woken:  # 20 ms in, the monitor's new plan (the pod went) wakes the cycle
            woken.append(True)
            clock.now += 0.02
            duty.set_plan({})
        else:
            clock.now += seconds

    duty = DutyCycle(0.1, clock=clock, pause=pause)
    duty.set_plan({"a": (a, 0.9)})
    duty.cycle()
    assert log == [(0.0, "freeze", "a"), (0.02, "thaw", "a")]
    assert not a.frozen


def test_a_failed_freeze_thaws_drops_and_reports_the_container() -> None:
    clock, log = Clock(), Log()
    a, b = FakeFreezer("a", clock, log), FakeFreezer("b", clock, log)
    a.fail = OSError(errno.EACCES, "Permission denied")
    duty = fake_duty(clock)
    duty.set_plan({"a": (a, 0.5), "b": (b, 0.5)})
    duty.cycle()
    assert (0.0, "thaw", "a") in log  # thawed at once, to be sure
    assert (0.05, "thaw", "b") in log  # the other one's cycle goes on
    assert set(duty.plan()) == {"b"}
    assert duty.failures() == {"a": "a: Permission denied"}
    assert duty.failures() == {}  # handed over once


class ClosingFreezer(FakeFreezer):
    """A FakeFreezer that keeps something open, as CgroupFreezer does: counts its closes."""

    def __init__(self, name: str, clock: Clock, log: Log) -> None:
        super().__init__(name, clock, log)
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_a_freezer_is_closed_when_the_cycle_lets_it_go() -> None:
    """Closed when its container leaves the plan, when the container gets another freezer
    (restarted: another cgroup), after a failed write, and when the cycle stops; never
    while it is held."""
    clock, log = Clock(), Log()
    a, b, c = (ClosingFreezer(n, clock, log) for n in "abc")
    duty = fake_duty(clock)
    duty.set_plan({"a": (a, 0.5), "b": (b, 0.5), "c": (c, 0.5)})
    duty.cycle()
    duty.cycle()
    assert (a.closed, b.closed, c.closed) == (0, 0, 0)
    b2 = ClosingFreezer("b2", clock, log)
    duty.set_plan({"b": (b2, 0.5), "c": (c, 0.7)})  # a went; b restarted; c's fraction moved
    duty.cycle()
    assert (a.closed, b.closed, c.closed, b2.closed) == (1, 1, 0, 0)
    c.fail = OSError(errno.EACCES, "Permission denied")
    duty.cycle()
    assert c.closed == 1 and set(duty.plan()) == {"b"}
    duty.stop()
    assert (a.closed, b.closed, c.closed, b2.closed) == (1, 1, 1, 1)
    assert not b2.frozen


def test_each_held_container_is_written_twice_a_period() -> None:
    """A freeze at the start and a thaw after its fraction, nothing more: 64 held at the
    largest fraction are 1,280 writes a second, none of them repeated."""
    clock, log = Clock(), Log()
    freezers = [FakeFreezer(str(i), clock, log) for i in range(64)]
    duty = fake_duty(clock)
    duty.set_plan({fz.name: (fz, 0.95) for fz in freezers})
    for _ in range(10):
        duty.cycle()
    assert duty.writes == len(log) == 1280
    assert clock.now - 1000.0 == pytest.approx(1.0)
    for fz in freezers:
        mine = [(t, what) for t, what, name in log if name == fz.name]
        assert mine[:2] == [(0.0, "freeze"), (0.095, "thaw")] and len(mine) == 20


def test_a_cgroup_file_is_kept_open_and_written_in_place(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    file = tmp_path / "c" / "cgroup.freeze"
    file.write_text("0\n")
    freezer = CgroupFreezer(file)
    assert not freezer.is_open
    freezer.freeze()
    assert freezer.is_open and file.read_text() == "1\n"
    file.rename(tmp_path / "c" / "moved")  # the same file, whatever its name now
    freezer.thaw()
    assert (tmp_path / "c" / "moved").read_text() == "0\n"
    freezer.close()
    assert not freezer.is_open
    with pytest.raises(FileNotFoundError):  # opened by its path again
        freezer.freeze()
    assert not freezer.is_open
    assert freezer == CgroupFreezer(file) and hash(freezer) == hash(CgroupFreezer(file))


def test_a_cgroup_file_that_takes_no_pwrite_is_written_whole(tmp_path: Path) -> None:
    """A kernel whose cgroup files are streams refuses pwrite (ESPIPE): written with write,
    as a FIFO shows."""
    (tmp_path / "c").mkdir()
    file = tmp_path / "c" / "cgroup.freeze"
    os.mkfifo(file)
    reader = os.open(file, os.O_RDONLY | os.O_NONBLOCK)
    try:
        freezer = CgroupFreezer(file)
        freezer.freeze()
        freezer.thaw()
        freezer.freeze()
        assert os.read(reader, 16) == b"101"
        freezer.close()
    finally:
        os.close(reader)


def test_stopping_thaws_everything_and_clears_the_ledger(tmp_path: Path) -> None:
    files = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        files.append(tmp_path / name / "cgroup.freeze")
        files[-1].write_text("0")
    duty = DutyCycle(0.1, ledger=tmp_path / "frozen.json")
    duty.set_plan({n: (CgroupFreezer(f), 0.95) for n, f in zip("ab", files, strict=True)})
    duty.start()
    deadline = time.monotonic() + 5
    while not (tmp_path / "frozen.json").exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert sorted(json.loads((tmp_path / "frozen.json").read_text())) == sorted(map(str, files))
    freezers = [fz for fz, _ in duty.plan().values()]
    duty.stop()
    assert [f.read_text() for f in files] == ["0", "0"]  # written in place, never appended
    assert not any(fz.is_open for fz in freezers if isinstance(fz, CgroupFreezer))
    assert not (tmp_path / "frozen.json").exists()


def test_what_a_dead_agent_left_frozen_is_thawed_at_start(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "v2" / "cgroup.freeze", tmp_path / "v1" / "freezer.state"
    for f, frozen in ((v2, "1"), (v1, "FROZEN")):
        f.parent.mkdir()
        f.write_text(frozen)
    ledger = tmp_path / "frozen.json"
    ledger.write_text(json.dumps([str(v2), str(v1), str(tmp_path / "gone" / "cgroup.freeze")]))
    thaw_left_frozen(ledger)
    assert (v2.read_text(), v1.read_text()[:6]) == ("0", "THAWED")
    assert not ledger.exists()


# ---- the judge -----------------------------------------------------------------------------


def judge(
    freezing: Freezing | None = None, **settings: float
) -> tuple[ComputeBackstop, list[OverShare]]:
    found: list[OverShare] = []
    return ComputeBackstop(ComputeSettings(**settings), freezing, found.append), found


def use(util: float, share: int = 30, ref: ContainerRef | None = REF) -> ShareUse:
    return ShareUse(UID, "main", GPU, share, util, ref)


def test_over_share_is_reported_once_the_windows_mean_is_past_the_tolerance(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backstop, found = judge()
    with caplog.at_level(logging.WARNING, logger="gpulet.agent"):
        for t in range(1, 10):
            backstop.observe([use(45.0)], float(t))
        assert not found  # 9 s: not a whole window yet
        backstop.observe([use(45.0)], 10.0)
        for t in range(11, 20):
            backstop.observe([use(45.0)], float(t))
    (over,) = found  # once per episode
    assert (over.share, over.action, round(over.mean_percent)) == (30, "reported", 45)
    assert backstop.status[(UID, "main", GPU)].over
    logged = [r.getMessage() for r in caplog.records if "event=over-share" in r.getMessage()]
    assert len(logged) == 1 and "util_mean=45.0" in logged[0] and "action=reported" in logged[0]


def test_the_tolerance_is_not_over_and_both_settings_are_settings() -> None:
    backstop, found = judge()
    for t in range(1, 30):
        backstop.observe([use(40.0)], float(t))  # exactly 10 points over: allowed
    assert not found
    strict, found = judge(tolerance=5.0, window_s=4.0)
    for t in range(1, 5):
        strict.observe([use(36.0)], float(t))
    assert len(found) == 1 and found[0].window_s == 4.0


def test_a_moving_share_is_judged_against_its_mean_over_the_same_window() -> None:
    """A batch slice's share moves with what production leaves idle (agent.colocation): at
    90% for 5 s and 10% for 5 s, a container that used 85% then 10% kept to it, and is not
    over; one that used 85% throughout is (its share averaged 50% over the window)."""
    honest, found = judge()
    for t in range(1, 20):
        high = t % 10 < 5
        honest.observe([use(85.0 if high else 10.0, share=90 if high else 10)], float(t))
    assert not found
    cheat, found = judge()
    for t in range(1, 20):
        cheat.observe([use(85.0, share=90 if t % 10 < 5 else 10)], float(t))
    assert len(found) == 1


def test_a_share_left_out_is_forgotten() -> None:
    backstop, _ = judge()
    for t in range(1, 12):
        backstop.observe([use(90.0)], float(t))
    assert backstop.status[(UID, "main", GPU)].over
    backstop.observe([], 12.0)
    assert backstop.status == {}


def enforced(clock: Clock) -> tuple[ComputeBackstop, list[OverShare], DutyCycle, FakeFreezer]:
    log: list[tuple[float, str, str]] = []
    freezer = FakeFreezer("main", clock, log)
    duty = fake_duty(clock)

    def locate(ref: ContainerRef) -> FakeFreezer:
        freezer.located.append(ref)
        return freezer

    backstop, found = judge(Freezing(locate, duty))
    return backstop, found, duty, freezer


def test_with_enforcement_the_container_is_held_to_its_share() -> None:
    clock = Clock()
    backstop, found, duty, _ = enforced(clock)
    gpu = plant(83.0)
    util, utils = 83.0, []
    for t in range(1, 61):
        backstop.observe([use(util)], float(t))
        util = gpu(frozen(duty))  # what the next second shows, frozen f of every period
        utils.append(util)
    (over,) = found
    assert over.action == "throttled" and over.mean_percent == pytest.approx(83.0)
    assert all(u <= 30.5 for u in utils[10:])  # from the first judged window on
    windows = [sum(utils[i : i + 10]) / 10 for i in range(10, 50, 10)]
    assert all(w <= 40 for w in windows)
    assert backstop.status[(UID, "main", GPU)].frozen == pytest.approx(1 - 30 / 83, abs=0.02)


def frozen(duty: DutyCycle) -> float:
    """The fraction the duty cycle freezes the one container for (0: not in the plan)."""
    return max((f for _, f in duty.plan().values()), default=0.0)


def test_a_container_back_under_its_share_is_let_go_and_thawed() -> None:
    clock = Clock()
    backstop, _, duty, _ = enforced(clock)
    t = 0
    for t in range(1, 12):
        backstop.observe([use(90.0)], float(t))
    fractions = [frozen(duty)]
    while backstop.status[(UID, "main", GPU)].over:
        t += 1
        backstop.observe([use(20.0 * (1 - frozen(duty)))], float(t))  # its limiter works again
        fractions.append(frozen(duty))
        assert t < 100
    steps = [a - b for a, b in itertools.pairwise(fractions)]
    assert fractions[0] > 0.5 and max(steps) <= ComputeSettings().release_step + 1e-9
    assert fractions.count(0.0) >= ComputeSettings().window_s  # quiet for a window, then gone
    assert duty.plan() == {}


def test_the_pod_going_takes_its_container_out_of_the_duty_cycle() -> None:
    clock = Clock()
    backstop, _, duty, _ = enforced(clock)
    for t in range(1, 12):
        backstop.observe([use(90.0)], float(t))
    assert duty.plan()
    backstop.observe([], 12.0)
    assert duty.plan() == {}


def test_a_container_that_cannot_be_frozen_is_reported_saying_why() -> None:
    clock = Clock()
    backstop, found, duty, _ = enforced(clock)
    for t in range(1, 12):
        backstop.observe([use(90.0, ref=None)], float(t))  # no cgroup to go by
    (over,) = found
    assert over.action == "reported" and "none of its processes" in over.note
    assert duty.plan() == {}


def test_a_failed_write_ends_the_hold_and_a_restarted_container_is_held_again() -> None:
    clock = Clock()
    backstop, found, duty, freezer = enforced(clock)
    for t in range(1, 12):
        backstop.observe([use(90.0)], float(t))
    freezer.fail = OSError(errno.EACCES, "Permission denied")
    duty.cycle()  # thawed and out of the plan at once
    backstop.observe([use(90.0)], 12.0)
    assert duty.plan() == {} and backstop.status[(UID, "main", GPU)].frozen == 0
    assert [(f.action, f.note) for f in found] == [
        ("throttled", ""),
        ("reported", "main: Permission denied"),  # still over: said once more, and why
    ]
    backstop.observe([use(90.0)], 13.0)
    assert len(found) == 2 and duty.plan() == {}  # the same container: not tried again
    restarted = ContainerRef(UID, "cd" * 32)
    freezer.fail = None
    backstop.observe([use(90.0, ref=restarted)], 14.0)  # another container: held again
    assert found[-1].action == "throttled" and duty.plan()
    assert freezer.located == [REF, restarted]


def test_a_container_restarted_while_held_is_held_again_through_its_new_cgroup() -> None:
    clock = Clock()
    backstop, found, duty, freezer = enforced(clock)
    for t in range(1, 12):
        backstop.observe([use(90.0)], float(t))
    restarted = ContainerRef(UID, "cd" * 32)
    backstop.observe([use(90.0, ref=restarted)], 12.0)
    assert duty.plan() and freezer.located == [REF, restarted] and len(found) == 1


def test_one_shares_error_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky(ComputeBackstop):
        def _judge(
            self, key: ShareKey, use: ShareUse, ref: ContainerRef | None, now: float
        ) -> OverShare | None:
            if use.gpu_uuid == "GPU-bad":
                raise RuntimeError("boom")
            return super()._judge(key, use, ref, now)

    backstop = Flaky()
    bad = ShareUse(UID, "main", "GPU-bad", 30, 90.0, REF)
    with caplog.at_level(logging.WARNING, logger="gpulet.agent"):
        for t in range(1, 12):
            backstop.observe([bad, use(90.0)], float(t))
    assert backstop.status[(UID, "main", GPU)].over
    assert any("compute-backstop-error" in r.getMessage() for r in caplog.records)


# ---- the cgroup ----------------------------------------------------------------------------


def pod_slice(root: Path) -> Path:
    return (
        root
        / "kubepods.slice"
        / "kubepods-burstable.slice"
        / f"kubepods-burstable-pod{UID.replace('-', '_')}.slice"
        / f"cri-containerd-{CID}.scope"
    )


def test_the_freezer_is_found_on_cgroup_v2_and_in_the_v1_freezer_hierarchy(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    (v2 / "cgroup.controllers").parent.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu memory\n")
    pod_slice(v2).mkdir(parents=True)
    with pytest.raises(CgroupError, match=r"cgroup\.freeze: no such file"):
        locate_freezer(v2, REF)
    (pod_slice(v2) / "cgroup.freeze").write_text("0\n")
    assert locate_freezer(v2, REF).file == pod_slice(v2) / "cgroup.freeze"
    v1 = tmp_path / "v1"
    pod_slice(v1 / "cpuset").mkdir(parents=True)
    with pytest.raises(CgroupError, match="freezer controller mounted"):
        locate_freezer(v1, REF)
    pod_slice(v1 / "freezer").mkdir(parents=True)
    (pod_slice(v1 / "freezer") / "freezer.state").write_text("THAWED\n")
    assert locate_freezer(v1, REF).file == pod_slice(v1 / "freezer") / "freezer.state"


VERSION, WHY_NOT = cgroup_version_usable()
needs_cgroups = pytest.mark.skipif(VERSION is None, reason=WHY_NOT)


@needs_cgroups
@pytest.mark.parametrize("version", usable_versions() or [0])
def test_a_real_cgroup_is_frozen_and_thawed(tmp_path: Path, version: int) -> None:
    with container_cgroup(version, tmp_path) as group:
        sleeper = subprocess.Popen(["sh", "-c", 'echo $$ > "$0" && exec sleep 60', group.procs])
        try:
            assert _reaches(lambda: str(sleeper.pid) in group.procs.read_text().split())
            freezer = locate_freezer(group.root, group.ref)
            freezer.freeze()
            assert _reaches(lambda: _state(group.freezer, version) == "frozen")
            assert _task_state(sleeper.pid) in {"D", "S"}  # (a frozen task shows as sleeping)
            freezer.thaw()
            assert _reaches(lambda: _state(group.freezer, version) == "thawed")
        finally:
            file = group.freezer / ("cgroup.freeze" if version == 2 else "freezer.state")
            CgroupFreezer(file).thaw()
            sleeper.kill()
            sleeper.wait()


@needs_cgroups
@pytest.mark.parametrize("version", usable_versions() or [0])
def test_a_freezer_kept_open_fails_once_its_cgroup_is_removed(tmp_path: Path, version: int) -> None:
    """The descriptor kept open is of the cgroup that was there: once it is removed (its
    container gone) a write fails with ENODEV and closes it, and the next one finds no path
    (ENOENT), as a restarted container's old cgroup does: the duty cycle lets it go."""
    with container_cgroup(version, tmp_path) as group:
        freezer = locate_freezer(group.root, group.ref)
        freezer.freeze()
        freezer.thaw()
        assert freezer.is_open
        group.freezer.rmdir()
        try:
            with pytest.raises(OSError, match="No such device") as gone:
                freezer.freeze()
            assert gone.value.errno == errno.ENODEV and not freezer.is_open
            with pytest.raises(FileNotFoundError):
                freezer.freeze()
        finally:
            group.freezer.mkdir()  # for container_cgroup to remove


def _reaches(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def _state(cgroup: Path, version: int) -> str:
    if version == 2:
        return "frozen" if "frozen 1" in (cgroup / "cgroup.events").read_text() else "thawed"
    return (cgroup / "freezer.state").read_text().strip().lower()


def _task_state(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("State:"))


# ---- one switch ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "enforce"),
    [([], "report"), (["--enforce"], "on"), (["--enforce=report"], "report"),
     (["--enforce=kill"], "kill"), (["--enforce", "--standalone"], "on")],
)  # fmt: skip
def test_enforce_is_one_switch_and_keeps_its_old_spellings(args: list[str], enforce: str) -> None:
    ctx = agent_run.make_context("run", list(args))
    assert ctx.params["enforce"] == enforce


def test_an_unknown_enforce_value_is_refused() -> None:
    result = CliRunner().invoke(agent_run, ["--enforce=kil"])
    assert result.exit_code == 2 and "'kil' is not one of" in result.output


def test_each_finding_has_its_own_event() -> None:
    over = OverShare(UID, "main", GPU, 30, 83.2, 10.0, 10.0, "throttled")
    reason, message = _event(over)
    assert reason == "GPUComputeOverShare"
    assert "83% busy over 10 s" in message and "duty cycle" in message
    memory = Violation(UID, "main", GPU, 9000, 8192, (7,), True)
    assert _event(memory)[0] == "GPUMemoryOverCap"
    region = Violation(UID, "main", GPU, 10, 8192, (7,), False, "region", ("devices is 3",))
    reason, message = _event(region)
    assert reason == "GPURegionUntrusted" and "devices is 3" in message and "reported" in message


@needs_helm
@pytest.mark.parametrize(("enforce", "kill"), [("report", False), ("on", True), ("kill", True)])
def test_the_chart_gives_cap_kill_with_enforcement_only(enforce: str, kill: bool) -> None:
    rendered = render(f"agent.enforce={enforce}")
    assert agent_flags(rendered)["--enforce"] == enforce
    capabilities = agent_container(rendered)["securityContext"]["capabilities"]
    assert capabilities.get("add", []) == (["KILL"] if kill else [])
    cgroup = next(m for m in agent_container(rendered)["volumeMounts"] if m["name"] == "cgroup")
    assert not cgroup.get("readOnly", False)  # the freezer files are written through it


# ---- real processes ------------------------------------------------------------------------


@pytest.mark.slow
@needs_cgroups
def test_a_tampering_tenant_is_held_to_its_share_and_an_honest_one_never_frozen(
    tmp_path: Path,
) -> None:
    """Two containers of 30% on the fake GPU, each a real cgroup with a workload under the
    limiter. The tenant of one zeroes its pacing clock from a second process and keeps the
    agent's feedback saying 30%; the other's limiter works. The agent's monitor, with
    enforcement on, samples the fake NVML every second for 31 s."""
    assert VERSION is not None
    run = run_containers(
        tmp_path,
        [Tenant("tampered", tamper=True), Tenant("honest", tamper=False)],
        seconds=31,
        enforce=True,
        version=VERSION,
    )
    tampered, honest = run.outcomes["tampered"], run.outcomes["honest"]
    # The attack works on the limiter: well over the share until the window is judged...
    assert tampered.windows[0] > 45, tampered.per_second
    (caught,) = run.over_share("tampered")
    assert caught.action == "throttled"
    # ... and from then on every 10 s window is within 10 points of the share, tumbling
    # from the workload's start or sliding by the second.
    assert all(w <= 40 for w in tampered.windows[1:]), tampered.windows
    sliding = [sum(tampered.per_second[i : i + 10]) / 10 for i in range(10, 22)]
    assert all(w <= 40 for w in sliding), tampered.per_second
    assert tampered.freezes > 0 and tampered.max_frozen > 0.3
    # The honest container is never judged over its share, nor frozen once.
    assert run.over_share("honest") == []
    assert honest.freezes == 0 and honest.max_frozen == 0
    assert all(w <= 40 for w in honest.windows), honest.windows
