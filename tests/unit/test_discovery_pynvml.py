"""PynvmlBackend against pynvml with its calls replaced: results, NVLink, error translation.

The real-library path (a fake libnvidia-ml.so.1 that pynvml loads) is tested in tests/fakes.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

from agent.discovery.nvml import NvlinkInfo, NvmlError, NvmlGpu
from agent.discovery.pynvml_backend import PynvmlBackend


@dataclass
class Device:
    bus_id: str
    #: link -> (state, remote bus id, remote type), or an NVML error code for that link.
    links: dict[int, tuple[int, str, int] | int] = field(default_factory=dict)
    mig: list[int] | int = pynvml.NVML_ERROR_NOT_SUPPORTED


class Pci:
    def __init__(self, bus_id: str | bytes) -> None:
        self.busId = bus_id


class Memory:
    total = 85_520_809_984


def fail(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass
class FakeLibrary:
    """Stands in for the pynvml functions the backend calls; counts init and shutdown."""

    devices: list[Device]
    inits: int = 0
    shutdowns: int = 0
    #: Function name -> error code it raises.
    failing: dict[str, int] = field(default_factory=dict)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, fn in self.functions().items():
            monkeypatch.setattr(pynvml, name, self._guard(name, fn))

    def _guard(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            if name in self.failing:
                raise fail(self.failing[name])
            return fn(*args)

        return call

    def _link(self, handle: int, link: int) -> tuple[int, str, int]:
        missing: int = pynvml.NVML_ERROR_INVALID_ARGUMENT
        entry = self.devices[handle].links.get(link, missing)
        if isinstance(entry, int):
            raise fail(entry)
        return entry

    def _mig(self, handle: int) -> list[int]:
        mig = self.devices[handle].mig
        if isinstance(mig, int):
            raise fail(mig)
        return mig

    def _init(self) -> None:
        self.inits += 1

    def _shutdown(self) -> None:
        self.shutdowns += 1

    def functions(self) -> dict[str, Callable[..., Any]]:
        devs = self.devices
        return {
            "nvmlInit": self._init,
            "nvmlShutdown": self._shutdown,
            "nvmlSystemGetDriverVersion": lambda: "580.159.04",
            "nvmlDeviceGetCount": lambda: len(devs),
            "nvmlDeviceGetHandleByIndex": lambda i: i,
            "nvmlDeviceGetUUID": lambda h: f"GPU-{h}",
            "nvmlDeviceGetName": lambda h: b"NVIDIA A100-SXM4-80GB",
            "nvmlDeviceGetMemoryInfo": lambda h: Memory(),
            "nvmlDeviceGetPciInfo": lambda h: Pci(devs[h].bus_id),
            "nvmlDeviceGetMinorNumber": lambda h: h + 4,
            "nvmlDeviceGetMigMode": self._mig,
            "nvmlDeviceGetNvLinkState": lambda h, n: self._link(h, n)[0],
            "nvmlDeviceGetNvLinkRemotePciInfo": lambda h, n: Pci(self._link(h, n)[1]),
            "nvmlDeviceGetNvLinkRemoteDeviceType": lambda h, n: self._link(h, n)[2],
        }


GPU = pynvml.NVML_NVLINK_DEVICE_TYPE_GPU
SWITCH = pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
ON, OFF = pynvml.NVML_FEATURE_ENABLED, pynvml.NVML_FEATURE_DISABLED


def install(monkeypatch: pytest.MonkeyPatch, *devices: Device) -> FakeLibrary:
    lib = FakeLibrary(list(devices))
    lib.install(monkeypatch)
    return lib


def test_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = install(
        monkeypatch,
        Device("00000000:07:00.0", mig=[pynvml.NVML_DEVICE_MIG_ENABLE, 1]),
        Device("00000000:0F:00.0", mig=[pynvml.NVML_DEVICE_MIG_DISABLE, 0]),
    )
    gpus = PynvmlBackend().gpus()
    assert gpus[0] == NvmlGpu(
        index=0,
        uuid="GPU-0",
        name="NVIDIA A100-SXM4-80GB",
        memory_total_bytes=85_520_809_984,
        pci_bus_id="00000000:07:00.0",
        minor=4,
        mig_enabled=True,
        nvlinks=(),
    )
    assert gpus[1].mig_enabled is False
    assert (lib.inits, lib.shutdowns) == (1, 1)


def test_driver_version(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch)
    assert PynvmlBackend().driver_version() == "580.159.04"


def test_mig_not_supported_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, Device("00000000:00:06.0"))
    assert PynvmlBackend().gpus()[0].mig_enabled is False


def test_bus_id_as_bytes_becomes_text(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, Device(b"00000000:07:00.0"))  # type: ignore[arg-type]
    assert PynvmlBackend().gpus()[0].pci_bus_id == "00000000:07:00.0"


def test_nvlinks(monkeypatch: pytest.MonkeyPatch) -> None:
    links: dict[int, tuple[int, str, int] | int] = {
        0: (ON, "00000000:C7:00.0", SWITCH),
        1: (ON, "00000000:0F:00.0", GPU),
        2: (OFF, "", GPU),
        3: pynvml.NVML_ERROR_NOT_SUPPORTED,
        5: (ON, "00000000:C8:00.0", 0x01),  # an IBM NPU: not something we place
        pynvml.NVML_NVLINK_MAX_LINKS - 1: (ON, "00000000:C9:00.0", SWITCH),
    }
    install(monkeypatch, Device("00000000:07:00.0", links=links))
    assert PynvmlBackend().gpus()[0].nvlinks == (
        NvlinkInfo(0, True, "00000000:C7:00.0", "switch"),
        NvlinkInfo(1, True, "00000000:0F:00.0", "gpu"),
        NvlinkInfo(2, False, "", "unknown"),
        NvlinkInfo(5, True, "00000000:C8:00.0", "unknown"),
        NvlinkInfo(pynvml.NVML_NVLINK_MAX_LINKS - 1, True, "00000000:C9:00.0", "switch"),
    )


def test_nvlink_not_supported_means_no_links(monkeypatch: pytest.MonkeyPatch) -> None:
    """The lent H100 VM: NVLink state says Not Supported."""
    links: dict[int, tuple[int, str, int] | int] = dict.fromkeys(
        range(pynvml.NVML_NVLINK_MAX_LINKS), pynvml.NVML_ERROR_NOT_SUPPORTED
    )
    install(monkeypatch, Device("00000000:00:06.0", links=links))
    assert PynvmlBackend().gpus()[0].nvlinks == ()


def test_nvlink_failure_names_gpu_and_link(monkeypatch: pytest.MonkeyPatch) -> None:
    links: dict[int, tuple[int, str, int] | int] = {0: pynvml.NVML_ERROR_GPU_IS_LOST}
    lib = install(monkeypatch, Device("00000000:07:00.0"), Device("00000000:0F:00.0", links=links))
    with pytest.raises(
        NvmlError, match="nvmlDeviceGetNvLinkState failed for GPU 1 link 0: GPU is lost"
    ):
        PynvmlBackend().gpus()
    assert lib.shutdowns == 1


@pytest.mark.parametrize(
    "name",
    [
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetMinorNumber",
        "nvmlDeviceGetHandleByIndex",
    ],
)
def test_device_failure_names_call_and_gpu(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    lib = install(monkeypatch, Device("00000000:07:00.0"))
    lib.failing[name] = pynvml.NVML_ERROR_NO_PERMISSION
    with pytest.raises(NvmlError, match=f"^{name} failed for GPU 0: Insufficient Permissions$"):
        PynvmlBackend().gpus()


def test_mig_failure_other_than_not_supported(monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, Device("00000000:07:00.0", mig=pynvml.NVML_ERROR_UNKNOWN))
    with pytest.raises(NvmlError, match="nvmlDeviceGetMigMode failed for GPU 0: Unknown Error"):
        PynvmlBackend().gpus()


def test_count_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = install(monkeypatch)
    lib.failing["nvmlDeviceGetCount"] = pynvml.NVML_ERROR_UNKNOWN
    with pytest.raises(NvmlError, match=r"^nvmlDeviceGetCount failed: Unknown Error$"):
        PynvmlBackend().gpus()


@pytest.mark.parametrize(
    "code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED]
)
def test_no_driver(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    lib = install(monkeypatch)
    lib.failing["nvmlInit"] = code
    with pytest.raises(NvmlError, match=r"^NVML not available: .*use --simulate"):
        PynvmlBackend().gpus()
    assert lib.shutdowns == 0


def test_init_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = install(monkeypatch)
    lib.failing["nvmlInit"] = pynvml.NVML_ERROR_NO_PERMISSION
    with pytest.raises(NvmlError, match=r"^nvmlInit failed: Insufficient Permissions$"):
        PynvmlBackend().driver_version()


def test_shutdown_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = install(monkeypatch)
    lib.failing["nvmlShutdown"] = pynvml.NVML_ERROR_UNINITIALIZED
    with pytest.raises(NvmlError, match=r"^nvmlShutdown failed: Uninitialized$"):
        PynvmlBackend().driver_version()


def test_context_manager_holds_one_session(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = install(monkeypatch, Device("00000000:07:00.0"))
    with PynvmlBackend() as nvml:
        nvml.gpus()
        nvml.driver_version()
        assert lib.inits - lib.shutdowns == 1
    assert lib.inits == lib.shutdowns == 3


def _nvml_loadable() -> bool:
    if pynvml.nvmlLib is not None:
        return True
    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return False
    return True


@pytest.mark.skipif(_nvml_loadable(), reason="an NVML library is loadable here")
def test_missing_library() -> None:
    """Real pynvml with no libnvidia-ml.so.1 to load."""
    with pytest.raises(NvmlError, match=r"^NVML not available: .*is the NVIDIA driver installed"):
        PynvmlBackend().driver_version()
