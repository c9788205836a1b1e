"""GPU acceptance benchmark of the limiter (libgpulet-limiter.so) on one real NVIDIA GPU.

Every measurement runs in a fresh child process (python3 -c, or bench/gpu/launch_loop.c) with
LD_PRELOAD=native/lib/libgpulet-limiter.so and GPULET_REGION_DIR=<a container directory set
up like `gpulet limiter setup DIR --device UUID:MEMORY_MIB:CORE_PERCENT`>. What it checks:

  memory      cap 4096 MiB, PyTorch and CuPy separately: the total they report is exactly
              4096 MiB, 3 GiB can be allocated, 8 GiB raises out-of-memory; PyTorch again with
              expandable segments (the VMM path); nvidia-smi under the preload shows the cap.
  two procs   one 4096 MiB cap: A holds 3 GiB, then B asks for 2 GiB (must fail) and for
              512 MiB (must succeed).
  compute     a bf16 8192x8192 matmul loop; completed iterations per 1 s window (from CUDA
              events), unthrottled (the baseline) then at core 10/30/50/70%; a share passes
              when every window is within +-5 points of it. The first 2 windows of every run
              are warm-up and skipped.
  overhead    at core 100%: host ns per cuLaunchKernel of an empty kernel, best of 3 runs with
              and without the preload (target: at most 300 ns more), and matmul throughput
              with and without the preload (target: at most 1% lower).

Each figure is printed as it is measured; the end is a Markdown table for docs/BENCHMARKS.md.
Failed checks are results: the exit status is 0 when the run completes, 2 when there is no GPU
or the library is not built.

Run as root from the repository root, with PyTorch and CuPy installed for python3:
    make native && python3 bench/gpu_limiter.py [--quick] [--out FILE]
Takes about 5 minutes; --quick (5 s baseline, 10 s per share, shorter launch loops) about 2.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
LIBRARY = REPO / "native" / "lib" / "libgpulet-limiter.so"
LAUNCH_LOOP_C = REPO / "bench" / "gpu" / "launch_loop.c"
REGION_C = REPO / "native" / "limiter" / "region.c"
VENV_PYTHON = REPO / ".venv" / "bin" / "python"

MIB = 1 << 20
CAP_MIB = 4096
ROOMY_MIB = 16384  # cap of the containers that measure compute only
SHARES = (10, 30, 50, 70)
TOLERANCE = 0.05  # of the baseline, either side of the share
WARMUP_WINDOWS = 2
LAUNCH_TARGET_NS = 300.0
MATMUL_LOSS_TARGET_PCT = 1.0
MARK = "@@ "  # children print their records as MARK + one JSON object
# The parent's own settings must not leak into the children.
STRIPPED_ENV = (
    "LD_PRELOAD",
    "GPULET_REGION_DIR",
    "PYTORCH_CUDA_ALLOC_CONF",
    "PYTORCH_ALLOC_CONF",
    "CUDA_VISIBLE_DEVICES",
    "CUDA_LAUNCH_BLOCKING",
)

Record = dict[str, Any]

# ---- the children's code ---------------------------------------------------------------------

PRELUDE = """
import json, sys
def emit(event, **kw):
    print("@@ " + json.dumps(dict(event=event, **kw)), flush=True)
"""

TORCH_PRELUDE = (
    PRELUDE
    + """
try:
    import torch
except Exception as e:
    emit("import-error", error=f"{type(e).__name__}: {e}")
    sys.exit(3)
if not torch.cuda.is_available():
    emit("import-error", error="torch.cuda.is_available() is False")
    sys.exit(3)
emit("versions", torch=torch.__version__, cuda=str(torch.version.cuda),
     device=torch.cuda.get_device_name(0))

def alloc(label, nbytes):
    try:
        t = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        torch.cuda.synchronize()
    except Exception as e:
        oom = isinstance(e, torch.cuda.OutOfMemoryError)
        first = (str(e).splitlines() or [""])[0][:160]
        emit("alloc", label=label, bytes=nbytes, ok=False, oom=oom, error=type(e).__name__,
             detail=first)
        return None
    emit("alloc", label=label, bytes=nbytes, ok=True, oom=False, error="")
    return t
"""
)

MEMORY_TORCH = (
    TORCH_PRELUDE
    + """
free, total = torch.cuda.mem_get_info()
emit("mem_get_info", free=free, total=total)
x = alloc("3 GiB", 3 << 30)
if x is not None:
    free, total = torch.cuda.mem_get_info()
    emit("mem_get_info_holding", free=free, total=total)
    expandable = None
    try:
        flags = [s.get("is_expandable") for s in torch.cuda.memory._snapshot()["segments"]]
        if any(f is not None for f in flags):
            expandable = any(bool(f) for f in flags)
    except Exception:
        pass
    emit("segments", expandable=expandable)
del x
torch.cuda.empty_cache()
y = alloc("8 GiB", 8 << 30)
del y
torch.cuda.empty_cache()
emit("done")
"""
)

MEMORY_CUPY = (
    PRELUDE
    + """
try:
    import cupy
    cupy.cuda.runtime.getDeviceCount()
except Exception as e:
    emit("import-error", error=f"{type(e).__name__}: {e}")
    sys.exit(3)
emit("versions", cupy=cupy.__version__, runtime=cupy.cuda.runtime.runtimeGetVersion())
pool = cupy.get_default_memory_pool()

def alloc(label, nbytes):
    try:
        t = cupy.empty(nbytes, dtype=cupy.uint8)
        cupy.cuda.Device().synchronize()
    except Exception as e:
        oom = isinstance(e, cupy.cuda.memory.OutOfMemoryError)
        first = (str(e).splitlines() or [""])[0][:160]
        emit("alloc", label=label, bytes=nbytes, ok=False, oom=oom, error=type(e).__name__,
             detail=first)
        return None
    emit("alloc", label=label, bytes=nbytes, ok=True, oom=False, error="")
    return t

free, total = cupy.cuda.runtime.memGetInfo()
emit("mem_get_info", free=free, total=total)
x = alloc("3 GiB", 3 << 30)
del x
pool.free_all_blocks()
y = alloc("8 GiB", 8 << 30)
del y
pool.free_all_blocks()
emit("done")
"""
)

HOLDER = (
    TORCH_PRELUDE
    + """
import os, time
release, patience = sys.argv[1], float(sys.argv[2])
x = alloc("3 GiB", 3 << 30)
free, total = torch.cuda.mem_get_info()
emit("holding", ok=x is not None, free=free, total=total)
deadline = time.monotonic() + patience
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.05)
emit("released", by_file=os.path.exists(release))
"""
)

ASKER = (
    TORCH_PRELUDE
    + """
free, total = torch.cuda.mem_get_info()
emit("mem_get_info", free=free, total=total)
y = alloc("2 GiB", 2 << 30)
del y
torch.cuda.empty_cache()
z = alloc("512 MiB", 512 << 20)
del z
emit("done")
"""
)

# Iterations are counted by completion time on the GPU: an event after each matmul, read
# back once per batch of k (about 50 ms unthrottled), so the host syncs rarely.
MATMUL = (
    TORCH_PRELUDE
    + """
import bisect, time
duration, k, n = float(sys.argv[1]), int(sys.argv[2]), 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
c = torch.empty(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(3):
    torch.matmul(a, b, out=c)
torch.cuda.synchronize()
t0 = time.perf_counter()
for _ in range(5):
    torch.matmul(a, b, out=c)
torch.cuda.synchronize()
per_iter = (time.perf_counter() - t0) / 5
if k <= 0:
    k = max(1, min(50, round(0.05 / per_iter)))
emit("calibrated", k=k, ms_per_iter=round(per_iter * 1e3, 3))
events = [torch.cuda.Event(enable_timing=True) for _ in range(k)]
start = torch.cuda.Event(enable_timing=True)
start.record()
done, window = [], 0
while True:
    for e in events:
        torch.matmul(a, b, out=c)
        e.record()
    events[-1].synchronize()
    done.extend(start.elapsed_time(e) / 1e3 for e in events)
    last = done[-1]
    while window + 1 <= min(last, duration):
        iters = bisect.bisect_left(done, window + 1) - bisect.bisect_left(done, window)
        emit("window", index=window, iters=iters)
        window += 1
    if last >= duration:
        break
emit("done", windows=window, iterations=len(done), seconds=round(done[-1], 3), k=k)
"""
)

# Last-resort container setup: the limiter's own region.c makes the region and the limits.
MKREGION_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "region.h"
int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: mkregion DIR UUID MEMORY_MIB CORE_PERCENT\n");
        return 1;
    }
    struct gpulet_limits l;
    memset(&l, 0, sizeof l);
    l.count = 1;
    snprintf(l.dev[0].uuid, sizeof l.dev[0].uuid, "%s", argv[2]);
    l.dev[0].memory_bytes = strtoull(argv[3], NULL, 10) << 20;
    l.dev[0].core_percent = (uint32_t)strtoul(argv[4], NULL, 10);
    char text[4096], path[4096], err[GPULET_ERR_LEN] = "";
    int n = gpulet_limits_format(&l, text, sizeof text);
    if (n < 0) {
        fprintf(stderr, "mkregion: cannot format the limits (%d)\n", n);
        return 1;
    }
    snprintf(path, sizeof path, "%s/region", argv[1]);
    if (gpulet_region_create(path, &l, err, sizeof err) != 0) {
        fprintf(stderr, "mkregion: %s\n", err);
        return 1;
    }
    snprintf(path, sizeof path, "%s/limits", argv[1]);
    FILE *f = fopen(path, "w");
    if (!f || fwrite(text, 1, (size_t)n, f) != (size_t)n || fclose(f) != 0) {
        perror(path);
        return 1;
    }
    return 0;
}
"""

# ---- results --------------------------------------------------------------------------------


@dataclass
class Check:
    """One row of the final table."""

    section: str
    name: str
    target: str
    measured: str
    status: str  # PASS, FAIL, INFO, SKIP or ERROR


@dataclass
class Facts:
    """What the header of the report says about the machine and the run."""

    gpu: str = "?"
    uuid: str = "?"
    memory_mib: str = "?"
    driver: str = "?"
    cuda: str = "?"
    torch: str = "not measured"
    cupy: str = "not measured"
    setup: str = "?"
    notes: list[str] = field(default_factory=list)


def say(text: str = "") -> None:
    print(text, flush=True)


def mib(nbytes: int) -> str:
    return f"{nbytes // MIB} MiB" if nbytes % MIB == 0 else f"{nbytes / MIB:.2f} MiB ({nbytes} B)"


# ---- child processes -----------------------------------------------------------------------

LIVE: set[Child] = set()


class Child:
    """A child process whose stdout is read as it comes: MARK lines are records, the rest is
    echoed. stderr goes to a file; the limiter's log lines and, on failure, its tail are shown
    when the child is finished."""

    def __init__(
        self,
        label: str,
        argv: Sequence[str],
        env: dict[str, str],
        timeout: float,
        on_record: Callable[[Record], None] | None = None,
    ) -> None:
        self.label = label
        self.records: list[Record] = []
        self.timed_out = False
        self.returncode: int | None = None
        self._on_record = on_record
        self._cond = threading.Condition()
        self._eof = False
        self._show_failed = False
        self._deadline = time.monotonic() + timeout
        # Closed by finish(), which every path through the benchmark calls.
        self._stderr = tempfile.TemporaryFile(  # noqa: SIM115
            mode="w+", encoding="utf-8", errors="replace"
        )
        self.proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            errors="replace",
            bufsize=1,
        )
        LIVE.add(self)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.rstrip("\n")
            if line.startswith(MARK):
                try:
                    rec: Record = json.loads(line[len(MARK) :])
                except json.JSONDecodeError:
                    say(f"    {self.label} | {line}")
                    continue
                if self._on_record is not None:
                    try:
                        self._on_record(rec)
                    except Exception as e:  # keep draining stdout whatever happens
                        if not self._show_failed:
                            say(f"    {self.label}: cannot show {rec}: {type(e).__name__}: {e}")
                        self._show_failed = True
                else:
                    fields = " ".join(f"{k}={v}" for k, v in rec.items() if k != "event")
                    say(f"    {self.label}: {rec.get('event')} {fields}")
                with self._cond:
                    self.records.append(rec)
                    self._cond.notify_all()
            elif line.strip():
                say(f"    {self.label} | {line}")
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def wait_for(self, event: str, timeout: float) -> Record | None:
        """The first record of this event, waiting for it; None if the child ends first."""
        end = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self.record(event)
                left = end - time.monotonic()
                if found is not None or self._eof or left <= 0:
                    return found
                self._cond.wait(min(left, 0.5))

    def record(self, event: str) -> Record | None:
        return next((r for r in self.records if r.get("event") == event), None)

    def all(self, event: str) -> list[Record]:
        return [r for r in self.records if r.get("event") == event]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def finish(self) -> int:
        """Waits for the exit (killing the child at its deadline) and reports its stderr."""
        if self.returncode is not None:
            return self.returncode
        try:
            self.returncode = self.proc.wait(timeout=max(1.0, self._deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.timed_out = True
            self.kill()
            self.returncode = self.proc.wait()
        self._reader.join(timeout=10)
        LIVE.discard(self)
        self._stderr.seek(0)
        lines = self._stderr.read().splitlines()
        self._stderr.close()
        limiter = list(dict.fromkeys(ln for ln in lines if "gpulet-limiter:" in ln))
        for ln in limiter[:10]:
            say(f"    {self.label} limiter log: {ln.strip()}")
        if self.timed_out:
            say(f"    {self.label}: TIMED OUT, killed")
        if self.returncode != 0:
            tail = "; last lines of stderr:" if lines else ", nothing on stderr"
            say(f"    {self.label}: exit status {self.returncode}{tail}")
            for ln in lines[-15:]:
                say(f"    {self.label} ! {ln}")
        return self.returncode

    def outcome(self) -> str:
        """Why records may be missing, for the table."""
        if self.timed_out:
            return "child timed out"
        return f"child exited {self.returncode}"


def run_child(
    label: str,
    argv: Sequence[str],
    env: dict[str, str],
    timeout: float,
    on_record: Callable[[Record], None] | None = None,
) -> Child:
    child = Child(label, argv, env, timeout, on_record)
    child.finish()
    return child


def run(
    argv: Sequence[str], env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False
    )


# ---- containers ------------------------------------------------------------------------------


class SetupError(RuntimeError):
    pass


class Containers:
    """Container directories (limits + region) made with the first setup method that works:
    the Python API (native.region), the CLI (`gpulet limiter setup`), region.c compiled here,
    and at last a limits file alone (per-process limits only, loudly)."""

    def __init__(self, root: Path, uuid: str, facts: Facts, pick_by_uuid: bool) -> None:
        self.root = root
        self.uuid = uuid
        self.pick_by_uuid = pick_by_uuid
        self.facts = facts
        self.count = 0
        self.chosen: tuple[str, Callable[[Path, int, int], None]] | None = None
        self.methods: list[tuple[str, Callable[[Path, int, int], None]]] = [
            ("Python API native.region.setup", self._api)
        ]
        pythons = [str(VENV_PYTHON)] if VENV_PYTHON.exists() else []
        pythons.append(sys.executable)
        for python in dict.fromkeys(pythons):
            for module in ("gpulet.cli", "gpulet"):
                self.methods.append(
                    (f"CLI {python} -m {module} limiter setup", self._cli_method(python, module))
                )
        self.methods.append(("native/limiter/region.c compiled here", self._c_helper))
        self.methods.append(("limits file only, NO shared region", self._limits_only))

    def make(self, memory_mib: int, core_percent: int) -> Path:
        self.count += 1
        directory = self.root / f"container{self.count:02d}-{memory_mib}MiB-{core_percent}pct"
        directory.mkdir(parents=True)
        methods = [self.chosen] if self.chosen else self.methods
        errors: list[str] = []
        for name, method in methods:
            for stale in directory.iterdir():
                stale.unlink()
            try:
                method(directory, memory_mib, core_percent)
                limits = directory / "limits"
                if not limits.is_file():
                    raise SetupError(f"no {limits} afterwards")
                text = limits.read_text(errors="replace")
                if self.uuid not in text:
                    raise SetupError(f"{limits} does not name {self.uuid}: {text!r}")
                if method != self._limits_only and not (directory / "region").is_file():
                    raise SetupError(f"no {directory / 'region'} afterwards")
            except Exception as e:
                errors.append(f"{name}: {type(e).__name__}: {str(e).strip()[:400]}")
                continue
            if self.chosen is None:
                for err in errors:
                    say(f"  container setup: not used: {err}")
                say(f"  container setup: {name}; {directory}/limits reads:")
                for ln in text.splitlines():
                    say(f"    {ln}")
                self.chosen = (name, method)
                self.facts.setup = name
                if method == self._limits_only:
                    warning = (
                        "WARNING: no setup method made a shared region; each process gets a "
                        "private one, so processes do NOT share a cap (two-process test invalid)"
                    )
                    say(f"  {warning}")
                    self.facts.notes.append(warning)
            return directory
        raise SetupError("cannot set up a container:\n    " + "\n    ".join(errors))

    def base_env(self) -> dict[str, str]:
        """The parent's environment without its GPU and limiter settings."""
        env = {k: v for k, v in os.environ.items() if k not in STRIPPED_ENV}
        env["PYTHONUNBUFFERED"] = "1"
        if self.pick_by_uuid:
            env["CUDA_VISIBLE_DEVICES"] = self.uuid  # so that CUDA device 0 is the GPU limited
        return env

    def env(self, directory: Path, preload: bool = True) -> dict[str, str]:
        env = self.base_env()
        if preload:
            env["LD_PRELOAD"] = str(LIBRARY)
            env["GPULET_REGION_DIR"] = str(directory)
        return env

    def _api(self, directory: Path, memory_mib: int, core_percent: int) -> None:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        # Imported by name: its cffi extension may be missing, or built for another Python.
        region = importlib.import_module("native.region")
        limits = region.Limits((region.DeviceLimit(self.uuid, memory_mib, core_percent),))
        region.setup(directory, limits)

    def _cli_method(self, python: str, module: str) -> Callable[[Path, int, int], None]:
        def method(directory: Path, memory_mib: int, core_percent: int) -> None:
            env = self.base_env()
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(REPO), env.get("PYTHONPATH", "")) if p
            )
            device = f"{self.uuid}:{memory_mib}:{core_percent}"
            argv = [python, "-m", module, "limiter", "setup", str(directory), "--device", device]
            proc = run(argv, env=env)
            if proc.returncode != 0:
                raise SetupError(f"exit {proc.returncode}: {last_lines(proc)}")

        return method

    def _c_helper(self, directory: Path, memory_mib: int, core_percent: int) -> None:
        helper = self.root / "mkregion"
        if not helper.exists():
            source = self.root / "mkregion.c"
            source.write_text(MKREGION_C)
            argv = [
                *(os.environ.get("CC", "cc").split()),
                "-std=c11",
                "-D_GNU_SOURCE",
                "-O2",
                f"-I{REGION_C.parent}",
                "-o",
                str(helper),
                str(source),
                str(REGION_C),
                "-lpthread",
            ]
            proc = run(argv)
            if proc.returncode != 0:
                raise SetupError(f"compiling failed: {last_lines(proc)}")
        argv = [str(helper), str(directory), self.uuid, str(memory_mib), str(core_percent)]
        proc = run(argv)
        if proc.returncode != 0:
            raise SetupError(last_lines(proc))

    def _limits_only(self, directory: Path, memory_mib: int, core_percent: int) -> None:
        text = f"gpulet-limits 1\ndevice {self.uuid} {memory_mib} {core_percent}\n"
        (directory / "limits").write_text(text)


def last_lines(proc: subprocess.CompletedProcess[str], n: int = 2) -> str:
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    return " / ".join(lines[-n:])[-400:]


# ---- the benchmark ---------------------------------------------------------------------------


@dataclass
class MatmulRun:
    windows: list[int]
    k: int

    @property
    def kept(self) -> list[int]:
        return self.windows[WARMUP_WINDOWS:]

    @property
    def rate(self) -> float:
        return statistics.fmean(self.kept)


class Bench:
    def __init__(
        self, quick: bool, workdir: Path, gpu: dict[str, str], facts: Facts, gpus: int
    ) -> None:
        self.quick = quick
        self.workdir = workdir
        self.uuid = gpu["uuid"]
        self.facts = facts
        self.checks: list[Check] = []
        self.containers = Containers(workdir, self.uuid, facts, pick_by_uuid=gpus > 1)
        self.baseline_s = 5.0 if quick else 10.0
        self.share_s = 10.0 if quick else 30.0
        self.launches = 200_000 if quick else 1_000_000

    def check(self, section: str, name: str, target: str, measured: str, status: str) -> None:
        self.checks.append(Check(section, name, target, measured, status))
        say(f"  {status:<5} {section}: {name}: {measured} (target: {target})")

    def section(self, title: str, body: Callable[[], None]) -> None:
        say(f"\n== {title} ==")
        started = time.monotonic()
        try:
            body()
        except Exception as e:
            traceback.print_exc()
            sys.stderr.flush()
            self.check(title, "section", "runs", f"{type(e).__name__}: {e}", "ERROR")
        say(f"  ({title}: {time.monotonic() - started:.0f} s)")

    # -- memory --

    def alloc_checks(self, section: str, child: Child, lib: str) -> None:
        """The three checks shared by the PyTorch and CuPy runs."""
        info = child.record("mem_get_info")
        if info is None:
            self.check(section, f"{lib} total", f"{CAP_MIB} MiB", child.outcome(), "ERROR")
        else:
            total = int(info["total"])
            ok = total == CAP_MIB * MIB
            self.check(section, f"{lib} total", f"{CAP_MIB} MiB", mib(total), pass_fail(ok))
        allocs = {str(r["label"]): r for r in child.all("alloc")}
        small, big = allocs.get("3 GiB"), allocs.get("8 GiB")
        if small is None:
            self.check(section, "3 GiB allocation", "succeeds", child.outcome(), "ERROR")
        else:
            got = "succeeded" if small["ok"] else f"{small['error']}: {small.get('detail', '')}"
            self.check(section, "3 GiB allocation", "succeeds", got, pass_fail(small["ok"]))
        if big is None:
            self.check(section, "8 GiB allocation", "out of memory", child.outcome(), "ERROR")
        elif big["ok"]:
            self.check(section, "8 GiB allocation", "out of memory", "SUCCEEDED", "FAIL")
        else:
            got = str(big["error"]) if big["oom"] else f"{big['error']}: {big.get('detail', '')}"
            self.check(section, "8 GiB allocation", "out of memory", got, pass_fail(big["oom"]))

    def import_skipped(self, section: str, child: Child, what: str) -> bool:
        failed = child.record("import-error")
        if failed is None:
            return False
        self.check(section, what, "runs", f"skipped: {failed['error']}", "SKIP")
        return True

    def torch_versions(self, child: Child) -> None:
        v = child.record("versions")
        if v is not None and self.facts.torch == "not measured":
            self.facts.torch = f"{v['torch']} (CUDA {v['cuda']})"

    def memory_torch(self, vmm: bool) -> None:
        section = "Memory, PyTorch" + (" expandable segments" if vmm else "")
        directory = self.containers.make(CAP_MIB, 100)
        env = self.containers.env(directory)
        if vmm:
            # The documented name, and the newer one that recent PyTorch reads first.
            env["PYTORCH_CUDA_ALLOC_CONF"] = "expandable_segments:True"
            env["PYTORCH_ALLOC_CONF"] = "expandable_segments:True"
        child = run_child("torch", [sys.executable, "-c", MEMORY_TORCH], env, timeout=180)
        if self.import_skipped(section, child, "PyTorch"):
            return
        self.torch_versions(child)
        self.alloc_checks(section, child, "mem_get_info()[1]")
        if vmm:
            seg = child.record("segments")
            flag = None if seg is None else seg.get("expandable")
            shown = {True: "yes", False: "NO", None: "unknown"}[flag]
            self.check(section, "expandable segments in use", "yes", shown, "INFO")

    def memory_cupy(self) -> None:
        section = "Memory, CuPy"
        directory = self.containers.make(CAP_MIB, 100)
        env = self.containers.env(directory)
        child = run_child("cupy", [sys.executable, "-c", MEMORY_CUPY], env, timeout=180)
        if self.import_skipped(section, child, "CuPy"):
            return
        v = child.record("versions")
        if v is not None:
            rt = int(v["runtime"])
            self.facts.cupy = f"{v['cupy']} (CUDA runtime {rt // 1000}.{rt % 1000 // 10})"
        self.alloc_checks(section, child, "runtime.memGetInfo()[1]")

    def memory_nvidia_smi(self) -> None:
        section = "Memory, nvidia-smi"
        directory = self.containers.make(CAP_MIB, 100)
        query = ["nvidia-smi", "-i", self.uuid, "--query-gpu=memory.total,memory.used"]
        query.append("--format=csv,noheader,nounits")
        for preload in (False, True):
            proc = run(query, env=self.containers.env(directory, preload), timeout=60)
            line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
            say(f"    nvidia-smi ({'preloaded' if preload else 'plain'}): {line or proc.stderr}")
            parts = [p.strip() for p in line.split(",")]
            if proc.returncode != 0 or len(parts) != 2 or not parts[0].isdigit():
                got = f"exit {proc.returncode}: {(line or proc.stderr.strip())[:200]}"
                self.check(section, "memory.total", f"{CAP_MIB} MiB", got, "ERROR")
                continue
            measured = f"{parts[0]} MiB total, {parts[1]} MiB used"
            if preload:
                ok = int(parts[0]) == CAP_MIB
                self.check(
                    section, "memory.total preloaded", f"{CAP_MIB} MiB", measured, pass_fail(ok)
                )
            else:
                self.check(section, "memory.total without preload", "the GPU's", measured, "INFO")

    # -- two processes --

    def two_processes(self) -> None:
        section = "Two processes, one cap"
        directory = self.containers.make(CAP_MIB, 100)
        env = self.containers.env(directory)
        release = self.workdir / "release-A"
        held: Record | None = None
        asker: Child | None = None
        holder = Child("A", [sys.executable, "-c", HOLDER, str(release), "300"], env, timeout=360)
        try:
            held = holder.wait_for("holding", timeout=180)
            if held is not None and held["ok"]:
                asker = run_child("B", [sys.executable, "-c", ASKER], env, timeout=180)
        finally:
            release.touch()
            holder.finish()
        if asker is None:
            if not self.import_skipped(section, holder, "PyTorch"):
                got = holder.outcome() if held is None else "A's 3 GiB allocation failed"
                self.check(section, "A holds 3 GiB", "holds", got, "ERROR")
            return
        info = asker.record("mem_get_info")
        if info is not None:
            seen = f"free {mib(int(info['free']))} of {mib(int(info['total']))}"
            self.check(
                section, "B's mem_get_info while A holds 3 GiB", "free 1024 MiB", seen, "INFO"
            )
        allocs = {str(r["label"]): r for r in asker.all("alloc")}
        two, half = allocs.get("2 GiB"), allocs.get("512 MiB")
        if two is None:
            self.check(section, "B: 2 GiB", "out of memory", asker.outcome(), "ERROR")
        else:
            got = "SUCCEEDED" if two["ok"] else str(two["error"])
            self.check(section, "B: 2 GiB", "out of memory", got, pass_fail(bool(two["oom"])))
        if half is None:
            self.check(section, "B: 512 MiB", "succeeds", asker.outcome(), "ERROR")
        else:
            got = "succeeded" if half["ok"] else str(half["error"])
            self.check(section, "B: 512 MiB", "succeeds", got, pass_fail(bool(half["ok"])))

    # -- compute --

    def matmul(
        self, label: str, env: dict[str, str], seconds: float, k: int, baseline: float | None
    ) -> tuple[MatmulRun | None, Child]:
        windows: list[int] = []
        state = {"k": k}

        def on_record(rec: Record) -> None:
            event = rec.get("event")
            if event == "calibrated":
                state["k"] = int(rec["k"])
                say(f"    [{label}] {rec['ms_per_iter']} ms per matmul; k={rec['k']} per batch")
            elif event == "window":
                iters = int(rec["iters"])
                windows.append(iters)
                index = int(rec["index"])
                frac = f" = {iters / baseline:.3f} of baseline" if baseline else ""
                skip = " (warm-up, skipped)" if index < WARMUP_WINDOWS else ""
                say(f"    [{label}] window {index:2d}: {iters:5d} it/s{frac}{skip}")
            elif event == "versions":
                pass
            else:
                fields = " ".join(f"{k}={v}" for k, v in rec.items() if k != "event")
                say(f"    [{label}] {event} {fields}")

        argv = [sys.executable, "-c", MATMUL, str(seconds), str(k)]
        child = run_child(label, argv, env, timeout=seconds + 240, on_record=on_record)
        self.torch_versions(child)
        if len(windows) <= WARMUP_WINDOWS:
            return None, child
        return MatmulRun(windows, state["k"]), child

    def compute(self) -> None:
        section = "Compute share"
        skipped = f"the first {WARMUP_WINDOWS} windows (1 s each) of every run are warm-up, skipped"
        say(f"  ({skipped})")
        self.facts.notes.append(f"Compute: {skipped}.")
        full = self.containers.make(ROOMY_MIB, 100)
        plain_env = self.containers.env(full, preload=False)
        # No preload, preload (the baseline), and in a full run no preload again: the mean of
        # the two plain runs cancels a linear drift of the clocks.
        plain1, child = self.matmul("no preload", plain_env, self.baseline_s, 0, None)
        if plain1 is None:
            if not self.import_skipped(section, child, "PyTorch"):
                self.check(section, "matmul without preload", "runs", child.outcome(), "ERROR")
            return
        say(f"  matmul without preload: {plain1.rate:.1f} it/s")
        base, child = self.matmul(
            "core 100%", self.containers.env(full), self.baseline_s, plain1.k, None
        )
        if base is None:
            self.check(section, "baseline, core 100%", "runs", child.outcome(), "ERROR")
            return
        measured = f"{base.rate:.1f} it/s (k={base.k}, {len(base.kept)} windows)"
        self.check(section, "baseline, core 100%, preloaded", "-", measured, "INFO")
        plain_rates = [plain1.rate]
        if not self.quick:
            plain2, _ = self.matmul("no preload, again", plain_env, self.baseline_s, base.k, None)
            if plain2 is not None:
                say(f"  matmul without preload, again: {plain2.rate:.1f} it/s")
                plain_rates.append(plain2.rate)
        plain = statistics.fmean(plain_rates)
        loss = (1 - base.rate / plain) * 100
        overhead = f"{plain:.1f} -> {base.rate:.1f} it/s: {loss:+.2f}% loss"
        say(f"  matmul at 100%, without -> with the preload: {overhead}")
        try:
            self.shares(base)
        finally:  # the table lists it with the other overhead figure
            ok = loss <= MATMUL_LOSS_TARGET_PCT
            target = f"<= {MATMUL_LOSS_TARGET_PCT:g}% loss"
            self.check("Overhead at 100%", "matmul throughput", target, overhead, pass_fail(ok))

    def shares(self, base: MatmulRun) -> None:
        section = "Compute share"
        for share in SHARES:
            directory = self.containers.make(ROOMY_MIB, share)
            label = f"core {share}%"
            run_, child = self.matmul(
                label, self.containers.env(directory), self.share_s, base.k, base.rate
            )
            lo, hi = share / 100 - TOLERANCE, share / 100 + TOLERANCE
            target = f"every window {lo:.2f}..{hi:.2f}"
            if run_ is None:
                self.check(section, label, target, child.outcome(), "ERROR")
                continue
            fracs = [w / base.rate for w in run_.kept]
            ok = all(lo - 1e-9 <= f <= hi + 1e-9 for f in fracs)
            outside = sum(not lo - 1e-9 <= f <= hi + 1e-9 for f in fracs)
            measured = (
                f"mean {statistics.fmean(fracs):.3f}, min {min(fracs):.3f}, "
                f"max {max(fracs):.3f} ({len(fracs)} windows"
                + (f", {outside} outside)" if outside else ")")
            )
            self.check(section, label, target, measured, pass_fail(ok))

    # -- launch overhead --

    def launch_overhead(self) -> None:
        section = "Overhead at 100%"
        binary = self.workdir / "launch_loop"
        compiler = os.environ.get("CC", "cc").split()
        argv = [*compiler, "-O2", "-o", str(binary), str(LAUNCH_LOOP_C), "-ldl"]
        say(f"  $ {' '.join(argv)}")
        proc = run(argv, timeout=120)
        if proc.returncode != 0:
            got = f"compile failed: {proc.stderr.strip()[-300:]}"
            self.check(section, "cuLaunchKernel", f"<= +{LAUNCH_TARGET_NS:g} ns", got, "ERROR")
            return
        directory = self.containers.make(ROOMY_MIB, 100)
        best: dict[bool, float] = {}
        pattern = re.compile(r"launches=(\d+) seconds=([\d.]+) ns_per_launch=([\d.]+)")
        for i in range(3):
            for preload in (False, True):
                name = "preloaded" if preload else "no preload"
                env = self.containers.env(directory, preload)
                try:
                    out = run([str(binary), str(self.launches)], env=env, timeout=180)
                except subprocess.TimeoutExpired:
                    say(f"    launch_loop {name} run {i + 1}: TIMED OUT")
                    continue
                found = pattern.search(out.stdout)
                limiter = [ln for ln in out.stderr.splitlines() if "gpulet-limiter:" in ln]
                for ln in limiter[:5]:
                    say(f"    launch_loop limiter log: {ln.strip()}")
                if out.returncode != 0 or not found:
                    say(f"    launch_loop {name} run {i + 1}: exit {out.returncode}")
                    say(f"      {(out.stderr or out.stdout).strip()[-400:]}")
                    continue
                ns = float(found.group(3))
                say(f"    launch_loop {name} run {i + 1}: {found.group(0)}")
                best[preload] = min(best.get(preload, ns), ns)
        target = f"<= +{LAUNCH_TARGET_NS:g} ns"
        if len(best) != 2:
            self.check(section, "cuLaunchKernel", target, "launch_loop failed", "ERROR")
            return
        diff = best[True] - best[False]
        measured = f"best {best[False]:.0f} -> {best[True]:.0f} ns: {diff:+.0f} ns per launch"
        ok = diff <= LAUNCH_TARGET_NS
        self.check(
            section, f"cuLaunchKernel ({self.launches:,} launches)", target, measured, pass_fail(ok)
        )


def pass_fail(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---- the machine -----------------------------------------------------------------------------


def find_gpus() -> tuple[list[dict[str, str]], str]:
    """The GPUs nvidia-smi lists, or an empty list and why not."""
    if shutil.which("nvidia-smi") is None:
        return [], "nvidia-smi is not on PATH"
    fields = "index,uuid,name,driver_version,memory.total"
    argv = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits"]
    try:
        proc = run(argv, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        return [], f"nvidia-smi failed: {e}"
    if proc.returncode != 0:
        return [], f"nvidia-smi failed ({proc.returncode}): {(proc.stderr or proc.stdout).strip()}"
    gpus = []
    for line in proc.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 5 and parts[1].startswith("GPU-"):
            gpus.append(dict(zip(fields.split(","), parts, strict=True)))
    if not gpus:
        return [], f"nvidia-smi lists no GPU: {proc.stdout.strip()!r}"
    return gpus, ""


def describe_machine(gpu: dict[str, str], facts: Facts) -> None:
    facts.gpu = gpu["name"]
    facts.uuid = gpu["uuid"]
    facts.memory_mib = gpu["memory.total"]
    facts.driver = gpu["driver_version"]
    try:
        header = run(["nvidia-smi"], timeout=60).stdout
        apps = run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader"])
    except (OSError, subprocess.TimeoutExpired) as e:
        say(f"nvidia-smi failed: {e}")
        return
    found = re.search(r"CUDA Version:\s*([\d.]+)", header)
    facts.cuda = found.group(1) if found else "?"
    say(f"GPU: {facts.gpu} ({facts.uuid}), {facts.memory_mib} MiB")
    say(f"Driver {facts.driver}, CUDA {facts.cuda}")
    say(f"Python {platform.python_version()} ({sys.executable})")
    busy = [ln for ln in apps.stdout.splitlines() if ln.strip()]
    if busy:
        note = f"WARNING: other processes use the GPU, figures may be disturbed: {busy}"
        say(note)
        facts.notes.append(note)


# ---- the report --------------------------------------------------------------------------------


def markdown(checks: list[Check], facts: Facts, quick: bool, started: str, took: float) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    command = "make native && python3 bench/gpu_limiter.py" + (" --quick" if quick else "")
    lines = [
        "## GPU limiter (`bench/gpu_limiter.py`)",
        "",
        f"- **GPU:** {facts.gpu}, {facts.memory_mib} MiB",
        f"- **Driver:** {facts.driver}, CUDA {facts.cuda} (nvidia-smi)",
        f"- **PyTorch:** {facts.torch}; **CuPy:** {facts.cupy}; "
        f"**Python:** {platform.python_version()}",
        f"- **Date:** {started} ({took / 60:.1f} min)",
        f"- **Command:** `{command}`",
        f"- **Containers set up with:** {facts.setup}",
        *(f"- {note}" for note in facts.notes),
        "",
        "| section | check | target | measured | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in checks:
        row = (c.section, c.name, c.target, c.measured, f"**{c.status}**")
        lines.append("| " + " | ".join(cell(x) for x in row) + " |")
    judged = [c for c in checks if c.status in ("PASS", "FAIL", "ERROR")]
    passed = sum(c.status == "PASS" for c in judged)
    lines += ["", f"**{passed} of {len(judged)} checks passed.**"]
    skipped = sum(c.status == "SKIP" for c in checks)
    if skipped:
        lines[-1] += f" {skipped} skipped."
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter runs (about 2 minutes)")
    parser.add_argument("--out", type=Path, help="also write the Markdown report here")
    args = parser.parse_args(argv)

    gpus, why = find_gpus()
    problems = [] if gpus else [f"no GPU: {why}"]
    if not LIBRARY.is_file():
        problems.append(f"{LIBRARY} is not built: run `make native` first")
    if args.out is not None and not args.out.resolve().parent.is_dir():
        problems.append(f"--out: no directory {args.out.resolve().parent}")
    if problems:
        for problem in problems:
            print(f"gpu_limiter: {problem}", file=sys.stderr)
        return 2

    started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.monotonic()
    facts = Facts()
    gpu = gpus[0]
    say(f"gpulet limiter GPU benchmark, {'quick' if args.quick else 'full'} run, {started}")
    if len(gpus) > 1:
        say(f"{len(gpus)} GPUs: using index {gpu['index']} (CUDA_VISIBLE_DEVICES=its UUID)")
    describe_machine(gpu, facts)
    say(f"Library: {LIBRARY}")

    workdir = Path(tempfile.mkdtemp(prefix="gpulet-gpu-bench-"))
    bench = Bench(args.quick, workdir, gpu, facts, len(gpus))
    try:
        bench.section("Memory, PyTorch", lambda: bench.memory_torch(vmm=False))
        bench.section("Memory, PyTorch expandable segments", lambda: bench.memory_torch(vmm=True))
        bench.section("Memory, CuPy", bench.memory_cupy)
        bench.section("Memory, nvidia-smi", bench.memory_nvidia_smi)
        bench.section("Two processes, one cap", bench.two_processes)
        bench.section("Compute share", bench.compute)
        bench.section("Overhead at 100%", bench.launch_overhead)
    except KeyboardInterrupt:
        say("\ninterrupted")
        return 130
    finally:
        for child in list(LIVE):
            child.kill()
        shutil.rmtree(workdir, ignore_errors=True)

    report = markdown(bench.checks, facts, args.quick, started, time.monotonic() - t0)
    say("\n" + "=" * 100 + "\n")
    say(report)
    if args.out is not None:
        args.out.write_text(report)
        say(f"(written to {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
