"""`NvmlBackend` over the NVIDIA driver's libnvidia-ml, through nvidia-ml-py (`pynvml`).

A thin adapter: each call is one public pynvml function, and pynvml errors become
`NvmlError`s naming the call and the GPU.
"""

from __future__ import annotations

from contextlib import suppress
from types import TracebackType
from typing import Any

import pynvml

from agent.discovery.nvml import NvlinkInfo, NvmlError, NvmlGpu

#: Codes that mean "no driver here" rather than "the driver failed".
_NO_DRIVER = (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED)
_NOT_SUPPORTED = (pynvml.NVML_ERROR_NOT_SUPPORTED,)
#: Codes that, for one NVLink index, mean the GPU has no such link.
_NO_LINK = (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_INVALID_ARGUMENT)

_REMOTE_TYPES = {
    pynvml.NVML_NVLINK_DEVICE_TYPE_GPU: "gpu",
    pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH: "switch",
}


def _call(name: str, *args: Any, where: str = "", absent: tuple[int, ...] = ()) -> Any:
    """`pynvml.<name>(*args)`; None for an error code in `absent`, other errors as NvmlError."""
    try:
        return getattr(pynvml, name)(*args)
    except pynvml.NVMLError as err:
        if err.value in absent:
            return None
        suffix = f" for {where}" if where else ""
        raise NvmlError(f"{name} failed{suffix}: {err}") from err


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _init() -> None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as err:
        if err.value in _NO_DRIVER:
            raise NvmlError(
                f"NVML not available: {err} (is the NVIDIA driver installed? "
                "use --simulate to run without a GPU)"
            ) from err
        raise NvmlError(f"nvmlInit failed: {err}") from err


class PynvmlBackend:
    """NVML through pynvml.

    Every method initialises NVML and shuts it down again; NVML counts these, so using the
    backend as a context manager keeps one session open across many calls.
    """

    def __enter__(self) -> PynvmlBackend:
        _init()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            _call("nvmlShutdown")
        else:
            with suppress(pynvml.NVMLError):
                pynvml.nvmlShutdown()

    def driver_version(self) -> str:
        with self:
            return _text(_call("nvmlSystemGetDriverVersion"))

    def gpus(self) -> list[NvmlGpu]:
        with self:
            count = int(_call("nvmlDeviceGetCount"))
            return [self._gpu(index) for index in range(count)]

    def _gpu(self, index: int) -> NvmlGpu:
        gpu = f"GPU {index}"
        handle = _call("nvmlDeviceGetHandleByIndex", index, where=gpu)
        mig = _call("nvmlDeviceGetMigMode", handle, where=gpu, absent=_NOT_SUPPORTED)
        return NvmlGpu(
            index=index,
            uuid=_text(_call("nvmlDeviceGetUUID", handle, where=gpu)),
            name=_text(_call("nvmlDeviceGetName", handle, where=gpu)),
            memory_total_bytes=int(_call("nvmlDeviceGetMemoryInfo", handle, where=gpu).total),
            pci_bus_id=_text(_call("nvmlDeviceGetPciInfo", handle, where=gpu).busId),
            minor=int(_call("nvmlDeviceGetMinorNumber", handle, where=gpu)),
            # [current, pending]; MIG-incapable GPUs say NOT_SUPPORTED.
            mig_enabled=bool(mig is not None and mig[0] == pynvml.NVML_DEVICE_MIG_ENABLE),
            nvlinks=_nvlinks(handle, index),
        )


def _nvlinks(handle: Any, index: int) -> tuple[NvlinkInfo, ...]:
    """Every link NVML knows; the far end is only asked about for active links."""
    links: list[NvlinkInfo] = []
    for link in range(pynvml.NVML_NVLINK_MAX_LINKS):
        where = f"GPU {index} link {link}"
        state = _call("nvmlDeviceGetNvLinkState", handle, link, where=where, absent=_NO_LINK)
        if state is None:
            continue
        if state != pynvml.NVML_FEATURE_ENABLED:
            links.append(NvlinkInfo(link, active=False, remote_pci="", remote_type="unknown"))
            continue
        remote = _call(
            "nvmlDeviceGetNvLinkRemotePciInfo", handle, link, where=where, absent=_NO_LINK
        )
        kind = _call(
            "nvmlDeviceGetNvLinkRemoteDeviceType", handle, link, where=where, absent=_NO_LINK
        )
        if remote is None or kind is None:
            continue
        links.append(
            NvlinkInfo(
                link,
                active=True,
                remote_pci=_text(remote.busId),
                remote_type=_REMOTE_TYPES.get(kind, "unknown"),
            )
        )
    return tuple(links)
