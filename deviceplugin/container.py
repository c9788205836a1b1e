"""What a container gets for a grant (the Allocate answer): device nodes, environment, mounts.

Pure: the topology, the settings and the grant in, a `ContainerView` out.

- GPUs: `/dev/nvidia<minor>` per GPU, plus `/dev/nvidiactl`, `/dev/nvidia-uvm` and
  `/dev/nvidia-uvm-tools`; `NVIDIA_VISIBLE_DEVICES` (UUIDs in the grant's order) and
  `CUDA_DEVICE_ORDER=PCI_BUS_ID`.
- RDMA ports: `/dev/infiniband/uverbs<N>` per RDMA device and `/dev/infiniband/rdma_cm`;
  `NCCL_IB_HCA==<dev>[,<dev>...]` (`=`: exact names, so `mlx5_1` does not also pick
  `mlx5_10`; `dev:port` where the device has more than one port on the node).
  N is the number discovery read from `class/infiniband_verbs/uverbsN/ibdev` (the topology's
  `uverbs`): the kernel numbers verbs devices in the order it registered them, which udev
  renames and probe order make differ from the names. A topology with no numbers at all
  (an older document, or a hand-written one) falls back to the device's position in natural
  order (mlx5_0, mlx5_1, ..., mlx5_10). A device with no number on a node whose other devices
  have one has no verbs device (`ib_uverbs` did not bind it): granting it is an error.
- The region directory, read-write at `container_region_dir` (`GPULET_REGION_DIR`), and its
  `limits` file bind-mounted read-only on top of it: a read-only mount cannot be written,
  chmod-ed, replaced by rename or unlinked, even by root in the container (EROFS/EBUSY), and
  the runtimes mount a parent before what lies inside it. Mode 0444 alone would not stop
  root. The region file itself stays writable: every process of the container updates it.
- The limiter (the library at its host path, and `/etc/ld.so.preload` naming it, both
  read-only) for a grant with any slice. Whole GPUs do not get it: their limits are the
  whole GPU and 100% core, so it would enforce nothing while every process of the container
  (shells, static binaries) paid for its interposition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from deviceplugin.grants import GpuShare
from deviceplugin.resources import PluginConfig
from gpulet.topology import Topology
from native.region import LIMITS_FILE

RW = "rw"
PRELOAD = "/etc/ld.so.preload"
_NVIDIA_CONTROL = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")


@dataclass(frozen=True)
class DeviceNode:
    container_path: str
    host_path: str
    permissions: str


@dataclass(frozen=True)
class MountSpec:
    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class ContainerView:
    devices: tuple[DeviceNode, ...]
    envs: Mapping[str, str]
    mounts: tuple[MountSpec, ...]


def uverbs_numbers(topo: Topology) -> dict[str, int]:
    """RDMA device name -> the N of its /dev/infiniband/uverbsN (see the module's note);
    a device the node has no verbs device for is left out."""
    recorded = {n.name: n.uverbs for n in topo.nics if n.uverbs is not None}
    if recorded:
        return recorded
    names = list(dict.fromkeys(n.name for n in topo.nics))  # natural order, ports together
    return {name: i for i, name in enumerate(names)}


def _dev(config: PluginConfig, name: str) -> DeviceNode:
    return DeviceNode(f"/dev/{name}", str(PurePosixPath(config.dev_root) / name), RW)


def view(
    topo: Topology,
    config: PluginConfig,
    gpus: Sequence[GpuShare],
    nics: Sequence[str],
    region_dir: Path | None,
) -> ContainerView:
    """The container's devices, environment and mounts; ValueError for a device the node
    does not have."""
    by_uuid = {g.uuid: g for g in topo.gpus}
    by_key = {n.key: n for n in topo.nics}
    devices: list[DeviceNode] = []
    envs: dict[str, str] = {}
    mounts: list[MountSpec] = []
    if gpus:
        for share in gpus:
            gpu = by_uuid.get(share.uuid)
            if gpu is None:
                raise ValueError(f"GPU {share.uuid} is not on node {topo.node}")
            devices.append(_dev(config, f"nvidia{gpu.minor}"))
        devices += [_dev(config, name) for name in _NVIDIA_CONTROL]
        envs["NVIDIA_VISIBLE_DEVICES"] = ",".join(s.uuid for s in gpus)
        envs["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    if nics:
        uverbs = uverbs_numbers(topo)
        ports: dict[str, int] = {}
        for nic in topo.nics:
            ports[nic.name] = ports.get(nic.name, 0) + 1
        hcas: list[str] = []
        for key in nics:
            port = by_key.get(key)
            if port is None:
                raise ValueError(f"RDMA port {key} is not on node {topo.node}")
            if port.name not in uverbs:
                raise ValueError(
                    f"RDMA device {port.name} on node {topo.node} has no verbs device "
                    "(no class/infiniband_verbs/uverbs*/ibdev names it; is ib_uverbs loaded?)"
                )
            node = _dev(config, f"infiniband/uverbs{uverbs[port.name]}")
            if node not in devices:
                devices.append(node)
            hcas.append(port.name if ports[port.name] == 1 else f"{port.name}:{port.port}")
        devices.append(_dev(config, "infiniband/rdma_cm"))
        envs["NCCL_IB_HCA"] = "=" + ",".join(dict.fromkeys(hcas))
    if region_dir is not None:
        inside = PurePosixPath(config.container_region_dir)
        envs["GPULET_REGION_DIR"] = str(inside)
        mounts.append(MountSpec(str(inside), str(region_dir), read_only=False))
        mounts.append(
            MountSpec(str(inside / LIMITS_FILE), str(region_dir / LIMITS_FILE), read_only=True)
        )
    sliced = any(not s.exclusive for s in gpus)
    if sliced and config.limiter_host_path and config.preload_host_path:
        library = str(config.limiter_host_path)
        mounts.append(MountSpec(library, library, read_only=True))
        mounts.append(MountSpec(PRELOAD, str(config.preload_host_path), read_only=True))
    return ContainerView(tuple(devices), envs, tuple(mounts))
