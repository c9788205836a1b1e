"""On random allocations of every shipped node: the engine's answer is the exhaustive
optimum, never over-commits and keeps the policy's rule."""

from __future__ import annotations

from math import comb

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gpulet.placement import Placer
from gpulet.placement.eligibility import candidates
from tests.nodes import SHIPPED, shipped
from tests.strategies import examples, node_states, requests
from tests.unit.test_placement_properties import CAP, check_against_exhaustive

#: Largest number of (GPU subset, NIC subset) pairs the exhaustive reference may try.
MAX_CHOICES = 3000


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_nodes_take_the_tree_search(name: str) -> None:
    assert Placer(shipped(name), CAP).hierarchical


@pytest.mark.parametrize("name", SHIPPED)
@settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_engine_is_the_exhaustive_optimum_on_shipped_nodes(name: str, data: st.DataObject) -> None:
    topo = shipped(name)
    state = data.draw(node_states(topo, CAP))
    req = data.draw(requests(len(topo.gpus), len(topo.nics)))
    cand = candidates(topo, req, state, CAP)
    assume(comb(len(cand.gpus), req.gpus) * comb(len(cand.nics), req.rdma) <= MAX_CHOICES)
    check_against_exhaustive(topo, req, state)
