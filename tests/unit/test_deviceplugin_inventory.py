"""What kubelet is told: every slot of every device, health, NUMA."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import pytest

from deviceplugin.ids import parse
from deviceplugin.inventory import advertised
from deviceplugin.resources import GPU_RESOURCE, RDMA_RESOURCE, PluginConfig, UnknownResourceError
from gpulet.topology import Topology
from tests.nodes import shipped

CONFIG = PluginConfig()
NONE: frozenset[int] = frozenset()
NO_NICS: frozenset[str] = frozenset()


@pytest.mark.parametrize("node", ["dgx-a100", "dgx-h100"])
def test_every_slot_of_every_gpu(node: str) -> None:
    topo = shipped(node)
    got = advertised(topo, CONFIG, GPU_RESOURCE, NONE, NO_NICS)
    assert len(got) == 8 * 100
    assert len({d.id for d in got}) == len(got)
    per_gpu = Counter(parse(d.id)[0] for d in got)
    assert per_gpu == {g.uuid: 100 for g in topo.gpus}
    numa = {g.uuid: g.numa for g in topo.gpus}
    assert all(d.numa == numa[parse(d.id)[0]] and d.healthy for d in got)


@pytest.mark.parametrize("node", ["dgx-a100", "dgx-h100"])
def test_every_slot_of_every_port(node: str) -> None:
    topo = shipped(node)
    got = advertised(topo, PluginConfig(rdma_slots=8), RDMA_RESOURCE, NONE, NO_NICS)
    assert len(got) == len(topo.nics) * 8 == 12 * 8
    numa = {n.key: n.numa for n in topo.nics}
    assert {parse(d.id)[0] for d in got} == set(numa)
    assert all(d.numa == numa[parse(d.id)[0]] and d.healthy for d in got)


def test_unhealthy_devices_and_inactive_ports() -> None:
    topo = shipped("dgx-a100")
    down = replace(topo.nics[1], state="DOWN")
    topo = replace(topo, nics=(topo.nics[0], down, *topo.nics[2:]))
    gpus = advertised(topo, CONFIG, GPU_RESOURCE, frozenset({3}), NO_NICS)
    sick = {parse(d.id)[0] for d in gpus if not d.healthy}
    assert sick == {topo.gpus[3].uuid}
    nics = advertised(topo, CONFIG, RDMA_RESOURCE, NONE, frozenset({"mlx5_5"}))
    assert {parse(d.id)[0] for d in nics if not d.healthy} == {"mlx5_1", "mlx5_5"}


def test_unknown_numa_and_mig() -> None:
    topo: Topology = shipped("pcie-4gpu")
    gpus = (replace(topo.gpus[0], numa=-1), replace(topo.gpus[1], mig=True), *topo.gpus[2:])
    topo = replace(topo, gpus=gpus)
    got = advertised(topo, PluginConfig(gpu_slots=2), GPU_RESOURCE, NONE, NO_NICS)
    owners = [parse(d.id)[0] for d in got]
    assert topo.gpus[1].uuid not in owners  # MIG GPUs are not sliced
    assert len(got) == 3 * 2
    assert [d.numa for d in got[:2]] == [None, None]


def test_unknown_resource() -> None:
    with pytest.raises(UnknownResourceError, match=r"gpulet\.io/gpu, gpulet\.io/rdma"):
        advertised(shipped("h100-vm"), CONFIG, "nvidia.com/gpu", NONE, NO_NICS)
