"""The shared accounting region and the limits file: the C code through native.region, other
processes attached to the same region, and the C code alone under ASan and UBSan."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpulet.api.assignment import MAX_GPUS
from native._region import ffi, lib
from native.region import (
    MAX_DEVICES,
    DeviceLimit,
    Limits,
    Region,
    RegionError,
    format_limits,
    parse_limits,
    read_limits,
    setup,
)
from tests.needs import asan_runtime, c_compiler

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
CAP = 1024 * MIB
SANITIZER_ENV = {
    "ASAN_OPTIONS": "abort_on_error=1:detect_leaks=1",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}
LIMITS = Limits((DeviceLimit("GPU-8b0b9d22-aaaa", 1024, 50), DeviceLimit("GPU-b", 64, 100)))


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    setup(tmp_path / "c", LIMITS)
    return tmp_path / "c"


# ---- the limits file ----------------------------------------------------------------------


def test_limits_round_trip_through_format_and_parse(tmp_path: Path) -> None:
    text = format_limits(LIMITS)
    assert text == "gpulet-limits 1\ndevice GPU-8b0b9d22-aaaa 1024 50\ndevice GPU-b 64 100\n"
    assert parse_limits(text) == LIMITS
    commented = "# written by hand\n\n  gpulet-limits 1\n# a GPU\ndevice\tGPU-x  2  7 \n"
    assert parse_limits(commented) == Limits((DeviceLimit("GPU-x", 2, 7),))
    (tmp_path / "limits").write_text(text)
    assert read_limits(tmp_path / "limits") == LIMITS


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "limits: no 'gpulet-limits 1' line"),
        ("# only a comment\n", "limits: no 'gpulet-limits 1' line"),
        ("gpulet-limits 1\n", "limits: no device line"),
        ("gpulet-limits 2\ndevice a 1 1\n", "limits line 1: unsupported limits version 2"),
        ("gpulet-limits one\n", "limits line 1: expected 'gpulet-limits 1' first"),
        ("device a 1 1\n", "limits line 1: expected 'gpulet-limits 1' first"),
        ("gpulet-limits 1\ngpulet-limits 1\n", "limits line 2: a second 'gpulet-limits' line"),
        (
            "gpulet-limits 1\n\n\ndevice a 1 150\n",
            "limits line 4: core percent 150 is not in 1..100",
        ),
        ("gpulet-limits 1\ndevice a 1 0\n", "limits line 2: core percent 0 is not in 1..100"),
        ("gpulet-limits 1\ndevice a 1 x\n", "limits line 2: core percent 'x' is not a number"),
        (
            "gpulet-limits 1\ndevice a 0 1\n",
            "limits line 2: memory 0 MiB is not in 1..1099511627776",
        ),
        ("gpulet-limits 1\ndevice a 1099511627777 1\n", "memory 1099511627777 MiB is not in"),
        ("gpulet-limits 1\ndevice a 1e3 1\n", "limits line 2: memory '1e3' is not a number of MiB"),
        ("gpulet-limits 1\ndevice a_b 1 1\n", "uuid 'a_b' has a character outside [A-Za-z0-9-]"),
        (f"gpulet-limits 1\ndevice {'a' * 64} 1 1\n", "is longer than 63 characters"),
        ("gpulet-limits 1\ndevice a 1 1\ndevice a 2 2\n", "limits line 3: duplicate uuid a"),
        (
            "gpulet-limits 1\ndevice a 1\n",
            "expected 'device <uuid> <memory_mib> <core_percent> [batch]'",
        ),
        ("gpulet-limits 1\ndevice a 1 1 bulk\n", "limits line 2: expected 'device <uuid>"),
        ("gpulet-limits 1\ndevice a 1 1 # x\n", "expected 'device <uuid> <memory_mib>"),
        ("gpulet-limits 1\ngpu a 1 1\n", "limits line 2: unknown keyword 'gpu'"),
        ("gpulet-limits 1\r\ndevice a 1 1\n", "limits line 1: unexpected byte 0x0d"),
        ("gpulet-limits 1\ndevice é 1 1\n", "limits line 2: unexpected byte 0xc3"),
        ("gpulet-limits 1\n" + "".join(f"device g{i} 1 1\n" for i in range(17)), "line 18: more"),
    ],
)
def test_each_malformed_limits_file_gets_its_own_message(text: str, message: str) -> None:
    with pytest.raises(RegionError) as caught:
        parse_limits(text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_batch_device_is_marked_in_the_limits_and_kept_through_a_round_trip() -> None:
    limits = parse_limits("gpulet-limits 1\ndevice a 1024 10 batch\ndevice b 1024 30\n")
    assert [(d.uuid, d.core_percent, d.batch) for d in limits.devices] == [
        ("a", 10, True),
        ("b", 30, False),
    ]
    text = format_limits(limits)
    assert text == "gpulet-limits 1\ndevice a 1024 10 batch\ndevice b 1024 30\n"
    assert parse_limits(text) == limits


def test_read_limits_names_the_file_and_refuses_big_ones(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match=r"cannot open limits .*absent: No such file"):
        read_limits(tmp_path / "absent")
    (tmp_path / "big").write_text("#" * (64 * 1024 + 1))
    with pytest.raises(RegionError, match=r"big is larger than 64 KiB"):
        read_limits(tmp_path / "big")
    (tmp_path / "bad").write_text("gpulet-limits 1\ndevice a 1 101\n")
    with pytest.raises(RegionError, match=r"bad: limits line 2: core percent 101"):
        read_limits(tmp_path / "bad")


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ((), "limits: 0 devices, expected 1..16"),
        (tuple(DeviceLimit(f"g{i}", 1, 1) for i in range(17)), "17 devices"),
        ((DeviceLimit("a b", 1, 1),), "uuid 'a b' is not 1..63 characters"),
        ((DeviceLimit("a", 0, 1),), "device a: memory 0 MiB is not in 1.."),
        ((DeviceLimit("a", 1, 101),), "device a: core percent 101 is not in 1..100"),
        ((DeviceLimit("a", 1, 1), DeviceLimit("a", 2, 2)), "duplicate device a"),
    ],
)
def test_setup_refuses_invalid_limits_and_writes_nothing(
    tmp_path: Path, devices: tuple[DeviceLimit, ...], message: str
) -> None:
    with pytest.raises(RegionError, match=re.escape(message)):
        setup(tmp_path / "c", Limits(devices))
    assert not (tmp_path / "c").exists()


def test_setup_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        setup(tmp_path / "a" / "b", LIMITS)
        setup(tmp_path / "a" / "b", LIMITS)  # again, over read-only files
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b" / "limits").stat().st_mode) == 0o444
    assert stat.S_IMODE((tmp_path / "a" / "b" / "region").stat().st_mode) == 0o666
    assert read_limits(tmp_path / "a" / "b" / "limits") == LIMITS
    assert sorted(p.name for p in (tmp_path / "a" / "b").iterdir()) == ["limits", "region"]


# ---- the region file ----------------------------------------------------------------------


def test_a_fresh_region_serves_the_limits(directory: Path) -> None:
    with Region.open(directory) as region:
        assert region.devices == 2 and region.slot is None
        usage = region.snapshot()
    assert [(d.uuid, d.memory_bytes, d.core_percent, d.used_bytes) for d in usage.devices] == [
        ("GPU-8b0b9d22-aaaa", 1024 * MIB, 50, 0),
        ("GPU-b", 64 * MIB, 100, 0),
    ]
    assert usage.processes == () and usage.devices[0].util_percent is None
    assert (directory / "region").stat().st_size == ffi.sizeof("struct gpulet_region")


def _patch(path: Path, offset: int, data: bytes) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        (lambda p: _patch(p, 0, b"NOTAREGN"), r"region is not a gpulet region$"),
        (
            lambda p: _patch(p, 8, (7).to_bytes(4, "little")),
            r"region has region version 7; this build reads version 1$",
        ),
        (
            lambda p: os.truncate(p, 1000),
            r"region .*region is truncated: 1000 bytes, expected \d+$",
        ),
        (lambda p: os.truncate(p, 0), r"is truncated: 0 bytes, expected"),
        (
            lambda p: os.truncate(p, p.stat().st_size + 4096),
            r"region .*region is \d+ bytes, expected \d+$",
        ),
        (lambda p: _patch(p, 12, (1).to_bytes(4, "little")), r"records size 1, expected"),
        (lambda p: _patch(p, 16, (17).to_bytes(4, "little")), r"has 17 devices, at most 16"),
        (lambda p: _patch(p, 20, (9).to_bytes(4, "little")), r"has 9 slots, expected 256"),
    ],
)
def test_a_broken_region_is_refused_clearly(
    directory: Path, spoil: Callable[[Path], None], message: str
) -> None:
    spoil(directory / "region")
    with pytest.raises(RegionError, match=message):
        Region.open(directory)


def test_a_missing_region_is_named(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match=r"cannot open region .*region: No such file"):
        Region.open(tmp_path)


# ---- accounting in one process ------------------------------------------------------------


def test_reserve_up_to_the_cap_then_refuse_with_nothing_charged(directory: Path) -> None:
    with Region.open(directory) as region:
        region.attach()
        assert region.reserve(0, 1000 * MIB, CAP)
        assert region.reserve(0, 24 * MIB, CAP)
        assert not region.reserve(0, 1, CAP)
        assert region.used(0) == CAP and region.used(1) == 0
        region.release(0, 24 * MIB)
        assert region.reserve(0, 24 * MIB, CAP)
        region.release(0, 1 << 50)  # saturates at zero
        assert region.used(0) == 0
        assert not region.reserve(1, (1 << 64) - 1, CAP)
        assert region.reserve(1, 0, 0)


def test_a_container_already_over_a_lowered_cap_gets_nothing_more(directory: Path) -> None:
    """The cap is the caller's (the limits file's, read again): charges above a lower one
    stay, and no reservation passes until they are given back below it."""
    with Region.open(directory) as region:
        region.attach()
        assert region.reserve(0, 100 * MIB, CAP)
        assert not region.reserve(0, 1, 50 * MIB)
        assert not region.reserve(0, 0, 50 * MIB)
        assert region.used(0) == 100 * MIB
        region.release(0, 60 * MIB)
        assert region.reserve(0, 10 * MIB, 50 * MIB)


def test_calls_that_need_a_slot_or_a_device_say_so(directory: Path) -> None:
    with Region.open(directory) as region:
        with pytest.raises(RegionError, match="not attached"):
            region.reserve(0, 1, CAP)
        with pytest.raises(RegionError, match="not attached"):
            region.detach()
        region.attach(pid=4242, comm="worker")
        with pytest.raises(RegionError, match="already attached"):
            region.attach()
        with pytest.raises(RegionError, match=r"device index 2 is not in 0..1"):
            region.reserve(2, 1, CAP)
        with pytest.raises(RegionError, match=r"bytes -1 is not in"):
            region.reserve(0, -1, CAP)
        with pytest.raises(RegionError, match=r"pid 0 is not a process id"):
            Region.open(directory).attach(pid=0)
        assert region.snapshot().processes[0].pid == 4242
    with pytest.raises(RegionError, match="closed"):
        region.used(0)


def test_two_handles_share_one_cap_and_snapshot_shows_each(directory: Path) -> None:
    with Region.open(directory) as a, Region.open(directory) as b:
        assert (a.attach(comm="a"), b.attach(comm="b")) == (0, 1)
        assert a.reserve(0, 600 * MIB, CAP)
        assert not b.reserve(0, 425 * MIB, CAP)
        assert b.reserve(0, 424 * MIB, CAP)
        assert b.reserve(1, 5 * MIB, 64 * MIB)
        usage = a.snapshot()
        assert [(p.slot, p.pid, p.comm, p.used_bytes) for p in usage.processes] == [
            (0, os.getpid(), "a", (600 * MIB, 0)),
            (1, os.getpid(), "b", (424 * MIB, 5 * MIB)),
        ]
        assert [d.used_bytes for d in usage.devices] == [CAP, 5 * MIB]
        b.detach()  # its charge goes with it
        assert a.used(0) == 600 * MIB and a.used(1) == 0
        assert a.snapshot().generation > usage.generation


def test_feedback_is_stored(directory: Path) -> None:
    with Region.open(directory) as region:
        region.set_feedback(1, 37.5, stamp_ns=123)
        device = region.snapshot().devices[1]
        assert (device.util_percent, device.util_stamp_ns) == (37.5, 123)
        region.set_feedback(0, 100)
        assert region.snapshot().devices[0].util_stamp_ns > 0
        with pytest.raises(RegionError, match=r"utilisation 100.1% is not in 0..100"):
            region.set_feedback(0, 100.1)


def test_every_slot_taken_is_a_clear_error_and_a_freed_one_is_reused(directory: Path) -> None:
    handles = [Region.open(directory) for _ in range(256)]
    try:
        for h in handles:
            h.attach()
        with Region.open(directory) as extra:
            with pytest.raises(RegionError, match="no free slot: 256 live processes attached"):
                extra.attach()
            handles[42].close()
            assert extra.attach() == 42
    finally:
        for h in handles:
            h.close()


def test_a_private_region_enforces_the_cap_alone() -> None:
    with Region.private(LIMITS) as region:
        region.attach()
        assert region.reserve(1, 64 * MIB, 64 * MIB)
        assert not region.reserve(1, 1, 64 * MIB)
        assert region.reap() == 0


# ---- other processes ----------------------------------------------------------------------

CHILD = """
import sys, time
from native.region import Region
region = Region.open(sys.argv[1])
region.attach(comm="child")
assert region.reserve(0, int(sys.argv[2]), int(sys.argv[3]))
if sys.argv[4] == "lock":
    region.lock()
print("ready", flush=True)
time.sleep(120)
"""

StartChild = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def start_child(directory: Path) -> Iterator[StartChild]:
    """Starts a Python process that attaches, charges device 0, optionally takes the region
    lock, and sleeps; killed at the end of the test."""
    children: list[subprocess.Popen[str]] = []

    def start(nbytes: int, lock: bool = False) -> subprocess.Popen[str]:
        args = [str(directory), str(nbytes), str(CAP), "lock" if lock else "-"]
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        children.append(proc)
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        return proc

    yield start
    for proc in children:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=10) == -signal.SIGKILL


def test_two_processes_share_one_cap(directory: Path, start_child: StartChild) -> None:
    start_child(600 * MIB)
    with Region.open(directory) as region:
        region.attach()
        assert region.used(0) == 600 * MIB
        assert not region.reserve(0, 425 * MIB, CAP)
        assert region.reserve(0, 424 * MIB, CAP)
        assert region.reap() == 0  # the child is alive
        own_comm = Path("/proc/self/comm").read_text().strip()
        assert [p.comm for p in region.snapshot().processes] == ["child", own_comm]


def test_a_killed_process_loses_its_charge_at_the_next_reap(
    directory: Path, start_child: StartChild
) -> None:
    child = start_child(600 * MIB)
    with Region.open(directory) as region:
        _kill(child)
        assert region.used(0) == 600 * MIB  # until someone reaps
        assert region.reap() == 1
        assert region.used(0) == 0 and region.snapshot().processes == ()


def test_a_reservation_that_would_not_fit_reaps_by_itself(
    directory: Path, start_child: StartChild
) -> None:
    child = start_child(600 * MIB)
    with Region.open(directory) as region:
        region.attach()
        _kill(child)
        assert region.reserve(0, 1000 * MIB, CAP)
        assert [p.pid for p in region.snapshot().processes] == [os.getpid()]


def test_a_process_killed_holding_the_lock_neither_wedges_nor_leaks(
    directory: Path, start_child: StartChild
) -> None:
    with Region.open(directory) as region:
        region.attach()  # before the child takes the lock: attaching needs it
        child = start_child(300 * MIB, lock=True)
        got_lock = threading.Event()

        def take() -> None:
            region.lock()
            region.unlock()
            got_lock.set()

        threading.Thread(target=take, daemon=True).start()
        assert not got_lock.wait(0.3)  # the child holds it
        _kill(child)
        assert got_lock.wait(10)
        # Its charge is gone by the time it matters: the takeover reaps, and so does a
        # reservation that would not fit (the kernel wakes us before it closes the dead
        # process's files, so the takeover's reap may still see its slot held).
        assert region.reserve(0, CAP, CAP)
        assert [p.pid for p in region.snapshot().processes] == [os.getpid()]


def test_slots_of_dead_processes_are_reused(directory: Path, start_child: StartChild) -> None:
    handles = [Region.open(directory) for _ in range(255)]
    try:
        for h in handles:
            h.attach()
        child = start_child(0)
        _kill(child)
        with Region.open(directory) as late:
            assert late.attach() == 255  # the dead child's slot, reaped by attach
    finally:
        for h in handles:
            h.close()


# ---- the C code alone, sanitized ----------------------------------------------------------


def test_region_c_is_clean_under_address_and_undefined_sanitizers(tmp_path: Path) -> None:
    compiler = c_compiler()
    asan_runtime()
    program = tmp_path / "region_test"
    flags = ["-std=c11", "-D_GNU_SOURCE", "-g", "-O1", "-Wall", "-Wextra", "-Werror", "-fPIC"]
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    build = subprocess.run(
        [
            *compiler,
            *flags,
            *sanitize,
            f"-I{ROOT / 'native' / 'limiter'}",
            "-o",
            str(program),
            str(ROOT / "tests" / "native" / "region_test.c"),
            str(ROOT / "native" / "limiter" / "region.c"),
            "-lpthread",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    (tmp_path / "work").mkdir()
    run = subprocess.run(
        [str(program), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **SANITIZER_ENV},
        check=False,
    )
    assert run.returncode == 0 and run.stdout == "ok\n", run.stderr


# ---- the documented layout ----------------------------------------------------------------


def test_docs_give_the_layout_the_compiler_uses() -> None:
    """docs/limiter.md's layout tables match the C structs: a layout change shows up here
    (and must come with a new GPULET_REGION_VERSION)."""
    text = (ROOT / "docs" / "limiter.md").read_text()
    tables = re.findall(r"^`struct (\w+)`, (\d+) bytes:\n\n((?:\|.*\n)+)", text, re.M)
    assert {t[0] for t in tables} == {"gpulet_region", "gpulet_device_shared", "gpulet_slot"}
    for name, size, table in tables:
        assert ffi.sizeof(f"struct {name}") == int(size), name
        rows = re.findall(r"^\| (\d+) \| `(\w+)", table, re.M)
        assert rows, name
        for offset, field in rows:
            assert ffi.offsetof(f"struct {name}", field) == int(offset), (name, field)
    assert lib.GPULET_REGION_VERSION == 1


def test_one_device_limit() -> None:
    """The C limit, the Python region's and the assignment's (what the extender and the agent
    accept for one container) are one number."""
    assert lib.GPULET_MAX_DEVICES == MAX_DEVICES == MAX_GPUS
