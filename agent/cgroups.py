"""Which pod container a process belongs to, and where a container's cgroup directory is.

Kubelet names each pod's cgroup after the pod UID and the runtime names each container's
after its container ID, under either cgroup driver (systemd: `kubepods-burstable-pod<uid
with _>.slice/cri-containerd-<id>.scope`; cgroupfs: `kubepods/burstable/pod<uid>/<id>`),
cgroup v1 or v2, and containerd, CRI-O or docker. See docs/pinning.md for the layouts.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: A pod UID as kubelet writes it: a UUID, or 32 hex digits (a static pod's config hash).
_UID = r"[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}|[0-9a-f]{32}"
#: The same, as a systemd unit name spells it: dashes become underscores.
_SYSTEMD_UID = r"[0-9a-f]{8}(?:_[0-9a-f]{4}){3}_[0-9a-f]{12}|[0-9a-f]{32}"
_ID = r"[0-9a-f]{64}"
_RUNTIMES = ("cri-containerd", "crio", "docker")
_QOS = ("burstable", "besteffort")

_UID_RE = re.compile(_UID)
_ID_RE = re.compile(_ID)
#: `kubepods-pod<uid>.slice`, `kubepods-besteffort-pod<uid>.slice`, with kubelet's cgroup
#: root (if any) in front: `kubelet-kubepods-burstable-pod<uid>.slice`.
_SYSTEMD_POD = re.compile(
    rf"(?:.+-)?kubepods(?:-(?:burstable|besteffort))?-pod({_SYSTEMD_UID})\.slice"
)
_SYSTEMD_CONTAINER = re.compile(rf"(?:cri-containerd|crio|docker)-({_ID})\.scope")
_CGROUPFS_POD = re.compile(rf"pod({_UID})")
_CGROUPFS_CONTAINER = re.compile(rf"(?:(?:cri-containerd|crio|docker)-)?({_ID})")
#: The directory holding every pod, for either driver, possibly under a cgroup root.
_KUBEPODS = re.compile(r"kubepods|(?:.+-)?kubepods\.slice")

#: Which line of a v1 /proc/<pid>/cgroup to believe first; "" is the v2 (unified) line.
_CONTROLLER_ORDER = ("cpuset", "memory", "name=systemd", "")


class CgroupError(RuntimeError):
    """A cgroup file or directory cannot be read or found; the message names it."""


@dataclass(frozen=True)
class ContainerRef:
    """A container as its cgroup names it.

    `pod_uid` is the UID with dashes (`0f1e2d3c-4b5a-...`) or a static pod's 32-hex hash;
    `container_id` is the runtime's bare 64-hex ID, as in the pod status after `://`.
    """

    pod_uid: str
    container_id: str

    def __post_init__(self) -> None:
        if not _UID_RE.fullmatch(self.pod_uid):
            raise ValueError(f"pod UID {self.pod_uid!r} is not a lowercase UUID or 32-hex hash")
        if not _ID_RE.fullmatch(self.container_id):
            raise ValueError(f"container ID {self.container_id!r} is not 64 lowercase hex digits")


@dataclass(frozen=True)
class CgroupDir:
    """A container's cgroup directory: the unified one (v2) or the cpuset controller's (v1)."""

    path: Path
    version: int


def container_id_of(status_id: str) -> str:
    """The bare ID of a pod status' `containerID` (`containerd://<id>`, `cri-o://<id>`, ...).

    Raises ValueError when there is none: the container has not been created yet.
    """
    _, _, bare = status_id.rpartition("://")
    if not bare:
        raise ValueError(f"container status ID {status_id!r} has no ID (not created yet?)")
    return bare


def running_containers(pod: Mapping[str, Any]) -> dict[str, str]:
    """Name -> bare container ID of each container of `pod` (a v1.Pod as JSON) that has been
    created, init containers included, from the pod's status."""
    status = pod.get("status") or {}
    out: dict[str, str] = {}
    for s in [
        *(status.get("initContainerStatuses") or []),
        *(status.get("containerStatuses") or []),
    ]:
        raw = s.get("containerID")
        if isinstance(raw, str) and raw:
            try:
                out[str(s.get("name"))] = container_id_of(raw)
            except ValueError:
                continue  # not created yet
    return out


def container_of(cgroup_text: str) -> ContainerRef | None:
    """The pod container a /proc/<pid>/cgroup text places its process in; None outside one.

    v1 lines are tried in the order cpuset, memory, name=systemd, then the v2 line (`0::`).
    A process in a cgroup below the container's (nested cgroups) belongs to the container. A
    pod's sandbox ("pause") process maps to a ref of its own that no API container has.
    """
    paths: dict[str, str] = {}
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                paths.setdefault(controller, parts[2])
    ordered = [paths[c] for c in _CONTROLLER_ORDER if c in paths]
    ordered += [p for c, p in paths.items() if c not in _CONTROLLER_ORDER]
    for path in ordered:
        ref = _container_in_path(path)
        if ref is not None:
            return ref
    return None


def _container_in_path(path: str) -> ContainerRef | None:
    """Find a pod component and the container component right below it, wherever they are."""
    parts = path.split("/")
    for i, part in enumerate(parts[:-1]):
        if m := _SYSTEMD_POD.fullmatch(part):
            c = _SYSTEMD_CONTAINER.fullmatch(parts[i + 1])
            if c:
                return ContainerRef(m[1].replace("_", "-"), c[1])
        elif (m := _CGROUPFS_POD.fullmatch(part)) and _under_cgroupfs_kubepods(parts[:i]):
            c = _CGROUPFS_CONTAINER.fullmatch(parts[i + 1])
            if c:
                return ContainerRef(m[1], c[1])
    return None


def _under_cgroupfs_kubepods(above: Sequence[str]) -> bool:
    """Whether a `pod<uid>` directory sits where kubelet puts pods: in kubepods or a QoS dir."""
    if above[-1:] == ["kubepods"]:
        return True
    return len(above) >= 2 and above[-1] in _QOS and above[-2] == "kubepods"


class ProcessTable:
    """Maps PIDs (as the host's /proc numbers them) to pod containers."""

    def __init__(self, proc_root: Path) -> None:
        self.proc_root = proc_root

    def container_of(self, pid: int) -> ContainerRef | None:
        """The container of a process; None outside a pod container or when it has exited."""
        path = self.proc_root / str(pid) / "cgroup"
        try:
            text = path.read_bytes().decode("utf-8", "replace")
        except (FileNotFoundError, ProcessLookupError):  # exited (ESRCH: while being read)
            return None
        except OSError as err:
            raise CgroupError(f"{path}: {err.strerror}") from None
        return container_of(text)

    def namespace_pid(self, pid: int) -> int | None:
        """The process's pid in its own (innermost) PID namespace: the last field of the
        `NSpid:` line of /proc/<pid>/status (Linux 4.1+). None when it has exited or the line
        cannot be read."""
        path = self.proc_root / str(pid) / "status"
        try:
            text = path.read_bytes().decode("ascii", "replace")
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("NSpid:"):
                fields = line.split()[1:]
                return int(fields[-1]) if fields and fields[-1].isdigit() else None
        return None


def cgroup_version(cgroup_root: Path) -> int:
    """2 for the unified hierarchy (`cgroup.controllers` at the root), else 1."""
    return 2 if (cgroup_root / "cgroup.controllers").is_file() else 1


def find_container_cgroup(cgroup_root: Path, ref: ContainerRef) -> CgroupDir:
    """The container's cgroup directory under the node's cgroup mount (`/sys/fs/cgroup`).

    The kubepods directory is looked for at the top of the hierarchy and one level down
    (kubelet's `--cgroup-root`, kind's `kubelet.slice`); below it only the paths kubelet and
    the runtimes build are tried, for every QoS class, driver and runtime.
    """
    version = cgroup_version(cgroup_root)
    base = cgroup_root if version == 2 else cgroup_root / "cpuset"
    if not base.is_dir():
        raise CgroupError(
            f"{cgroup_root} has neither cgroup.controllers (cgroup v2) nor a cpuset directory "
            "(cgroup v1): is it the host's cgroup mount?"
        )
    roots = _kubepods_dirs(base)
    if not roots:
        raise CgroupError(
            f"no kubepods cgroup in {base} or one level below: is {cgroup_root} the host's "
            "cgroup mount, and does kubelet run with --cgroups-per-qos (the default)?"
        )
    looked: list[Path] = []
    for root in roots:
        for pod_dir, names in _candidates(root, ref):
            if not pod_dir.is_dir():
                looked.append(pod_dir)
                continue
            for name in names:
                if (pod_dir / name).is_dir():
                    return CgroupDir(pod_dir / name, version)
            raise CgroupError(
                f"{pod_dir}: pod {ref.pod_uid} has no cgroup for container {ref.container_id} "
                f"(looked for {', '.join(names)}); has the container exited?"
            )
    raise CgroupError(
        f"no cgroup for pod {ref.pod_uid} (v{version}): looked in "
        + ", ".join(str(p) for p in looked)
    )


def _kubepods_dirs(base: Path) -> list[Path]:
    found = [*base.glob("*kubepods*"), *base.glob("*/*kubepods*")]
    return sorted(p for p in found if _KUBEPODS.fullmatch(p.name) and p.is_dir())


def _candidates(kubepods: Path, ref: ContainerRef) -> Iterator[tuple[Path, tuple[str, ...]]]:
    """The pod directories a kubepods directory may hold, with the container names to try."""
    cid = ref.container_id
    if kubepods.name == "kubepods":  # cgroupfs driver
        names = (cid, *(f"{rt}-{cid}" for rt in _RUNTIMES))
        pod = f"pod{ref.pod_uid}"
        yield kubepods / pod, names
        for qos in _QOS:
            yield kubepods / qos / pod, names
        return
    stem = kubepods.name.removesuffix(".slice")  # systemd driver: "kubepods", "kubelet-kubepods"
    names = tuple(f"{rt}-{cid}.scope" for rt in _RUNTIMES)
    uid = ref.pod_uid.replace("-", "_")
    yield kubepods / f"{stem}-pod{uid}.slice", names
    for qos in _QOS:
        yield kubepods / f"{stem}-{qos}.slice" / f"{stem}-{qos}-pod{uid}.slice", names
