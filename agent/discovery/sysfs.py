"""Reading a directory that plays `/sys`, without ever leaving it.

Every path is relative to the root. Symlinks are resolved component by component inside the
root, as the kernel's relative sysfs links expect; a link that is absolute or climbs above the
root is refused rather than followed, so a copied or simulated tree can never make discovery
read the host's files.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from agent.discovery.errors import DiscoveryError

#: As the kernel's MAXSYMLINKS: more hops than this is a loop.
_MAX_SYMLINK_HOPS = 40

#: Errors that mean "no such entry" rather than "entry there but unreadable".
_MISSING = (FileNotFoundError, NotADirectoryError)


class SysfsTree:
    """A sysfs root. `rel` arguments are POSIX paths relative to it (`bus/pci/devices`)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def is_host_sysfs(self) -> bool:
        """Whether this is the running kernel's own `/sys`."""
        return self.root.resolve() == Path("/sys")

    def display(self, rel: str | PurePosixPath) -> str:
        """The path as a person would find it, for messages."""
        return str(self.root / rel)

    def resolve(self, rel: str | PurePosixPath) -> PurePosixPath:
        """The canonical path of `rel` below the root, with every symlink resolved.

        Components that do not exist are kept as they are (so the result may not exist).
        Raises DiscoveryError for an absolute link, a link that leaves the root, or a loop.
        """
        pending = list(PurePosixPath(rel).parts)
        if pending and pending[0] == "/":
            raise DiscoveryError(f"sysfs path {rel!r} must be relative to the root {self.root}")
        done: list[str] = []
        hops = 0
        while pending:
            name = pending.pop(0)
            if name in ("", "."):
                continue
            if name == "..":
                if not done:
                    raise DiscoveryError(
                        f"{self.display(rel)}: a symlink on this path leads out of the "
                        f"sysfs root {self.root}"
                    )
                done.pop()
                continue
            here = self.root.joinpath(*done, name)
            if not here.is_symlink():
                done.append(name)
                continue
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise DiscoveryError(f"{self.display(rel)}: too many levels of symlinks")
            target = os.readlink(here)
            if os.path.isabs(target):
                raise DiscoveryError(
                    f"{here}: absolute symlink to {target} (sysfs links are relative; "
                    f"refusing to leave the root {self.root})"
                )
            pending[:0] = PurePosixPath(target).parts
        return PurePosixPath(*done)

    def path(self, rel: str | PurePosixPath) -> Path:
        """The real filesystem path of `rel`, resolved safely."""
        return self.root / self.resolve(rel)

    def exists(self, rel: str | PurePosixPath) -> bool:
        return self.path(rel).exists()

    def is_dir(self, rel: str | PurePosixPath) -> bool:
        return self.path(rel).is_dir()

    def listdir(self, rel: str | PurePosixPath) -> list[str]:
        """Sorted entry names of a directory; empty when it does not exist."""
        try:
            return sorted(os.listdir(self.path(rel)))
        except _MISSING:
            return []
        except OSError as err:
            raise DiscoveryError(f"{self.display(rel)}: cannot list: {err.strerror}") from None

    def read(self, rel: str | PurePosixPath) -> str:
        """A file's content, stripped. Raises DiscoveryError when missing or unreadable."""
        text = self.read_optional(rel)
        if text is None:
            raise DiscoveryError(f"{self.display(rel)}: missing")
        return text

    def read_optional(
        self, rel: str | PurePosixPath, *, unreadable_as_missing: bool = False
    ) -> str | None:
        """A file's content, stripped; None when it does not exist.

        A file that exists but cannot be read raises DiscoveryError, or gives None with
        `unreadable_as_missing` (for attributes the kernel fails to read on some devices).
        """
        try:
            return self.path(rel).read_text(encoding="utf-8", errors="replace").strip()
        except _MISSING:
            return None
        except OSError as err:
            if unreadable_as_missing:
                return None
            raise DiscoveryError(f"{self.display(rel)}: cannot read: {err.strerror}") from None
