"""Netdev operational state: real rtnetlink in this namespace, and a sysfs tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.discovery.netlink import LinkStateReader, NetlinkLinkState, SysfsLinkState, is_ifname
from tests.fixtures.discovery.sysfs_tree import SysfsTreeBuilder


def test_netlink_reads_loopback() -> None:
    reader: LinkStateReader = NetlinkLinkState()
    assert reader.operstate("lo") in ("UNKNOWN", "UP")


@pytest.mark.parametrize("name", ["gpulet-none0", "a" * 40, "", "../lo", "lo:0"])
def test_netlink_has_no_such_interface(name: str) -> None:
    assert NetlinkLinkState().operstate(name) is None


def test_sysfs_link_state(tmp_path: Path) -> None:
    tree = SysfsTreeBuilder(tmp_path)
    fn = tree.function("pci0000:00/0000:00:03.0")
    tree.netdev(fn, "eth0", operstate="up")
    tree.netdev(fn, "ibp12s0", operstate="lowerlayerdown", dev_port=1)
    tree.write("devices/virtual/net/lo/operstate", "unknown")
    tree.link("class/net/lo", "devices/virtual/net/lo")
    tree.write("devices/virtual/net/weird/dev_port", "0")
    tree.link("class/net/weird", "devices/virtual/net/weird")
    reader: LinkStateReader = SysfsLinkState(tmp_path)
    assert reader.operstate("eth0") == "UP"
    assert reader.operstate("ibp12s0") == "LOWERLAYERDOWN"
    assert reader.operstate("lo") == "UNKNOWN"
    assert reader.operstate("weird") == "UNKNOWN"  # no operstate file: the kernel would not say
    assert reader.operstate("eth9") is None
    assert reader.operstate("../../bus") is None


def test_sysfs_link_state_against_the_host() -> None:
    assert SysfsLinkState(Path("/sys")).operstate("lo") in ("UNKNOWN", "UP")


@pytest.mark.parametrize(
    ("name", "valid"),
    [("eth0", True), ("ibp220s0", True), ("a" * 15, True), ("a" * 16, False), (".", False)],
)
def test_is_ifname(name: str, valid: bool) -> None:
    assert is_ifname(name) is valid
