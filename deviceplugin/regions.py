"""Where a container's region directory lives under the region root, setting one up with
its limits, and removing one (never anything outside the root)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

from deviceplugin import ids
from deviceplugin.grants import GpuShare
from native.region import DeviceLimit, Limits, setup

STANDALONE_DIR = "standalone"


def region_dir(root: Path, pod_uid: str | None, container: str | None, first_id: str) -> Path:
    """`root/<pod uid>/<container>`; a standalone grant (no pod known) is named after its
    first device ID."""
    if pod_uid is None or container is None:
        return root / STANDALONE_DIR / first_id.replace(ids.SEPARATOR, "-")
    return root / pod_uid / container


def limits_of(gpus: Iterable[GpuShare]) -> Limits:
    """The limits a container's region holds for its shares `gpus`, in order: each GPU's
    memory cap and core percent (a batch slice's floor), and whether it is batch."""
    return Limits(tuple(DeviceLimit(s.uuid, s.memory_mib, s.core, s.batch) for s in gpus))


def set_up(directory: Path, gpus: Sequence[GpuShare]) -> None:
    """The directory's limits file and region for `gpus`; RegionError when it cannot be."""
    setup(directory, limits_of(gpus))


def remove(root: Path, directory: str) -> None:
    """Remove a region directory, and its parent (the pod's) when that is left empty; nothing
    that is not under `root`."""
    root = root.resolve()
    path = Path(directory).resolve()
    if root not in path.parents:
        return
    shutil.rmtree(path, ignore_errors=True)
    if path.parent != root:
        with contextlib.suppress(OSError):
            path.parent.rmdir()
