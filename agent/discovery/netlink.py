"""Operational state of network interfaces: over rtnetlink, or from a sysfs tree."""

from __future__ import annotations

import errno
from pathlib import Path, PurePosixPath
from typing import Protocol

from agent.discovery.sysfs import SysfsTree

#: Linux IFNAMSIZ less the terminating NUL.
_IFNAME_MAX = 15


class LinkStateReader(Protocol):
    def operstate(self, ifname: str) -> str | None:
        """`UP`, `DOWN`, `UNKNOWN`, `LOWERLAYERDOWN`, ... (upper case); None when no such
        interface exists."""
        ...


def is_ifname(name: str) -> bool:
    """Whether a name could be a Linux interface (so it is safe in a path or a request)."""
    return (
        0 < len(name.encode()) <= _IFNAME_MAX
        and name not in (".", "..")
        and not any(c == "/" or c.isspace() or c == ":" for c in name)
    )


class NetlinkLinkState:
    """IFLA_OPERSTATE over rtnetlink (pyroute2), in the caller's network namespace."""

    def operstate(self, ifname: str) -> str | None:
        # pyroute2 takes a quarter of a second to import: only pay for it when used.
        from pyroute2 import IPRoute  # noqa: PLC0415
        from pyroute2.netlink.exceptions import NetlinkError  # noqa: PLC0415

        if not is_ifname(ifname):
            return None
        with IPRoute() as ipr:
            try:
                msgs = ipr.get_links(ifname=ifname)
            except NetlinkError as err:
                # pyroute2 before 0.9 raises ENODEV for a missing name; later ones return ().
                if err.code == errno.ENODEV:
                    return None
                raise
        msg = next(iter(msgs), None)
        if msg is None:
            return None
        state = msg.get_attr("IFLA_OPERSTATE")
        return str(state).upper() if state else "UNKNOWN"


class SysfsLinkState:
    """`class/net/<ifname>/operstate` from a sysfs root.

    Resolving a path safely under the root walks every symlink in Python; the agent asks
    for each port's state every second, so each interface's directory is resolved once and
    again only when reading it fails (the interface went away or was renamed).
    """

    def __init__(self, sysfs_root: Path) -> None:
        self._tree = SysfsTree(sysfs_root)
        self._dirs: dict[str, Path] = {}

    def operstate(self, ifname: str) -> str | None:
        if not is_ifname(ifname):
            return None
        known = self._dirs.get(ifname)
        if known is not None:
            try:
                state = (known / "operstate").read_text().strip()
            except OSError:
                del self._dirs[ifname]
            else:
                return state.upper() if state else "UNKNOWN"
        base = PurePosixPath("class/net") / ifname
        if not self._tree.is_dir(base):
            return None
        self._dirs[ifname] = self._tree.path(base)
        found = self._tree.read_optional(base / "operstate", unreadable_as_missing=True)
        return found.upper() if found else "UNKNOWN"
