"""Runs one pynvml scenario against the fake libnvidia-ml and prints its result as JSON.

usage: python runner.py LIB SCENARIO [ARG...]; the fake reads its node from $GPULET_FAKE_NVML.

Run it in a fresh interpreter (`tests.fakes.nvml.run_pynvml`): the fake is loaded with
RTLD_GLOBAL before pynvml's first nvmlInit, so pynvml's dlopen("libnvidia-ml.so.1") finds it
by soname, and pynvml then keeps it for the life of the process. Every result carries
`fake_loaded`: whether pynvml really holds the fake (not a driver library of the machine).
An NVML error in a call shows as {"error": <code>}; `errors` maps each code seen to pynvml's
exception class name and message.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pynvml

#: The fake library, loaded by main() before the scenario runs.
FAKE: ctypes.CDLL | None = None


class Recorder:
    """Calls pynvml functions, turning NVMLError into {"error": code}."""

    def __init__(self) -> None:
        self.errors: dict[str, list[str]] = {}

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except pynvml.NVMLError as err:
            self.errors[str(err.value)] = [type(err).__name__, str(err)]
            return {"error": err.value}


def _failed(value: Any) -> bool:
    return isinstance(value, dict) and "error" in value


def _pci(info: Any) -> dict[str, Any]:
    fields = ("busId", "busIdLegacy", "domain", "bus", "device", "pciDeviceId", "pciSubSystemId")
    return {name: getattr(info, name) for name in fields}


def _struct(rec: Recorder, fn: Callable[..., Any], *args: Any) -> Any:
    """A call returning a ctypes structure, as a dict of its fields."""
    value = rec.call(fn, *args)
    if _failed(value):
        return value
    return {name: getattr(value, name) for name, _ in value._fields_}


def _links(rec: Recorder, handle: Any) -> tuple[dict[str, Any], list[int]]:
    """Links that answer NvLinkState (0..NVML_NVLINK_MAX_LINKS), and the codes of the others."""
    links: dict[str, Any] = {}
    codes: set[int] = set()
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS + 1):
        state = rec.call(pynvml.nvmlDeviceGetNvLinkState, handle, link)
        if _failed(state):
            codes.add(state["error"])
            continue
        remote = rec.call(pynvml.nvmlDeviceGetNvLinkRemotePciInfo, handle, link)
        links[str(link)] = {
            "active": state,
            "remote_pci": remote if _failed(remote) else _pci(remote),
            "remote_type": rec.call(pynvml.nvmlDeviceGetNvLinkRemoteDeviceType, handle, link),
        }
    return links, sorted(codes)


def _gpu(rec: Recorder, index: int) -> dict[str, Any]:
    handle = rec.call(pynvml.nvmlDeviceGetHandleByIndex, index)
    if _failed(handle):
        return {"handle": handle}
    pci = rec.call(pynvml.nvmlDeviceGetPciInfo, handle)
    links, link_errors = _links(rec, handle)
    return {
        "index": rec.call(pynvml.nvmlDeviceGetIndex, handle),
        "uuid": rec.call(pynvml.nvmlDeviceGetUUID, handle),
        "name": rec.call(pynvml.nvmlDeviceGetName, handle),
        "memory": _struct(rec, pynvml.nvmlDeviceGetMemoryInfo, handle),
        "memory_v2": _struct(rec, pynvml.nvmlDeviceGetMemoryInfo, handle, pynvml.nvmlMemory_v2),
        "pci": pci if _failed(pci) else _pci(pci),
        "minor": rec.call(pynvml.nvmlDeviceGetMinorNumber, handle),
        "mig": rec.call(pynvml.nvmlDeviceGetMigMode, handle),
        "links": links,
        "link_errors": link_errors,
    }


def raw(args: list[str]) -> dict[str, Any]:
    """Everything pynvml's public calls say about the node."""
    del args
    rec = Recorder()
    init = rec.call(pynvml.nvmlInit)
    out: dict[str, Any] = {"init": init, "errors": rec.errors}
    if _failed(init):
        return out
    count = rec.call(pynvml.nvmlDeviceGetCount)
    out |= {
        "driver": rec.call(pynvml.nvmlSystemGetDriverVersion),
        "cuda": rec.call(pynvml.nvmlSystemGetCudaDriverVersion),
        "cuda_v2": rec.call(pynvml.nvmlSystemGetCudaDriverVersion_v2),
        "count": count,
        "gpus": [] if _failed(count) else [_gpu(rec, i) for i in range(count)],
        "bad_index": rec.call(pynvml.nvmlDeviceGetHandleByIndex, 0 if _failed(count) else count),
        "shutdown": rec.call(pynvml.nvmlShutdown),
    }
    return out


def lifecycle(args: list[str]) -> dict[str, Any]:
    """NVML's init count: calls work between the first init and the last shutdown."""
    del args
    rec = Recorder()
    steps = [
        ("init", pynvml.nvmlInit),
        ("init", pynvml.nvmlInit),
        ("shutdown", pynvml.nvmlShutdown),
        ("count", pynvml.nvmlDeviceGetCount),
        ("shutdown", pynvml.nvmlShutdown),
        ("count", pynvml.nvmlDeviceGetCount),
        ("driver", pynvml.nvmlSystemGetDriverVersion),
        ("shutdown", pynvml.nvmlShutdown),
        ("init", pynvml.nvmlInit),
        ("count", pynvml.nvmlDeviceGetCount),
    ]
    return {"steps": [[name, rec.call(fn)] for name, fn in steps], "errors": rec.errors}


def stale_handle(args: list[str]) -> dict[str, Any]:
    """A handle used after nvmlShutdown, and one NVML never gave out."""
    del args
    rec = Recorder()
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    pynvml.nvmlShutdown()
    after_shutdown = rec.call(pynvml.nvmlDeviceGetUUID, handle)
    pynvml.nvmlInit()
    bogus = ctypes.cast(ctypes.c_void_p(16), pynvml.c_nvmlDevice_t)
    return {
        "after_shutdown": after_shutdown,
        "bogus": rec.call(pynvml.nvmlDeviceGetUUID, bogus),
        "errors": rec.errors,
    }


def error_strings(args: list[str]) -> dict[str, Any]:
    """nvmlErrorString for each code in args (needs no init)."""
    pynvml.nvmlInit()  # loads the library; nvmlErrorString itself needs no init
    return {code: pynvml.nvmlErrorString(int(code)) for code in args}


def init_each(args: list[str]) -> dict[str, Any]:
    """nvmlInit with each config file in args in turn; on success, touches every GPU."""
    results = []
    for path in args:
        os.environ["GPULET_FAKE_NVML"] = path
        rec = Recorder()
        init = rec.call(pynvml.nvmlInit)
        if _failed(init):
            results.append(init["error"])
            continue
        count = pynvml.nvmlDeviceGetCount()
        for index in range(count):
            _gpu(rec, index)
        pynvml.nvmlShutdown()
        results.append(0)
    return {"init": results}


def backend(args: list[str]) -> dict[str, Any]:
    """`PynvmlBackend().driver_version()` and `.gpus()`, or the NvmlError it raised."""
    del args
    from agent.discovery.nvml import NvmlError  # noqa: PLC0415 - only this scenario needs it
    from agent.discovery.pynvml_backend import PynvmlBackend  # noqa: PLC0415

    nvml = PynvmlBackend()
    try:
        return {"driver": nvml.driver_version(), "gpus": [asdict(g) for g in nvml.gpus()]}
    except NvmlError as err:
        return {"nvml_error": str(err)}


def _process_list(rec: Recorder, fn: Callable[..., Any], handle: Any) -> Any:
    """pynvml's process objects as dicts; a missing entry point as {"mismatch": message}."""
    try:
        procs = rec.call(fn, handle)
    except pynvml.NVMLLibraryMismatchError as err:
        return {"mismatch": str(err)}
    return procs if _failed(procs) else [dict(vars(p)) for p in procs]


def _samples(rec: Recorder, handle: Any, since: int) -> Any:
    samples = rec.call(pynvml.nvmlDeviceGetProcessUtilization, handle, since)
    if _failed(samples):
        return samples
    return [{name: getattr(s, name) for name, _ in s._fields_} for s in samples]


def _protocol(handle: Any, since: int) -> dict[str, Any]:
    """The two-call protocol of the process and utilisation calls, called directly: [return
    code, count after the call, pids filled in (on success)] for each way of calling."""
    lib = pynvml.nvmlLib

    def procs(count: int, size: int | None, null_count: bool = False) -> list[Any]:
        c_count = ctypes.c_uint(count)
        buf = None if size is None else (pynvml.c_nvmlProcessInfo_v3_t * size)()
        fn = lib.nvmlDeviceGetComputeRunningProcesses_v3
        rc = fn(handle, None if null_count else ctypes.byref(c_count), buf)
        pids = [b.pid for b in buf[: c_count.value]] if rc == 0 and buf is not None else None
        return [rc, c_count.value, pids]

    def util(count: int, size: int | None, null_count: bool = False) -> list[Any]:
        c_count = ctypes.c_uint(count)
        buf = None if size is None else (pynvml.c_nvmlProcessUtilizationSample_t * size)()
        fn = lib.nvmlDeviceGetProcessUtilization
        c_since = ctypes.c_ulonglong(since)
        rc = fn(handle, buf, None if null_count else ctypes.byref(c_count), c_since)
        pids = [b.pid for b in buf[: c_count.value]] if rc == 0 and buf is not None else None
        return [rc, c_count.value, pids]

    n_procs = procs(0, None)[1]
    n_samples = util(0, None)[1]
    return {
        "procs": {
            "sizing": procs(0, None),
            "short": procs(1, 1),
            "exact": procs(n_procs, n_procs),
            "roomy": procs(n_procs + 3, n_procs + 3),
            "null_buffer": procs(5, None),
            "null_count": procs(0, 1, null_count=True),
        },
        "util": {
            "sizing": util(0, None),
            "short": util(1, 1),
            "exact": util(n_samples, n_samples),
            "roomy": util(n_samples + 3, n_samples + 3),
            "null_buffer": util(n_samples + 3, None),
            "null_count": util(0, 1, null_count=True),
        },
    }


def processes(args: list[str]) -> dict[str, Any]:
    """pynvml's process and utilisation calls on every GPU, utilisation once for each
    lastSeenTimeStamp in args; and the two-call protocol called directly on GPU 0 (with the
    first lastSeenTimeStamp, else 0)."""
    rec = Recorder()
    pynvml.nvmlInit()
    gpus = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        gpus.append(
            {
                "procs": _process_list(rec, pynvml.nvmlDeviceGetComputeRunningProcesses, handle),
                "procs_v2": _process_list(
                    rec, pynvml.nvmlDeviceGetComputeRunningProcesses_v2, handle
                ),
                "util": {since: _samples(rec, handle, int(since)) for since in args},
            }
        )
    out: dict[str, Any] = {"gpus": gpus, "errors": rec.errors}
    if gpus:
        out["protocol"] = _protocol(
            pynvml.nvmlDeviceGetHandleByIndex(0), int(args[0]) if args else 0
        )
    return out


class _ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[list[str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append([record.levelname, record.getMessage()])


def usage(args: list[str]) -> dict[str, Any]:
    """`PynvmlUsageSource.sample()`: args NOW_US [CONFIG...]. Samples once with the node of
    $GPULET_FAKE_NVML, then, for each CONFIG, has the fake re-read its node from that file
    (fake_nvml_reload) and samples again. The source's clock stands still at NOW_US. Gives
    each reading (or the UsageError it raised), the reload codes, and the agent's log."""
    from agent.usage import PynvmlUsageSource, UsageError  # noqa: PLC0415 - only here

    assert FAKE is not None
    logger = logging.getLogger("gpulet.agent")
    handler = _ListHandler()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    now_us = int(args[0])
    source = PynvmlUsageSource(now_us=lambda: now_us)
    readings: list[Any] = []
    reloads: list[int] = []

    def read() -> None:
        try:
            readings.append([asdict(u) for u in source.sample()])
        except UsageError as err:
            readings.append({"usage_error": str(err)})

    read()
    for path in args[1:]:
        os.environ["GPULET_FAKE_NVML"] = path
        reloads.append(int(FAKE.fake_nvml_reload()))
        read()
    source.close()
    return {
        "readings": readings,
        "reloads": reloads,
        "log": handler.lines,
        "shutdown": Recorder().call(pynvml.nvmlShutdown),
    }


SCENARIOS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "raw": raw,
    "lifecycle": lifecycle,
    "stale_handle": stale_handle,
    "error_strings": error_strings,
    "init_each": init_each,
    "backend": backend,
    "processes": processes,
    "usage": usage,
}


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[2] not in SCENARIOS:
        print(f"usage: {argv[0]} LIB {{{','.join(SCENARIOS)}}} [ARG...]", file=sys.stderr)
        return 2
    global FAKE  # noqa: PLW0603 - set once, before any scenario runs
    fake = FAKE = ctypes.CDLL(argv[1], mode=ctypes.RTLD_GLOBAL)
    result = SCENARIOS[argv[2]](argv[3:])
    lib = pynvml.nvmlLib
    result["fake_loaded"] = lib is not None and lib._handle == fake._handle
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
