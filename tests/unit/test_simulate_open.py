"""Opening simulated nodes by name, spec file or directory, and the command that writes one."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

from agent.discovery.nvml import NvmlError
from agent.simnode import (
    SimulationError,
    load_directory,
    open_simulated,
    shipped_nodes,
    shipped_spec,
)
from agent.simnode.__main__ import main

SHIPPED = ["dgx-a100", "dgx-h100", "h100-vm", "pcie-16gpu", "pcie-4gpu"]

SPEC = """\
name: lab-box
numa:
  - {id: 0, cpus: "0-3", memory: 16 GiB}
pcie:
  - host_bridge: 0x00
    numa: 0
    devices:
      - root_port: {gpu: 0, model: NVIDIA L4, memory: 23034 MiB, device: 0x27b8}
"""


def test_the_shipped_nodes() -> None:
    assert shipped_nodes() == SHIPPED
    for name in SHIPPED:
        assert shipped_spec(name).name == name


def test_a_shipped_name_opens_in_a_temporary_directory_that_close_removes() -> None:
    node = open_simulated("pcie-4gpu")
    assert node.name == "pcie-4gpu"
    assert node.temporary
    assert node.sysfs == node.root / "sysfs"
    assert (node.sysfs / "bus/pci/devices").is_dir()
    assert len(node.nvml.gpus()) == 4
    node.close()
    assert not node.root.exists()


def test_each_open_gets_its_own_directory() -> None:
    with open_simulated("h100-vm") as first, open_simulated("h100-vm") as second:
        assert first.root != second.root
        (first.sysfs / "class/net/eth0/operstate").write_text("down\n")
        assert (second.sysfs / "class/net/eth0/operstate").read_text() == "up\n"
    assert not first.root.exists()


def test_into_writes_where_asked_and_keeps_it(tmp_path: Path) -> None:
    with open_simulated("h100-vm", into=tmp_path / "vm") as node:
        assert node.root == tmp_path / "vm"
        assert not node.temporary
    assert (tmp_path / "vm/nvml.json").is_file()


def test_a_spec_file_is_generated_and_named_by_its_name(tmp_path: Path) -> None:
    path = tmp_path / "box.yaml"
    path.write_text(SPEC)
    with open_simulated(str(path)) as node:
        assert node.name == "lab-box"
        (gpu,) = node.nvml.gpus()
        assert (gpu.name, gpu.pci_bus_id) == ("NVIDIA L4", "00000000:01:00.0")


def test_a_spec_without_a_name_is_named_after_its_file(tmp_path: Path) -> None:
    path = tmp_path / "rack-7.yml"
    path.write_text(SPEC.replace("name: lab-box\n", ""))
    with open_simulated(path) as node:
        assert node.name == "rack-7"


def test_a_directory_is_used_in_place(tmp_path: Path) -> None:
    open_simulated("pcie-4gpu", into=tmp_path / "n4")
    node = open_simulated(str(tmp_path / "n4"))
    assert (node.root, node.name, node.temporary) == (tmp_path / "n4", "pcie-4gpu", False)
    node.close()
    assert (tmp_path / "n4").exists()


def test_a_directory_without_node_yaml_is_named_after_the_directory(tmp_path: Path) -> None:
    open_simulated("h100-vm", into=tmp_path / "gpu-host-3")
    (tmp_path / "gpu-host-3/node.yaml").unlink()
    assert load_directory(tmp_path / "gpu-host-3").name == "gpu-host-3"


def test_an_unknown_name_lists_the_shipped_ones() -> None:
    with pytest.raises(SimulationError) as caught:
        open_simulated("dgx-z900")
    assert str(caught.value) == (
        "unknown simulated node 'dgx-z900' (shipped: dgx-a100, dgx-h100, h100-vm, pcie-16gpu, "
        "pcie-4gpu; or give a simulated-node directory)"
    )


def test_a_directory_that_is_no_simulated_node(tmp_path: Path) -> None:
    with pytest.raises(
        SimulationError, match=r"not a simulated-node directory \(no sysfs/ in it\)$"
    ):
        open_simulated(str(tmp_path))
    (tmp_path / "sysfs").mkdir()
    with pytest.raises(
        SimulationError, match=r"not a simulated-node directory \(no nvml.json in it\)$"
    ):
        open_simulated(str(tmp_path))


def test_a_file_that_is_no_spec(tmp_path: Path) -> None:
    path = tmp_path / "node.json"
    path.write_text("{}")
    with pytest.raises(
        SimulationError, match=r"neither a simulated-node directory nor a spec \(\.yaml\)$"
    ):
        open_simulated(str(path))


def test_a_broken_nvml_json_fails_when_opening(tmp_path: Path) -> None:
    root = open_simulated("h100-vm", into=tmp_path / "vm").root
    doc = json.loads((root / "nvml.json").read_text())
    del doc["devices"][0]["pci_bus_id"]
    (root / "nvml.json").write_text(json.dumps(doc))
    with pytest.raises(NvmlError, match=r"devices\[0\]: missing field 'pci_bus_id'$"):
        open_simulated(str(root))


def test_a_bad_node_yaml(tmp_path: Path) -> None:
    root = open_simulated("h100-vm", into=tmp_path / "vm").root
    (root / "node.yaml").write_text("name: a\nzone: b\n")
    with pytest.raises(
        SimulationError, match=r"node\.yaml: expected a mapping with only 'name: <node name>'$"
    ):
        load_directory(root)


def test_a_failed_generation_leaves_no_temporary_directory(tmp_path: Path) -> None:
    """The spec parses, but its host bridges overlap: generation fails after mkdtemp."""
    path = tmp_path / "bad.yaml"
    second = "  - {host_bridge: 0x00, numa: 0, devices: [{nic: mlx5_0}]}\n"
    path.write_text(SPEC.replace("0x00", "0x10") + second)
    temporary = Path(tempfile.gettempdir())
    before = set(temporary.glob("gpulet-sim-lab-box-*"))
    with pytest.raises(
        SimulationError, match=r"/bad\.yaml: pcie\[1\]: host bridge pci0000:00 overlaps"
    ):
        open_simulated(str(path))
    assert set(temporary.glob("gpulet-sim-lab-box-*")) == before


def test_generating_into_a_used_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x/file").write_text("")
    with pytest.raises(SimulationError, match=r"x: exists and is not an empty directory$"):
        open_simulated("h100-vm", into=tmp_path / "x")


def test_the_command_writes_a_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dgx-h100", str(tmp_path / "h100")]) == 0
    assert load_directory(tmp_path / "h100").name == "dgx-h100"
    spec = tmp_path / "box.yaml"
    spec.write_text(SPEC)
    assert main([str(spec), str(tmp_path / "box")]) == 0
    assert load_directory(tmp_path / "box").name == "lab-box"
    assert main(["--list"]) == 0
    assert capsys.readouterr().out.splitlines()[-5:] == SHIPPED


def test_the_command_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dgx-z900", str(tmp_path / "z")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown simulated node 'dgx-z900'")
    assert err.count("\n") == 1
    assert not (tmp_path / "z").exists()


def test_a_copied_node_is_relocatable(tmp_path: Path) -> None:
    open_simulated("dgx-h100", into=tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b", symlinks=True)
    shutil.rmtree(tmp_path / "a")
    node = load_directory(tmp_path / "b")
    assert (node.sysfs / "class/infiniband/mlx5_0/device/class").read_text() == "0x020700\n"
    assert (node.sysfs / "bus/pci/devices/0000:1b:00.0/numa_node").read_text() == "0\n"
