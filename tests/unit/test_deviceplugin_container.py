"""What a container gets for a grant: /dev nodes, environment, mounts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from agent.simnode import generate, load_directory, spec_from_data
from deviceplugin.container import PRELOAD, DeviceNode, MountSpec, uverbs_numbers, view
from deviceplugin.grants import GpuShare
from deviceplugin.resources import PluginConfig
from gpulet.topology import Gpu, Topology
from tests.nodes import shipped

LIB = Path("/opt/gpulet/lib/libgpulet-limiter.so")
CONFIG = PluginConfig(
    dev_root="/host/dev", limiter_host_path=LIB, preload_host_path=Path("/opt/gpulet/preload")
)


def share(gpu: Gpu, exclusive: bool = False) -> GpuShare:
    return GpuShare(gpu.uuid, 100 if exclusive else 30, 8192, exclusive, index=gpu.index)


def test_two_gpus_and_two_nics() -> None:
    topo = shipped("dgx-a100")
    g2, g5 = topo.gpus[2], topo.gpus[5]
    region = Path("/var/lib/gpulet/containers/uid-1/main")
    got = view(topo, CONFIG, [share(g5), share(g2)], ["mlx5_10", "mlx5_2"], region)

    paths = [d.container_path for d in got.devices]
    assert paths == [
        f"/dev/nvidia{g5.minor}",
        f"/dev/nvidia{g2.minor}",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/infiniband/uverbs10",
        "/dev/infiniband/uverbs2",
        "/dev/infiniband/rdma_cm",
    ]
    assert got.devices[0] == DeviceNode(
        f"/dev/nvidia{g5.minor}", f"/host/dev/nvidia{g5.minor}", "rw"
    )
    assert all(d.permissions == "rw" and d.host_path.startswith("/host/dev/") for d in got.devices)
    assert got.envs == {
        "NVIDIA_VISIBLE_DEVICES": f"{g5.uuid},{g2.uuid}",
        "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
        "NCCL_IB_HCA": "=mlx5_10,mlx5_2",
        "GPULET_REGION_DIR": "/run/gpulet",
    }
    assert got.mounts == (
        MountSpec("/run/gpulet", str(region), read_only=False),
        MountSpec("/run/gpulet/limits", str(region / "limits"), read_only=True),
        MountSpec(str(LIB), str(LIB), read_only=True),
        MountSpec(PRELOAD, "/opt/gpulet/preload", read_only=True),
    )


def test_whole_gpus_get_no_limiter() -> None:
    topo = shipped("dgx-a100")
    region = Path("/r/x")
    got = view(topo, CONFIG, [share(topo.gpus[0], exclusive=True)], [], region)
    assert [m.container_path for m in got.mounts] == ["/run/gpulet", "/run/gpulet/limits"]
    assert "NCCL_IB_HCA" not in got.envs
    assert not any("infiniband" in d.container_path for d in got.devices)


def test_rdma_only_and_no_limiter_configured() -> None:
    topo = shipped("dgx-h100")
    got = view(topo, PluginConfig(), [], ["mlx5_0"], None)
    assert [d.container_path for d in got.devices] == [
        "/dev/infiniband/uverbs0",
        "/dev/infiniband/rdma_cm",
    ]
    assert got.envs == {"NCCL_IB_HCA": "=mlx5_0"}
    assert got.mounts == ()
    sliced = view(topo, PluginConfig(), [share(topo.gpus[0])], [], Path("/r/y"))
    assert len(sliced.mounts) == 2  # no library configured: nothing to mount


def test_ports_of_one_device_share_its_uverbs() -> None:
    base: Topology = shipped("pcie-4gpu")
    nic = base.nics[0]
    port2 = replace(nic, port=2)
    topo = Topology.build(base.node, base.gpus, [*base.nics, port2], base.numa_nodes)
    assert uverbs_numbers(topo) == {"mlx5_0": 0, "mlx5_1": 1}
    got = view(topo, PluginConfig(), [], ["mlx5_0", "mlx5_0:2"], None)
    assert [d.container_path for d in got.devices] == [
        "/dev/infiniband/uverbs0",
        "/dev/infiniband/rdma_cm",
    ]
    assert got.envs["NCCL_IB_HCA"] == "=mlx5_0:1,mlx5_0:2"


def test_unknown_devices() -> None:
    topo = shipped("h100-vm")
    with pytest.raises(ValueError, match="GPU GPU-nope is not on node"):
        view(topo, CONFIG, [GpuShare("GPU-nope", 100, 1, True, index=0)], [], None)
    with pytest.raises(ValueError, match="RDMA port mlx5_0 is not on node"):
        view(topo, CONFIG, [], ["mlx5_0"], None)


def _without_verbs_numbers(topo: Topology) -> Topology:
    nics = [replace(n, uverbs=None) for n in topo.nics]
    return Topology.build(topo.node, topo.gpus, nics, topo.numa_nodes)


def test_a_topology_without_verbs_numbers_falls_back_to_natural_order() -> None:
    topo = _without_verbs_numbers(shipped("dgx-a100"))
    assert uverbs_numbers(topo) == {f"mlx5_{i}": i for i in range(12)}


def test_the_verbs_device_is_the_one_discovery_read(tmp_path: Path) -> None:
    """The kernel numbered the verbs devices in PCI order; the names run the other way. The
    container must get the device node of the port it was granted."""
    spec = {
        "name": "renamed",
        "numa": [{"id": 0, "cpus": "0-3", "memory": "4 GiB"}],
        "pcie": [
            {
                "host_bridge": 0,
                "numa": 0,
                "devices": [{"root_port": {"nic": f"mlx5_{i}"}} for i in (2, 1, 0)],
            }
        ],
    }
    sim = load_directory(generate(spec_from_data(spec), tmp_path / "node"))
    topo = sim.topology()
    assert uverbs_numbers(topo) == {"mlx5_2": 0, "mlx5_1": 1, "mlx5_0": 2}
    got = view(topo, PluginConfig(), [], ["mlx5_0"], None)
    assert [d.container_path for d in got.devices] == [
        "/dev/infiniband/uverbs2",
        "/dev/infiniband/rdma_cm",
    ]
    assert got.envs["NCCL_IB_HCA"] == "=mlx5_0"


def test_a_device_the_kernel_gave_no_verbs_device_is_refused() -> None:
    base = shipped("dgx-h100")
    nics = [replace(n, uverbs=None) if n.name == "mlx5_3" else n for n in base.nics]
    topo = Topology.build(base.node, base.gpus, nics, base.numa_nodes)
    assert view(topo, PluginConfig(), [], ["mlx5_2"], None).envs["NCCL_IB_HCA"] == "=mlx5_2"
    with pytest.raises(ValueError, match=r"RDMA device mlx5_3 on node .* has no verbs device"):
        view(topo, PluginConfig(), [], ["mlx5_3"], None)
