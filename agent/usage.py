"""Per-process GPU usage: which processes run on each GPU, how much GPU memory each holds,
and how busy each keeps the SMs.

`UsageSource` is implemented by `PynvmlUsageSource` (the NVIDIA driver through
nvidia-ml-py) and by `FileUsageSource` (a simulated node, from a JSON file). Process ids are
NVML's: host pids, so the agent must see the host's pid namespace to map them to
containers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import pynvml

log = logging.getLogger("gpulet.agent")

MIB = 1 << 20

#: Codes that mean "no driver here" rather than "the driver failed".
_NO_DRIVER = (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
#: Process-list calls, newest first: `_v3` needs a driver from R510 on.
_PROCESS_CALLS = (
    "nvmlDeviceGetComputeRunningProcesses_v3",
    "nvmlDeviceGetComputeRunningProcesses_v2",
)
_UTILIZATION_CALL = "nvmlDeviceGetProcessUtilization"
#: pynvml sizes its buffer from a first call; a list that grew in between fails the second
#: with INSUFFICIENT_SIZE, and the pair is tried again this many times in all.
_ATTEMPTS = 3


class UsageError(RuntimeError):
    """Usage cannot be read at all (NVML unavailable, a malformed usage file). One line,
    naming the file or the NVML call."""


@dataclass(frozen=True)
class ProcessUsage:
    gpu_uuid: str
    #: NVML's pid (the host's pid namespace).
    pid: int
    #: GPU memory the process holds, MiB rounded up; None where NVML cannot tell.
    used_mib: int | None
    #: SM utilisation since the previous sample, percent (0..100); None where there is no
    #: sample for the process in that time, or the GPU gives no per-process utilisation.
    sm_percent: int | None


class UsageSource(Protocol):
    def sample(self) -> list[ProcessUsage]:
        """One reading of every GPU's compute processes, by GPU then pid."""
        ...


def _mib(used_bytes: int | None) -> int | None:
    return None if used_bytes is None else -(-used_bytes // MIB)


def _now_us() -> int:
    return time.time_ns() // 1000


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _retry_insufficient(fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, tried again while pynvml says the buffer it sized was too small."""
    for _ in range(_ATTEMPTS - 1):
        try:
            return fn(*args)
        except pynvml.NVMLError as err:
            if err.value != pynvml.NVML_ERROR_INSUFFICIENT_SIZE:
                raise
    return fn(*args)


@dataclass(frozen=True)
class _Problem:
    """Why a GPU's reading is incomplete: `call` failed with `error`."""

    #: "gpu": the GPU is skipped; "utilization": its processes come without sm_percent.
    scope: str
    call: str
    code: int
    error: str


class _GpuFailed(Exception):
    def __init__(self, call: str, err: pynvml.NVMLError) -> None:
        super().__init__(call)
        self.problem = _Problem("gpu", call, int(err.value), str(err))


class PynvmlUsageSource:
    """Usage from NVML through pynvml.

    NVML is initialised at the first `sample()` (a failure raises UsageError, and the next
    call tries again) and stays so until `close()`. Each `sample()` reads every GPU's
    compute processes (`nvmlDeviceGetComputeRunningProcesses_v3`, `_v2` on older drivers)
    and the utilisation samples NVML took since the previous call
    (`nvmlDeviceGetProcessUtilization`, passing the newest sample time seen so far on that
    GPU), but never more than `window_us` before now: so the first call, and the first after
    a GPU failed or sampling stalled, reads the last `window_us` and not whatever old samples
    the driver still holds. A process's `sm_percent` is the mean of its samples in that time.

    A GPU whose process list cannot be read (lost, XID 79, ...) is left out of the reading;
    one whose utilisation cannot be read is reported without `sm_percent`. Either is logged
    when it starts, when the error changes, and when the GPU reads fully again.
    """

    def __init__(
        self,
        *,
        now_us: Callable[[], int] = _now_us,
        window_us: int = 2_000_000,
    ) -> None:
        self._now_us = now_us
        self._window_us = window_us
        self._initialised = False
        self._process_calls: tuple[str, ...] = _PROCESS_CALLS
        #: Newest utilisation sample time seen, per GPU uuid.
        self._last_seen: dict[str, int] = {}
        #: Per GPU index: its uuid once read, and the problem last logged (None: reads fine).
        self._uuids: dict[int, str] = {}
        self._problems: dict[int, _Problem | None] = {}

    def __enter__(self) -> PynvmlUsageSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Shuts NVML down if `sample()` initialised it."""
        if not self._initialised:
            return
        self._initialised = False
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError as err:
            log.warning("event=nvml-shutdown-failed error=%r", str(err))

    def sample(self) -> list[ProcessUsage]:
        self._init()
        try:
            count = int(pynvml.nvmlDeviceGetCount())
        except pynvml.NVMLError as err:
            if err.value == pynvml.NVML_ERROR_UNINITIALIZED:
                self._initialised = False  # NVML was shut down under us: init again next time
            raise UsageError(f"nvmlDeviceGetCount failed: {err}") from err
        found: list[ProcessUsage] = []
        for index in range(count):
            found.extend(self._gpu(index))
        return found

    def _init(self) -> None:
        if self._initialised:
            return
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as err:
            if err.value in _NO_DRIVER:
                raise UsageError(f"NVML not available: {err}") from err
            raise UsageError(f"nvmlInit failed: {err}") from err
        self._initialised = True

    def _gpu(self, index: int) -> list[ProcessUsage]:
        try:
            handle = self._call("nvmlDeviceGetHandleByIndex", index)
            uuid = _text(self._call("nvmlDeviceGetUUID", handle))
            self._uuids[index] = uuid
            procs = self._processes(handle)
        except _GpuFailed as failed:
            self._note(index, failed.problem)
            return []
        sm, problem = self._utilization(uuid, handle)
        self._note(index, problem)
        used: dict[int, int | None] = {}
        for proc in procs:
            pid = int(proc.pid)
            mem = None if proc.usedGpuMemory is None else int(proc.usedGpuMemory)
            if pid in used:  # a pid listed more than once: the sum, if every part is known
                before = used[pid]
                mem = None if before is None or mem is None else before + mem
            used[pid] = mem
        return [
            ProcessUsage(gpu_uuid=uuid, pid=pid, used_mib=_mib(mem), sm_percent=sm.get(pid))
            for pid, mem in sorted(used.items())
        ]

    @staticmethod
    def _call(name: str, *args: Any) -> Any:
        try:
            return getattr(pynvml, name)(*args)
        except pynvml.NVMLError as err:
            raise _GpuFailed(name, err) from err

    def _processes(self, handle: Any) -> list[Any]:
        """pynvml's process objects (pid, usedGpuMemory in bytes or None, ...)."""
        while True:
            name = self._process_calls[0]
            try:
                return list(_retry_insufficient(getattr(pynvml, name), handle))
            except pynvml.NVMLError as err:
                older = self._process_calls[1:]
                if err.value != pynvml.NVML_ERROR_FUNCTION_NOT_FOUND or not older:
                    raise _GpuFailed(name, err) from err
                log.info("event=nvml-call-missing call=%s action=use-%s", name, older[0])
                self._process_calls = older

    def _utilization(self, uuid: str, handle: Any) -> tuple[dict[int, int], _Problem | None]:
        """Mean SM percent per pid over the samples since the last call, and what went wrong."""
        since = max(0, self._last_seen.get(uuid, 0), self._now_us() - self._window_us)
        try:
            samples = _retry_insufficient(pynvml.nvmlDeviceGetProcessUtilization, handle, since)
        except pynvml.NVMLError as err:
            # NOT_FOUND: no samples since `since`. pynvml raises NVMLError(SUCCESS) where a
            # driver answers the sizing call with SUCCESS, which also means none.
            if err.value in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_SUCCESS):
                return {}, None
            return {}, _Problem("utilization", _UTILIZATION_CALL, int(err.value), str(err))
        means, self._last_seen[uuid] = _mean_sm(samples, since)
        return means, None

    def _note(self, index: int, problem: _Problem | None) -> None:
        """Logs a change in what is wrong with GPU `index`."""
        before = self._problems.get(index)
        if problem == before:
            return
        self._problems[index] = problem
        uuid = self._uuids.get(index, "unknown")
        if problem is None:
            log.info("event=gpu-usage-readable gpu=%d uuid=%s", index, uuid)
        elif problem.scope == "gpu":
            log.warning(
                "event=gpu-usage-unreadable gpu=%d uuid=%s call=%s code=%d error=%r action=skip",
                index,
                uuid,
                problem.call,
                problem.code,
                problem.error,
            )
        else:
            log.warning(
                "event=gpu-utilization-unreadable gpu=%d uuid=%s call=%s code=%d error=%r "
                "action=memory-only",
                index,
                uuid,
                problem.call,
                problem.code,
                problem.error,
            )


def _mean_sm(samples: Iterable[Any], since: int) -> tuple[dict[int, int], int]:
    """Mean smUtil per pid of the samples newer than `since` (rounded), and the newest
    sample's time (`since` if none). Samples over 100 percent, which drivers have been seen
    to return, are left out of the means."""
    sums: dict[int, list[int]] = {}
    newest = since
    for s in samples:
        stamp = int(s.timeStamp)
        if stamp <= since:
            continue
        newest = max(newest, stamp)
        if int(s.smUtil) <= 100:
            total = sums.setdefault(int(s.pid), [0, 0])
            total[0] += int(s.smUtil)
            total[1] += 1
    return {pid: (total + n // 2) // n for pid, (total, n) in sums.items()}, newest


class FileUsageSource:
    """Usage of a simulated node: a JSON file, read at each `sample()`.

    The file is a list of `{"gpu": <uuid>, "pid": <n>, "used_mib": <m>, "sm_percent": <p>}`
    objects; `used_mib` and `sm_percent` may be null or left out (not known). A missing file
    means no processes; anything else unreadable or malformed raises UsageError. Whoever
    writes the file should replace it (write another, then rename) so that a reader never
    sees half of it.
    """

    _KEYS = ("gpu", "pid", "used_mib", "sm_percent")

    def __init__(self, path: Path) -> None:
        self.path = path

    def sample(self) -> list[ProcessUsage]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) else str(err)
            raise UsageError(f"{self.path}: cannot read: {reason}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise UsageError(
                f"{self.path}: not JSON: {err.msg} at line {err.lineno}, column {err.colno}"
            ) from None
        if not isinstance(doc, list):
            raise UsageError(f"{self.path}: must be a JSON list of processes")
        found = [self._entry(item, f"[{i}]") for i, item in enumerate(doc)]
        seen: set[tuple[str, int]] = set()
        for i, usage in enumerate(found):
            key = (usage.gpu_uuid, usage.pid)
            if key in seen:
                raise UsageError(f"{self.path}: [{i}]: pid {usage.pid} on {usage.gpu_uuid} twice")
            seen.add(key)
        return found

    def _entry(self, item: object, where: str) -> ProcessUsage:
        if not isinstance(item, dict):
            raise UsageError(f"{self.path}: {where}: must be an object")
        unknown = sorted(set(item) - set(self._KEYS))
        if unknown:
            raise UsageError(f"{self.path}: {where}: unknown key {unknown[0]!r}")
        gpu = item.get("gpu")
        if not isinstance(gpu, str) or not gpu:
            raise UsageError(f"{self.path}: {where}.gpu: must be a GPU uuid, not {gpu!r}")
        used, sm = item.get("used_mib"), item.get("sm_percent")
        return ProcessUsage(
            gpu_uuid=gpu,
            pid=self._int(item.get("pid"), f"{where}.pid", 1, None),
            used_mib=None if used is None else self._int(used, f"{where}.used_mib", 0, None),
            sm_percent=None if sm is None else self._int(sm, f"{where}.sm_percent", 0, 100),
        )

    def _int(self, value: object, where: str, low: int, high: int | None) -> int:
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and value >= low
            and (high is None or value <= high)
        ):
            return value
        want = f"an integer {low}..{high}" if high is not None else f"an integer >= {low}"
        raise UsageError(f"{self.path}: {where}: must be {want}, not {value!r}")
