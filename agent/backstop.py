"""The compute backstop: a container that keeps a GPU busier than its share, whatever its
limiter does, is caught on the host and, with enforcement, held to its share without its help.

The limiter paces a container's launches from inside the container, with its pacing clock in
the container's region, which the container can write: a tenant that is root in its container
can zero that clock and take what the GPU gives it. The agent measures what each container
really uses (NVML's per-process SM utilisation, every second, `agent.monitor`) and this module
compares that with the share:

- **Detection** (`Window`, `ComputeBackstop`): the utilisation of a container on a GPU,
  averaged over `window_s` (10 s), more than `tolerance` points (10) over its share is an
  over-share episode: logged (`event=over-share`), shown in a metric and reported (a Warning
  Event on the pod). Whole GPUs and shares of 100% are never judged.
- **Enforcement** (`DutyController`, `DutyCycle`): with enforcement on, the container's cgroup
  is frozen for a fraction of every `period_s` (100 ms) and thawed for the rest. The fraction
  starts from the overshoot measured (1 - share / mean) and is then moved every sample by a
  small integral controller so that the measured utilisation settles at the share. Once the
  container keeps under its share the fraction decays by at most `release_step` a sample, and
  when it has been 0 for a whole window the container is let go.

Freezing stops the container's processes on the CPU, so they launch nothing; work already
queued on the GPU drains, which the controller sees as utilisation and answers with a larger
fraction. A container is always thawed when it leaves the plan (its pod went, it was let go),
when the agent stops, and after any error writing its cgroup. An agent that dies while a
container is frozen leaves a record (`ledger`), and the next one thaws what it lists.

Pure logic (`Window`, `DutyController`) is separate from I/O: the cgroup is behind `Freezer`
(`CgroupFreezer`, `locate_freezer`), and `DutyCycle` takes its clock and its pause as
arguments. One `DutyCycle` thread serves every throttled container; the monitor hands it a
new plan under a lock that is never held across a cgroup write.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agent.cgroups import CgroupError, ContainerRef, find_container_cgroup

log = logging.getLogger("gpulet.agent")

#: (pod uid, container name, GPU uuid): one container's share of one GPU.
ShareKey = tuple[str, str, str]
#: (pod uid, container name): what is frozen (a container's cgroup).
ContainerKey = tuple[str, str]

#: Below this, a fraction is no freezing at all (and a time difference no time at all).
_EPS = 1e-9


@dataclass(frozen=True)
class ComputeSettings:
    """How over-share is judged and how hard the duty cycle pushes back."""

    #: Points over the share that the window's mean may reach before it is over-share.
    tolerance: float = 10.0
    #: Seconds of utilisation the judged mean is taken over.
    window_s: float = 10.0
    #: What one sample covers when there is no earlier one to measure from (the monitor's
    #: interval: NVML's per-process utilisation is "since the previous sample").
    sample_s: float = 1.0
    #: A longer pause between samples (usage unreadable) starts the window again.
    max_gap_s: float = 5.0
    #: The duty cycle's period: frozen for `fraction * period_s`, then thawed.
    period_s: float = 0.1
    #: The integral gain: the fraction moves by `gain * (util - share) / demand` a sample,
    #: where demand (util / (1 - fraction)) is what the container would use unfrozen.
    gain: float = 0.5
    #: The most the fraction may grow, and shrink, in one sample.
    rise_step: float = 0.25
    release_step: float = 0.05
    #: Never frozen for the whole period: the container always gets some time.
    max_fraction: float = 0.95

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise ValueError(f"tolerance must be >= 0 points, got {self.tolerance}")
        if self.window_s <= 0 or self.sample_s <= 0 or self.period_s <= 0:
            raise ValueError("window_s, sample_s and period_s must be > 0")
        if not 0 < self.max_fraction < 1:
            raise ValueError(f"max_fraction must be in (0, 1), got {self.max_fraction}")


# ---- pure logic ----------------------------------------------------------------------------


class Window:
    """The time-weighted mean of utilisation samples over the last `span_s` seconds.

    Each sample covers the time since the one before it; the first (and the first after a
    gap longer than `max_gap_s`) covers `first_s`. The mean is None until the samples cover
    the whole span."""

    def __init__(self, span_s: float, first_s: float, max_gap_s: float) -> None:
        self._span = span_s
        self._first = first_s
        self._max_gap = max_gap_s
        self._samples: deque[tuple[float, float, float]] = deque()  # (start, end, util)
        self._last: float | None = None

    def add(self, now: float, util: float) -> None:
        if self._last is None or now - self._last > self._max_gap:
            self._samples.clear()
            start = now - self._first
        else:
            start = self._last
        if now - start <= _EPS:
            return  # no time passed: nothing to weigh
        self._samples.append((start, now, util))
        self._last = now
        horizon = now - self._span
        while self._samples and self._samples[0][1] <= horizon:
            self._samples.popleft()

    def mean(self) -> float | None:
        if self._last is None or not self._samples:
            return None
        horizon = self._last - self._span
        if self._samples[0][0] > horizon + _EPS:
            return None  # not a whole window yet
        weighted = covered = 0.0
        for start, end, util in self._samples:
            length = end - max(start, horizon)
            weighted += util * length
            covered += length
        return weighted / covered if covered > _EPS else None


class DutyController:
    """The frozen fraction of one container's share of one GPU: an integral controller on
    the measured utilisation, with the share as set-point.

    The step is normalised by the container's demand (what it would use unfrozen,
    util / (1 - fraction)), so the loop gain does not depend on how hard it pushes. It is
    `released` once its fraction has been 0 and its utilisation at most its share for a
    whole window."""

    def __init__(self, share: int, settings: ComputeSettings, mean: float, now: float) -> None:
        self.share = share
        self._s = settings
        #: Sized from the overshoot: at `mean` unfrozen, (1 - f) * mean = share.
        self.fraction = _clamp(1.0 - share / mean if mean > 0 else 0.0, 0.0, settings.max_fraction)
        self._quiet_since: float | None = None
        self._since = now

    def update(self, util: float, now: float) -> float:
        s, f = self._s, self.fraction
        demand = max(util / (1.0 - f), float(self.share), 1.0)
        step = _clamp(s.gain * (util - self.share) / demand, -s.release_step, s.rise_step)
        self.fraction = f = _clamp(f + step, 0.0, s.max_fraction)
        if f <= _EPS and util <= self.share:
            if self._quiet_since is None:
                self._quiet_since = now
        else:
            self._quiet_since = None
        return f

    def released(self, now: float) -> bool:
        quiet = self._quiet_since
        return quiet is not None and now - quiet >= self._s.window_s - _EPS


def _due(entry: tuple[float, Hashable, Freezer]) -> float:
    return entry[0]


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


# ---- the cgroup ----------------------------------------------------------------------------


class Freezer(Protocol):
    """Pauses and resumes every process of one container.

    A freezer may keep what it writes open between writes (`CgroupFreezer` does); if it has
    a `close()` method the duty cycle calls it when it lets the freezer go (the container left
    the plan, a write failed, the cycle stopped). A write after `close` opens it again."""

    @property
    def name(self) -> str:
        """What to call it in logs and in the ledger (the file it writes)."""
        ...

    def freeze(self) -> None:
        """OSError when the cgroup cannot be written."""
        ...

    def thaw(self) -> None:
        """OSError when the cgroup cannot be written."""
        ...


def _close(fz: Freezer) -> None:
    """Let go of what `fz` keeps open, if it keeps anything (see Freezer)."""
    close = getattr(fz, "close", None)
    if callable(close):
        close()


#: The file each cgroup version freezes through, and what it takes to freeze and to thaw.
_FREEZE_FILES = {"cgroup.freeze": (b"1", b"0"), "freezer.state": (b"FROZEN", b"THAWED")}


class CgroupFreezer:
    """A container's cgroup freezer: `cgroup.freeze` (v2, 1/0) or `freezer.state` of the v1
    freezer hierarchy (FROZEN/THAWED). Both freeze the cgroup and every cgroup below it.
    Two freezers of the same file are equal (each keeps a descriptor of its own).

    The file is opened (O_WRONLY, never created: a missing file is an error) at the first
    write and kept open until `close()`, so that a write is one pwrite(2) rather than an
    open, a write and a close: the duty cycle writes each held container's file twice a
    period. A kernel whose cgroup files take no pwrite (ESPIPE) gets write(2), which a
    cgroup file takes whole whatever its offset. A failed write closes it, and the next one
    opens the path again: a cgroup that was removed (its container gone) fails with ENODEV,
    then ENOENT; a container that restarts gets another cgroup, and the backstop another
    freezer for it. One lock, shared by every freezer (one thread writes them all; a lock
    of each freezer's own is a cache miss a write), orders writes and `close`, so that a
    descriptor is never written after it was closed (and its number perhaps reused); one
    dropped without `close` is closed when the freezer goes."""

    __slots__ = ("_fd", "_freeze", "_positional", "_thaw", "file", "name")

    _lock = threading.Lock()

    def __init__(self, file: Path) -> None:
        if file.name not in _FREEZE_FILES:
            raise ValueError(f"{file} is neither cgroup.freeze nor freezer.state")
        self.file = file
        #: What to call it in logs and in the ledger.
        self.name = str(file)
        self._freeze, self._thaw = _FREEZE_FILES[file.name]
        self._fd = -1
        self._positional = True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CgroupFreezer) and other.file == self.file

    def __hash__(self) -> int:
        return hash(self.file)

    def __repr__(self) -> str:
        return f"CgroupFreezer(file={self.file!r})"

    def freeze(self) -> None:
        self._write(self._freeze)

    def thaw(self) -> None:
        self._write(self._thaw)

    def _write(self, value: bytes) -> None:
        with CgroupFreezer._lock:
            fd = self._fd
            if fd < 0:
                fd = self._fd = os.open(self.file, os.O_WRONLY | os.O_CLOEXEC)
            try:
                if self._positional:
                    try:
                        os.pwrite(fd, value, 0)
                        return
                    except OSError as e:
                        if e.errno != errno.ESPIPE:
                            raise
                        self._positional = False
                os.write(fd, value)
            except OSError:
                self._close()
                raise

    def close(self) -> None:
        """Close the file if it is open; a later write opens it again."""
        with CgroupFreezer._lock:
            self._close()

    @property
    def is_open(self) -> bool:
        """Whether the file is held open (for tests)."""
        return self._fd >= 0

    def _close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        # No other reference is left, so no write can be under way.
        if getattr(self, "_fd", -1) >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)


def locate_freezer(cgroup_root: Path, ref: ContainerRef) -> CgroupFreezer:
    """The freezer of a container's cgroup under the node's cgroup mount (`--cgroup-root`).

    v2: `cgroup.freeze` in the container's directory. v1 (hybrid too): the same path under
    the `freezer` hierarchy as `find_container_cgroup` found under `cpuset`. CgroupError when
    there is no such file."""
    cgroup = find_container_cgroup(cgroup_root, ref)
    if cgroup.version == 2:
        file = cgroup.path / "cgroup.freeze"
    else:
        below = cgroup.path.relative_to(cgroup_root / "cpuset")
        file = cgroup_root / "freezer" / below / "freezer.state"
    if not file.is_file():
        where = "" if cgroup.version == 2 else " (is the v1 freezer controller mounted?)"
        raise CgroupError(f"{file}: no such file, cannot freeze the container{where}")
    return CgroupFreezer(file)


# ---- the duty cycle --------------------------------------------------------------------------


#: Per container: its freezer and the fraction of each period it is frozen.
Plan = Mapping[Hashable, tuple[Freezer, float]]


class _Wake:
    """An event that clears itself when a wait returns, on a bare lock (locked: not set):
    `wait` is one lock acquire with a timeout, where threading.Event's goes through a
    Condition and costs about twice the CPU. The duty cycle waits twice a period."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # set already
            self._lock.release()

    def wait(self, timeout: float | None = None) -> None:
        """Until `set` (then cleared), or `timeout` seconds."""
        self._lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0))


class DutyCycle:
    """One thread that freezes every container of the plan at the start of each period and
    thaws each after its fraction of it.

    `set_plan` replaces the plan (a lock held for the assignment only: no cgroup write is
    made under it). A container taken out of the plan, or whose fraction shrank below the
    time already spent, is thawed at once. An error writing a cgroup thaws it, takes it out
    of the plan, and is handed back by `failures`. `stop` thaws everything.

    A freezer that keeps its file open (`CgroupFreezer`) is closed when the cycle lets it
    go: its container left the plan or got another freezer (restarted: another cgroup), a
    write failed, or the cycle stopped.

    `ledger` (a file) lists the freezers of the plan while it is not empty, so that an agent
    that died with containers frozen has them thawed by the next one (`start`)."""

    def __init__(
        self,
        period_s: float = 0.1,
        *,
        ledger: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
        pause: Callable[[float], None] | None = None,
    ) -> None:
        if period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {period_s}")
        self.period_s = period_s
        self._ledger = ledger
        self._clock = clock
        self._lock = threading.Lock()
        #: Replaced whole on every change, never changed in place: a reference to it is a
        #: snapshot (taken under the lock).
        self._plan: dict[Hashable, tuple[Freezer, float]] = {}
        self._failures: dict[Hashable, str] = {}
        self._wake = _Wake()
        self._stopping = threading.Event()
        self._pause = pause or self._wait
        self._recorded: tuple[str, ...] = ()
        self._thread: threading.Thread | None = None
        #: The plan the last period started from, and the freezers it held (each closed
        #: once the cycle lets it go). Only the cycle's thread uses them (and `stop`, after
        #: the thread ended).
        self._started: Mapping[Hashable, tuple[Freezer, float]] = {}
        self._held: dict[Hashable, Freezer] = {}
        self._names: tuple[str, ...] = ()
        #: Freezes and thaws written so far (for tests and the bench).
        self.writes = 0

    # The monitor's side.

    def set_plan(self, plan: Plan) -> None:
        new = {key: (fz, _clamp(f, 0.0, 1.0)) for key, (fz, f) in plan.items() if f > _EPS}
        with self._lock:
            changed = new != self._plan
            if changed:
                self._plan = new
        if changed:
            self._wake.set()

    def failures(self) -> dict[Hashable, str]:
        """Containers whose cgroup could not be written since the last call, with why."""
        with self._lock:
            out, self._failures = self._failures, {}
        return out

    def plan(self) -> dict[Hashable, tuple[Freezer, float]]:
        with self._lock:
            return dict(self._plan)

    def _current(self) -> dict[Hashable, tuple[Freezer, float]]:
        """The plan itself, not a copy (never changed in place): for the cycle's thread."""
        with self._lock:
            return self._plan

    # The thread.

    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._run, name="gpulet-duty-cycle", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Thaw everything, end the thread, close what the freezers keep open, and clear the
        ledger."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            plan, self._plan = self._plan, {}
        for key, (fz, _) in plan.items():
            self._write(key, fz, freeze=False)
        self._let_go(plan)  # those held before and not now
        self._let_go({})  # and the plan's
        self._record(())

    def recover(self) -> None:
        """Thaw what the ledger lists (left frozen by an agent that died), then clear it."""
        if self._ledger is not None:
            thaw_left_frozen(self._ledger)
            self._recorded = ()

    def _run(self) -> None:
        while not self._stopping.is_set():
            if not self._current():
                self._let_go({})
                self._record(())  # nothing held: nothing for a next agent to thaw
                self._wake.wait()
                continue
            try:
                self.cycle()
            except Exception as e:  # never leave the thread: containers must keep being thawed
                log.warning("event=duty-cycle-error error=%r", str(e))

    def _wait(self, seconds: float) -> None:
        self._wake.wait(seconds)

    def _let_go(self, plan: Mapping[Hashable, tuple[Freezer, float]]) -> None:
        """Close the freezers held before that `plan` no longer holds (its container left
        it, or has another freezer now), and remember the plan's as held."""
        for key, fz in list(self._held.items()):
            entry = plan.get(key)
            if entry is None or entry[0] is not fz:
                _close(fz)
        self._held = {key: fz for key, (fz, _) in plan.items()}
        self._started = plan

    def cycle(self) -> None:
        """One period: freeze the plan's containers, thaw each when its fraction is spent
        (or at once when it leaves the plan), then wait out the rest of the period."""
        plan = self._current()
        if plan is not self._started:
            self._let_go(plan)
            self._names = tuple(sorted({fz.name for fz, _ in plan.values()}))
        self._record(self._names)
        period, start = self.period_s, self._clock()
        #: Frozen in this period: when each is due to be thawed, in that order (a stable
        #: sort: the plan's order among equals); those before `done` are thawed.
        frozen: list[tuple[float, Hashable, Freezer]] = []
        done = 0
        try:
            for key, (fz, f) in plan.items():
                try:
                    fz.freeze()
                except OSError as e:
                    self._failed(key, fz, e, freeze=True)
                else:
                    frozen.append((start + f * period, key, fz))
            self.writes += len(frozen)
            frozen.sort(key=_due)
            while done < len(frozen) and not self._stopping.is_set():
                now, current = self._clock(), self._current()
                if current is not plan:  # a new plan (or a failure) since: each judged again
                    plan, frozen, done = current, self._again(frozen[done:], current, start), 0
                thawed = done
                while done < len(frozen) and frozen[done][0] <= now + _EPS:
                    _, key, fz = frozen[done]
                    done += 1
                    try:
                        fz.thaw()
                    except OSError as e:
                        self._failed(key, fz, e, freeze=False)
                        thawed += 1  # not written
                self.writes += done - thawed
                if done < len(frozen):
                    self._pause(frozen[done][0] - now)
        finally:
            for _, key, fz in frozen[done:]:  # stopping, or an error above
                self._write(key, fz, freeze=False)
        while not self._stopping.is_set():
            left = start + self.period_s - self._clock()
            if left <= _EPS:
                break
            self._pause(left)

    def _again(
        self, frozen: list[tuple[float, Hashable, Freezer]], plan: Plan, start: float
    ) -> list[tuple[float, Hashable, Freezer]]:
        """The containers still frozen, each due when the new plan says (at once when it
        left the plan, or has another freezer: restarted), in that order."""
        out = []
        for _, key, fz in frozen:
            entry = plan.get(key)
            same = entry is not None and (entry[0] is fz or entry[0] == fz)
            out.append((start + entry[1] * self.period_s if entry and same else start, key, fz))
        out.sort(key=_due)
        return out

    def _write(self, key: Hashable, fz: Freezer, *, freeze: bool) -> bool:
        """Freeze or thaw; False (logged, thawed, out of the plan, closed) when it failed."""
        try:
            fz.freeze() if freeze else fz.thaw()
        except OSError as e:
            self._failed(key, fz, e, freeze=freeze)
            return False
        self.writes += 1
        return True

    def _failed(self, key: Hashable, fz: Freezer, e: OSError, *, freeze: bool) -> None:
        """A write failed: logged, thawed, out of the plan, closed, handed to `failures`
        (a thaw of a cgroup that is gone is none of these but the last two: its container
        went, and nothing is frozen)."""
        gone = e.errno in {errno.ENOENT, errno.ENODEV}
        reason = f"{fz.name}: {e.strerror or e}"
        if freeze or not gone:
            log.warning(
                "event=%s container=%s reason=%r",
                "freeze-failed" if freeze else "thaw-failed",
                "/".join(map(str, key)) if isinstance(key, tuple) else key,
                reason,
            )
        if freeze:
            with contextlib.suppress(OSError):
                fz.thaw()
        with contextlib.suppress(OSError):
            _close(fz)
        if self._held.get(key) is fz:
            del self._held[key]  # closed: not again when the cycle lets it go
        with self._lock:
            if key in self._plan and self._plan[key][0] == fz:
                self._plan = {k: v for k, v in self._plan.items() if k != key}
            if freeze or not gone:
                self._failures[key] = reason

    def _record(self, names: tuple[str, ...]) -> None:
        if self._ledger is None or names == self._recorded:
            return
        try:
            if names:
                tmp = self._ledger.with_name(f"{self._ledger.name}.tmp")
                tmp.write_text(json.dumps(list(names)))
                tmp.replace(self._ledger)
            else:
                self._ledger.unlink(missing_ok=True)
            self._recorded = names
        except OSError as e:
            log.warning("event=duty-ledger-unwritable path=%s reason=%r", self._ledger, str(e))


def thaw_left_frozen(ledger: Path) -> None:
    """Thaw every freezer a `DutyCycle` ledger lists, then remove it: what an agent that died
    mid-cycle left frozen. Run at start whether or not enforcement is on now."""
    try:
        names = json.loads(ledger.read_text())
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        log.warning("event=duty-ledger-unreadable path=%s reason=%r", ledger, str(e))
        names = []
    for name in names if isinstance(names, list) else []:
        try:
            fz = CgroupFreezer(Path(str(name)))
            try:
                fz.thaw()
            finally:
                fz.close()
            log.info("event=thawed-after-restart cgroup=%s", name)
        except (OSError, ValueError) as e:
            log.info("event=thaw-after-restart-skipped cgroup=%s reason=%r", name, str(e))
    try:
        ledger.unlink(missing_ok=True)
    except OSError as e:
        log.warning("event=duty-ledger-unwritable path=%s reason=%r", ledger, str(e))


# ---- the backstop ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShareUse:
    """One sample of one container's share of one GPU (shares below 100% of a GPU that is
    not held whole). `ref` is None when none of its processes is on the GPU now."""

    pod_uid: str
    container: str
    gpu_uuid: str
    share: int
    util: float
    ref: ContainerRef | None = None


@dataclass(frozen=True)
class OverShare:
    """A container caught keeping a GPU busier than its share (one report per episode)."""

    pod_uid: str
    container: str
    gpu_uuid: str
    share: int
    mean_percent: float
    window_s: float
    tolerance: float
    #: "throttled" (its cgroup is put on a duty cycle) or "reported"
    action: str
    #: With enforcement on but no duty cycle possible: why.
    note: str = ""


@dataclass
class _Share:
    window: Window
    #: The share over the same window: a batch slice's moves with what production leaves
    #: idle (agent.colocation); a production slice's is constant.
    given: Window
    over: bool = False
    controller: DutyController | None = None
    #: The container last seen with it (a restart is another container: another episode).
    ref: ContainerRef | None = None


@dataclass(frozen=True)
class ShareStatus:
    """What metrics show of one share: over its share now, and the fraction frozen."""

    over: bool
    frozen: float


@dataclass(frozen=True)
class Freezing:
    """How enforcement reaches a container: its freezer, and the thread cycling them."""

    locate: Callable[[ContainerRef], Freezer]
    duty: DutyCycle


class ComputeBackstop:
    """Judges each share every sample and, with `freezing`, holds over-share containers to
    their share. Call `observe` once per sample with every judged share that still exists:
    a share left out is forgotten, and its container thawed."""

    def __init__(
        self,
        settings: ComputeSettings | None = None,
        freezing: Freezing | None = None,
        report: Callable[[OverShare], None] = lambda o: None,
    ) -> None:
        self.settings = settings or ComputeSettings()
        self.freezing = freezing
        self._report = report
        #: Per share, published after every sample for the metrics thread (replaced whole,
        #: never changed in place).
        self.status: Mapping[ShareKey, ShareStatus] = {}
        self._shares: dict[ShareKey, _Share] = {}
        #: Per container: the container (its ID: a restarted one is another) and its freezer.
        self._freezers: dict[ContainerKey, tuple[ContainerRef, Freezer]] = {}
        #: Containers that cannot be frozen (no cgroup found, a write failed): which, and why.
        self._unfreezable: dict[ContainerKey, tuple[ContainerRef | None, str]] = {}

    def observe(self, uses: Iterable[ShareUse], now: float) -> list[OverShare]:
        caught: list[OverShare] = []
        if self.freezing is not None:
            for key, reason in self.freezing.duty.failures().items():
                if isinstance(key, tuple) and len(key) == 2:
                    self._give_up(key, reason)
        seen: set[ShareKey] = set()
        refs: dict[ContainerKey, ContainerRef] = {}
        for use in uses:
            key = (use.pod_uid, use.container, use.gpu_uuid)
            seen.add(key)
            if use.ref is not None:
                refs[(use.pod_uid, use.container)] = use.ref
            try:
                found = self._judge(key, use, refs.get((use.pod_uid, use.container)), now)
            except Exception as e:  # one share's trouble is not every share's
                log.warning("event=compute-backstop-error share=%s error=%r", "/".join(key), str(e))
                continue
            if found is not None:
                caught.append(found)
        for gone in set(self._shares) - seen:
            del self._shares[gone]
        self._plan()
        self.status = {
            key: ShareStatus(s.over, s.controller.fraction if s.controller else 0.0)
            for key, s in self._shares.items()
        }
        return caught

    def stop(self) -> None:
        """Thaw every container and stop the duty cycle."""
        if self.freezing is not None:
            self.freezing.duty.stop()

    def _judge(
        self, key: ShareKey, use: ShareUse, ref: ContainerRef | None, now: float
    ) -> OverShare | None:
        s = self.settings
        share = self._shares.get(key)
        if share is None:
            window = (s.window_s, s.sample_s, s.max_gap_s)
            share = self._shares[key] = _Share(Window(*window), Window(*window))
        share.window.add(now, use.util)
        share.given.add(now, use.share)
        if ref is not None and share.ref not in (None, ref) and share.controller is None:
            share.over = False  # restarted while only reported: it may be held this time
        if ref is not None:
            share.ref = ref
        if share.controller is not None:
            share.controller.update(use.util, now)
            if share.controller.released(now):
                share.controller, share.over = None, False
                log.info(
                    "event=compute-released pod_uid=%s container=%s gpu=%s share=%d",
                    *key,
                    use.share,
                )
            return None
        mean = share.window.mean()  # not while held: the controller goes by each sample
        given = share.given.mean()
        over = mean is not None and mean > (use.share if given is None else given) + s.tolerance
        if not over:
            if share.over:
                log.info("event=over-share-ended pod_uid=%s container=%s gpu=%s", *key)
            share.over = False
            return None
        if share.over:
            return None  # the same episode, reported already
        share.over = True
        assert mean is not None
        action, note = "reported", ""
        if self.freezing is not None:
            note = self._freezable(key[:2], ref)
            if not note:
                share.controller = DutyController(use.share, s, mean, now)
                action = "throttled"
        found = OverShare(*key, use.share, mean, s.window_s, s.tolerance, action, note)
        log.warning(
            "event=over-share pod_uid=%s container=%s gpu=%s share=%d util_mean=%.1f "
            "window_s=%g tolerance=%g action=%s%s",
            *key,
            use.share,
            mean,
            s.window_s,
            s.tolerance,
            action,
            f" reason={note!r}" if note else "",
        )
        self._report(found)
        return found

    def _freezable(self, container: ContainerKey, ref: ContainerRef | None) -> str:
        """Why the container cannot be frozen; empty when its freezer is at hand (located now
        if need be). A container that restarted (another ID) is looked for again."""
        known = self._freezers.get(container)
        if known is not None and (ref is None or known[0] == ref):
            return ""
        bad = self._unfreezable.get(container)
        if bad is not None and (ref is None or bad[0] == ref):
            return bad[1]
        if ref is None or self.freezing is None:
            return "none of its processes is on the GPU now"
        try:
            self._freezers[container] = (ref, self.freezing.locate(ref))
        except (CgroupError, OSError, ValueError) as e:
            self._unfreezable[container] = (ref, str(e))
            return str(e)
        self._unfreezable.pop(container, None)
        return ""

    def _give_up(self, container: ContainerKey, reason: str) -> None:
        """A cgroup write failed: the duty cycle thawed it. The container's episode ends; if
        it is still over its share the next one is reported, and throttled only if it is
        another container by then (restarted)."""
        known = self._freezers.pop(container, None)
        ref = known[0] if known else self._unfreezable.get(container, (None, ""))[0]
        self._unfreezable[container] = (ref, reason)
        for key, share in self._shares.items():
            if key[:2] == container:
                share.controller, share.over = None, False
        log.warning(
            "event=compute-backstop-gave-up pod_uid=%s container=%s reason=%r", *container, reason
        )

    def _plan(self) -> None:
        """Hand the duty cycle each held container's largest fraction, with its freezer (a
        container that restarted while held is looked for again); forget the containers
        that are gone."""
        fractions: dict[ContainerKey, float] = {}
        refs: dict[ContainerKey, ContainerRef | None] = {}
        for (pod_uid, name, _), share in self._shares.items():
            if share.controller is not None:
                key = (pod_uid, name)
                fractions[key] = max(fractions.get(key, 0.0), share.controller.fraction)
                refs[key] = refs.get(key) or share.ref
        live = {key[:2] for key in self._shares}
        for gone in set(self._freezers) - live:
            del self._freezers[gone]
        for gone in set(self._unfreezable) - live:
            del self._unfreezable[gone]
        if self.freezing is None:
            return
        plan: dict[Hashable, tuple[Freezer, float]] = {}
        for key, f in fractions.items():
            reason = self._freezable(key, refs[key])
            if reason:
                self._give_up(key, reason)  # restarted, and its new cgroup is not found
            else:
                plan[key] = (self._freezers[key][1], f)
        self.freezing.duty.set_plan(plan)
