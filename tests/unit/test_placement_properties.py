"""Property tests: the engine's answer is the exhaustive optimum and breaks no rule."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpulet.placement import (
    Capacity,
    NodeState,
    Placement,
    Placer,
    Request,
    TopologyPolicy,
    exhaustive,
)
from gpulet.placement.eligibility import candidates
from gpulet.topology import Topology
from tests.strategies import examples, node_states, requests, topologies

CAP = Capacity(gpu_slots=4, nic_slots=2)


def check_against_exhaustive(topo: Topology, req: Request, state: NodeState) -> None:
    placer = Placer(topo, CAP)
    got = placer.place(req, state)
    cand = candidates(topo, req, state, CAP)
    want = None
    if len(cand.gpus) >= req.gpus and len(cand.nics) >= req.rdma:
        want = exhaustive.search(topo, req, state, cand)
    if want is None:
        assert not got.fits, f"engine placed {got} where nothing fits"
        return
    assert isinstance(got, Placement), f"engine found no fit; exhaustive found {want}: {got}"
    assert got.cost == want[0], (got, want)
    chosen = tuple(g.index for g in got.gpus)
    recomputed = exhaustive.evaluate(topo, req, state, cand, gpus=chosen, nics=got.nics)
    assert recomputed == got.cost
    # never over-commits
    for grant in got.gpus:
        use = state.gpu(grant.index)
        gpu = next(g for g in topo.gpus if g.index == grant.index)
        assert not use.exclusive and grant.index not in state.unhealthy_gpus
        assert use.plus(grant.charge(CAP.gpu_slots)).slots <= CAP.gpu_slots
        assert use.core + grant.core <= 100
        assert use.memory_mib + grant.memory_mib <= gpu.memory_mib
        if grant.exclusive:
            assert use.idle
    for key in got.nics:
        assert state.nic_slots.get(key, 0) < CAP.nic_slots
    assert len(got.gpus) == req.gpus and len(set(got.nics)) == req.rdma
    if req.topology is TopologyPolicy.RESTRICTED:
        switches = {n.switch for n in topo.nics if n.key in got.nics}
        for grant in got.gpus:
            gpu = next(g for g in topo.gpus if g.index == grant.index)
            assert gpu.switch is not None and gpu.switch in switches
    if req.topology is TopologyPolicy.SINGLE_NUMA:
        assert len(got.numa) == 1


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_engine_equals_exhaustive_on_random_trees(data: st.DataObject) -> None:
    topo = data.draw(topologies())
    state = data.draw(node_states(topo, CAP))
    req = data.draw(requests(len(topo.gpus), len(topo.nics)))
    check_against_exhaustive(topo, req, state)


@settings(max_examples=examples(400), deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_engine_equals_exhaustive_for_multi_gpu_nic_jobs(data: st.DataObject) -> None:
    """The hard case: several GPUs and NICs at once, on nodes with room for them."""
    topo = data.draw(topologies())
    assume(len(topo.gpus) >= 2 and len(topo.nics) >= 1)
    state = data.draw(node_states(topo, CAP))
    req = data.draw(requests(len(topo.gpus), len(topo.nics), min_gpus=2, min_nics=1))
    check_against_exhaustive(topo, req, state)


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_single_gpu_fast_path_equals_exhaustive(data: st.DataObject) -> None:
    """One GPU and no NIC skips the tree search (Placer._one_gpu): still the optimum."""
    topo = data.draw(topologies())
    state = data.draw(node_states(topo, CAP))
    req = data.draw(requests(len(topo.gpus), 0, min_gpus=1))
    assume(req.gpus == 1 and req.rdma == 0)
    check_against_exhaustive(topo, req, state)
