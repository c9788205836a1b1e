"""`SimulatedNvml`: what discovery gets from a node's `nvml.json`, and how a bad file fails."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.discovery.nvml import NvlinkInfo, NvmlBackend, NvmlError, NvmlGpu
from agent.simnode import SimulatedNvml, SimulationError, generate, spec_from_data
from agent.simnode.nvmljson import derived_uuid

Doc = dict[str, Any]


def spec(**gpu: Any) -> dict[str, Any]:
    """Two GPUs bridged by 4 NVLinks, one of them with extra settings."""
    return {
        "name": "nvml-node",
        "driver_version": "575.57.08",
        "cuda_driver_version": 12090,
        "numa": [{"id": 0, "cpus": "0-7", "memory": "8 GiB"}],
        "defaults": {"gpu": {"model": "NVIDIA A40", "memory": "46068 MiB", "device": 0x2235}},
        "pcie": [
            {
                "host_bridge": 0,
                "numa": 0,
                "devices": [{"root_port": {"switch": [{"gpu": 0, **gpu}, {"gpu": 1, "minor": 7}]}}],
            }
        ],
        "nvlinks": [{"gpus": [0, 1], "links": 4}],
    }


def nvml_for(data: dict[str, Any], tmp_path: Path) -> SimulatedNvml:
    root = generate(spec_from_data(data), tmp_path / "node")
    return SimulatedNvml(root / "nvml.json")


def test_generated_nvml_reads_back_as_nvml_would_report(tmp_path: Path) -> None:
    nvml = nvml_for(spec(mig=True), tmp_path)
    backend: NvmlBackend = nvml
    assert backend.driver_version() == "575.57.08"
    assert nvml.cuda_driver_version() == 12090
    gpu0, gpu1 = backend.gpus()
    assert gpu0 == NvmlGpu(
        index=0,
        uuid=derived_uuid("nvml-node", 0),
        name="NVIDIA A40",
        memory_total_bytes=46068 * 2**20,
        pci_bus_id="00000000:03:00.0",
        minor=0,
        mig_enabled=True,
        nvlinks=tuple(NvlinkInfo(n, True, "00000000:04:00.0", "gpu") for n in range(4)),
    )
    assert (gpu1.minor, gpu1.mig_enabled, gpu1.pci_bus_id) == (7, False, "00000000:04:00.0")
    assert {link.remote_pci for link in gpu1.nvlinks} == {"00000000:03:00.0"}


def test_derived_uuids_are_stable_and_differ_by_node_and_index() -> None:
    assert derived_uuid("a", 0) == derived_uuid("a", 0)
    assert len({derived_uuid("a", 0), derived_uuid("a", 1), derived_uuid("b", 0)}) == 3
    assert derived_uuid("a", 0).startswith("GPU-")


def test_a_given_uuid_is_kept(tmp_path: Path) -> None:
    uuid = "GPU-3ebba5ba-457d-495d-9ccc-6b9684c30591"
    assert nvml_for(spec(uuid=uuid), tmp_path).gpus()[0].uuid == uuid


def test_inactive_nvlinks_and_unsupported_nvlink(tmp_path: Path) -> None:
    data = spec()
    data["nvlinks"][0]["active"] = False
    gpu0 = nvml_for(data, tmp_path / "a").gpus()[0]
    assert [link.active for link in gpu0.nvlinks] == [False] * 4
    del data["nvlinks"]
    doc = json.loads((generate(spec_from_data(data), tmp_path / "b") / "nvml.json").read_text())
    assert [(d["nvlink_supported"], d["nvlinks"]) for d in doc["devices"]] == [(False, [])] * 2


def test_gpus_come_back_in_index_order(tmp_path: Path) -> None:
    doc = good_doc()
    doc["devices"] = [dict(doc["devices"][0], index=1), dict(doc["devices"][0], index=0)]
    path = write(tmp_path, doc)
    assert [g.index for g in SimulatedNvml(path).gpus()] == [0, 1]


def good_doc() -> Doc:
    return {
        "version": 1,
        "driver_version": "580.159.04",
        "cuda_driver_version": 13000,
        "devices": [
            {
                "index": 0,
                "uuid": "GPU-3ebba5ba-457d-495d-9ccc-6b9684c30591",
                "name": "NVIDIA H100 80GB HBM3",
                "memory_total_bytes": 85520809984,
                "pci_bus_id": "00000000:00:06.0",
                "minor": 0,
                "mig_enabled": False,
                "nvlink_supported": True,
                "nvlinks": [
                    {
                        "link": 0,
                        "active": True,
                        "remote_pci": "00000000:C7:00.0",
                        "remote_type": "switch",
                    }
                ],
            }
        ],
    }


def write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "nvml.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_hand_written_file_reads_back(tmp_path: Path) -> None:
    (gpu,) = SimulatedNvml(write(tmp_path, good_doc())).gpus()
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert gpu.memory_total_bytes == 81559 * 2**20
    assert gpu.nvlinks == (NvlinkInfo(0, True, "00000000:C7:00.0", "switch"),)


def _edit(change: Callable[[Doc], None]) -> Callable[[Doc], None]:
    return change


def _device(**fields: Any) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        doc["devices"][0].update(fields)

    return apply


def _drop(key: str) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        del doc["devices"][0][key]

    return apply


def _link(**fields: Any) -> Callable[[Doc], None]:
    def apply(doc: Doc) -> None:
        doc["devices"][0]["nvlinks"][0].update(fields)

    return apply


MALFORMED: list[tuple[str, Callable[[Doc], None], str]] = [
    ("newer version", _edit(lambda d: d.update(version=2)), "version 2 is not supported (want 1)"),
    ("no devices", _edit(lambda d: d.pop("devices")), "top level: missing field 'devices'"),
    (
        "devices not a list",
        _edit(lambda d: d.update(devices={})),
        "devices: expected a list, got {}",
    ),
    (
        "device not an object",
        _edit(lambda d: d.update(devices=[3])),
        "devices[0]: expected a JSON object",
    ),
    (
        "driver as a number",
        _edit(lambda d: d.update(driver_version=580)),
        "driver_version: expected a string, got 580",
    ),
    ("no uuid", _drop("uuid"), "devices[0]: missing field 'uuid'"),
    ("index as text", _device(index="0"), 'devices[0].index: expected an integer, got "0"'),
    ("index as a bool", _device(index=True), "devices[0].index: expected an integer, got true"),
    (
        "negative memory",
        _device(memory_total_bytes=-1),
        "devices[0].memory_total_bytes: must not be negative, got -1",
    ),
    (
        "mig as a number",
        _device(mig_enabled=0),
        "devices[0].mig_enabled: expected true or false, got 0",
    ),
    (
        "sysfs spelling of the bus id",
        _device(pci_bus_id="0000:00:06.0"),
        "devices[0].pci_bus_id: '0000:00:06.0' is not an NVML bus id (8-digit domain, "
        "upper-case hex: 00000000:07:00.0)",
    ),
    (
        "lower-case bus id",
        _link(remote_pci="00000000:c7:00.0"),
        "devices[0].nvlinks[0].remote_pci: '00000000:c7:00.0' is not an NVML bus id (8-digit "
        "domain, upper-case hex: 00000000:07:00.0)",
    ),
    (
        "unknown remote type",
        _link(remote_type="nvswitch"),
        "devices[0].nvlinks[0].remote_type: 'nvswitch' is not one of gpu, switch, unknown",
    ),
    (
        "link without its state",
        _edit(lambda d: d["devices"][0]["nvlinks"][0].pop("active")),
        "devices[0].nvlinks[0]: missing field 'active'",
    ),
    (
        "links on a GPU without NVLink",
        _device(nvlink_supported=False),
        "devices[0].nvlinks: lists links although nvlink_supported is false",
    ),
    (
        "one index twice",
        _edit(lambda d: d["devices"].append(dict(d["devices"][0]))),
        "devices[1].index: 0 appears twice",
    ),
]


@pytest.mark.parametrize(
    ("change", "message"), [pytest.param(c, m, id=name) for name, c, m in MALFORMED]
)
def test_malformed_files_fail_in_one_line_naming_the_field(
    tmp_path: Path, change: Callable[[Doc], None], message: str
) -> None:
    doc = good_doc()
    change(doc)
    path = write(tmp_path, doc)
    with pytest.raises(NvmlError) as caught:
        SimulatedNvml(path)
    assert str(caught.value) == f"{path}: {message}"
    assert isinstance(caught.value, SimulationError)


def test_a_file_that_is_not_json(tmp_path: Path) -> None:
    path = tmp_path / "nvml.json"
    path.write_text('{"version": 1,\n')
    with pytest.raises(
        NvmlError, match=r"nvml\.json: not JSON: Expecting property name .* at line 2, column 1$"
    ):
        SimulatedNvml(path)


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(
        SimulationError, match=r"nvml\.json: cannot read: No such file or directory$"
    ):
        SimulatedNvml(tmp_path / "nvml.json")


def test_a_document_that_is_not_an_object(tmp_path: Path) -> None:
    path = write(tmp_path, [])
    with pytest.raises(NvmlError, match=r"nvml\.json: top level: expected a JSON object$"):
        SimulatedNvml(path)
