"""What the engine must get right on real machines' topologies (issue 2's acceptance)."""

from __future__ import annotations

import pytest

from gpulet.placement import (
    Capacity,
    GpuPolicy,
    GpuUsage,
    NodeState,
    NoFit,
    Placement,
    Placer,
    Request,
    RequestError,
    TopologyPolicy,
    place,
)
from gpulet.placement.cost import Shape, score
from gpulet.topology import Gpu, Nic, NumaNode, PcieLocation, Topology
from tests.nodes import shipped, switch_gpus

A100_PAIRS = [{0, 1}, {2, 3}, {4, 5}, {6, 7}]
WHOLE = GpuUsage(slots=100, core=100, memory_mib=81920, whole=1)


def fit(result: Placement | NoFit) -> Placement:
    assert isinstance(result, Placement), result
    return result


def gpu_set(p: Placement) -> set[int]:
    return {g.index for g in p.gpus}


def test_a100_two_gpus_restricted_get_a_switch_pair_and_its_two_pxb_nics() -> None:
    topo = shipped("dgx-a100")
    p = fit(Placer(topo).place(Request(2, rdma=2, topology=TopologyPolicy.RESTRICTED)))
    assert gpu_set(p) in A100_PAIRS
    for g in p.gpus:
        assert [topo.link(f"GPU{g.index}", n) for n in p.nics] == ["PXB", "PXB"]
    assert len({topo.gpus[g.index].switch for g in p.gpus}) == 1
    assert p.cost_terms()["numa"] == 1


@pytest.mark.parametrize("policy", [TopologyPolicy.BEST_EFFORT, TopologyPolicy.RESTRICTED])
def test_a100_four_gpus_four_nics_take_two_whole_switch_complexes(policy: TopologyPolicy) -> None:
    topo = shipped("dgx-a100")
    p = fit(Placer(topo).place(Request(4, rdma=4, topology=policy)))
    gpus = gpu_set(p)
    pairs = [pair for pair in A100_PAIRS if pair <= gpus]
    assert len(pairs) == 2, gpus
    switches = {topo.gpus[i].switch for i in gpus}
    assert {n.switch for n in topo.nics if n.key in p.nics} == switches
    assert p.cost_terms()["align"] == 8  # every GPU and NIC PXB to a partner


def test_a100_with_gpu0_busy_two_restricted_gpus_are_not_gpu1_with_a_far_partner() -> None:
    topo = shipped("dgx-a100")
    state = NodeState({0: WHOLE})
    p = fit(Placer(topo).place(Request(2, rdma=2, topology=TopologyPolicy.RESTRICTED), state))
    assert gpu_set(p) in A100_PAIRS[1:]
    assert len(p.numa) == 1


def test_a100_with_gpu0_busy_binpack_fills_its_switch_first() -> None:
    topo = shipped("dgx-a100")
    p = fit(Placer(topo).place(Request(1), NodeState({0: WHOLE})))
    assert gpu_set(p) == {1}


def test_h100_four_gpus_single_numa_take_one_socket() -> None:
    topo = shipped("dgx-h100")
    p = fit(Placer(topo).place(Request(4, topology=TopologyPolicy.SINGLE_NUMA)))
    assert len({topo.gpus[g.index].numa for g in p.gpus}) == 1
    assert p.numa in ((0,), (1,))


def test_h100_four_gpus_single_numa_with_socket0_partly_busy_take_socket1() -> None:
    topo = shipped("dgx-h100")
    state = NodeState({1: WHOLE})
    p = fit(Placer(topo).place(Request(4, topology=TopologyPolicy.SINGLE_NUMA), state))
    assert gpu_set(p) == {4, 5, 6, 7}


def test_h100_eight_gpus_eight_nics_pair_every_gpu_with_its_own_pxb_nic() -> None:
    topo = shipped("dgx-h100")
    p = fit(Placer(topo).place(Request(8, rdma=8)))
    assert gpu_set(p) == set(range(8))
    for g in p.gpus:
        assert sum(topo.link(f"GPU{g.index}", n) == "PXB" for n in p.nics) == 1
    assert sorted(p.nics, key=lambda k: int(k.split("_")[1])) == [
        "mlx5_0", "mlx5_3", "mlx5_4", "mlx5_5", "mlx5_6", "mlx5_9", "mlx5_10", "mlx5_11",
    ]  # fmt: skip


def test_h100_one_gpu_one_nic_get_a_pxb_pair() -> None:
    topo = shipped("dgx-h100")
    p = fit(Placer(topo).place(Request(1, rdma=1)))
    assert topo.link(f"GPU{p.gpus[0].index}", p.nics[0]) == "PXB"


def test_slices_binpack_onto_the_busiest_gpu_and_spread_onto_the_idlest() -> None:
    topo = shipped("pcie-4gpu")
    state = NodeState({2: GpuUsage(slots=1, core=50, memory_mib=10000)})
    packed = fit(Placer(topo).place(Request(1, core=20, memory_mib=4096), state))
    assert gpu_set(packed) == {2}
    spread = Request(1, core=20, memory_mib=4096, gpu_policy=GpuPolicy.SPREAD)
    assert gpu_set(fit(Placer(topo).place(spread, state))) != {2}


def test_unnamed_memory_takes_the_rest_and_unnamed_core_the_whole_compute() -> None:
    topo = shipped("pcie-4gpu")
    gpu0 = topo.gpus[0]
    state = NodeState({0: GpuUsage(slots=1, core=30, memory_mib=1000)})
    placer = Placer(topo)
    p = fit(placer.place(Request(1, core=20), state))
    assert (p.gpus[0].index, p.gpus[0].memory_mib) == (0, gpu0.memory_mib - 1000)
    q = fit(placer.place(Request(1, memory_mib=1024), state))
    assert q.gpus[0].index != 0 and q.gpus[0].core == 100  # GPU0 has only 70% core left


def test_no_fit_reasons_name_the_shortage() -> None:
    topo = shipped("dgx-a100")
    placer = Placer(topo)
    busy = NodeState(dict.fromkeys(range(7), WHOLE))
    result = placer.place(Request(2), busy)
    assert isinstance(result, NoFit)
    assert "needs 2 whole GPUs; 1 of 8 qualify" in result.reason
    assert "GPU0 held whole" in result.reason
    # One free GPU per switch: one NIC can align only one of them.
    restricted = placer.place(
        Request(2, rdma=1, topology=TopologyPolicy.RESTRICTED),
        NodeState(dict.fromkeys((0, 2, 4, 6), WHOLE)),
    )
    assert isinstance(restricted, NoFit)
    assert "restricted" in restricted.reason and "at most 1 can be" in restricted.reason
    h100 = Placer(shipped("dgx-h100"))
    single = h100.place(Request(5, topology=TopologyPolicy.SINGLE_NUMA), NodeState())
    assert isinstance(single, NoFit)
    assert "on one NUMA node" in single.reason and "4 GPUs" in single.reason


def test_rdma_only_request_gets_a_nic_and_vm_without_nics_says_so() -> None:
    p = fit(Placer(shipped("dgx-h100")).place(Request(0, rdma=1)))
    assert len(p.nics) == 1 and not p.gpus
    vm = Placer(shipped("h100-vm")).place(Request(1, rdma=1))
    assert isinstance(vm, NoFit) and "has none" in vm.reason


@pytest.mark.parametrize(
    ("req", "message"),
    [
        (Request(0), "no GPU and no RDMA"),
        (Request(1, core=0), "gpu-core must be 1-100"),
        (Request(1, core=150), "gpu-core must be 1-100"),
        (Request(1, memory_mib=0), "at least 1 MiB"),
        (Request(1, topology=TopologyPolicy.RESTRICTED), "needs at least one gpulet.io/rdma"),
        (Request(0, core=10, rdma=1), "without any gpulet.io/gpu"),
    ],
)
def test_invalid_requests_are_refused_with_the_reason(req: Request, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        Placer(shipped("pcie-4gpu")).place(req)


def test_an_empty_node_fills_from_gpu0() -> None:
    p = fit(Placer(shipped("dgx-a100")).place(Request(4, rdma=4)))
    assert gpu_set(p) == {0, 1, 2, 3}
    assert sorted(p.nics) == ["mlx5_0", "mlx5_1", "mlx5_2", "mlx5_3"]


def test_nics_come_back_in_natural_order() -> None:
    p = fit(Placer(shipped("dgx-h100")).place(Request(8, rdma=8)))
    assert p.nics == tuple(f"mlx5_{i}" for i in (0, 3, 4, 5, 6, 9, 10, 11))


def test_restricted_refuses_a_gpu_and_nic_that_share_a_root_port_but_no_switch() -> None:
    """A card with a GPU and a NIC as its two functions, straight on a root port: the same
    NUMA node and bus, but no PCIe switch between them, so `restricted` cannot be met;
    best-effort takes the pair."""
    host, port = "pci0000:00", "0000:00:01.0"
    gpu = Gpu(0, "GPU-0000", "Test GPU", 1000, 0, PcieLocation("0000:01:00.0", host, (port,)), 0)
    nic = Nic(
        "mlx5_0", 1, PcieLocation("0000:01:00.1", host, (port,)), 0, "ib0", "ACTIVE", "UP",
        200.0, "InfiniBand",
    )  # fmt: skip
    topo = Topology.build("card", [gpu], [nic], [NumaNode(0, (0, 1), 1024)])
    restricted = Placer(topo).place(Request(1, rdma=1, topology=TopologyPolicy.RESTRICTED))
    assert isinstance(restricted, NoFit), restricted
    assert "restricted" in restricted.reason
    fit(Placer(topo).place(Request(1, rdma=1, topology=TopologyPolicy.BEST_EFFORT)))


def test_behind_one_switch_the_nvlinked_pair_is_taken() -> None:
    """A switch with three GPUs, two of them NVLinked: the leaf is not uniform, so the engine
    weighs its pairs; two GPUs are the linked two, whichever index order says."""
    gpus = switch_gpus([((2, 4),), (), ((0, 4),)])
    topo = Topology.build("nvl", gpus, [], [NumaNode(0, (0, 1), 1024)])
    assert gpu_set(fit(Placer(topo).place(Request(2)))) == {0, 2}


def test_a_one_off_placement_is_a_placers() -> None:
    """`place`, for one request, answers as a Placer built with the same capacity does: GPU1
    has its 4 slots taken, which only the capacity given says."""
    topo = shipped("dgx-a100")
    capacity = Capacity(gpu_slots=4, nic_slots=2)
    state = NodeState({0: WHOLE, 2: WHOLE, 1: GpuUsage(slots=4, core=40, memory_mib=1000)})
    assert gpu_set(fit(place(topo, Request(1, core=10), state, capacity))) != {1}
    assert gpu_set(fit(place(topo, Request(1, core=10), state))) == {1}  # 100 slots: binpack
    for req in (Request(2, rdma=2, topology=TopologyPolicy.RESTRICTED), Request(1, core=30)):
        assert place(topo, req, state, capacity) == Placer(topo, capacity).place(req, state)
    assert place(topo, Request(1)) == Placer(topo).place(Request(1), NodeState())


def test_a_placements_score_is_its_cost_weighed_for_its_request() -> None:
    """The 0-100 score the extender ranks nodes by is the documented weighing of the
    placement's cost for the request's GPUs, NICs and the node's NUMA nodes; one GPU on an
    empty DGX A100 scores 95 (a fixed point, so that a change to the weighing shows)."""
    topo = shipped("dgx-a100")
    for req in (Request(2, rdma=2), Request(1, rdma=1), Request(8, rdma=8)):
        p = fit(Placer(topo).place(req))
        assert p.score == score(p.cost, Shape(req.gpus, req.rdma, len(topo.numa_nodes)))
    assert fit(Placer(topo).place(Request(1))).score == 95.0
