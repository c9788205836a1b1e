"""The generated directory: the kernel's sysfs shapes and formats, numbering, determinism."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.simnode import (
    SimulationError,
    generate,
    shipped_nodes,
    shipped_spec,
    spec_from_data,
)
from agent.simnode.files import Files, Symlink, kernel_link
from agent.simnode.layout import Bridge, lay_out
from agent.simnode.render import render
from gpulet.topology.links import pcie_link
from gpulet.topology.model import PcieLocation

#: What each kind of sysfs file holds, as the kernel prints it.
KERNEL_FORMATS: dict[str, re.Pattern[str]] = {
    "class": re.compile(r"0x[0-9a-f]{6}\n"),
    "vendor": re.compile(r"0x[0-9a-f]{4}\n"),
    "device": re.compile(r"0x[0-9a-f]{4}\n"),
    "numa_node": re.compile(r"-?\d+\n"),
    "local_cpulist": re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*\n"),
    "cpulist": re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*\n"),
    "online": re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*\n"),
    "possible": re.compile(r"\d+(-\d+)?(,\d+(-\d+)?)*\n"),
    "secondary_bus_number": re.compile(r"\d+\n"),
    "subordinate_bus_number": re.compile(r"\d+\n"),
    "state": re.compile(r"[1-4]: (DOWN|INIT|ARMED|ACTIVE)\n"),
    "phys_state": re.compile(r"[2-5]: (Polling|LinkUp)\n"),
    "rate": re.compile(
        r"\d+(\.5)? Gb/sec \((1|2|4|8|12)X (SDR|DDR|QDR|FDR10|FDR|EDR|HDR|NDR|XDR)\)\n"
    ),
    "link_layer": re.compile(r"(InfiniBand|Ethernet)\n"),
    "operstate": re.compile(r"(up|down|unknown)\n"),
    "dev_port": re.compile(r"\d+\n"),
    "ibdev": re.compile(r"[A-Za-z][A-Za-z0-9_]*\n"),
    "abi_version": re.compile(r"\d+\n"),
    "dev": re.compile(r"\d+:\d+\n"),
    "meminfo": re.compile(
        r"Node (\d+) MemTotal: +\d+ kB\nNode \1 MemFree: +\d+ kB\nNode \1 MemUsed: +\d+ kB\n"
    ),
}


def tree_digest(root: Path) -> str:
    """Every path, file content and link target under `root`, hashed."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(b"->" + os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module", params=shipped_nodes())
def shipped(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    name: str = request.param
    return generate(shipped_spec(name), tmp_path_factory.mktemp(name) / "node")


def test_every_symlink_is_relative_and_resolves_inside_the_tree(shipped: Path) -> None:
    sysfs = (shipped / "sysfs").resolve()
    links = [p for p in sysfs.rglob("*") if p.is_symlink()]
    assert links
    for link in links:
        target = os.readlink(link)
        assert not os.path.isabs(target), link
        resolved = Path(os.path.realpath(link))
        assert resolved.is_relative_to(sysfs), f"{link} -> {target} leaves the tree"
        assert resolved.exists(), f"{link} -> {target} dangles"


def test_every_file_has_the_kernels_format(shipped: Path) -> None:
    files = [p for p in (shipped / "sysfs").rglob("*") if p.is_file() and not p.is_symlink()]
    for path in files:
        pattern = KERNEL_FORMATS.get(path.name)
        assert pattern is not None, f"unexpected file {path}"
        assert pattern.fullmatch(path.read_text()), f"{path}: {path.read_text()!r}"


def test_pci_functions_nest_under_their_bridges_with_consistent_bus_numbers(shipped: Path) -> None:
    devices = shipped / "sysfs/bus/pci/devices"
    for entry in sorted(os.listdir(devices)):
        here = Path(os.path.realpath(devices / entry))
        assert here.name == entry
        parent = here.parent
        bus = int(entry.split(":")[1], 16)
        if parent.name.startswith("pci"):
            assert parent.name == f"pci{entry[:4]}:{entry[5:7]}", "a root-bus device on another bus"
            continue
        assert (parent / "class").read_text() == "0x060400\n", f"{entry} below a non-bridge"
        assert int((parent / "secondary_bus_number").read_text()) == bus
        assert entry.endswith(".0") or (here.parent / (entry[:-1] + "0")).is_dir()
        subordinate = int((parent / "subordinate_bus_number").read_text())
        below = [int(p.name.split(":")[1], 16) for p in parent.rglob("*:*:*.*") if p.is_dir()]
        assert max(below) <= subordinate


def test_rdma_devices_link_both_ways(shipped: Path) -> None:
    sysfs = shipped / "sysfs"
    rdma = sysfs / "class/infiniband"
    for name in os.listdir(rdma) if rdma.exists() else []:
        device = Path(os.path.realpath(rdma / name))
        assert device.parent.name == "infiniband"
        function = Path(os.path.realpath(rdma / name / "device"))
        assert function == device.parent.parent
        assert (function / "class").read_text() in ("0x020700\n", "0x020000\n")
        assert (function / "vendor").read_text() == "0x15b3\n"
        for netdev in os.listdir(function / "net"):
            assert Path(os.path.realpath(sysfs / "class/net" / netdev)) == function / "net" / netdev
            assert Path(os.path.realpath(function / "net" / netdev / "device")) == function


def test_every_rdma_device_has_one_verbs_device_numbered_in_pci_order(shipped: Path) -> None:
    sysfs = shipped / "sysfs"
    rdma = sysfs / "class/infiniband"
    names = os.listdir(rdma) if rdma.exists() else []
    verbs = sysfs / "class/infiniband_verbs"
    entries = sorted(e for e in os.listdir(verbs) if e != "abi_version") if names else []
    ibdev = {(verbs / e / "ibdev").read_text().strip(): int(e[len("uverbs") :]) for e in entries}
    assert sorted(ibdev) == sorted(names)
    by_pci = sorted(names, key=lambda n: Path(os.path.realpath(rdma / n / "device")).name)
    assert [ibdev[n] for n in by_pci] == list(range(len(names)))
    for entry in entries:
        device = Path(os.path.realpath(verbs / entry))
        assert device.parent.name == "infiniband_verbs"
        assert Path(os.path.realpath(device / "device")) == device.parent.parent


def test_the_same_spec_gives_the_same_bytes(tmp_path: Path) -> None:
    for name in shipped_nodes():
        first = generate(shipped_spec(name), tmp_path / name / "a")
        second = generate(shipped_spec(name), tmp_path / name / "b")
        assert tree_digest(first) == tree_digest(second), name


def test_every_shipped_node_has_loopback_and_numa_files(shipped: Path) -> None:
    sysfs = shipped / "sysfs"
    assert os.readlink(sysfs / "class/net/lo") == "../../devices/virtual/net/lo"
    assert (sysfs / "devices/virtual/net/lo/operstate").read_text() == "unknown\n"
    nodes = sorted(p.name for p in (sysfs / "devices/system/node").glob("node*"))
    assert nodes
    assert (sysfs / "devices/system/cpu/online").read_text().strip()
    assert json.loads((shipped / "nvml.json").read_text())["version"] == 1
    assert (shipped / "node.yaml").read_text().startswith("name: ")


def test_kernel_links_climb_to_the_targets_parent() -> None:
    ib = PurePosixPath("devices/pci0000:15/0000:15:01.0/0000:18:00.0/infiniband/mlx5_0")
    assert kernel_link(ib / "device", ib.parent.parent) == Symlink("../../../0000:18:00.0")
    assert kernel_link(PurePosixPath("class/infiniband/mlx5_0"), ib) == Symlink(
        "../../devices/pci0000:15/0000:15:01.0/0000:18:00.0/infiniband/mlx5_0"
    )
    assert kernel_link(PurePosixPath("bus/pci/devices/0000:15:01.0"), ib.parents[2]) == Symlink(
        "../../../devices/pci0000:15/0000:15:01.0"
    )


def small(**nic: Any) -> dict[str, Any]:
    return {
        "name": "small",
        "numa": [{"id": 0, "cpus": "0-3", "memory": "4 GiB"}],
        "pcie": [
            {
                "host_bridge": 0,
                "numa": 0,
                "devices": [{"root_port": {"nic": "mlx5_0", **nic}}],
            }
        ],
    }


def nic_files(files: Files, nic: str = "mlx5_0") -> dict[str, str | Symlink]:
    """The NIC's own files, keyed below its function directory."""
    base = PurePosixPath("sysfs/devices/pci0000:00/0000:00:01.0/0000:01:00.0")
    return {str(p.relative_to(base)): e for p, e in files.items() if p.is_relative_to(base)}


def test_a_down_port_polls_and_its_netdev_is_down() -> None:
    files = nic_files(render(spec_from_data(small(state="down"))))
    assert files["infiniband/mlx5_0/ports/1/state"] == "1: DOWN\n"
    assert files["infiniband/mlx5_0/ports/1/phys_state"] == "2: Polling\n"
    assert files["net/ibp1s0/operstate"] == "down\n"


def test_an_active_port_with_its_netdev_taken_down() -> None:
    files = nic_files(render(spec_from_data(small(operstate="down"))))
    assert files["infiniband/mlx5_0/ports/1/state"] == "4: ACTIVE\n"
    assert files["infiniband/mlx5_0/ports/1/phys_state"] == "5: LinkUp\n"
    assert files["net/ibp1s0/operstate"] == "down\n"


def test_a_nic_without_netdev() -> None:
    files = nic_files(render(spec_from_data(small(netdev=None))))
    assert not any(key.startswith("net/") for key in files)


def test_a_two_port_nic_has_a_netdev_per_port() -> None:
    ports = [{"state": "active"}, {"state": "down", "rate": "2.5 Gb/sec (1X SDR)"}]
    files = nic_files(render(spec_from_data(small(ports=ports))))
    assert files["infiniband/mlx5_0/ports/2/state"] == "1: DOWN\n"
    assert files["infiniband/mlx5_0/ports/2/rate"] == "2.5 Gb/sec (1X SDR)\n"
    assert (files["net/ibp1s0/dev_port"], files["net/ibp1s0d1/dev_port"]) == ("0\n", "1\n")
    assert files["net/ibp1s0d1/operstate"] == "down\n"


@pytest.mark.parametrize(
    ("card", "netdevs"),
    [
        ([{"nic": "mlx5_0"}], ["ibp1s0"]),
        ([{"nic": "mlx5_0", "link_layer": "Ethernet"}], ["enp1s0np0"]),
        (
            [
                {"nic": "mlx5_0", "link_layer": "Ethernet"},
                {"nic": "mlx5_1", "link_layer": "Ethernet"},
            ],
            ["enp1s0f0np0", "enp1s0f1np1"],
        ),
        ([{"nic": "mlx5_0"}, {"nic": "mlx5_1"}], ["ibp1s0f0", "ibp1s0f1"]),
    ],
)
def test_netdevs_are_named_as_systemd_names_them(card: list[Any], netdevs: list[str]) -> None:
    spec = small()
    spec["pcie"][0]["devices"] = [{"root_port": {"card": card}}]
    files = render(spec_from_data(spec))
    names = sorted(p.name for p in files if p.parent == PurePosixPath("sysfs/class/net"))
    assert names == sorted([*netdevs, "lo"])


def test_ethernet_nics_are_ethernet_controllers() -> None:
    files = nic_files(render(spec_from_data(small(link_layer="Ethernet"))))
    assert files["class"] == "0x020000\n"
    assert files["infiniband/mlx5_0/ports/1/link_layer"] == "Ethernet\n"


def test_verbs_numbers_follow_the_pci_order_not_the_names() -> None:
    spec = small()
    spec["pcie"][0]["devices"] = [
        {"root_port": {"nic": "mlx5_1"}},
        {"root_port": {"nic": "mlx5_0"}},
    ]
    files = render(spec_from_data(spec))
    verbs = PurePosixPath("sysfs/class/infiniband_verbs")
    links = {p.name: e for p, e in files.items() if p.parent == verbs}
    assert links["abi_version"] == "6\n"
    assert links["uverbs0"] == Symlink(
        "../../devices/pci0000:00/0000:00:01.0/0000:01:00.0/infiniband_verbs/uverbs0"
    )
    assert nic_files(files)["infiniband_verbs/uverbs0/ibdev"] == "mlx5_1\n"
    assert nic_files(files)["infiniband_verbs/uverbs0/dev"] == "231:192\n"


def test_explicit_addresses_make_the_numbering_jump() -> None:
    spec = small()
    spec["pcie"][0]["devices"] = [
        {"root_port": {"switch": [{"nic": "mlx5_0", "bdf": "0000:07:00.0"}, {"nic": "mlx5_1"}]}},
        {"root_port": {"nic": "mlx5_2"}, "bdf": "0000:00:03.1"},
    ]
    layout = lay_out(spec_from_data(spec))
    placed = {str(f.bdf): f for f in layout.functions}
    assert sorted(placed) == [
        "0000:00:01.0",
        "0000:00:03.1",
        "0000:01:00.0",
        "0000:02:00.0",
        "0000:02:01.0",
        "0000:07:00.0",
        "0000:08:00.0",
        "0000:09:00.0",
    ]
    root = placed["0000:00:01.0"].payload
    assert isinstance(root, Bridge)
    assert (root.secondary, root.subordinate) == (1, 8)
    assert [str(b) for b in placed["0000:08:00.0"].parents] == [
        "0000:00:01.0",
        "0000:01:00.0",
        "0000:02:01.0",
    ]


def test_generate_refuses_a_directory_with_files(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(SimulationError, match="exists and is not an empty directory"):
        generate(spec_from_data(small()), tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


# Random trees: any shape of root ports, nested switches and endpoints lays out cleanly.

Leaf = dict[str, Any]


def _leaf(kind: str) -> Leaf:
    return {kind: None}


leaves = st.sampled_from(["gpu", "nic"]).map(_leaf)
subtrees = st.recursive(
    leaves,
    lambda children: st.lists(children, min_size=1, max_size=4).map(lambda c: {"switch": c}),
    max_leaves=12,
)
host_bridges = st.lists(st.lists(subtrees, min_size=1, max_size=3), min_size=1, max_size=3)


def _number(tree: Any, counters: dict[str, int]) -> None:
    """Give the drawn leaves GPU indexes and NIC names in order."""
    if "switch" in tree:
        for child in tree["switch"]:
            _number(child, counters)
    elif "gpu" in tree:
        tree["gpu"] = counters["gpu"]
        counters["gpu"] += 1
    else:
        tree["nic"] = f"mlx5_{counters['nic']}"
        counters["nic"] += 1


def random_spec(bridges: list[list[Any]]) -> dict[str, Any]:
    counters = {"gpu": 0, "nic": 0}
    pcie = []
    for i, ports in enumerate(bridges):
        for tree in ports:
            _number(tree, counters)
        pcie.append(
            {
                "domain": i,
                "host_bridge": 0,
                "numa": i % 2,
                "devices": [{"root_port": tree} for tree in ports],
            }
        )
    return {
        "name": "random",
        "numa": [
            {"id": 0, "cpus": "0-7", "memory": "8 GiB"},
            {"id": 1, "cpus": "8-15", "memory": "8 GiB"},
        ],
        "defaults": {"gpu": {"model": "NVIDIA A40", "memory": "46068 MiB", "device": 0x2235}},
        "pcie": pcie,
    }


def _resolve(files: Files, link: PurePosixPath) -> PurePosixPath:
    entry = files[link]
    assert isinstance(entry, Symlink)
    parts = list(link.parent.parts)
    for part in entry.target.split("/"):
        if part == "..":
            assert parts, f"{link} leaves the tree"
            parts.pop()
        else:
            parts.append(part)
    return PurePosixPath(*parts)


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(host_bridges)
def test_any_tree_lays_out_with_nested_buses_and_working_links(bridges: list[list[Any]]) -> None:
    spec = spec_from_data(random_spec(bridges))
    files = render(spec)
    assert files == render(spec)
    dirs = {parent for path in files for parent in path.parents}
    for path, entry in files.items():
        if isinstance(entry, Symlink):
            target = _resolve(files, path)
            assert target in dirs or target in files, f"{path} dangles"
    layout = lay_out(spec)
    bridges_by_bdf = {f.bdf: f.payload for f in layout.functions if isinstance(f.payload, Bridge)}
    addresses = [f.bdf for f in layout.functions]
    assert len(set(addresses)) == len(addresses)
    for function in layout.functions:
        if function.parents:
            parent = bridges_by_bdf[function.parents[-1]]
            assert function.bdf.bus == parent.secondary
            for above in function.parents:
                bridge = bridges_by_bdf[above]
                assert bridge.secondary <= function.bdf.bus <= bridge.subordinate


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(host_bridges)
def test_devices_on_sibling_ports_of_one_switch_are_pix(bridges: list[list[Any]]) -> None:
    layout = lay_out(spec_from_data(random_spec(bridges)))
    endpoints = [f for f in layout.functions if not isinstance(f.payload, Bridge)]
    for a in endpoints:
        for b in endpoints:
            if a is b or not a.parents or len(a.parents) != len(b.parents):
                continue
            la = PcieLocation(str(a.bdf), a.host_bridge, tuple(str(x) for x in a.parents))
            lb = PcieLocation(str(b.bdf), b.host_bridge, tuple(str(x) for x in b.parents))
            if a.parents[:-1] == b.parents[:-1] and len(a.parents) >= 3:
                assert pcie_link(la, a.numa, lb, b.numa) == "PIX"
