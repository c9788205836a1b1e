"""Properties of the extender's accounting: whatever pods come, in whatever order, with
deletions and failed binds between them, no GPU slice, whole GPU or NIC slot is granted
beyond what the node has, and the view's tally is what the assignments add up to."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpulet.placement import Capacity
from gpulet.standins.objects import container, node_object, pod_object
from scorer.cluster import ClusterView
from scorer.extender import Extender
from scorer.wire import ExtenderArgs, ExtenderBindingArgs, ExtenderBindingResult, NodeList
from tests.grants import over_grants
from tests.nodes import shipped
from tests.strategies import examples

CAPACITY = Capacity(gpu_slots=3, nic_slots=2)
NODES = {"a": shipped("pcie-4gpu"), "b": shipped("dgx-a100")}

shapes = st.one_of(
    st.builds(lambda g: container(gpus=g), st.integers(1, 4)),
    st.builds(
        lambda g, c, m: container(gpus=g, core=c, memory=m),
        st.integers(1, 2),
        st.integers(1, 100),
        st.sampled_from([1024, 8192, 20000, 40000]),
    ),
    st.builds(lambda g, r: container(gpus=g, rdma=r), st.integers(1, 2), st.integers(1, 2)),
    st.builds(lambda r: container(rdma=r), st.integers(1, 2)),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("pod"), st.lists(shapes, min_size=1, max_size=2), st.booleans()),
        st.tuples(st.just("delete"), st.integers(0, 50), st.just(False)),
    ),
    max_size=25,
)


def check(view: ClusterView) -> None:
    for name, topo in NODES.items():
        mine = [view.assignment(uid) for uid, node, _ in view.pods() if node == name]
        assert None not in mine
        held = [a for a in mine if a is not None]
        assert over_grants(replace(topo, node=name), held, CAPACITY) == []


@given(ops)
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_stream_of_pods_never_over_commits(script: list[tuple[str, object, bool]]) -> None:
    view = ClusterView(CAPACITY)
    extender = Extender(view)
    nodes = NodeList(tuple(node_object(n, t, slots=3) for n, t in NODES.items()))
    bound: list[str] = []
    for n, (op, arg, whole_pod_ok) in enumerate(script):
        if op == "delete":
            if bound:
                view.remove_pod(bound.pop(int(str(arg)) % len(bound)))
            check(view)
            continue
        assert isinstance(arg, list)
        pod = pod_object(f"p{n}", *[dict(c, name=f"c{i}") for i, c in enumerate(arg)])
        uid = pod["metadata"]["uid"]
        passed = extender.filter(ExtenderArgs(pod, nodes=nodes))
        fits = passed.names()
        scores = extender.prioritize(ExtenderArgs(pod, node_names=tuple(NODES))).by_host()
        assert all(isinstance(s, int) and 0 <= s <= 10 for s in scores.values())
        assert set(fits) | set(passed.failed_nodes) | set(
            passed.failed_and_unresolvable_nodes
        ) == set(NODES)
        if not fits:
            continue
        best = max(fits, key=lambda name: scores[name])
        if whole_pod_ok:
            answer = extender.bind(ExtenderBindingArgs(f"p{n}", "default", uid, best))
            assert answer == ExtenderBindingResult()
            bound.append(uid)
        check(view)
