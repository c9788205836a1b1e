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
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pynvml


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


SCENARIOS: dict[str, Callable[[list[str]], dict[str, Any]]] = {
    "raw": raw,
    "lifecycle": lifecycle,
    "stale_handle": stale_handle,
    "error_strings": error_strings,
    "init_each": init_each,
    "backend": backend,
}


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[2] not in SCENARIOS:
        print(f"usage: {argv[0]} LIB {{{','.join(SCENARIOS)}}} [ARG...]", file=sys.stderr)
        return 2
    fake = ctypes.CDLL(argv[1], mode=ctypes.RTLD_GLOBAL)
    result = SCENARIOS[argv[2]](argv[3:])
    lib = pynvml.nvmlLib
    result["fake_loaded"] = lib is not None and lib._handle == fake._handle
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
