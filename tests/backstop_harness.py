"""Real processes for the compute backstop (agent/backstop.py): containers that are real
cgroups holding a workload under the limiter on the fake GPU, a tenant that zeroes its
region's pacing clock, and a fake NVML that reports each workload's SM utilisation from the
fake GPU's own busy time. The agent's `Monitor` runs in this process, as in the agent.

- The workload (`WORKLOAD`, Python through ctypes, as a CUDA program through the driver API)
  launches 1 ms kernels in batches of 25 and waits for the batch before last, so at most
  about 50 ms of work is queued; every 10 ms it prints `busy <CLOCK_MONOTONIC ns> <busy ns>`
  from the fake's `gpuletFakeBusyNs` (GPU time completed on its timeline).
- The tenant (`TAMPER`) maps the region file and writes 0 over device 0's `pace_ns` and
  `throttled_ns` every millisecond, from a second process in the same cgroup.
- The fake NVML (`FakeNvml`) reports, per sample, the workload's busy time since the last
  sample over the time between the two reports: what NVML's per-process SM utilisation
  ("since the previous sample") reports on a real GPU.

A container's cgroup is made where `find_container_cgroup` finds it, under a private root
(`--cgroup-root`): on cgroup v2 a real directory `<v2 mount>/gpulet-bs-*` holding
`kubepods/pod<uid>/<id>`; on v1 a temporary root whose `cpuset/kubepods/pod<uid>/<id>` is a
plain directory and whose `freezer` links to a real `<freezer mount>/gpulet-bs-*`. Processes
are put in it before they exec, so /proc/<pid>/cgroup names the container from the start.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.backstop import ComputeSettings, DutyCycle, Freezing, OverShare, locate_freezer
from agent.cgroups import ContainerRef, ProcessTable
from agent.monitor import Finding, Monitor
from agent.usage import ProcessUsage
from deviceplugin.grants import GpuShare, Grant
from gpulet.api.resources import GPU_RESOURCE
from native.region import DeviceLimit, Limits, setup
from tests.fakes.cuda import build_fake_cuda, fake_uuid
from tests.limiter_harness import build_limiter

ROOT = Path(__file__).resolve().parent.parent
CGROUP = Path("/sys/fs/cgroup")
GPU = fake_uuid(0)
#: Offsets in the region file of device 0's fields (docs/limiter.md): the agent's feedback
#: (util_permille, then util_stamp_ns), the pacing clock, the time launches were held back.
UTIL_AT, PACE_AT, THROTTLED_AT = 96 + 76, 96 + 88, 96 + 96

WORKLOAD = r"""
import ctypes, sys, time
cu = ctypes.CDLL("libcuda.so.1")
def ok(r, what):
    if r:
        sys.exit(f"workload: {what}: CUDA error {r}")
ok(cu.cuInit(0), "cuInit")
dev, ctx = ctypes.c_int(), ctypes.c_void_p()
ok(cu.cuDeviceGet(ctypes.byref(dev), 0), "cuDeviceGet")
ok(cu.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
ok(cu.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
launch = cu.cuLaunchKernel
launch.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
kernel = ctypes.c_void_p(1)  # any handle: the fake runs gridDimX microseconds
events = [ctypes.c_void_p(), ctypes.c_void_p()]
for e in events:
    ok(cu.cuEventCreate(ctypes.byref(e), 0), "cuEventCreate")
busy, last, b = ctypes.c_ulonglong(), 0, 0
while True:
    if b:
        ok(cu.cuEventSynchronize(events[(b - 1) % 2]), "cuEventSynchronize")
    for _ in range(25):
        ok(launch(kernel, 1000, 1, 1, 1, 1, 1, 0, None, None, None), "cuLaunchKernel")
    ok(cu.cuEventRecord(events[b % 2], None), "cuEventRecord")
    b += 1
    now = time.monotonic_ns()
    if now - last >= 10_000_000:
        ok(cu.gpuletFakeBusyNs(0, ctypes.byref(busy)), "gpuletFakeBusyNs")
        print(f"busy {now} {busy.value}", flush=True)
        last = now
"""

TAMPER = f"""
import mmap, os, struct, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0)
permille = int(sys.argv[2]) * 10
zero = bytes(8)
while True:
    m[{PACE_AT}:{PACE_AT + 8}] = zero
    m[{THROTTLED_AT}:{THROTTLED_AT + 8}] = zero
    struct.pack_into("<IQ", m, {UTIL_AT}, permille, time.monotonic_ns())
    time.sleep(0.00005)
"""


def _v2_mount() -> Path:
    return CGROUP if (CGROUP / "cgroup.controllers").is_file() else CGROUP / "unified"


def _can_make_cgroup(parent: Path, marker: str) -> bool:
    """Whether a cgroup with `marker` can be made (and removed) under `parent`."""
    if not (parent / "cgroup.procs").is_file():
        return False
    probe = parent / f"gpulet-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    try:
        return (probe / marker).is_file()
    finally:
        with suppress(OSError):
            probe.rmdir()


def usable_versions() -> list[int]:
    """The cgroup versions whose freezer this process can use: both on a hybrid host."""
    v2 = [2] if _can_make_cgroup(_v2_mount(), "cgroup.freeze") else []
    return v2 + ([1] if _can_make_cgroup(CGROUP / "freezer", "freezer.state") else [])


def cgroup_version_usable() -> tuple[int | None, str]:
    """The cgroup version whose freezer this process can use (2 first), or None and why."""
    versions = usable_versions()
    if versions:
        return versions[0], ""
    return None, (
        f"no cgroup freezer to use: cannot make a cgroup with cgroup.freeze under {_v2_mount()} "
        f"(v2) nor one with freezer.state under {CGROUP / 'freezer'} (v1); root and a "
        "writable cgroup mount are needed"
    )


@dataclass
class Cgroup:
    """One container's cgroup under a private cgroup root."""

    root: Path  # what the agent is given as its cgroup root
    procs: Path  # the cgroup.procs that processes are put in through
    freezer: Path  # the real freezer directory (removed at the end)
    ref: ContainerRef
    made: list[Path] = field(default_factory=list)


@contextmanager
def container_cgroup(version: int, work: Path) -> Iterator[Cgroup]:
    """A real cgroup for one container (see the module's note); removed afterwards, after
    its processes are gone."""
    ref = ContainerRef(str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex)
    below = Path("kubepods") / f"pod{ref.pod_uid}" / ref.container_id
    private = f"gpulet-bs-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    if version == 2:
        top = _v2_mount() / private
        real = top / below
        group = Cgroup(top, real / "cgroup.procs", real, ref)
    else:
        top = CGROUP / "freezer" / private
        real = top / below
        fake_root = work / f"cgroot-{ref.container_id[:8]}"
        (fake_root / "cpuset" / below).mkdir(parents=True)
        (fake_root / "freezer").symlink_to(top)
        group = Cgroup(fake_root, real / "cgroup.procs", real, ref)
    real.mkdir(parents=True)
    group.made = [real, real.parent, real.parent.parent, top]
    try:
        yield group
    finally:
        for d in group.made:  # leaf first; a cgroup with processes left refuses (logged)
            try:
                d.rmdir()
            except OSError as e:
                print(f"backstop harness: cannot remove {d}: {e}", file=sys.stderr)


class BusyMeter:
    """The workload's `busy` lines, read as they come (a thread)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.points: list[tuple[int, int]] = []  # (CLOCK_MONOTONIC ns, busy ns)
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self._thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            word, stamp, busy = line.split()
            if word == "busy":
                with self._lock:
                    self.points.append((int(stamp), int(busy)))
                self._first.set()

    def wait_first(self, timeout: float) -> bool:
        return self._first.wait(timeout)

    def latest(self) -> tuple[int, int] | None:
        with self._lock:
            return self.points[-1] if self.points else None

    def busy_at(self, t_ns: float) -> float:
        """Cumulative busy time at `t_ns`, interpolated between the reports around it."""
        with self._lock:
            pts = list(self.points)
        if t_ns <= pts[0][0]:
            return float(pts[0][1])
        for (t0, b0), (t1, b1) in itertools.pairwise(pts):
            if t0 <= t_ns <= t1:
                return b0 + (b1 - b0) * (t_ns - t0) / (t1 - t0) if t1 > t0 else float(b1)
        return float(pts[-1][1])

    def utilisation(self, start_ns: float, seconds: float) -> float:
        """Percent of [start, start + seconds] the workload's GPU was busy."""
        end = start_ns + seconds * 1e9
        return (self.busy_at(end) - self.busy_at(start_ns)) / (seconds * 1e9) * 100


class FakeNvml:
    """A UsageSource: each workload's SM utilisation since the previous sample, from its
    fake GPU's busy time (what NVML's per-process utilisation reports on a real GPU)."""

    def __init__(self) -> None:
        self._workloads: dict[int, BusyMeter] = {}
        self._last: dict[int, tuple[int, int]] = {}

    def add(self, pid: int, meter: BusyMeter) -> None:
        self._workloads[pid] = meter
        first = meter.latest()
        if first is not None:
            self._last[pid] = first

    def sample(self) -> list[ProcessUsage]:
        out = []
        for pid, meter in self._workloads.items():
            now, before = meter.latest(), self._last.get(pid)
            util = None
            if now is not None and before is not None and now[0] > before[0]:
                util = round(min(100.0, (now[1] - before[1]) / (now[0] - before[0]) * 100))
            if now is not None:
                self._last[pid] = now
            out.append(ProcessUsage(GPU, pid, 512, util))
        return out


@dataclass(frozen=True)
class Tenant:
    """One container of the scenario: `tamper`: its pacing clock is zeroed continuously."""

    name: str
    tamper: bool
    share: int = 30


@dataclass
class Outcome:
    name: str
    #: GPU-side utilisation (%), per second and per 10 s window, from the workload's first
    #: report; the monitor's view of the same (its samples, %).
    per_second: list[float]
    windows: list[float]
    sampled: list[float]
    #: The largest fraction of a period it was frozen, and how many freezes were written.
    max_frozen: float
    freezes: int


@dataclass
class Run:
    outcomes: dict[str, Outcome]
    found: list[Finding]

    def over_share(self, name: str) -> list[OverShare]:
        return [f for f in self.found if isinstance(f, OverShare) and f.container == name]


class _CountingFreezer:
    """A freezer that counts its freezes (for 'never frozen')."""

    def __init__(self, inner: Any, counts: dict[str, int], name: str) -> None:
        self._inner, self._counts, self._name = inner, counts, name

    @property
    def name(self) -> str:
        return str(self._inner.name)

    def freeze(self) -> None:
        self._inner.freeze()
        self._counts[self._name] = self._counts.get(self._name, 0) + 1

    def thaw(self) -> None:
        self._inner.thaw()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _CountingFreezer) and other._inner == self._inner

    def __hash__(self) -> int:
        return hash(self._inner)


def build(work: Path) -> tuple[Path, Path]:
    """The fake libcuda and the limiter, built into `work`: (cuda dir, limiter)."""
    (work / "cuda").mkdir(parents=True, exist_ok=True)
    return build_fake_cuda(work / "cuda"), build_limiter(work / "limiter")


def run(
    work: Path,
    tenants: list[Tenant],
    *,
    seconds: float,
    enforce: bool,
    version: int,
    built: tuple[Path, Path] | None = None,
    settings: ComputeSettings | None = None,
) -> Run:
    """Start each tenant's container (workload, and the tamperer if asked), run the monitor
    every second for `seconds` from the first report of the workloads, and measure."""
    work.mkdir(parents=True, exist_ok=True)
    cuda_dir, limiter = built or build(work)
    settings = settings or ComputeSettings()
    nvml = FakeNvml()
    grants, pods, meters, cgroups = [], [], {}, {}
    freezes: dict[str, int] = {}
    found: list[Finding] = []
    with ExitStack() as stack:
        for t in tenants:
            group = stack.enter_context(container_cgroup(version, work))
            procs: list[subprocess.Popen[str]] = []
            stack.callback(_finish, group, version, procs)  # before the cgroup is removed
            cgroups[t.name] = group
            region = work / f"region-{t.name}"
            setup(region, Limits((DeviceLimit(GPU, 4096, t.share),)))
            env = {
                **os.environ,
                "LD_LIBRARY_PATH": str(cuda_dir),
                "LD_PRELOAD": str(limiter),
                "GPULET_REGION_DIR": str(region),
                "GPULET_FAKE_CUDA": "",
            }
            enter = ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(group.procs)]
            workload = subprocess.Popen(
                [*enter, sys.executable, "-c", WORKLOAD],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            procs.append(workload)
            if t.tamper:
                procs.append(
                    subprocess.Popen(
                        [
                            *enter,
                            sys.executable,
                            "-c",
                            TAMPER,
                            str(region / "region"),
                            str(t.share),
                        ],
                        text=True,
                    )
                )
            meters[t.name] = (workload.pid, BusyMeter(workload))
            share = GpuShare(GPU, t.share, 4096, False, index=0)
            grants.append(
                Grant(
                    GPU_RESOURCE,
                    (f"{t.name}::00",),
                    (share,),
                    (),
                    group.ref.pod_uid,
                    t.name,
                    str(region),
                )
            )
            pods.append(
                {
                    "metadata": {"uid": group.ref.pod_uid, "name": t.name, "namespace": "default"},
                    "status": {
                        "phase": "Running",
                        "containerStatuses": [
                            {
                                "name": t.name,
                                "containerID": f"containerd://{group.ref.container_id}",
                            }
                        ],
                    },
                }
            )
        for name, (_, meter) in meters.items():
            if not meter.wait_first(30):
                raise RuntimeError(f"workload {name} never reported (its stderr says why)")
        for pid, meter in meters.values():
            nvml.add(pid, meter)
        duty = DutyCycle(settings.period_s)
        names = {g.ref: n for n, g in cgroups.items()}

        def locate(ref: ContainerRef) -> _CountingFreezer:
            group = cgroups[names[ref]]
            return _CountingFreezer(locate_freezer(group.root, ref), freezes, names[ref])

        monitor = Monitor(
            nvml,
            ProcessTable(Path("/proc")),
            lambda: grants,
            lambda: pods,
            enforce="on" if enforce else "report",
            report=found.append,
            compute=settings,
            freezing=Freezing(locate, duty),
        )
        duty.start()
        stack.callback(monitor.stop)
        start = time.monotonic()
        starts = {name: meter.points[0][0] for name, (_, meter) in meters.items()}
        sampled: dict[str, list[float]] = {name: [] for name in meters}
        frozen: dict[str, float] = dict.fromkeys(meters, 0.0)
        for k in range(1, int(seconds) + 1):
            time.sleep(max(0.0, start + k * settings.sample_s - time.monotonic()))
            monitor.tick()
            for c in monitor.latest.containers:
                sampled[c.container].append(c.util_percent or 0.0)
            for (_, name, _), status in monitor.compute.status.items():
                frozen[name] = max(frozen[name], status.frozen)
        outcomes = {}
        for name, (_, meter) in meters.items():
            t0 = starts[name]
            per_second = [meter.utilisation(t0 + i * 1e9, 1.0) for i in range(int(seconds))]
            windows = [meter.utilisation(t0 + i * 10e9, 10.0) for i in range(int(seconds) // 10)]
            outcomes[name] = Outcome(
                name, per_second, windows, sampled[name], frozen[name], freezes.get(name, 0)
            )
    return Run(outcomes, found)


def _finish(group: Cgroup, version: int, procs: list[subprocess.Popen[str]]) -> None:
    """Thaw the container whatever happened (a frozen v1 task cannot even die), then end its
    processes."""
    file = group.freezer / ("cgroup.freeze" if version == 2 else "freezer.state")
    with suppress(OSError):
        file.write_text("0" if version == 2 else "THAWED")
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()
        if p.stdout is not None:
            p.stdout.close()


def tidy(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
