"""Simulated-node specs: what a valid spec means, and every way a spec is refused."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from agent.simnode import SimulationError, parse_spec, spec_from_data
from agent.simnode.bdf import Bdf
from agent.simnode.files import Symlink
from agent.simnode.render import render
from agent.simnode.spec import Auto, DeviceSpec, GpuSpec, NicSpec, RootPortSpec, SwitchSpec
from gpulet.topology.cpulist import format_cpulist

Spec = dict[str, Any]


def base() -> Spec:
    """Two NUMA nodes; a switch with 2 GPUs and a NIC on one, a lone NIC on the other."""
    return {
        "name": "test-node",
        "numa": [
            {"id": 0, "cpus": "0-7", "memory": "64 GiB"},
            {"id": 1, "cpus": "8-15", "memory": "64 GiB"},
        ],
        "defaults": {"gpu": {"model": "NVIDIA L40S", "memory": "46068 MiB", "device": 0x26B9}},
        "pcie": [
            {
                "host_bridge": 0x10,
                "numa": 0,
                "devices": [{"root_port": {"switch": [{"gpu": 0}, {"gpu": 1}, {"nic": "mlx5_0"}]}}],
            },
            {"host_bridge": 0x80, "numa": 1, "devices": [{"root_port": {"nic": "mlx5_1"}}]},
        ],
    }


def switch_children(spec: Spec) -> list[Any]:
    children: list[Any] = spec["pcie"][0]["devices"][0]["root_port"]["switch"]
    return children


def error_of(spec: Spec) -> str:
    """The message generating `spec` fails with (parse or layout)."""
    with pytest.raises(SimulationError) as caught:
        render(spec_from_data(spec))
    return str(caught.value)


def test_base_spec_parses_with_defaults_applied() -> None:
    spec = spec_from_data(base())
    assert spec.name == "test-node"
    assert spec.driver_version == "580.159.04"
    assert spec.cuda_driver_version == 13000
    assert [(n.id, n.cpus[0], n.cpus[-1], n.memory_kib) for n in spec.numa] == [
        (0, 0, 7, 64 * 1024**2),
        (1, 8, 15, 64 * 1024**2),
    ]
    port = spec.host_bridges[0].children[0]
    assert isinstance(port, RootPortSpec)
    assert (port.vendor, port.device_id) == (0x1022, 0x1483)
    switch = port.child
    assert isinstance(switch, SwitchSpec)
    assert (switch.vendor, switch.device_id) == (0x1000, 0xC010)
    gpu_device = switch.children[0]
    assert isinstance(gpu_device, DeviceSpec)
    gpu = gpu_device.functions[0]
    assert isinstance(gpu, GpuSpec)
    assert (gpu.index, gpu.model, gpu.memory_bytes, gpu.device_id) == (
        0,
        "NVIDIA L40S",
        46068 * 1024**2,
        0x26B9,
    )
    assert (gpu.uuid, gpu.minor, gpu.mig, gpu.nvswitch_links) == (None, None, False, 0)
    nic_device = switch.children[2]
    assert isinstance(nic_device, DeviceSpec)
    nic = nic_device.functions[0]
    assert isinstance(nic, NicSpec)
    port_spec = nic.ports[0]
    assert (nic.name, nic.device_id, nic.class_code) == ("mlx5_0", 0x101B, 0x020700)
    assert (port_spec.state, port_spec.rate, port_spec.link_layer, port_spec.netdev) == (
        "ACTIVE",
        "200 Gb/sec (4X HDR)",
        "InfiniBand",
        Auto.AUTO,
    )


def test_name_defaults_to_the_given_default() -> None:
    spec = base()
    del spec["name"]
    assert spec_from_data(spec, default_name="from-file").name == "from-file"


def test_yaml_keeps_pci_addresses_as_text() -> None:
    """YAML 1.1 would read 0000:07:00.0 as a base-60 number; the spec reader must not."""
    text = """
numa:
  - id: 0
    cpus: 0-7
    memory: 8 GiB
pcie:
  - host_bridge: 0x00
    numa: 0
    devices:
      - root_port:
          gpu: 0
          bdf: 0000:07:00.0
          model: NVIDIA A100-SXM4-80GB
          memory: 81920 MiB
          device: 0x20b2
"""
    files = render(parse_spec(text))
    assert files[PurePosixPath("sysfs/bus/pci/devices/0000:07:00.0")] == Symlink(
        "../../../devices/pci0000:00/0000:00:01.0/0000:07:00.0"
    )


@pytest.mark.parametrize(
    ("value", "rate"),
    [
        (400, "400 Gb/sec (4X NDR)"),
        (100, "100 Gb/sec (4X EDR)"),
        (800, "800 Gb/sec (4X XDR)"),
        ("50 Gb/sec (1X HDR)", "50 Gb/sec (1X HDR)"),
        ("2.5 Gb/sec (1X SDR)", "2.5 Gb/sec (1X SDR)"),
    ],
)
def test_rates_become_the_kernels_text(value: object, rate: str) -> None:
    spec = base()
    spec["defaults"]["nic"] = {"rate": value}
    parsed = spec_from_data(spec)
    port = parsed.host_bridges[1].children[0]
    assert isinstance(port, RootPortSpec)
    assert isinstance(port.child, DeviceSpec)
    nic = port.child.functions[0]
    assert isinstance(nic, NicSpec)
    assert nic.ports[0].rate == rate


def _set(path: str, value: object) -> Callable[[Spec], None]:
    """A mutation that sets spec[a][b]... (dots; integers index lists)."""

    def apply(spec: Spec) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        target: Any = spec
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return apply


def _delete(path: str) -> Callable[[Spec], None]:
    def apply(spec: Spec) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        target: Any = spec
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return apply


def _children(*items: object) -> Callable[[Spec], None]:
    def apply(spec: Spec) -> None:
        switch_children(spec)[:] = list(items)

    return apply


def _root_bus(*items: object) -> Callable[[Spec], None]:
    def apply(spec: Spec) -> None:
        spec["pcie"][1]["devices"] = list(items)

    return apply


def _also(*mutations: Callable[[Spec], None]) -> Callable[[Spec], None]:
    def apply(spec: Spec) -> None:
        for mutation in mutations:
            mutation(spec)

    return apply


SW = "pcie[0].devices[0].root_port"
NVSWITCHES = _root_bus({"root_port": {"switch": [{"nvswitch": 0}, {"nvswitch": 1}]}})

#: (mutation of the base spec, the exact one-line error).
REFUSED: list[tuple[str, Callable[[Spec], None], str]] = [
    (
        "unknown top-level key",
        _set("gpus", []),
        "top level: unknown key 'gpus' (known: cuda_driver_version, defaults, driver_version, "
        "name, numa, nvlinks, pcie, virtual_netdevs)",
    ),
    ("no numa", _delete("numa"), "top level: missing key 'numa'"),
    ("no pcie", _delete("pcie"), "top level: missing key 'pcie'"),
    ("empty pcie", _set("pcie", []), "pcie: must list at least one entry"),
    (
        "bad node name",
        _set("name", "Node_1"),
        "name: 'Node_1' is not a Kubernetes node name (lower-case letters, digits, '-', '.')",
    ),
    ("numa not a list", _set("numa", {"0": "0-7"}), "numa: expected a list, got a mapping"),
    ("empty numa", _set("numa", []), "numa: must list at least one NUMA node"),
    ("numa without memory", _delete("numa.0.memory"), "numa[0]: missing key 'memory'"),
    ("duplicate NUMA id", _set("numa.1.id", 0), "numa[1].id: NUMA node 0 is listed twice"),
    (
        "CPU in two nodes",
        _set("numa.1.cpus", "7-15"),
        "numa[1].cpus: CPU 7 is already in NUMA node 0",
    ),
    ("bad cpulist", _set("numa.0.cpus", "7-0"), "numa[0].cpus: bad cpulist range '7-0' in '7-0'"),
    (
        "cpulist of the wrong type",
        _set("numa.0.cpus", [0, 1]),
        "numa[0].cpus: expected a cpulist like 0-15,128-143, got a list",
    ),
    (
        "memory without a unit",
        _set("numa.0.memory", 65536),
        "numa[0].memory: expected a size with a unit (kB, KiB, MiB, GiB, TiB), got 65536",
    ),
    ("zero memory", _set("numa.0.memory", "0 GiB"), "numa[0].memory: the size must not be zero"),
    (
        "unknown defaults section",
        _set("defaults.hca", {}),
        "defaults: unknown key 'hca' (known: gpu, nic, nvswitch, root_port, switch)",
    ),
    (
        "unknown key in a defaults section",
        _set("defaults.gpu.memory_mib", 1),
        "defaults.gpu: unknown key 'memory_mib' (known: device, memory, mig, model, "
        "nvlink_supported, nvswitch_links)",
    ),
    (
        "a rate that no 4X link has",
        _set("defaults.nic", {"rate": 300}),
        "defaults.nic.rate: 300 Gb/s is no 4X InfiniBand rate (10, 20, 40, 56, 100, 200, 400, "
        "800); write the kernel's text instead, e.g. '50 Gb/sec (1X HDR)'",
    ),
    (
        "rate text the kernel would not write",
        _set("defaults.nic", {"rate": "400 Gbps"}),
        "defaults.nic.rate: expected Gb/s (e.g. 400) or the kernel's rate text "
        "(e.g. '400 Gb/sec (4X NDR)'), got '400 Gbps'",
    ),
    (
        "unknown port state",
        _set("defaults.nic", {"state": "up"}),
        "defaults.nic.state: unknown port state 'up' (want down, init, armed, active)",
    ),
    (
        "unknown link layer",
        _set("defaults.nic", {"link_layer": "RoCE"}),
        "defaults.nic.link_layer: unknown link layer 'RoCE' (want InfiniBand or Ethernet)",
    ),
    (
        "unknown operstate",
        _set("defaults.nic", {"operstate": "active"}),
        "defaults.nic.operstate: unknown operstate 'active' (want up, down, unknown, dormant, "
        "lowerlayerdown, notpresent, testing)",
    ),
    (
        "vendor id too big",
        _set("defaults.switch", {"vendor": 0x10000}),
        "defaults.switch.vendor: 0x10000 is out of range (want 0x0..0xffff)",
    ),
    (
        "device id not a number",
        _set("defaults.gpu.device", "GH100"),
        "defaults.gpu.device: expected an integer, got 'GH100'",
    ),
    (
        "device on an unknown NUMA node",
        _set("pcie.1.numa", 2),
        "pcie[1].numa: NUMA node 2 is not in the numa list (0, 1; or -1)",
    ),
    (
        "host bridge listed twice",
        _set("pcie.1.host_bridge", 0x10),
        "pcie[1]: host bridge pci0000:10 is already pcie[0]",
    ),
    (
        "bus above ff",
        _set("pcie.1.host_bridge", 0x100),
        "pcie[1].host_bridge: 0x100 is out of range (want 0x0..0xff)",
    ),
    (
        "host bridge with nothing",
        _set("pcie.1.devices", []),
        "pcie[1].devices: a host bridge needs at least one device",
    ),
    (
        "host bridges out of bus order",
        _set("pcie.1.host_bridge", 0x11),
        "pcie[1]: host bridge pci0000:11 overlaps buses already numbered (up to 15); list host "
        "bridges in bus order",
    ),
    (
        "entry of no kind",
        _children({"bdf": "0000:20:00.0"}),
        f"{SW}.switch[0]: expected one of switch, card, gpu, nic, nvswitch, pci as a key",
    ),
    (
        "entry of two kinds",
        _children({"gpu": 0, "nic": "mlx5_0"}),
        f"{SW}.switch[0]: one entry is one thing, not gpu and nic",
    ),
    (
        "entry that is no mapping",
        _children("gpu0"),
        f"{SW}.switch[0]: expected a mapping with one of switch, card, gpu, nic, nvswitch, pci, "
        "got 'gpu0'",
    ),
    (
        "switch on a root bus",
        _root_bus({"switch": [{"nic": "mlx5_1"}]}),
        "pcie[1].devices[0]: a switch hangs below a root port (root_port: {switch: [...]})",
    ),
    (
        "root port below a switch",
        _children({"root_port": {"gpu": 0}}),
        f"{SW}.switch[0]: a root port sits only on a host bridge's root bus",
    ),
    (
        "switch as a card function",
        _root_bus({"card": [{"switch": [{"gpu": 2}]}]}),
        "pcie[1].devices[0].card[0]: a switch cannot be a function of a card",
    ),
    (
        "card function with its own address",
        _root_bus({"card": [{"nic": "mlx5_1", "bdf": "0000:80:01.1"}]}),
        "pcie[1].devices[0].card[0].bdf: a card's functions are numbered .0, .1, ... in order; "
        "give the card's bdf instead",
    ),
    (
        "card with nine functions",
        _root_bus({"card": [{"nic": f"mlx5_{n + 1}"} for n in range(9)]}),
        "pcie[1].devices[0].card: a card has 1 to 8 functions, not 9",
    ),
    (
        "empty switch",
        _children({"switch": []}),
        f"{SW}.switch[0].switch: a switch needs at least one device below it",
    ),
    (
        "misspelt key on a GPU",
        _children({"gpu": 0, "bfd": "0000:13:00.0"}, {"gpu": 1}),
        f"{SW}.switch[0]: unknown key 'bfd' (known: bdf, device, gpu, memory, mig, minor, "
        "model, nvlink_supported, nvswitch_links, uuid)",
    ),
    (
        "duplicate GPU index",
        _children({"gpu": 0}, {"gpu": 0}),
        f"{SW}.switch[1]: gpu 0 is already at {SW}.switch[0]",
    ),
    (
        "gap in GPU indexes",
        _children({"gpu": 0}, {"gpu": 2}),
        "gpu indexes must run 0..1 without gaps; gpu 1 is missing",
    ),
    (
        "GPU without a model",
        _delete("defaults.gpu.model"),
        f"{SW}.switch[0]: missing key 'model' (give it here or in defaults.gpu)",
    ),
    (
        "malformed GPU uuid",
        _children({"gpu": 0, "uuid": "3ebba5ba-457d-495d-9ccc-6b9684c30591"}, {"gpu": 1}),
        f"{SW}.switch[0].uuid: '3ebba5ba-457d-495d-9ccc-6b9684c30591' is not a GPU UUID "
        "(want GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)",
    ),
    (
        "two GPUs with one uuid",
        _children(
            {"gpu": 0, "uuid": "GPU-3ebba5ba-457d-495d-9ccc-6b9684c30591"},
            {"gpu": 1, "uuid": "GPU-3ebba5ba-457d-495d-9ccc-6b9684c30591"},
        ),
        f"{SW}.switch[1]: GPU uuid GPU-3ebba5ba-457d-495d-9ccc-6b9684c30591 is already at "
        f"{SW}.switch[0]",
    ),
    (
        "two GPUs with one minor",
        _children({"gpu": 0}, {"gpu": 1, "minor": 0}),
        f"{SW}.switch[1]: GPU minor 0 is already at {SW}.switch[0]",
    ),
    (
        "duplicate NIC name",
        _set("pcie.1.devices.0.root_port.nic", "mlx5_0"),
        f"pcie[1].devices[0].root_port: NIC mlx5_0 is already at {SW}.switch[2]",
    ),
    (
        "RDMA name with a slash",
        _set("pcie.1.devices.0.root_port.nic", "mlx5/1"),
        "pcie[1].devices[0].root_port.nic: 'mlx5/1' is not an RDMA device name",
    ),
    (
        "netdev name too long",
        _set("pcie.1.devices.0.root_port.netdev", "infiniband-port-1"),
        "pcie[1].devices[0].root_port.netdev: 'infiniband-port-1' is not a valid interface "
        "name (at most 15 characters, no '/', ':' or spaces)",
    ),
    (
        "netdev beside ports",
        _set(
            "pcie.1.devices.0.root_port",
            {"nic": "mlx5_1", "netdev": "ib0", "ports": [{"netdev": "ib1"}]},
        ),
        "pcie[1].devices[0].root_port.netdev: a NIC with ports names a netdev in each port instead",
    ),
    (
        "NIC with no ports",
        _set("pcie.1.devices.0.root_port", {"nic": "mlx5_1", "ports": []}),
        "pcie[1].devices[0].root_port.ports: list at least one port",
    ),
    (
        "malformed address",
        _children({"gpu": 0, "bdf": "0000:7:00.0"}, {"gpu": 1}),
        f"{SW}.switch[0].bdf: not a PCI address: '0000:7:00.0' (want DDDD:BB:DD.F, "
        "e.g. 0000:07:00.0)",
    ),
    (
        "device number above 1f",
        _children({"gpu": 0, "bdf": "0000:20:20.0"}, {"gpu": 1}),
        f"{SW}.switch[0].bdf: PCI device number 20 in '0000:20:20.0' is above 1f",
    ),
    (
        "address that is a number",
        _children({"gpu": 0, "bdf": 7}, {"gpu": 1}),
        f"{SW}.switch[0].bdf: expected a PCI address like 0000:07:00.0, got 7",
    ),
    (
        "device below a port that is not device 00",
        _children({"gpu": 0, "bdf": "0000:20:01.0"}, {"gpu": 1}),
        f"{SW}.switch[0].bdf: 0000:20:01.0 sits below a port, so it must be device 00 on its "
        "bus (0000:20:00.0)",
    ),
    (
        "explicit bus that goes backwards",
        _children({"gpu": 0, "bdf": "0000:20:00.0"}, {"gpu": 1, "bdf": "0000:18:00.0"}),
        f"{SW}.switch[1].bdf: bus 18 is already numbered; the next free bus here is 21 (buses "
        "rise depth-first in the order written)",
    ),
    (
        "address of function 1 for a device",
        _children({"gpu": 0, "bdf": "0000:20:00.1"}, {"gpu": 1}),
        f"{SW}.switch[0].bdf: 0000:20:00.1 must name function 0 (list more functions in a card)",
    ),
    (
        "switch at function 1",
        _children({"switch": [{"gpu": 0}], "bdf": "0000:20:00.1"}, {"gpu": 1}),
        f"{SW}.switch[0].bdf: 0000:20:00.1 must name function 0",
    ),
    (
        "address in another domain",
        _children({"gpu": 0, "bdf": "0001:20:00.0"}, {"gpu": 1}),
        f"{SW}.switch[0].bdf: 0001:20:00.0 is not in domain 0000",
    ),
    (
        "root-bus device on another bus",
        _root_bus({"nic": "mlx5_1", "bdf": "0000:81:00.0"}),
        "pcie[1].devices[0].bdf: 0000:81:00.0 is not on the root bus of pci0000:80",
    ),
    (
        "two root-bus devices at one address",
        _root_bus(
            {"nic": "mlx5_1", "bdf": "0000:80:03.0"},
            {
                "pci": "nvme",
                "class": 0x010802,
                "vendor": 0x144D,
                "device": 0xA80A,
                "bdf": "0000:80:03.0",
            },
        ),
        "pcie[1].devices[1]: address 0000:80:03.0 is already taken by pcie[1].devices[0]",
    ),
    (
        "generic function without its class",
        _root_bus({"pci": "nvme", "vendor": 0x144D, "device": 0xA80A}),
        "pcie[1].devices[0]: missing key 'class'",
    ),
    (
        "NVLink to a GPU that does not exist",
        _set("nvlinks", [{"gpus": [0, 5], "links": 4}]),
        "nvlinks[0].gpus: there is no gpu 5",
    ),
    (
        "NVLink to itself",
        _set("nvlinks", [{"gpus": [1, 1], "links": 4}]),
        "nvlinks[0].gpus: a GPU cannot be NVLinked to itself",
    ),
    (
        "NVLink pair listed twice",
        _set("nvlinks", [{"gpus": [0, 1], "links": 4}, {"gpus": [1, 0], "links": 2}]),
        "nvlinks[1]: GPUs 1 and 0 are already paired in nvlinks[0]",
    ),
    (
        "NVLink pair with no links",
        _set("nvlinks", [{"gpus": [0, 1], "links": 0}]),
        "nvlinks[0].links: 0 is out of range (want 1..64)",
    ),
    (
        "NVLink of three GPUs",
        _set("nvlinks", [{"gpus": [0, 1, 2], "links": 2}]),
        "nvlinks[0].gpus: name two GPU indexes, e.g. [0, 1]",
    ),
    (
        "NVSwitch links without an NVSwitch",
        _set("defaults.gpu.nvswitch_links", 12),
        f"{SW}.switch[0] (gpu 0): 12 NVSwitch links but the spec has no nvswitch",
    ),
    (
        "NVSwitch links that do not spread evenly",
        _also(NVSWITCHES, _set("defaults.gpu.nvswitch_links", 7)),
        f"{SW}.switch[0] (gpu 0): 7 NVSwitch links do not spread evenly over 2 NVSwitches; "
        "give one count per NVSwitch, e.g. [5, 4, 4, 5]",
    ),
    (
        "one count per NVSwitch, but not for each",
        _also(NVSWITCHES, _set("defaults.gpu.nvswitch_links", [5, 4, 4])),
        f"{SW}.switch[0] (gpu 0): nvswitch_links lists 3 counts for 2 NVSwitches",
    ),
    (
        "gap in NVSwitch indexes",
        _root_bus({"root_port": {"switch": [{"nvswitch": 0}, {"nvswitch": 2}]}}),
        "nvswitch indexes must run 0..1 without gaps; nvswitch 1 is missing",
    ),
    (
        "NVLinks on a GPU said to have none",
        _also(
            _set("nvlinks", [{"gpus": [0, 1], "links": 4}]),
            _set("defaults.gpu.nvlink_supported", False),
        ),
        f"{SW}.switch[0] (gpu 0): nvlink_supported is false but the GPU has NVLinks",
    ),
    (
        "netdev used twice",
        _set("pcie.1.devices.0.root_port.netdev", "ibp21s0"),
        f"pcie[1].devices[0].root_port: netdev 'ibp21s0' is already used by {SW}.switch[2]",
    ),
    (
        "a device's netdev called lo",
        _set("pcie.1.devices.0.root_port.netdev", "lo"),
        "pcie[1].devices[0].root_port: netdev 'lo' is already used by the loopback device "
        "every node has",
    ),
    (
        "virtual netdevs as a list",
        _set("virtual_netdevs", ["ifb0"]),
        "virtual_netdevs: expected a mapping of name to operstate (ifb0: down), got a list",
    ),
    (
        "unknown key in an NVLink pair",
        _set("nvlinks", [{"gpus": [0, 1], "count": 4}]),
        "nvlinks[0]: unknown key 'count' (known: active, gpus, links)",
    ),
]


@pytest.mark.parametrize(
    ("mutation", "message"),
    [pytest.param(m, msg, id=name) for name, m, msg in REFUSED],
)
def test_refused_specs_say_what_and_where(mutation: Callable[[Spec], None], message: str) -> None:
    spec = copy.deepcopy(base())
    mutation(spec)
    assert error_of(spec) == message


def test_parse_errors_name_the_file() -> None:
    with pytest.raises(SimulationError, match=r"^my-node\.yaml: top level: missing key 'pcie'$"):
        parse_spec("numa: []\n", source="my-node.yaml")


def test_a_key_given_twice_is_refused_with_its_line() -> None:
    text = "name: a\nnuma: []\nname: b\n"
    with pytest.raises(SimulationError, match=r"^s\.yaml: line 3: key 'name' given twice"):
        parse_spec(text, source="s.yaml")


def test_invalid_yaml_is_one_line_with_its_position() -> None:
    with pytest.raises(SimulationError) as caught:
        parse_spec("numa: [\n", source="s.yaml")
    message = str(caught.value)
    assert message.startswith("s.yaml: not valid YAML: line 2, column 1: ")
    assert "\n" not in message


def test_unquoted_cpulist_in_flow_mapping_gets_a_hint() -> None:
    text = yaml.safe_dump(base()).replace(
        "numa:\n", "numa:\n- {id: 2, cpus: 16-23,32-39, memory: 1 GiB}\n", 1
    )
    with pytest.raises(
        SimulationError,
        match=r"numa\[0\]: unknown key '32-39' \(inside \{\.\.\.\} a cpulist needs quotes",
    ):
        parse_spec(text)


@given(
    st.builds(
        Bdf,
        st.integers(0, 0xFFFF_FFFF),
        st.integers(0, 0xFF),
        st.integers(0, 0x1F),
        st.integers(0, 7),
    )
)
def test_pci_addresses_read_back_in_both_spellings(bdf: Bdf) -> None:
    assert Bdf.parse(str(bdf)) == bdf
    assert Bdf.parse(bdf.nvml()) == bdf
    assert len(bdf.nvml().split(":")[0]) == 8


@given(st.sets(st.integers(0, 300), min_size=1))
def test_any_cpu_set_round_trips_through_the_numa_cpulist(cpus: set[int]) -> None:
    spec = base()
    spec["numa"] = [{"id": 0, "cpus": format_cpulist(sorted(cpus)), "memory": "1 GiB"}]
    spec["pcie"][1]["numa"] = 0
    assert spec_from_data(spec).numa[0].cpus == tuple(sorted(cpus))


def test_the_documented_example_spec_is_valid() -> None:
    doc = (Path(__file__).parents[2] / "docs/simulated-nodes.md").read_text()
    example = doc.split("## The spec format", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    spec = parse_spec(example, source="docs/simulated-nodes.md")
    files = render(spec)
    assert spec.name == "lab-box"
    assert files[PurePosixPath("sysfs/bus/pci/devices/0000:20:00.0")] == Symlink(
        "../../../devices/pci0000:10/0000:10:01.0/0000:11:00.0/0000:12:02.0/0000:15:00.0"
        "/0000:16:00.0/0000:20:00.0"
    )
    assert PurePosixPath("sysfs/class/net/ens5np0") in files
    assert PurePosixPath("sysfs/bus/pci/devices/0000:80:01.0") in files
    assert files[PurePosixPath("sysfs/class/net/ifb0")] == Symlink("../../devices/virtual/net/ifb0")
