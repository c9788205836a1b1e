"""The region is untrusted input to the root agent: a tenant is root in its container, and the
container's region directory is mounted read-write. These tests attack the region as a tenant
would (a plain Python mmap of the live file, or a file swapped for something else) and read
it as the agent and `gpulet limiter usage` do. Every reader runs in a subprocess with a
timeout, so a crash or a hang is a failed test, not a dead test run."""

from __future__ import annotations

import json
import mmap
import os
import re
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench import region_fuzz
from bench.region_fuzz import AREAS, INTERESTING_64, Fuzz, Mutation
from native._region import ffi
from native.region import DeviceLimit, Limits, RegionError, inspect, setup, write_share

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
U64 = (1 << 64) - 1
SIZE = ffi.sizeof("struct gpulet_region")
UUID_A = "GPU-8b0b9d22-4d8e-8e2a-3f1c-5b6a9e0d7c41"
UUID_B = "GPU-3ebba5ba-0c12-44b5-9d3f-0a1b2c3d4e5f"
LIMITS = Limits((DeviceLimit(UUID_A, 1024, 50), DeviceLimit(UUID_B, 2048, 100)))
#: A reader that takes longer than this is hung (the agent reads every region every second).
HANG_S = 10


def offset(*fields: str | int) -> int:
    """The offset in the region file of a field: offset("dev", 1, "memory_bytes")."""
    return int(ffi.offsetof("struct gpulet_region", *fields))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    setup(tmp_path / "c", LIMITS)
    return tmp_path / "c"


# A process of the container: two handles (two slots), charged on both devices; it sleeps
# until the test kills it, so its slots stay live (their liveness locks held).
TENANT = region_fuzz.TENANT


@pytest.fixture
def tenant(directory: Path) -> Iterator[subprocess.Popen[str]]:
    """A process of the container, attached twice and charged: 400 MiB on device 0, 5 MiB
    on device 1. Killed with SIGKILL at the end (it never detaches: the lock may be garbage)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", TENANT, str(directory)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()
    proc.stdout.close()


class Tenant:
    """The tenant's own view of its region: the live file, mapped shared."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "region"

    def write(self, at: int, fmt: str, *values: int) -> None:
        with self.path.open("r+b") as f, mmap.mmap(f.fileno(), SIZE) as m:
            struct.pack_into(fmt, m, at, *values)

    def write_bytes(self, at: int, data: bytes) -> None:
        with self.path.open("r+b") as f, mmap.mmap(f.fileno(), SIZE) as m:
            m[at : at + len(data)] = data


# ---- the readers, each in a subprocess ----------------------------------------------------

# What the agent does with a region. `mapping`: the agent before this change (and any reader
# still using `Region`): the region opened once, then a snapshot and the feedback every
# second. `inspect`: `native.region.inspect` and `write_feedback`, which open the file anew
# each time. `monitor`: what the agent's monitor does, both in one call (`inspect` with
# `feedback`), which writes the feedback only to a region it found trusted. The reader
# starts, opens what it keeps open, says "ready", waits for a line on stdin (the tenant's
# attack comes in between), reads, and prints what it saw as JSON.
READER = """
import json, sys, time
mode, directory, feedback_dev = sys.argv[1], sys.argv[2], int(sys.argv[3])
from native.region import Region, RegionError, read_limits
granted = read_limits(directory + "/limits")
region = Region.open(directory) if mode == "mapping" else None
print("ready", flush=True)
sys.stdin.readline()
out = {}
start = time.monotonic()
if mode == "mapping":
    try:
        usage = region.snapshot()
        out["usage"] = {
            "devices": [[d.uuid, d.memory_bytes, d.core_percent, d.used_bytes]
                        for d in usage.devices],
            "processes": [[p.pid, p.slot, list(p.used_bytes)] for p in usage.processes],
        }
    except RegionError as e:
        out["error"] = str(e)
    try:
        region.set_feedback(feedback_dev, 50.0, stamp_ns=7)
        out["feedback"] = "ok"
    except RegionError as e:
        out["feedback"] = str(e)
else:
    from native.region import inspect, write_feedback
    try:
        seen = inspect(directory, granted, {feedback_dev: 50.0} if mode == "monitor" else None)
    except RegionError as e:  # the feedback's device: refused before anything is opened
        print(json.dumps({"refused": str(e)}), flush=True)
        sys.exit()
    out["problems"] = list(seen.problems)
    out["trusted"] = seen.trusted
    if seen.usage is None:
        out["usage"] = None
    else:
        out["usage"] = {
            "devices": [[d.uuid, d.memory_bytes, d.core_percent, d.used_bytes]
                        for d in seen.usage.devices],
            "processes": [[p.pid, p.slot, list(p.used_bytes)] for p in seen.usage.processes],
        }
    out["seconds"] = time.monotonic() - start
    if mode == "monitor":
        out["feedback"] = seen.feedback_error or "ok"
    else:
        try:
            write_feedback(directory, feedback_dev, 50.0, granted)
            out["feedback"] = "ok"
        except RegionError as e:
            out["feedback"] = str(e)
out["total_seconds"] = time.monotonic() - start
print(json.dumps(out), flush=True)
"""


def _outcome(proc: subprocess.Popen[str], what: str) -> str:
    """stdout of a finished reader; fails the test on a hang or a crash."""
    try:
        out, err = proc.communicate(timeout=HANG_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"{what} hung: no answer within {HANG_S} s")
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        pytest.fail(f"{what} was killed by {name}:\n{err[-2000:]}")
    assert proc.returncode == 0, f"{what} exited {proc.returncode}:\n{err[-2000:]}"
    return out


def agent_reads(
    directory: Path, mode: str, attack: Callable[[], object] = lambda: None, feedback_dev: int = 0
) -> dict[str, Any]:
    """Runs READER in `mode`; `attack` runs after the reader opened what it keeps open."""
    proc = subprocess.Popen(
        [sys.executable, "-c", READER, mode, str(directory), str(feedback_dev)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    ready = proc.stdout.readline()
    if ready != "ready\n":
        _outcome(proc, f"the {mode} reader")
        pytest.fail(f"the {mode} reader did not start: {ready!r}")
    try:
        attack()
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    proc.stdin.write("\n")
    proc.stdin.flush()
    out = _outcome(proc, f"the {mode} reader")
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


def usage_command(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`gpulet limiter usage DIRECTORY`, as an operator on the node runs it."""
    command = [sys.executable, "-c", "from gpulet.cli import main; main()", "limiter", "usage"]
    try:
        proc = subprocess.run(
            [*command, str(directory), *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=HANG_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`gpulet limiter usage` hung: no answer within {HANG_S} s")
    if proc.returncode < 0:
        pytest.fail(f"`gpulet limiter usage` was killed by {signal.Signals(-proc.returncode).name}")
    return proc


def _problems_name(problems: list[str], *needles: str) -> None:
    for needle in needles:
        assert any(needle in p for p in problems), (needle, problems)


# ---- the header's device count ------------------------------------------------------------


@pytest.mark.parametrize("devices", [0, 3, 17, 300, 100000, 0xFFFFFFFF])
def test_a_mapping_reader_survives_a_device_count_changed_after_it_opened(
    directory: Path, tenant: subprocess.Popen[str], devices: int
) -> None:
    """17 made the snapshot raise IndexError, 300 corrupted the reader's heap (abort), 100000
    made it segfault; the feedback for device 5 wrote into the slots."""
    seen = agent_reads(
        directory,
        "mapping",
        lambda: Tenant(directory).write(offset("devices"), "<I", devices),
        feedback_dev=5,
    )
    assert "error" not in seen, seen
    assert len(seen["usage"]["devices"]) == min(devices, 16)
    if devices >= 1:
        assert seen["usage"]["devices"][0][3] == 400 * MIB
    for _, _, used in seen["usage"]["processes"]:
        assert len(used) == min(devices, 16)
    if devices <= 5:
        assert seen["feedback"] == f"device index 5 is not in 0..{devices - 1}"
    else:
        assert seen["feedback"] == "ok"


@pytest.mark.parametrize("devices", [0, 3, 17, 300, 100000, 0xFFFFFFFF])
def test_inspect_reports_a_device_count_that_is_not_the_grant(
    directory: Path, tenant: subprocess.Popen[str], devices: int
) -> None:
    seen = agent_reads(
        directory,
        "inspect",
        lambda: Tenant(directory).write(offset("devices"), "<I", devices),
        feedback_dev=1,
    )
    assert seen["usage"] is not None and not seen["trusted"]
    _problems_name(seen["problems"], f"devices is {devices}")
    # What the agent gets is the grant's devices, with the grant's caps, and the charges.
    assert seen["usage"]["devices"] == [
        [UUID_A, 1024 * MIB, 50, 400 * MIB],
        [UUID_B, 2048 * MIB, 100, 5 * MIB],
    ]
    assert seen["feedback"] == "ok"  # bounded by the grant, not by the region's count
    assert seen["seconds"] < 1


# ---- the lock -----------------------------------------------------------------------------


def _scribble_on_the_mutex(directory: Path) -> None:
    # The mutex's first word is its lock word: the thread id of its holder (here one that
    # does not exist), 0 when free.
    Tenant(directory).write(offset("lock"), "<I", 1234567)


def test_a_scribbled_mutex_bounds_a_mapping_readers_wait(
    directory: Path, tenant: subprocess.Popen[str]
) -> None:
    """4 bytes in the mutex made every reader that takes the lock wait for ever."""
    seen = agent_reads(directory, "mapping", lambda: _scribble_on_the_mutex(directory))
    assert seen["error"] == "region lock not released within 1 s"
    assert seen["total_seconds"] < 3
    assert seen["feedback"] == "ok"  # never took the lock


def test_a_scribbled_mutex_does_not_block_inspect(
    directory: Path, tenant: subprocess.Popen[str]
) -> None:
    seen = agent_reads(directory, "inspect", lambda: _scribble_on_the_mutex(directory))
    assert seen["problems"] == [] and seen["trusted"]
    assert [d[3] for d in seen["usage"]["devices"]] == [400 * MIB, 5 * MIB]
    assert seen["seconds"] < 1 and seen["feedback"] == "ok"


def test_a_scribbled_mutex_does_not_block_the_usage_command(
    directory: Path, tenant: subprocess.Popen[str]
) -> None:
    _scribble_on_the_mutex(directory)
    proc = usage_command(directory)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split()[:3] == ["0", UUID_A, "400.0"]
    assert proc.stderr == ""


# ---- device records and slots -------------------------------------------------------------


def _spoil_devices(directory: Path) -> None:
    t = Tenant(directory)
    t.write_bytes(offset("dev", 0, "uuid"), b"GPU-someone-else\0")
    t.write(offset("dev", 1, "memory_bytes"), "<Q", 80 << 30)
    t.write(offset("dev", 0, "core_percent"), "<I", 100)
    t.write(offset("dev", 1, "util_permille"), "<I", 5000)


def test_inspect_names_each_device_field_that_is_not_the_grant(
    directory: Path, tenant: subprocess.Popen[str]
) -> None:
    seen = agent_reads(directory, "inspect", lambda: _spoil_devices(directory))
    _problems_name(
        seen["problems"],
        "device 0: uuid 'GPU-someone-else', granted '" + UUID_A,
        f"device 1: memory_bytes {80 << 30}, granted {2048 * MIB}",
        "device 0: core_percent 100, granted 50",
        "device 1: util_permille 5000 is not in 0..1000",
    )
    assert len(seen["problems"]) == 4 and not seen["trusted"]
    assert [d[:3] for d in seen["usage"]["devices"]] == [
        [UUID_A, 1024 * MIB, 50],
        [UUID_B, 2048 * MIB, 100],
    ]


def test_the_usage_command_prints_the_problems(
    directory: Path, tenant: subprocess.Popen[str]
) -> None:
    _spoil_devices(directory)
    proc = usage_command(directory)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].split()[:4] == ["0", UUID_A, "400.0", "1024"]  # the grant, not the region
    assert lines[2].split()[:4] == ["1", UUID_B, "5.0", "2048"]
    warnings = proc.stderr.splitlines()
    assert len(warnings) == 4 and all(w.startswith("warning: region: ") for w in warnings)
    assert "device 1: memory_bytes" in proc.stderr
    doc = json.loads(usage_command(directory, "--json").stdout)
    assert [d["memory_bytes"] for d in doc["devices"]] == [1024 * MIB, 2048 * MIB]


def _slot(i: int, *fields: str | int) -> int:
    return offset("slot", i, *fields)


def test_inspect_names_tampered_slots_and_saturates_the_totals(
    directory: Path, tenant: subprocess.Popen[str]
) -> None:
    def attack() -> None:
        t = Tenant(directory)
        t.write(_slot(0, "used", 0), "<Q", U64)  # the two live slots: past 2^64 together
        t.write(_slot(1, "used", 0), "<Q", U64)
        t.write(_slot(1, "used", 9), "<Q", 4096)  # a device the container was not granted
        t.write(_slot(7, "used", 1), "<Q", 123)  # a free slot holding charges
        t.write(_slot(8, "pid"), "<i", -5)  # no process holds it: left out, but named
        t.write(_slot(8, "used", 0), "<Q", 1)

    seen = agent_reads(directory, "inspect", attack)
    _problems_name(
        seen["problems"],
        "device 0: slots' charges add up past 2^64",
        f"device 0: {U64} bytes charged, over the granted {1024 * MIB}",
        "slot 1: 4096 bytes charged on device 9, which is not granted",
        "slot 7: free (pid 0) but holds charges",
        "slot 8: pid -5 is not a process id",
    )
    assert seen["usage"]["devices"][0][3] == U64
    assert [(p[1], p[2]) for p in seen["usage"]["processes"]] == [
        (0, [U64, 5 * MIB]),
        (1, [U64, 0]),
    ]


# ---- the file itself ----------------------------------------------------------------------


def _host_file(tmp_path: Path, directory: Path) -> Path:
    """A file of the host's, outside every container: here, a copy of a valid region."""
    host = tmp_path / "host-secret"
    host.write_bytes((directory / "region").read_bytes())
    return host


def _swap(directory: Path, make: Callable[[Path], object]) -> None:
    region = directory / "region"
    region.rename(directory / "region.orig")  # the tenant's processes keep theirs mapped
    make(region)


def _fifo(p: Path) -> None:
    os.mkfifo(p, 0o666)


def _char_device(p: Path) -> None:
    try:
        os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")


def _socket(p: Path) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(p))
    s.close()


def _huge(p: Path) -> None:
    """A region (the one set aside) extended to 1 TiB, sparse."""
    p.write_bytes((p.parent / "region.orig").read_bytes())
    os.truncate(p, 1 << 40)


def _other_version(p: Path) -> None:
    """A region of another version, of another length."""
    head = (p.parent / "region.orig").read_bytes()[:8] + struct.pack("<II", 2, SIZE + 8)
    p.write_bytes(head + bytes(SIZE))


SWAPS: dict[str, tuple[Callable[[Path], object], str]] = {
    "fifo": (_fifo, "is a FIFO, not a regular file"),
    "char-device": (_char_device, "is a character device, not a regular file"),
    "socket": (_socket, "is a socket, not a regular file"),
    "directory": (lambda p: p.mkdir(), "is a directory, not a regular file"),
    "symlink-to-dev-null": (lambda p: p.symlink_to("/dev/null"), "is a symbolic link"),
    "dangling-symlink": (lambda p: p.symlink_to("/nonexistent"), "is a symbolic link"),
    "empty": (lambda p: p.write_bytes(b""), "is 0 bytes, expected"),
    "huge-sparse": (_huge, f"is {1 << 40} bytes, expected {SIZE}"),
    "not-a-region": (lambda p: p.write_bytes(b"not a region at all"), "is not a gpulet region"),
    "other-version": (_other_version, "has version 2; this build reads version 1"),
}


@pytest.mark.parametrize("mode", ["inspect", "monitor"])
@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_inspect_refuses_anything_but_a_regular_file_of_the_right_size(
    directory: Path, swap: str, mode: str
) -> None:
    make, message = SWAPS[swap]
    seen = agent_reads(directory, mode, lambda: _swap(directory, make))
    assert seen["usage"] is None and not seen["trusted"]
    assert len(seen["problems"]) == 1 and message in seen["problems"][0], seen["problems"]
    assert seen["problems"][0].startswith(f"region {directory / 'region'} ")
    assert seen["feedback"].startswith(f"region {directory / 'region'} ")
    assert message in seen["feedback"]
    assert seen["seconds"] < 1


@pytest.mark.parametrize("swap", sorted(SWAPS))
def test_the_usage_command_refuses_anything_but_a_regular_file(directory: Path, swap: str) -> None:
    make, message = SWAPS[swap]
    _swap(directory, make)
    proc = usage_command(directory)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("Error: ")
    assert message in proc.stderr


@pytest.mark.parametrize("mode", ["inspect", "monitor"])
def test_a_symlink_to_a_host_file_is_neither_read_nor_written(
    tmp_path: Path, directory: Path, mode: str
) -> None:
    host = _host_file(tmp_path, directory)
    before = host.read_bytes()
    seen = agent_reads(directory, mode, lambda: _swap(directory, lambda p: p.symlink_to(host)))
    assert seen["usage"] is None
    assert seen["problems"] == [f"region {directory / 'region'} is a symbolic link"]
    assert "symbolic link" in seen["feedback"]
    assert host.read_bytes() == before
    proc = usage_command(directory)  # it would have shown the host file's content
    assert proc.returncode == 1 and "is a symbolic link" in proc.stderr


@pytest.mark.parametrize("mode", ["inspect", "monitor"])
@pytest.mark.parametrize("length", [0, 1000, SIZE - 1, SIZE + 1, SIZE + 4096])
def test_a_region_truncated_or_extended_under_its_processes(
    directory: Path, tenant: subprocess.Popen[str], length: int, mode: str
) -> None:
    """The tenant's processes keep it mapped; a reader that mapped it would die of SIGBUS."""
    seen = agent_reads(directory, mode, lambda: os.truncate(directory / "region", length))
    assert seen["usage"] is None
    assert seen["problems"] == [f"region {directory / 'region'} is {length} bytes, expected {SIZE}"]
    assert "bytes, expected" in seen["feedback"]
    assert (directory / "region").stat().st_size == length  # the feedback wrote nothing


# The tenant swaps in a file of its own (a copy of the region, or an empty one of its size)
# and takes a lease on it: a write lease fails (O_NONBLOCK) every other open, a read lease
# every open for writing. Without O_NONBLOCK the open would block for
# /proc/sys/fs/lease-break-time (45 s by default).
LEASE_HOLDER = """
import fcntl, os, shutil, signal, sys, time
signal.signal(signal.SIGIO, signal.SIG_IGN)
d, kind = sys.argv[1], sys.argv[2]
os.rename(d + "/region", d + "/region.orig")
shutil.copyfile(d + "/region.orig", d + "/region")
if kind == "write":
    os.truncate(d + "/region", 0)
    os.truncate(d + "/region", int(sys.argv[3]))
fd = os.open(d + "/region", os.O_RDONLY)
try:
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK if kind == "write" else fcntl.F_RDLCK)
except OSError as e:
    print("no lease:", e, flush=True)
    sys.exit()
print("leased", flush=True)
time.sleep(300)
"""


@contextmanager
def leased(directory: Path, kind: str) -> Iterator[None]:
    """The tenant's lease (`kind` "write" or "read") while the block runs."""
    holder = subprocess.Popen(
        [sys.executable, "-c", LEASE_HOLDER, str(directory), kind, str(SIZE)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        answer = holder.stdout.readline()
        if answer.startswith("no lease"):
            pytest.skip(f"this kernel gives no lease: {answer.strip()}")
        assert answer == "leased\n"
        yield
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize("mode", ["inspect", "monitor"])
def test_a_lease_on_the_region_does_not_block_the_reader(directory: Path, mode: str) -> None:
    with leased(directory, "write"):
        seen = agent_reads(directory, mode)
        assert seen["usage"] is None and seen["seconds"] < 1
        assert "cannot open region" in seen["problems"][0]
        assert "cannot open region" in seen["feedback"]
        start = time.monotonic()
        proc = usage_command(directory)
        assert proc.returncode == 1 and time.monotonic() - start < HANG_S


def test_a_region_that_cannot_be_opened_for_writing_is_still_inspected(directory: Path) -> None:
    """A read lease refuses the monitor's open for writing (the feedback) but not an open
    for reading: the region is inspected as `inspect` alone would, and nothing written."""
    before = (directory / "region").read_bytes()
    with leased(directory, "read"):
        seen = agent_reads(directory, "monitor")
        assert seen["trusted"] and seen["usage"] is not None and seen["seconds"] < 1
        assert "cannot open region" in seen["feedback"]
        assert "a lease is held on it" in seen["feedback"]
        assert (directory / "region").read_bytes() == before


# ---- the feedback's device ----------------------------------------------------------------


@pytest.mark.parametrize("dev", [-1, 2, 16, 300])
def test_feedback_is_bounded_by_the_grant(directory: Path, dev: int) -> None:
    Tenant(directory).write(offset("devices"), "<I", 16)  # the region claims more
    seen = agent_reads(directory, "inspect", feedback_dev=dev)
    assert seen["feedback"] == f"device index {dev} is not in 0..1 (the grant's devices)"


@pytest.mark.parametrize("dev", [-1, 2, 16, 300])
def test_the_monitors_feedback_is_bounded_by_the_grant(directory: Path, dev: int) -> None:
    """Refused before the region is opened, whatever the region says of its devices."""
    Tenant(directory).write(offset("devices"), "<I", 16)
    before = (directory / "region").read_bytes()
    seen = agent_reads(directory, "monitor", feedback_dev=dev)
    assert seen == {"refused": f"device index {dev} is not in 0..1 (the grant's devices)"}
    assert (directory / "region").read_bytes() == before


def _feedback_of(directory: Path, dev: int) -> tuple[int, int]:
    """util_permille and util_stamp_ns of device `dev`, as the file has them."""
    data = (directory / "region").read_bytes()
    permille, stamp = struct.unpack_from("<IQ", data, offset("dev", dev, "util_permille"))
    return permille, stamp


def test_the_monitor_writes_feedback_only_to_a_region_it_found_trusted(
    directory: Path, tenant: subprocess.Popen[str]
) -> None:
    seen = agent_reads(directory, "monitor", feedback_dev=1)
    assert seen["trusted"] and seen["feedback"] == "ok"
    permille, stamp = _feedback_of(directory, 1)
    assert permille == 500 and stamp > 0
    assert _feedback_of(directory, 0) == (0, 0)  # only the device asked for
    seen = agent_reads(
        directory, "monitor", lambda: Tenant(directory).write(offset("devices"), "<I", 3)
    )
    assert not seen["trusted"] and seen["usage"] is not None
    assert seen["feedback"] == (
        f"feedback not written to region {directory / 'region'}: it is not what was granted"
    )
    assert _feedback_of(directory, 0) == (0, 0)


# ---- fuzzing ------------------------------------------------------------------------------

#: Rounds of mutations per run; `GPULET_REGION_FUZZ_EXAMPLES=5000` for a longer one (or
#: bench/region_fuzz.py --mutations N, which reports figures).
FUZZ_EXAMPLES = int(os.environ.get("GPULET_REGION_FUZZ_EXAMPLES", "500"))


def _word(area: tuple[int, int], index: int, size: int, value: int) -> Mutation:
    start, length = area
    offset = start + index % max(1, length // size) * size
    return Mutation("word", offset, size=size, value=value & ((1 << 8 * size) - 1))


_areas = st.sampled_from(AREAS)
_mutations = st.one_of(
    st.builds(
        lambda area, i, data: Mutation("bytes", area[0] + i % area[1], data),
        _areas,
        st.integers(0, SIZE),
        st.binary(min_size=1, max_size=16),
    ),
    st.builds(
        _word,
        _areas,
        st.integers(0, SIZE),
        st.sampled_from((4, 8)),
        st.one_of(st.sampled_from(INTERESTING_64), st.integers(0, U64)),
    ),
    st.builds(
        lambda swap, arg: Mutation("swap", swap=swap, arg=arg),
        st.sampled_from(region_fuzz.SWAPS),
        st.integers(0, 2 * SIZE),
    ),
)


def test_fuzz_the_reader_against_a_live_region(tmp_path: Path) -> None:
    """A live region (a process attached twice and charged), changed at random by the tenant
    while a reader process calls inspect and write_feedback in a loop: no crash, no hang, no
    call over 1 s, nothing raised but RegionError (inspect: nothing at all), every count
    within its array, the grant's caps, each device's total at least the sum of the charges
    of the processes listed, and no write through the region's name to a host file. Rounds
    run while the reader reads, so it also meets files half-changed."""
    with Fuzz(tmp_path) as fuzz:

        @settings(
            max_examples=FUZZ_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(st.lists(_mutations, min_size=1, max_size=6))
        def one_round(mutations: list[Mutation]) -> None:
            findings = fuzz.round(mutations)
            assert not findings, "\n".join(findings)

        one_round()
        unreadable, with_problems, trusted = fuzz.findings.seen_as
        assert fuzz.findings.reads >= 2 * FUZZ_EXAMPLES
        assert unreadable and with_problems and trusted  # the rounds reached each outcome
        assert inspect(fuzz.directory, LIMITS).trusted  # and the region is whole again


# ---- the batch share ------------------------------------------------------------------------

BATCH = Limits(tuple(replace(d, batch=True) for d in LIMITS.devices))


def _share_of(directory: Path, dev: int) -> tuple[int, int]:
    data = (directory / "region").read_bytes()
    permille, stamp = struct.unpack_from("<IQ", data, offset("dev", dev, "share_permille"))
    return permille, stamp


def test_the_share_is_written_to_its_device_and_nowhere_else(directory: Path) -> None:
    before = (directory / "region").read_bytes()
    write_share(directory, 1, 640, BATCH)
    permille, stamp = _share_of(directory, 1)
    assert permille == 640 and stamp > 0
    after = bytearray((directory / "region").read_bytes())
    at = offset("dev", 1, "share_permille")
    after[at : at + 12] = before[at : at + 12]
    assert bytes(after) == before  # the 12 bytes and nothing else


@pytest.mark.parametrize(
    ("dev", "permille", "limits", "message"),
    [
        (2, 500, BATCH, "device index 2 is not in 0..1 (the grant's devices)"),
        (-1, 500, BATCH, "device index -1 is not in 0..1"),
        (0, 1001, BATCH, "share 1001 permille is not in 0..1000"),
        (0, 500, LIMITS, "is not a batch slice's: it has no share"),
    ],
)
def test_a_share_outside_the_grant_is_refused_before_anything_is_opened(
    directory: Path, dev: int, permille: int, limits: Limits, message: str
) -> None:
    Tenant(directory).write(offset("devices"), "<I", 16)  # the region claims more
    before = (directory / "region").read_bytes()
    with pytest.raises(RegionError, match=re.escape(message)):
        write_share(directory, dev, permille, limits)
    assert (directory / "region").read_bytes() == before


def test_a_region_swapped_for_a_symlink_or_a_fifo_gets_no_share(
    directory: Path, tmp_path: Path
) -> None:
    """The container owns the directory: it may put a link to a host file, or a FIFO, where
    the region was. Neither is opened for writing; the host file keeps its bytes."""
    victim = tmp_path / "host-file"
    victim.write_bytes(b"\0" * len((directory / "region").read_bytes()))
    (directory / "region").unlink()
    (directory / "region").symlink_to(victim)
    with pytest.raises(RegionError, match=r"region .* is a symbolic link"):
        write_share(directory, 0, 500, BATCH)
    assert victim.read_bytes() == b"\0" * len(victim.read_bytes())
    (directory / "region").unlink()
    os.mkfifo(directory / "region")
    start = time.monotonic()
    with pytest.raises(RegionError, match=r"region .* is a FIFO"):
        write_share(directory, 0, 500, BATCH)
    assert time.monotonic() - start < HANG_S


def test_a_region_of_another_size_or_version_gets_no_share(directory: Path) -> None:
    region = directory / "region"
    with region.open("ab") as f:
        f.write(b"\0" * 8)
    with pytest.raises(RegionError, match="bytes, expected"):
        write_share(directory, 0, 500, BATCH)
    setup(directory, LIMITS)
    Tenant(directory).write(offset("version"), "<I", 2)
    with pytest.raises(RegionError, match="has version 2; this build reads version 1"):
        write_share(directory, 0, 500, BATCH)
