"""`SimulatedNvml`: the NVML backend of a simulated node, read from its `nvml.json`."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.discovery.nvml import NvlinkInfo, NvmlError, NvmlGpu
from agent.simnode.errors import SimulationError
from agent.simnode.nvmljson import NVML_JSON_VERSION

_NVML_BUS_ID = re.compile(r"[0-9A-F]{8}:[0-9A-F]{2}:[0-9A-F]{2}\.[0-7]")
_REMOTE_TYPES = ("gpu", "switch", "unknown")


class SimulatedNvmlError(NvmlError, SimulationError):
    """An `nvml.json` that cannot be read; caught as either NvmlError or SimulationError."""


@dataclass(frozen=True)
class NvmlState:
    driver_version: str
    cuda_driver_version: int
    gpus: tuple[NvmlGpu, ...]


class SimulatedNvml:
    """NVML as a simulated node's `nvml.json` describes it (implements `NvmlBackend`).

    The file is read and checked once, here; a malformed one raises SimulatedNvmlError.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise SimulatedNvmlError(f"{path}: cannot read: {err.strerror}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise SimulatedNvmlError(
                f"{path}: not JSON: {err.msg} at line {err.lineno}, column {err.colno}"
            ) from None
        self.state = parse_nvml_document(doc, str(path))

    def driver_version(self) -> str:
        return self.state.driver_version

    def cuda_driver_version(self) -> int:
        """As `nvmlSystemGetCudaDriverVersion`: 13000 for CUDA 13.0."""
        return self.state.cuda_driver_version

    def gpus(self) -> list[NvmlGpu]:
        return list(self.state.gpus)


def parse_nvml_document(doc: object, source: str) -> NvmlState:
    """Check a loaded `nvml.json`; errors name `source` and the field."""
    top = _object(doc, source, "")
    version = _field(top, "version", int, source, "")
    if version != NVML_JSON_VERSION:
        raise SimulatedNvmlError(
            f"{source}: version {version} is not supported (want {NVML_JSON_VERSION})"
        )
    gpus = tuple(
        _gpu(item, source, f"devices[{i}]")
        for i, item in enumerate(_field(top, "devices", list, source, ""))
    )
    indexes = [g.index for g in gpus]
    for i, gpu in enumerate(gpus):
        if gpu.index in indexes[:i]:
            raise SimulatedNvmlError(f"{source}: devices[{i}].index: {gpu.index} appears twice")
    return NvmlState(
        driver_version=_field(top, "driver_version", str, source, ""),
        cuda_driver_version=_field(top, "cuda_driver_version", int, source, ""),
        gpus=tuple(sorted(gpus, key=lambda g: g.index)),
    )


def _gpu(item: object, source: str, where: str) -> NvmlGpu:
    obj = _object(item, source, where)
    supported = _field(obj, "nvlink_supported", bool, source, where)
    links = tuple(
        _nvlink(link, source, f"{where}.nvlinks[{i}]")
        for i, link in enumerate(_field(obj, "nvlinks", list, source, where))
    )
    if links and not supported:
        raise SimulatedNvmlError(
            f"{source}: {where}.nvlinks: lists links although nvlink_supported is false"
        )
    return NvmlGpu(
        index=_field(obj, "index", int, source, where),
        uuid=_field(obj, "uuid", str, source, where),
        name=_field(obj, "name", str, source, where),
        memory_total_bytes=_field(obj, "memory_total_bytes", int, source, where),
        pci_bus_id=_bus_id(obj, "pci_bus_id", source, where),
        minor=_field(obj, "minor", int, source, where),
        mig_enabled=_field(obj, "mig_enabled", bool, source, where),
        nvlinks=links,
    )


def _nvlink(item: object, source: str, where: str) -> NvlinkInfo:
    obj = _object(item, source, where)
    link = _field(obj, "link", int, source, where)
    if not _field(obj, "active", bool, source, where):
        # As through real NVML: the far end of a link that is down is never asked for.
        return NvlinkInfo(link=link, active=False, remote_pci="", remote_type="unknown")
    kind = _field(obj, "remote_type", str, source, where)
    if kind not in _REMOTE_TYPES:
        raise SimulatedNvmlError(
            f"{source}: {where}.remote_type: {kind!r} is not one of {', '.join(_REMOTE_TYPES)}"
        )
    return NvlinkInfo(
        link=link,
        active=True,
        remote_pci=_bus_id(obj, "remote_pci", source, where),
        remote_type=kind,
    )


def _object(value: object, source: str, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise SimulatedNvmlError(f"{source}: {where or 'top level'}: expected a JSON object")
    return value


def _field(obj: Mapping[str, Any], key: str, kind: type, source: str, where: str) -> Any:
    """`obj[key]` of type `kind`; `where` is the object's place ("" for the top level)."""
    if key not in obj:
        raise SimulatedNvmlError(f"{source}: {where or 'top level'}: missing field {key!r}")
    value = obj[key]
    place = f"{where}.{key}" if where else key
    wrong_bool = isinstance(value, bool) and kind is not bool
    if wrong_bool or not isinstance(value, kind):
        raise SimulatedNvmlError(
            f"{source}: {place}: expected {_KIND_NAMES[kind]}, got {json.dumps(value)}"
        )
    if isinstance(value, int) and not isinstance(value, bool) and value < 0:
        raise SimulatedNvmlError(f"{source}: {place}: must not be negative, got {value}")
    return value


def _bus_id(obj: Mapping[str, Any], key: str, source: str, where: str) -> str:
    value: str = _field(obj, key, str, source, where)
    if not _NVML_BUS_ID.fullmatch(value):
        raise SimulatedNvmlError(
            f"{source}: {where}.{key}: {value!r} is not an NVML bus id "
            "(8-digit domain, upper-case hex: 00000000:07:00.0)"
        )
    return value


_KIND_NAMES: dict[type, str] = {
    int: "an integer",
    str: "a string",
    bool: "true or false",
    list: "a list",
}
