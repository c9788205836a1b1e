"""Fuzzes the agent's region reader (`native.region.inspect` and `write_feedback`).

A container's region is set up and a process of the container attaches to it twice and is
charged (it then sleeps: its slots stay live). A reader process, as the agent, calls
`inspect` and `write_feedback` in a loop. This process, as a tenant, changes the live file
between the reader's calls and while they run: random bytes and random 4- and 8-byte words
at random offsets (biased to the header, the mutex, the device records and the slots), and
whole-file swaps (truncated, extended, a symlink to a host file, a FIFO, a directory, a
device node, an empty file); after each round the region is put back as it was.

What counts against the reader: a crash (it dies), a hang (no call finishes for HANG_S), a
call over SLOW_S (1 s), an escape (inspect raising anything, write_feedback raising anything
but RegionError), a broken invariant (counts past their arrays, caps that are not the grant's,
a device total below the sum of the charges of the processes it lists), and a host file
written through the region's name. A mutation that zeroes charges lowers the totals: the
region cannot prove what it does not hold; the agent's NVML backstop is what catches memory
used past the cap (docs/limiter.md).

Run: .venv/bin/python bench/region_fuzz.py --mutations 10000 [--seed N] [--json]
(tests/unit/test_region_untrusted.py runs the same rounds under hypothesis, CI-sized.)
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import random
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from native._region import ffi
from native.region import (
    DeviceLimit,
    Limits,
    Region,
    RegionError,
    inspect,
    setup,
    write_feedback,
)

ROOT = Path(__file__).resolve().parent.parent
SIZE: int = ffi.sizeof("struct gpulet_region")
U64 = (1 << 64) - 1
MIB = 1 << 20
LIMITS = Limits(
    (
        DeviceLimit("GPU-8b0b9d22-4d8e-8e2a-3f1c-5b6a9e0d7c41", 1024, 50),
        DeviceLimit("GPU-3ebba5ba-0c12-44b5-9d3f-0a1b2c3d4e5f", 2048, 100),
    )
)
#: A call slower than this is a failure (the agent reads every region every second).
SLOW_S = 1.0
#: No call finishing for this long is a hang.
HANG_S = 5.0


def _at(*fields: str | int) -> int:
    return int(ffi.offsetof("struct gpulet_region", *fields))


LOCK = _at("lock")
DEV = _at("dev")
DEV_SIZE: int = ffi.sizeof("struct gpulet_device_shared")
SLOT = _at("slot")
SLOT_SIZE: int = ffi.sizeof("struct gpulet_slot")
#: Where mutations land: (start, length) of the header (magic and version: rarely, since a
#: region without them is not read any further), the mutex, the device records, the first
#: slots (the live ones and a few free ones), anywhere.
AREAS = (
    (0, LOCK),
    (12, LOCK - 12),
    (12, LOCK - 12),
    (LOCK, 64),
    (DEV, 16 * DEV_SIZE),
    (SLOT, 4 * SLOT_SIZE),
    (0, SIZE),
)
INTERESTING = (0, 1, 2, 16, 17, 255, 256, 300, 100000, 1234567, 2**31 - 1, 2**31, 2**32 - 1)
INTERESTING_64 = (*INTERESTING, 2**32, 2**63, U64 - 1, U64, 1024 * MIB, 1024 * MIB + 1)
SWAPS = ("truncate", "extend", "symlink", "fifo", "directory", "device", "empty", "new")


@dataclass(frozen=True)
class Mutation:
    """One change a tenant makes. kind: "bytes" (data at offset), "word" (value, size bytes
    little-endian, at offset), or "swap" (the file replaced or resized; arg: a length)."""

    kind: str
    offset: int = 0
    data: bytes = b""
    size: int = 0
    value: int = 0
    swap: str = ""
    arg: int = 0


def random_mutation(rng: random.Random) -> Mutation:
    roll = rng.random()
    if roll < 0.04:
        return Mutation("swap", swap=rng.choice(SWAPS), arg=rng.randrange(2 * SIZE))
    start, length = rng.choice(AREAS)
    if roll < 0.4:
        return Mutation("bytes", start + rng.randrange(length), rng.randbytes(rng.randint(1, 16)))
    size = rng.choice((4, 8))
    pool = INTERESTING if size == 4 else INTERESTING_64
    value = rng.choice(pool) if rng.random() < 0.5 else rng.getrandbits(8 * size)
    offset = start + rng.randrange(max(1, length // size)) * size  # whole words of the area
    return Mutation("word", offset, size=size, value=value)


def apply(directory: Path, host: Path, m: Mutation) -> None:
    """Makes the change, as the tenant: through a mapping of the live file, or on its name."""
    region = directory / "region"
    orig = directory / "region.orig"
    if m.kind == "swap":
        if m.swap in ("truncate", "extend"):
            if region.is_file() and not region.is_symlink():
                os.truncate(region, m.arg % SIZE if m.swap == "truncate" else SIZE + 1 + m.arg)
            return
        if orig.exists():
            return  # one swap per round
        region.rename(orig)  # the tenant's processes keep theirs mapped
        if m.swap == "symlink":
            region.symlink_to(host)
        elif m.swap == "fifo":
            os.mkfifo(region, 0o666)
        elif m.swap == "directory":
            region.mkdir()
        elif m.swap == "device":
            try:
                os.mknod(region, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's
            except PermissionError:
                os.mkfifo(region, 0o666)
        elif m.swap == "empty":
            region.write_bytes(b"")
        else:  # a file of its own: the original's bytes, cut or grown
            data = orig.read_bytes()
            region.write_bytes(data[: m.arg] if m.arg < SIZE else data + bytes(m.arg - SIZE))
        return
    if not region.is_file() or region.is_symlink():
        region = orig  # swapped away: the tenant still has the original mapped
    with region.open("r+b") as f:
        length = os.fstat(f.fileno()).st_size
        if length == 0:
            return
        with mmap.mmap(f.fileno(), length) as view:
            offset = m.offset % length
            data = m.data if m.kind == "bytes" else m.value.to_bytes(m.size, "little")
            data = data[: length - offset]
            view[offset : offset + len(data)] = data


def restore(directory: Path, pristine: bytes) -> None:
    """The original file back under its name, at its length, with its bytes."""
    region = directory / "region"
    orig = directory / "region.orig"
    if orig.exists():
        if region.is_dir() and not region.is_symlink():
            region.rmdir()
        else:
            region.unlink()
        orig.rename(region)
    with region.open("r+b") as f:
        os.ftruncate(f.fileno(), SIZE)
        f.write(pristine)


# ---- the reader (a process of its own: its crash or hang is a finding, not ours) -----------


def check(seen: Any, expected: Limits) -> str | None:
    """Why what inspect returned breaks its contract, or None."""
    if seen.usage is None:
        return None if len(seen.problems) == 1 else f"unreadable with {seen.problems}"
    usage = seen.usage
    n = len(expected.devices)
    if len(usage.devices) != n or len(usage.processes) > 256:
        return f"{len(usage.devices)} devices, {len(usage.processes)} processes"
    for i, (d, g) in enumerate(zip(usage.devices, expected.devices, strict=True)):
        if (d.uuid, d.memory_bytes, d.core_percent) != (g.uuid, g.memory_mib * MIB, g.core_percent):
            return f"device {i} is not the grant: {d}"
        if d.util_percent is not None and not 0 <= d.util_percent <= 100:
            return f"device {i}: utilisation {d.util_percent}"
        listed = min(U64, sum(p.used_bytes[i] for p in usage.processes))
        if not listed <= d.used_bytes <= U64:
            return f"device {i}: total {d.used_bytes} below the listed {listed}"
    for p in usage.processes:
        if len(p.used_bytes) != n or not 0 <= p.slot < 256:
            return f"process {p}"
    return None


def reader(directory: Path, counter: Path, events: Path) -> None:
    """The agent's loop, as fast as it goes: counts its rounds into `counter` (and what
    inspect saw: unreadable, read with problems, trusted), writes each finding to `events`
    as a JSON line."""
    seen_as = [0, 0, 0]
    with counter.open("r+b") as f, mmap.mmap(f.fileno(), 32) as count, events.open("a") as log:

        def event(kind: str, detail: str, seconds: float) -> None:
            doc = {"kind": kind, "detail": detail[:500], "seconds": round(seconds, 4)}
            log.write(json.dumps(doc) + "\n")
            log.flush()

        n = 0
        while True:
            start = time.monotonic()
            try:
                seen = inspect(directory, LIMITS)
            except BaseException as e:
                event("escape", f"inspect raised {e!r}", time.monotonic() - start)
            else:
                elapsed = time.monotonic() - start
                if elapsed > SLOW_S:
                    event("slow", f"inspect took {elapsed:.3f} s", elapsed)
                why = check(seen, LIMITS)
                if why is not None:
                    event("invariant", why, elapsed)
                seen_as[0 if seen.usage is None else 1 if seen.problems else 2] += 1
            start = time.monotonic()
            try:
                write_feedback(directory, n % len(LIMITS.devices), n % 101, LIMITS)
            except RegionError:
                pass
            except BaseException as e:
                event("escape", f"write_feedback raised {e!r}", time.monotonic() - start)
            elapsed = time.monotonic() - start
            if elapsed > SLOW_S:
                event("slow", f"write_feedback took {elapsed:.3f} s", elapsed)
            n += 1
            struct.pack_into("<3Q", count, 8, *seen_as)
            struct.pack_into("<Q", count, 0, n)


def mapping_reader(directory: Path, counter: Path, events: Path) -> None:
    """For comparison (--against mapping): the agent before `inspect`, reading through
    `Region` (the file mapped once, and again after an error; a snapshot under the lock and
    the feedback each round). It is not expected to survive: a truncation is a SIGBUS."""
    region: Region | None = None
    with counter.open("r+b") as f, mmap.mmap(f.fileno(), 32) as count, events.open("a") as log:
        n = 0
        while True:
            start = time.monotonic()
            try:
                if region is None:
                    region = Region.open(directory)
                region.snapshot()
                region.set_feedback(n % max(1, region.devices), n % 101)
            except RegionError:
                if region is not None:
                    region.close()
                region = None
            except BaseException as e:
                log.write(json.dumps({"kind": "escape", "detail": repr(e)[:500]}) + "\n")
                log.flush()
            elapsed = time.monotonic() - start
            if elapsed > SLOW_S:
                log.write(json.dumps({"kind": "slow", "detail": f"{elapsed:.3f} s"}) + "\n")
                log.flush()
            n += 1
            struct.pack_into("<Q", count, 0, n)


# ---- the harness --------------------------------------------------------------------------

TENANT = """
import sys, time
from native.region import Region
a, b = Region.open(sys.argv[1]), Region.open(sys.argv[1])
a.attach(comm="trainer")
b.attach(comm="loader")
assert a.reserve(0, 300 * 2**20, 1024 * 2**20) and a.reserve(1, 5 * 2**20, 2048 * 2**20)
assert b.reserve(0, 100 * 2**20, 1024 * 2**20)
print("ready", flush=True)
time.sleep(100000)
"""


@dataclass
class Findings:
    rounds: int = 0
    mutations: int = 0
    reads: int = 0
    #: Of the reads, by the last reader: unreadable, read with problems, trusted.
    seen_as: tuple[int, ...] = (0, 0, 0)
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    host_writes: int = 0

    def kinds(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == kind]

    @property
    def clean(self) -> bool:
        return not (self.crashes or self.hangs or self.events or self.host_writes)


class Fuzz:
    """A region, its tenant process and the reader process, in `work`."""

    def __init__(self, work: Path, against: str = "inspect") -> None:
        self.work = work
        self.against = against
        self.directory = work / "c"
        self.host = work / "host-file"
        self.counter = work / "counter"
        self.events = work / "events.jsonl"
        self.findings = Findings()
        self._events_read = 0
        self._reads_before = 0  # rounds of readers that crashed or hung
        self._reader: subprocess.Popen[bytes] | None = None
        self._tenant: subprocess.Popen[str] | None = None

    def __enter__(self) -> Self:
        setup(self.directory, LIMITS)
        self._tenant = subprocess.Popen(
            [sys.executable, "-c", TENANT, str(self.directory)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._tenant.stdout is not None
        if self._tenant.stdout.readline() != "ready\n":
            raise RuntimeError("the tenant process did not attach")
        self.pristine = (self.directory / "region").read_bytes()
        self.host.write_bytes(self.pristine)  # a host file the reader must never write
        self.counter.write_bytes(bytes(32))
        self.events.write_text("")
        self._start_reader()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for proc in (self._reader, self._tenant):
            if proc is not None:
                proc.kill()
                proc.wait()
        if self._tenant is not None and self._tenant.stdout is not None:
            self._tenant.stdout.close()

    def _start_reader(self) -> None:
        self._reader = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--reader",
                self.against,
                str(self.directory),
                str(self.counter),
                str(self.events),
            ],
            cwd=ROOT,
            stderr=subprocess.PIPE,
        )

    def _count(self) -> int:
        value: int = struct.unpack("<Q", self.counter.read_bytes()[:8])[0]
        return value

    def round(self, mutations: Sequence[Mutation]) -> list[str]:
        """Applies the mutations, waits for two of the reader's rounds to finish on them
        (the first may have begun before), collects findings and restores the region.
        Returns this round's findings, one line each."""
        f = self.findings
        before = (len(f.crashes), len(f.hangs), len(f.events), f.host_writes)
        start = self._count()
        for m in mutations:
            apply(self.directory, self.host, m)
        f.rounds += 1
        f.mutations += len(mutations)
        deadline = time.monotonic() + HANG_S
        while self._count() < start + 2:
            assert self._reader is not None
            if self._reader.poll() is not None:
                _, err = self._reader.communicate()
                f.crashes.append(
                    f"exit {self._reader.returncode} after {mutations}: {err.decode()[-800:]}"
                )
                self._restart_reader()
                break
            if time.monotonic() > deadline:
                f.hangs.append(f"no round in {HANG_S} s after {mutations}")
                self._reader.kill()
                self._reader.communicate()
                self._restart_reader()
                break
            time.sleep(0.0002)
        with self.events.open("rb") as log:
            log.seek(self._events_read)
            for line in log:
                if not line.endswith(b"\n"):
                    break  # being written: next round
                f.events.append({**json.loads(line), "after": repr(list(mutations))[:500]})
                self._events_read += len(line)
        restore(self.directory, self.pristine)
        if self.host.read_bytes() != self.pristine:
            f.host_writes += 1
            self.host.write_bytes(self.pristine)
        f.reads = self._reads_before + self._count()
        f.seen_as = struct.unpack("<3Q", self.counter.read_bytes()[8:32])
        new = [
            *f.crashes[before[0] :],
            *f.hangs[before[1] :],
            *(json.dumps(e) for e in f.events[before[2] :]),
        ]
        if f.host_writes > before[3]:
            new.append(f"the host file was written after {mutations}")
        return new

    def _restart_reader(self) -> None:
        self._reads_before += self._count()
        self.counter.write_bytes(bytes(32))
        self._start_reader()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mutations", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--against",
        choices=("inspect", "mapping"),
        default="inspect",
        help="the reader: inspect/write_feedback (the agent's), or Region (for comparison)",
    )
    parser.add_argument(
        "--reader", nargs=4, metavar=("MODE", "DIR", "COUNTER", "EVENTS"), help="internal"
    )
    args = parser.parse_args()
    if args.reader:
        mode, *paths = args.reader
        (reader if mode == "inspect" else mapping_reader)(*(Path(p) for p in paths))
        return
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="region-fuzz-"))
    start = time.monotonic()
    try:
        with Fuzz(work, args.against) as fuzz:
            while fuzz.findings.mutations < args.mutations:
                fuzz.round([random_mutation(rng) for _ in range(rng.randint(1, 6))])
            f = fuzz.findings
            trusted = inspect(fuzz.directory, LIMITS).trusted
    finally:
        shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - start
    report = {
        "reader": args.against,
        "seed": seed,
        "mutations": f.mutations,
        "rounds": f.rounds,
        "reader_rounds": f.reads,
        "reads_unreadable_problems_trusted": list(f.seen_as),
        "crashes": len(f.crashes),
        "hangs": len(f.hangs),
        "escapes": len(f.kinds("escape")),
        "slow_calls": len(f.kinds("slow")),
        "invariant_failures": len(f.kinds("invariant")),
        "host_file_writes": f.host_writes,
        "trusted_after_restore": trusted,
        "seconds": round(elapsed, 1),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:28} {value}")
        for what in (*f.crashes, *f.hangs, *(json.dumps(e) for e in f.events)):
            print("  " + what)
    sys.exit(0 if f.clean and trusted else 1)


if __name__ == "__main__":
    main()
