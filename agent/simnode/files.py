"""A directory described in memory: relative path -> file text or symlink target."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath


@dataclass(frozen=True)
class Symlink:
    """A relative symlink; `target` is what `readlink` returns."""

    target: str


Entry = str | Symlink
Files = dict[PurePosixPath, Entry]


def kernel_link(link: PurePosixPath, target: PurePosixPath) -> Symlink:
    """The relative link sysfs itself would make at `link` to `target`.

    The kernel climbs from the link's directory to the nearest directory that holds the
    target (never the target itself) and descends from there: a device's
    `infiniband/mlx5_0/device` reads `../../../0000:18:00.0`, not `../..`.
    """
    here = link.parent.parts
    there = target.parent.parts
    common = 0
    while common < min(len(here), len(there)) and here[common] == there[common]:
        common += 1
    ups = [".."] * (len(here) - common)
    return Symlink("/".join([*ups, *target.parts[common:]]))
