"""The shared accounting region of one container and its limits file, from Python.

A typed layer over native/limiter/region.c (through the cffi extension `native._region`), so
the agent, the CLI and the limiter share one parser of the limits file and one implementation
of the region. The one rule set restated here is `check_limits`, for limits built in Python.
The formats are in docs/limiter.md. Every refusal is a RegionError carrying one line that
names the problem.

Two ways in. `Region` maps the file and takes its lock: for the processes that attach (and for
tests); it trusts the file's length and its mutex. The agent, root on the host, reads regions
the containers can write to with `inspect` and `write_feedback`, which trust nothing in or
about the file (docs/limiter.md, "How the agent reads a region").
"""

from __future__ import annotations

import errno
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

try:
    from native._region import ffi, lib
except ImportError:  # not built: every entry point says so (see _extension)
    ffi = lib = None

LIMITS_FILE = "limits"
REGION_FILE = "region"
MIB = 1 << 20
MAX_MIB = 1 << 40
#: GPULET_MAX_DEVICES of region.h, here too for when the extension is not built (native imports
#: no gpulet: tests/unit/test_region.py holds it equal to C's and to gpulet.api's MAX_GPUS).
MAX_DEVICES = 16
_UUID = re.compile(r"[A-Za-z0-9-]{1,63}")
_U64 = (1 << 64) - 1

StrPath = str | os.PathLike[str]


class RegionError(Exception):
    """A limits file or region that cannot be used, or a call the region refused."""


@dataclass(frozen=True)
class DeviceLimit:
    uuid: str
    memory_mib: int
    core_percent: int  # 1..100; 100: not throttled; a batch slice's floor
    #: A batch slice's device: paced to the share the agent writes (`write_share`).
    batch: bool = False


@dataclass(frozen=True)
class Limits:
    devices: tuple[DeviceLimit, ...]


@dataclass(frozen=True)
class DeviceUsage:
    uuid: str
    memory_bytes: int  # the cap
    core_percent: int
    used_bytes: int  # the container's total charge
    util_percent: float | None  # the agent's measured utilisation; None: never written
    util_stamp_ns: int  # CLOCK_MONOTONIC when it was written; 0: never
    throttled_ns: int  # total time launches were held back
    launches: int
    busy_ns: int


@dataclass(frozen=True)
class ProcessUsage:
    pid: int  # in the container's PID namespace
    slot: int
    comm: str
    used_bytes: tuple[int, ...]  # per device


@dataclass(frozen=True)
class Usage:
    generation: int  # bumped on every attach, detach and reap
    devices: tuple[DeviceUsage, ...]
    processes: tuple[ProcessUsage, ...]


class Inspection:
    """A region read as untrusted input (`inspect`). Immutable; compared by value.

    `inspect` converts `usage` when it is first asked for: the agent reads every region every
    second and looks at the processes only while it has a process to check."""

    __slots__ = ("_raw", "_usage", "feedback_error", "problems", "readable")

    #: What the region says, clamped (at most 16 devices and 256 processes; totals saturate
    #: at 2^64 - 1); with the expected limits, exactly their devices, uuids and caps. None when
    #: it could not be read at all: missing, not a regular file of the right size, not a
    #: region of this version. (A property: see `readable`.)
    _usage: Usage | None
    #: Empty when the region is consistent with the expected limits (and with itself); else
    #: one line per problem, naming the field ("devices is 300, granted 2", "device 0:
    #: memory_bytes ..., granted ...", "slot 7: free (pid 0) but holds charges"). When usage
    #: is None, the one line says why.
    problems: tuple[str, ...]
    #: With feedback asked of `inspect`: why it was not written (one line: the region could
    #: not be opened for writing, had problems, or a write failed); empty when it was, or
    #: when none was asked for.
    feedback_error: str
    #: Whether the region could be read: `usage is not None`, without converting it.
    readable: bool
    #: `inspect`'s copy of the live part of the C snapshot, until `usage` converts it.
    _raw: bytes | None

    def __init__(
        self, usage: Usage | None, problems: tuple[str, ...], feedback_error: str = ""
    ) -> None:
        self._set(usage, None, problems, feedback_error)

    @classmethod
    def _of_snapshot(
        cls, raw: bytes | None, problems: tuple[str, ...], feedback_error: str
    ) -> Inspection:
        """From the bytes of a struct gpulet_snapshot up to its last listed process (None:
        unreadable), converted into `usage` when that is first asked for."""
        self = cls.__new__(cls)
        self._set(None, raw, problems, feedback_error)
        return self

    def _set(
        self, usage: Usage | None, raw: bytes | None, problems: tuple[str, ...], why: str
    ) -> None:
        setattr_ = object.__setattr__
        setattr_(self, "_usage", usage)
        setattr_(self, "_raw", raw)
        setattr_(self, "problems", problems)
        setattr_(self, "feedback_error", why)
        setattr_(self, "readable", usage is not None or raw is not None)

    @property
    def usage(self) -> Usage | None:
        raw = self._raw
        if raw is not None:  # two threads may both convert it: the same answer
            snapshot = ffi.cast("struct gpulet_snapshot *", ffi.from_buffer(raw))
            object.__setattr__(self, "_usage", _usage(snapshot))
            object.__setattr__(self, "_raw", None)
        return self._usage

    @property
    def trusted(self) -> bool:
        """Read, and consistent with what was expected."""
        return not self.problems and self.readable

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Inspection is immutable: cannot set {name}")

    def _key(self) -> tuple[Usage | None, tuple[str, ...], str]:
        return (self.usage, self.problems, self.feedback_error)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Inspection) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        usage, problems, why = self._key()
        return f"Inspection(usage={usage!r}, problems={problems!r}, feedback_error={why!r})"


def _extension() -> None:
    if lib is None:
        raise RegionError("the region extension native/_region is not built: run `make native`")


def _err() -> Any:
    return ffi.new("char[]", lib.GPULET_ERR_LEN)


def _check(rc: int, err: Any, what: str) -> int:
    """rc, or RegionError with the C code's line (or `what` and the errno's text)."""
    if rc < 0:
        line = ffi.string(err).decode("utf-8", "replace") if err is not None else ""
        raise RegionError(line or f"{what}: {os.strerror(-rc)}")
    return rc


def check_limits(limits: Limits) -> None:
    """The limits file's rules, for limits built in Python: RegionError naming the problem.

    A second implementation, in Python, of the rules region.c's parser applies (and its own,
    static, `check_limits` applies again to the struct in `gpulet_region_create` and the
    other calls that take limits). It runs before the struct is filled, which could not hold
    a longer UUID, more than MAX_DEVICES devices or a number past its field, it works without
    the extension built (the CLI checks its options with it), and its messages name the
    device by UUID. A rule changed in region.c must be changed here too."""
    if not 1 <= len(limits.devices) <= MAX_DEVICES:
        raise RegionError(f"limits: {len(limits.devices)} devices, expected 1..{MAX_DEVICES}")
    seen: set[str] = set()
    for d in limits.devices:
        if not _UUID.fullmatch(d.uuid):
            raise RegionError(f"uuid {d.uuid!r} is not 1..63 characters of [A-Za-z0-9-]")
        if not 1 <= d.memory_mib <= MAX_MIB:
            raise RegionError(f"device {d.uuid}: memory {d.memory_mib} MiB is not in 1..{MAX_MIB}")
        if not 1 <= d.core_percent <= 100:
            raise RegionError(f"device {d.uuid}: core percent {d.core_percent} is not in 1..100")
        if d.uuid in seen:
            raise RegionError(f"duplicate device {d.uuid}")
        seen.add(d.uuid)


#: Per Limits, its C struct, built once (and never written to after: the C code takes it
#: const). The agent asks with the same few limits every second; bounded all the same.
_C_LIMITS: dict[Limits, Any] = {}
_C_LIMITS_MAX = 4096


def _c_limits(limits: Limits) -> Any:
    """`_to_c(limits)`, from the cache when it was built before."""
    c = _C_LIMITS.get(limits)
    if c is None:
        c = _to_c(limits)
        if len(_C_LIMITS) >= _C_LIMITS_MAX:
            _C_LIMITS.clear()
        _C_LIMITS[limits] = c
    return c


def _to_c(limits: Limits) -> Any:
    _extension()
    check_limits(limits)
    c = ffi.new("struct gpulet_limits *")
    c.count = len(limits.devices)
    for i, d in enumerate(limits.devices):
        c.dev[i].uuid = d.uuid.encode("ascii")
        c.dev[i].memory_bytes = d.memory_mib * MIB
        c.dev[i].core_percent = d.core_percent
        c.dev[i].flags = lib.GPULET_LIMIT_BATCH if d.batch else 0
    return c


def _from_c(c: Any) -> Limits:
    return Limits(
        tuple(
            DeviceLimit(
                ffi.string(c.dev[i].uuid).decode("ascii"),
                c.dev[i].memory_bytes // MIB,
                c.dev[i].core_percent,
                bool(c.dev[i].flags & lib.GPULET_LIMIT_BATCH),
            )
            for i in range(c.count)
        )
    )


def parse_limits(text: str) -> Limits:
    """Parse the text of a limits file."""
    _extension()
    data = text.encode("utf-8", "surrogateescape")
    out, err = ffi.new("struct gpulet_limits *"), _err()
    _check(lib.gpulet_limits_parse(data, len(data), out, err, len(err)), err, "limits")
    return _from_c(out)


def read_limits(path: StrPath) -> Limits:
    """Read and parse a limits file (at most 64 KiB)."""
    _extension()
    out, err = ffi.new("struct gpulet_limits *"), _err()
    _check(lib.gpulet_limits_read(os.fsencode(path), out, err, len(err)), err, os.fspath(path))
    return _from_c(out)


def format_limits(limits: Limits) -> str:
    """The limits file for `limits`; RegionError when they break its rules."""
    c = _to_c(limits)
    buf = ffi.new("char[]", 4096)  # 16 devices of at most ~110 characters
    n = _check(lib.gpulet_limits_format(c, buf, len(buf)), None, "limits")
    return bytes(ffi.buffer(buf, n)).decode("ascii")


def _write_atomically(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    tmp.unlink(missing_ok=True)  # a leftover of a crashed writer with our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchmod(f.fileno(), mode)  # not left to the umask
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def setup(directory: StrPath, limits: Limits) -> None:
    """Create a container's directory: `limits` (mode 0444) and a fresh `region` (0666).

    Both are replaced atomically; processes that mapped an old region keep their copy."""
    text = format_limits(limits)
    c = _to_c(limits)
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        _write_atomically(d / LIMITS_FILE, text, 0o444)
    except OSError as e:
        raise RegionError(f"cannot set up {d}: {e.strerror}") from None
    err = _err()
    _check(lib.gpulet_region_create(os.fsencode(d / REGION_FILE), c, err, len(err)), err, str(d))


def _own_comm() -> str:
    try:
        return Path("/proc/self/comm").read_text().strip()
    except OSError:
        return ""


def _u64(value: int, what: str) -> int:
    if not 0 <= value <= _U64:
        raise RegionError(f"{what} {value} is not in 0..2^64-1")
    return value


class Region:
    """One mapping of a container's region: a handle of its own (its own open file
    description), so several in one process are as separate as several processes.

    Attach to be charged; `close()` (or leaving a `with` block) detaches and unmaps."""

    def __init__(self, handle: Any) -> None:
        """Use Region.open or Region.private."""
        self._h = handle

    @classmethod
    def open(cls, directory: StrPath) -> Region:
        """Map the region in a container's directory."""
        _extension()
        h, err = cls._new_handle(), _err()
        path = os.fsencode(Path(directory) / REGION_FILE)
        _check(lib.gpulet_region_open(path, h, err, len(err)), err, "region")
        return cls(h)

    @classmethod
    def private(cls, limits: Limits) -> Region:
        """A region in anonymous memory, for this process alone."""
        c = _to_c(limits)
        h, err = cls._new_handle(), _err()
        _check(lib.gpulet_region_private(c, h, err, len(err)), err, "region")
        return cls(h)

    @staticmethod
    def _new_handle() -> Any:
        return ffi.gc(ffi.new("struct gpulet_handle *"), lib.gpulet_region_close)

    def close(self) -> None:
        """Detach if attached, unmap. Safe to repeat."""
        lib.gpulet_region_close(self._h)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def devices(self) -> int:
        """The region's device count, clamped to MAX_DEVICES: any process of the container
        can write it."""
        return min(int(self._region().devices), MAX_DEVICES)

    @property
    def slot(self) -> int | None:
        """The slot this handle is attached to, or None."""
        return None if self._h.slot < 0 else int(self._h.slot)

    def _region(self) -> Any:
        if self._h.region == ffi.NULL:
            raise RegionError("the region is closed")
        return self._h.region

    def _dev(self, dev: int) -> int:
        n = self.devices
        if not 0 <= dev < n:
            raise RegionError(f"device index {dev} is not in 0..{n - 1}")
        return dev

    def _attached(self) -> None:
        self._region()
        if self.slot is None:
            raise RegionError("this handle is not attached to the region")

    def attach(self, pid: int | None = None, comm: str | None = None) -> int:
        """Take a slot (for this process by default); returns it. Reaps dead processes when
        the region is full; RegionError when still no slot is free."""
        self._region()
        if comm is None:
            comm = _own_comm() if pid is None else ""
        pid = os.getpid() if pid is None else pid
        if not 0 < pid < 1 << 31:
            raise RegionError(f"pid {pid} is not a process id")
        err = _err()
        rc = lib.gpulet_region_attach(self._h, pid, comm.encode("utf-8"), err, len(err))
        _check(rc, err, "attach")
        return int(self._h.slot)

    def detach(self) -> None:
        """Give back everything this handle is charged and free its slot."""
        self._attached()
        _check(lib.gpulet_region_detach(self._h), None, "detach")

    def reserve(self, dev: int, nbytes: int, cap: int) -> bool:
        """Charge `nbytes` on `dev` if the container's total stays within `cap`; False (and
        nothing charged) otherwise, after reaping dead processes once."""
        self._dev(dev)
        self._attached()
        rc = lib.gpulet_region_reserve(
            self._h, dev, _u64(nbytes, "bytes"), _u64(cap, "cap"), ffi.NULL
        )
        if rc == -errno.ENOMEM:
            return False
        _check(rc, None, "reserve")
        return True

    def release(self, dev: int, nbytes: int) -> None:
        """Give back `nbytes` on `dev`; never below zero."""
        self._dev(dev)
        self._attached()
        lib.gpulet_region_release(self._h, dev, _u64(nbytes, "bytes"))

    def used(self, dev: int) -> int:
        """The container's total charge on `dev`."""
        return int(lib.gpulet_region_used(self._h, self._dev(dev)))

    def set_feedback(self, dev: int, util_percent: float, stamp_ns: int | None = None) -> None:
        """Record the container's measured utilisation of `dev` (0..100 %)."""
        self._dev(dev)
        if not 0 <= util_percent <= 100:
            raise RegionError(f"utilisation {util_percent}% is not in 0..100")
        stamp = lib.gpulet_now_ns() if stamp_ns is None else _u64(stamp_ns, "stamp")
        permille = round(util_percent * 10)
        _check(lib.gpulet_region_set_feedback(self._h, dev, permille, stamp), None, "feedback")

    def reap(self) -> int:
        """Free the slots of dead processes (and their charges); returns how many."""
        self._region()
        return _check(lib.gpulet_region_reap(self._h), None, "reap")

    def lock(self, timeout: float | None = None) -> None:
        """Take the region lock, waiting at most `timeout` seconds (None: as long as it takes);
        for tests and multi-step readers. RegionError when it was not released in time."""
        self._region()
        if timeout is None:
            _check(lib.gpulet_region_lock(self._h), None, "lock")
            return
        rc = lib.gpulet_region_lock_within(self._h, _u64(round(timeout * 1e9), "timeout"))
        if rc == -errno.ETIMEDOUT:
            raise RegionError(f"region lock not released within {timeout:g} s")
        _check(rc, None, "lock")

    def unlock(self) -> None:
        lib.gpulet_region_unlock(self._h)

    def snapshot(self) -> Usage:
        """A consistent copy: per device, and per attached process. Takes the lock, waiting
        at most GPULET_READ_LOCK_NS (1 s): RegionError "region lock not released within 1 s"
        when a holder keeps it, or the lock word was scribbled on."""
        self._region()
        s = ffi.new("struct gpulet_snapshot *")
        rc = lib.gpulet_region_snapshot(self._h, s)
        if rc == -errno.ETIMEDOUT:
            raise RegionError(
                f"region lock not released within {lib.GPULET_READ_LOCK_NS / 1e9:g} s"
            )
        _check(rc, None, "snapshot")
        return _usage(s)


def _usage(s: Any) -> Usage:
    """A struct gpulet_snapshot, whose counts the C code has clamped, as a Usage."""
    devices = tuple(
        DeviceUsage(
            uuid=ffi.string(d.uuid).decode("ascii", "replace"),
            memory_bytes=d.memory_bytes,
            core_percent=d.core_percent,
            used_bytes=s.used[i],
            util_percent=min(d.util_permille, 1000) / 10 if d.util_stamp_ns else None,
            util_stamp_ns=d.util_stamp_ns,
            throttled_ns=d.throttled_ns,
            launches=d.launches,
            busy_ns=d.busy_ns,
        )
        for i, d in ((i, s.dev[i]) for i in range(s.devices))
    )
    processes = tuple(
        ProcessUsage(
            pid=p.pid,
            slot=p.slot,
            comm=ffi.string(p.comm).decode("utf-8", "replace"),
            used_bytes=tuple(p.used[0 : s.devices]),
        )
        for p in (s.proc[i] for i in range(s.procs))
    )
    return Usage(s.generation, devices, processes)


# ---- the agent's reader: a region as untrusted input ---------------------------------------


class _Scratch(threading.local):
    """What one thread's `inspect` calls fill, allocated once per thread rather than per
    call (the inspection is about 50 KB). Each call converts what it needs before it
    returns, so the next call may overwrite it."""

    out: Any
    permille: Any
    fed_back: Any
    err: Any

    def __init__(self) -> None:
        if lib is None:
            return  # not built: inspect says so before it looks here
        self.out = ffi.new("struct gpulet_inspection *")
        self.permille = ffi.new("uint32_t[]", MAX_DEVICES)
        self.fed_back = ffi.new("int *")
        self.err = _err()


_scratch = _Scratch()
#: A struct gpulet_snapshot up to its processes, and one process.
_SNAPSHOT_HEAD = 0 if ffi is None else ffi.offsetof("struct gpulet_snapshot", "proc")
_PROC_SIZE = 0 if ffi is None else ffi.sizeof("struct gpulet_proc_usage")


#: Per directory, its region file's path as the C code takes it (bounded, as _C_LIMITS).
_REGION_PATHS: dict[StrPath, bytes] = {}


def _region_path(directory: StrPath) -> bytes:
    path = _REGION_PATHS.get(directory)
    if path is None:
        path = os.fsencode(os.path.join(directory, REGION_FILE))
        if len(_REGION_PATHS) >= _C_LIMITS_MAX:
            _REGION_PATHS.clear()
        _REGION_PATHS[directory] = path
    return path


def inspect(
    directory: StrPath,
    expected: Limits | None = None,
    feedback: Mapping[int, float] | None = None,
) -> Inspection:
    """Read a container's region as untrusted input: never maps it, never takes its lock,
    never follows a symlink or opens anything but a regular file of the right size, never
    raises for anything the file holds (OSError/RegionError only for a missing extension).
    With `expected` (the limits the agent granted), every disagreement is a problem; the
    returned usage's per-device caps are the expected ones, not the region's.

    Totals are saturating sums over the slots whose process is alive (holds its slot's
    liveness lock), which are the processes listed; slots of dead processes are left out, as
    the next reap would free them. Invalid `expected` limits are the caller's error:
    RegionError, as from `setup`. About 50 us (docs/limiter.md).

    `feedback` (device index of `expected` -> utilisation %, as `write_feedback` takes
    them; checked the same way, RegionError before anything is opened) is written in the
    same pass, to the file just inspected, and only when the inspection found nothing wrong
    (`trusted`): one open of the region for both. Why it was not written is in the answer's
    `feedback_error`."""
    c_expected = ffi.NULL if expected is None else _c_limits(expected)
    _extension()
    scratch = _scratch
    out, permille = scratch.out, ffi.NULL
    if feedback:
        if expected is None:
            raise RegionError("feedback needs the granted limits")
        permille = scratch.permille
        for dev in range(len(expected.devices)):
            permille[dev] = lib.GPULET_NO_FEEDBACK
        for dev, util in feedback.items():
            permille[dev] = _permille(dev, util, expected)
    lib.gpulet_region_inspect_feedback(
        _region_path(directory),
        c_expected,
        permille,
        lib.gpulet_now_ns(),
        out,
        scratch.fed_back,
        scratch.err,
        len(scratch.err),
    )
    problems: list[str] = []
    if out.problems:
        kept = min(out.problems, lib.GPULET_MAX_PROBLEMS)
        problems = [ffi.string(out.problem[i]).decode("utf-8", "replace") for i in range(kept)]
        if out.problems > kept:
            problems.append(f"... and {out.problems - kept} more problems")
    raw = None
    if out.readable:  # what _usage reads: the header, the devices, the totals, the processes
        size = _SNAPSHOT_HEAD + out.usage.procs * _PROC_SIZE
        raw = ffi.buffer(ffi.addressof(out, "usage"), size)[:]
    fed_back = ""
    if permille != ffi.NULL and scratch.fed_back[0] != 0:
        why = ffi.string(scratch.err).decode("utf-8", "replace")
        fed_back = why or f"feedback: {os.strerror(-scratch.fed_back[0])}"
    return Inspection._of_snapshot(raw, tuple(problems), fed_back)


def _check_device(dev: int, expected: Limits) -> None:
    """RegionError unless `dev` is a device index of the grant (the C side's check, made
    first: a negative index does not fit its unsigned argument)."""
    n = len(expected.devices)
    if not 0 <= dev < n:
        raise RegionError(f"device index {dev} is not in 0..{n - 1} (the grant's devices)")


def _permille(dev: int, util_percent: float, expected: Limits) -> int:
    """The feedback's value for `dev`, after write_feedback's checks: RegionError."""
    _check_device(dev, expected)
    if not 0 <= util_percent <= 100:
        raise RegionError(f"utilisation {util_percent}% is not in 0..100")
    return round(util_percent * 10)


def write_feedback(directory: StrPath, dev: int, util_percent: float, expected: Limits) -> None:
    """The agent's utilisation feedback for device `dev` (0 <= dev < len(expected.devices)),
    written without mapping or locking the region; RegionError when it cannot be.

    One pwrite of util_permille and util_stamp_ns (now, CLOCK_MONOTONIC) at their offsets,
    after the checks `inspect` makes of the file and of its magic and version; `dev` is
    bounded by the grant, never by the region's own device count. (The agent's monitor
    writes its feedback through `inspect(..., feedback=...)`: one open for both.)"""
    permille = _permille(dev, util_percent, expected)
    c = _c_limits(expected)
    err = _err()
    rc = lib.gpulet_region_write_feedback(
        _region_path(directory), c, dev, permille, lib.gpulet_now_ns(), err, len(err)
    )
    _check(rc, err, "feedback")


def write_share(directory: StrPath, dev: int, permille: int, expected: Limits) -> None:
    """The agent's current compute share for device `dev` of a batch slice (`expected` marks
    it `batch`), 0..1000 permille, which the limiter follows while it is fresh (0.5 s);
    written as `write_feedback` writes (one pwrite, no mapping, no lock). RegionError when it
    cannot be."""
    _check_device(dev, expected)
    if not 0 <= permille <= 1000:
        raise RegionError(f"share {permille} permille is not in 0..1000")
    c = _c_limits(expected)
    err = _err()
    rc = lib.gpulet_region_write_share(
        _region_path(directory), c, dev, permille, lib.gpulet_now_ns(), err, len(err)
    )
    _check(rc, err, "share")
