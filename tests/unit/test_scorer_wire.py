"""kube-scheduler's extender wire values (`scorer.wire`): the JSON kube-scheduler writes parses
to them and they serialise to it, key for key; every value serialises and parses back equal;
keys match in any case, as Go's decoder matches them; malformed input is refused with a
BadRequest that says what is wrong; and no input, however hostile, makes a parse or the
server do anything else."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from http import HTTPStatus
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpulet.standins.objects import container, node_object, pod_object
from scorer import extender as extender_module
from scorer.cluster import ClusterView
from scorer.extender import Extender
from scorer.server import ExtenderServer
from scorer.wire import (
    INT64_MAX,
    INT64_MIN,
    BadRequest,
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    HostPriority,
    HostPriorityList,
    MetaPod,
    MetaVictims,
    NodeList,
    Victims,
)
from tests.nodes import shipped
from tests.strategies import examples

Parse = Callable[[Any], Any]

PARSERS: dict[str, Parse] = {
    "ExtenderArgs": ExtenderArgs.parse,
    "ExtenderFilterResult": ExtenderFilterResult.parse,
    "HostPriority": HostPriority.parse,
    "HostPriorityList": HostPriorityList.parse,
    "ExtenderBindingArgs": ExtenderBindingArgs.parse,
    "ExtenderBindingResult": ExtenderBindingResult.parse,
    "ExtenderPreemptionArgs": ExtenderPreemptionArgs.parse,
    "ExtenderPreemptionResult": ExtenderPreemptionResult.parse,
    "Victims": Victims.parse,
    "MetaVictims": MetaVictims.parse,
    "MetaPod": MetaPod.parse,
    "NodeList": NodeList.parse,
}

# ---- strategies ---------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda kids: (
        st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=4)
int64s = st.integers(INT64_MIN, INT64_MAX)
names = st.text(max_size=12)
texts = st.text(max_size=20)


@st.composite
def node_objects(draw: st.DrawFn) -> dict[str, Any]:
    """A v1.Node as JSON: anything, but named."""
    node = draw(json_objects)
    meta = draw(json_objects)
    meta["name"] = draw(st.text(min_size=1, max_size=12))
    node["metadata"] = meta
    return node


node_lists = st.builds(NodeList, st.lists(node_objects(), max_size=4).map(tuple))
name_tuples = st.lists(names, max_size=6).map(tuple)
reasons = st.dictionaries(names, texts, max_size=4)
extender_args = st.builds(ExtenderArgs, json_objects, nodes=node_lists) | st.builds(
    ExtenderArgs, json_objects, node_names=name_tuples
)
filter_results = st.builds(
    ExtenderFilterResult,
    nodes=st.none() | node_lists,
    node_names=st.none() | name_tuples,
    failed_nodes=reasons,
    failed_and_unresolvable_nodes=reasons,
    error=texts,
)
host_priorities = st.builds(HostPriority, names, int64s)
host_priority_lists = st.lists(host_priorities, max_size=6).map(HostPriorityList.of)
nonempty = st.text(min_size=1, max_size=12)
binding_args = st.builds(ExtenderBindingArgs, nonempty, nonempty, nonempty, nonempty)
binding_results = st.builds(ExtenderBindingResult, texts)
meta_pods = st.builds(MetaPod, texts)
victims = st.builds(Victims, st.lists(json_objects, max_size=3).map(tuple), int64s)
meta_victims = st.builds(MetaVictims, st.lists(meta_pods, max_size=3).map(tuple), int64s)
preemption_args = st.builds(
    ExtenderPreemptionArgs,
    json_objects,
    st.none() | st.dictionaries(names, victims, max_size=3),
    st.none() | st.dictionaries(names, meta_victims, max_size=3),
)
preemption_results = st.builds(
    ExtenderPreemptionResult, st.none() | st.dictionaries(names, meta_victims, max_size=3)
)

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "ExtenderArgs": extender_args,
    "ExtenderFilterResult": filter_results,
    "HostPriority": host_priorities,
    "HostPriorityList": host_priority_lists,
    "ExtenderBindingArgs": binding_args,
    "ExtenderBindingResult": binding_results,
    "ExtenderPreemptionArgs": preemption_args,
    "ExtenderPreemptionResult": preemption_results,
    "Victims": victims,
    "MetaVictims": meta_victims,
    "MetaPod": meta_pods,
    "NodeList": node_lists,
}


def over_the_wire(value: Any) -> Any:
    """`value` serialised, sent as JSON, and decoded: what the other side parses."""
    return json.loads(json.dumps(value.dump()))


# ---- the JSON kube-scheduler writes, key for key ----------------------------------------

POD = pod_object("infer", container(gpus=1, core=30, memory=8192))
NODE = node_object("gpu-1", shipped("dgx-h100"))


def test_filter_and_prioritize_requests_as_kube_scheduler_writes_them() -> None:
    # Go writes every field, a nil pointer as null: names when nodeCacheCapable...
    names = {"Pod": POD, "Nodes": None, "NodeNames": ["gpu-1", "gpu-2"]}
    args = ExtenderArgs.parse(names)
    assert args == ExtenderArgs(POD, node_names=("gpu-1", "gpu-2"))
    assert args.dump() == names
    assert args.names() == ("gpu-1", "gpu-2")
    # ... the Node objects otherwise (kube-scheduler's NodeList has no kind or apiVersion).
    objects = {"Pod": POD, "Nodes": {"metadata": {}, "items": [NODE]}, "NodeNames": None}
    args = ExtenderArgs.parse(objects)
    assert args == ExtenderArgs(POD, nodes=NodeList((NODE,)))
    assert args.nodes is not None and args.nodes.items[0] is NODE  # as received, not rebuilt
    assert args.pod is POD
    assert args.names() == ("gpu-1",)
    assert args.dump() == {
        "Pod": POD,
        "Nodes": {"apiVersion": "v1", "kind": "NodeList", "items": [NODE]},
        "NodeNames": None,
    }


def test_answers_carry_the_go_field_names() -> None:
    passed = ExtenderFilterResult(
        node_names=("gpu-1",), failed_nodes={"gpu-2": "full"}, failed_and_unresolvable_nodes={}
    )
    assert passed.dump() == {
        "Nodes": None,
        "NodeNames": ["gpu-1"],
        "FailedNodes": {"gpu-2": "full"},
        "FailedAndUnresolvableNodes": {},
        "Error": "",
    }
    objects = ExtenderFilterResult(nodes=NodeList((NODE,)))
    assert objects.dump()["Nodes"] == {"apiVersion": "v1", "kind": "NodeList", "items": [NODE]}
    assert objects.names() == ("gpu-1",) and ExtenderFilterResult().names() == ()
    scores = HostPriorityList.of([HostPriority("gpu-1", 7), HostPriority("gpu-2", 0)])
    assert scores.dump() == [{"Host": "gpu-1", "Score": 7}, {"Host": "gpu-2", "Score": 0}]
    assert scores == HostPriorityList(("gpu-1", "gpu-2"), (7, 0))
    assert list(scores) == [HostPriority("gpu-1", 7), HostPriority("gpu-2", 0)]
    assert len(scores) == 2 and scores.by_host() == {"gpu-1": 7, "gpu-2": 0}
    assert ExtenderBindingResult().dump() == {"Error": ""}
    assert ExtenderBindingResult("gone").dump() == {"Error": "gone"}


def test_bind_request_as_kube_scheduler_writes_it() -> None:
    wire = {"PodName": "infer", "PodNamespace": "team-a", "PodUID": "u-1", "Node": "gpu-1"}
    args = ExtenderBindingArgs.parse(wire)
    assert args == ExtenderBindingArgs(
        pod_name="infer", pod_namespace="team-a", pod_uid="u-1", node="gpu-1"
    )
    assert args.dump() == wire


def test_preemption_as_kube_scheduler_writes_it() -> None:
    # nodeCacheCapable: the victims by UID, and the whole pods' map null.
    meta = {
        "Pod": POD,
        "NodeNameToVictims": None,
        "NodeNameToMetaVictims": {
            "gpu-1": {"Pods": [{"UID": "u-1"}, {"UID": "u-2"}], "NumPDBViolations": 1}
        },
    }
    args = ExtenderPreemptionArgs.parse(meta)
    assert args == ExtenderPreemptionArgs(
        POD, None, {"gpu-1": MetaVictims((MetaPod("u-1"), MetaPod("u-2")), 1)}
    )
    assert args.dump() == meta
    whole = {
        "Pod": POD,
        "NodeNameToVictims": {"gpu-1": {"Pods": [POD], "NumPDBViolations": 0}},
        "NodeNameToMetaVictims": None,
    }
    args = ExtenderPreemptionArgs.parse(whole)
    assert args == ExtenderPreemptionArgs(POD, {"gpu-1": Victims((POD,), 0)}, None)
    assert args.dump() == whole
    answer = {"NodeNameToMetaVictims": {"gpu-1": {"Pods": [{"UID": "u-2"}], "NumPDBViolations": 0}}}
    result = ExtenderPreemptionResult.parse(answer)
    assert result == ExtenderPreemptionResult({"gpu-1": MetaVictims((MetaPod("u-2"),), 0)})
    assert result.dump() == answer
    assert ExtenderPreemptionResult().dump() == {"NodeNameToMetaVictims": None}


def test_answers_read_as_go_reads_them_missing_and_null_are_zero_values() -> None:
    assert ExtenderFilterResult.parse({}) == ExtenderFilterResult()
    nulls = dict.fromkeys(
        ("Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error")
    )
    assert ExtenderFilterResult.parse(nulls) == ExtenderFilterResult()
    assert ExtenderFilterResult.parse({"Error": "down"}).error == "down"
    assert HostPriorityList.parse(None) == HostPriorityList()
    assert HostPriority.parse({"Host": "a"}) == HostPriority("a", 0)
    assert ExtenderBindingResult.parse({"Error": None}) == ExtenderBindingResult()
    assert Victims.parse({"Pods": None}) == Victims()
    assert MetaVictims.parse({}) == MetaVictims()
    assert MetaPod.parse({}) == MetaPod("")
    assert ExtenderPreemptionResult.parse({}) == ExtenderPreemptionResult(None)


def test_bad_request_is_one_error_importable_from_both_modules() -> None:
    assert extender_module.BadRequest is BadRequest
    assert issubclass(BadRequest, ValueError)


def test_extender_args_take_one_form_of_nodes() -> None:
    with pytest.raises(ValueError, match="either nodes or node_names"):
        ExtenderArgs(POD)
    with pytest.raises(ValueError, match="either nodes or node_names"):
        ExtenderArgs(POD, nodes=NodeList(), node_names=())
    with pytest.raises(ValueError, match="2 hosts but 1 scores"):
        HostPriorityList(("a", "b"), (1,))


# ---- round trips --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VALUES))
@given(data=st.data())
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_value_serialises_and_parses_back_equal(kind: str, data: st.DataObject) -> None:
    value = data.draw(VALUES[kind])
    assert PARSERS[kind](over_the_wire(value)) == value


def recase(data: st.DataObject, obj: Mapping[str, Any]) -> dict[str, Any]:
    """`obj` with each key in a random mix of cases (the values left as they are)."""
    out = {}
    for key, value in obj.items():
        flips = data.draw(st.lists(st.booleans(), min_size=len(key), max_size=len(key)))
        out["".join(c.swapcase() if f else c for c, f in zip(key, flips, strict=True))] = value
    return out


@given(data=st.data())
@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_keys_match_in_any_case(data: st.DataObject) -> None:
    args = data.draw(extender_args)
    wire = over_the_wire(args)
    if wire["Nodes"] is not None:
        wire["Nodes"] = recase(data, wire["Nodes"])
    assert ExtenderArgs.parse(recase(data, wire)) == args
    for strategy, parse in (
        (filter_results, ExtenderFilterResult.parse),
        (binding_args, ExtenderBindingArgs.parse),
        (binding_results, ExtenderBindingResult.parse),
        (preemption_results, ExtenderPreemptionResult.parse),
    ):
        value = data.draw(strategy)
        assert parse(recase(data, over_the_wire(value))) == value
    scores = data.draw(host_priority_lists)
    assert HostPriorityList.parse([recase(data, h) for h in over_the_wire(scores)]) == scores
    meta = data.draw(meta_victims)
    wire = over_the_wire(meta)
    wire["Pods"] = [recase(data, p) for p in wire["Pods"]]
    assert MetaVictims.parse(recase(data, wire)) == meta


def test_keys_in_any_case_a_few_by_hand() -> None:
    assert ExtenderArgs.parse({"pod": POD, "nodenames": ["a"]}) == ExtenderArgs(
        POD, node_names=("a",)
    )
    assert ExtenderArgs.parse({"POD": POD, "NODES": {"Items": []}}).nodes == NodeList()
    bind = {"podname": "p", "PODNAMESPACE": "d", "PodUid": "u", "nOdE": "n"}
    assert ExtenderBindingArgs.parse(bind) == ExtenderBindingArgs("p", "d", "u", "n")
    assert MetaPod.parse({"uid": "x"}) == MetaPod.parse({"UID": "x"}) == MetaPod("x")
    # Go folds as Unicode does: the long s is an s.
    assert HostPriority.parse({"hoſt": "a", "score": 2}) == HostPriority("a", 2)
    # Of two keys that name one field, the later wins, as in Go.
    assert ExtenderBindingResult.parse({"Error": "a", "error": "b"}) == ExtenderBindingResult("b")
    # Keys no type reads are ignored, as Go ignores unknown fields.
    assert ExtenderBindingResult.parse({"Error": "", "Status": 5}) == ExtenderBindingResult()


def test_parsing_changes_nothing_it_is_given() -> None:
    nodes = {"items": [node_object("gpu-1", shipped("dgx-h100"))]}
    wire = {"pod": {"metadata": {"name": "p"}}, "Nodes": nodes}
    before = json.dumps(wire, sort_keys=True)
    ExtenderArgs.parse(wire)
    assert json.dumps(wire, sort_keys=True) == before


# ---- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parse", "data", "problem"),
    [
        # filter and prioritize, with the messages the extender has always answered
        (ExtenderArgs.parse, [], "a filter or prioritize request must be a JSON object"),
        (ExtenderArgs.parse, "Pod", "a filter or prioritize request must be a JSON object"),
        (ExtenderArgs.parse, None, "a filter or prioritize request must be a JSON object"),
        (ExtenderArgs.parse, {"NodeNames": ["a"]}, 'the request has no "Pod"'),
        (ExtenderArgs.parse, {"Pod": None, "NodeNames": ["a"]}, 'the request has no "Pod"'),
        (ExtenderArgs.parse, {"Pod": "x", "NodeNames": ["a"]}, '"Pod" must be a JSON object'),
        (ExtenderArgs.parse, {"Pod": [], "NodeNames": ["a"]}, '"Pod" must be a JSON object'),
        (ExtenderArgs.parse, {"Pod": {}}, 'the request has neither "Nodes" nor "NodeNames"'),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "Nodes": None, "NodeNames": None},
            'the request has neither "Nodes" nor "NodeNames"',
        ),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "NodeNames": "a"},
            '"NodeNames" must be a list of strings',
        ),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "NodeNames": [1]},
            '"NodeNames" must be a list of strings',
        ),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "NodeNames": ["a", None]},
            '"NodeNames" must be a list of strings',
        ),
        (ExtenderArgs.parse, {"Pod": {}, "NodeNames": {"a": 1}}, '"NodeNames" must be a list'),
        (ExtenderArgs.parse, {"Pod": {}, "Nodes": []}, '"Nodes" must be a NodeList with "items"'),
        (ExtenderArgs.parse, {"Pod": {}, "Nodes": {}}, '"Nodes" must be a NodeList with "items"'),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "Nodes": {"items": "gpu-1"}},
            '"Nodes" must be a NodeList with "items"',
        ),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "Nodes": {"items": [NODE, 1]}},
            '"Nodes" must be a NodeList with "items"',
        ),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "Nodes": {"items": [{"metadata": {}}]}},
            "a Node in the request has no metadata.name",
        ),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "Nodes": {"items": [NODE, {"metadata": {"name": ""}}]}},
            "a Node in the request has no metadata.name",
        ),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "Nodes": {"items": [{"metadata": {"name": 7}}]}},
            "a Node in the request has no metadata.name",
        ),
        (
            ExtenderArgs.parse,
            {"Pod": {}, "Nodes": {"items": [{"metadata": "gpu-1"}]}},
            "a Node in the request has no metadata.name",
        ),
        # bind: each of the four, a non-empty string, checked in this order
        (ExtenderBindingArgs.parse, [], "a bind request must be a JSON object"),
        (
            ExtenderBindingArgs.parse,
            {"PodName": "x", "PodNamespace": "d", "Node": "n"},
            'the bind request has no "PodUID"',
        ),
        (
            ExtenderBindingArgs.parse,
            {"PodName": "x", "PodNamespace": "", "PodUID": "u", "Node": "n"},
            'the bind request has no "PodNamespace"',
        ),
        (
            ExtenderBindingArgs.parse,
            {"PodName": 5, "PodNamespace": "d", "PodUID": "u", "Node": "n"},
            'the bind request has no "PodName"',
        ),
        (
            ExtenderBindingArgs.parse,
            {"PodName": "x", "PodNamespace": "d", "PodUID": "u", "Node": ["n"]},
            'the bind request has no "Node"',
        ),
        (ExtenderBindingArgs.parse, {}, 'the bind request has no "PodNamespace"'),
        # answers: the wrong type of value
        (ExtenderFilterResult.parse, [], "a filter answer must be a JSON object"),
        (ExtenderFilterResult.parse, {"NodeNames": "a"}, '"NodeNames" must be a list of strings'),
        (
            ExtenderFilterResult.parse,
            {"Nodes": {"items": [{}]}},
            "a Node in the answer has no metadata.name",
        ),
        (ExtenderFilterResult.parse, {"FailedNodes": ["a"]}, '"FailedNodes" must map node'),
        (
            ExtenderFilterResult.parse,
            {"FailedAndUnresolvableNodes": {"a": 1}},
            '"FailedAndUnresolvableNodes" must map node names to reasons',
        ),
        (ExtenderFilterResult.parse, {"Error": 1}, '"Error" must be a string'),
        (HostPriorityList.parse, {"Host": "a"}, "a prioritize answer must be a JSON array"),
        (HostPriorityList.parse, ["a"], "each of a prioritize answer's items must be a JSON obj"),
        (HostPriorityList.parse, [{"Host": 1}], '"Host" must be a string'),
        (HostPriorityList.parse, [{"Host": "a", "Score": "9"}], '"Score" must be an integer'),
        (HostPriorityList.parse, [{"Host": "a", "Score": 9.0}], '"Score" must be an integer'),
        (HostPriorityList.parse, [{"Host": "a", "Score": True}], '"Score" must be an integer'),
        (HostPriorityList.parse, [{"Host": "a", "Score": 1 << 63}], '"Score" must fit in 64'),
        (HostPriorityList.parse, [{"Host": "a", "Score": -(1 << 63) - 1}], "must fit in 64"),
        (ExtenderBindingResult.parse, "", "a bind answer must be a JSON object"),
        (ExtenderBindingResult.parse, {"Error": False}, '"Error" must be a string'),
        # preempt
        (ExtenderPreemptionArgs.parse, [], "a preempt request must be a JSON object"),
        (ExtenderPreemptionArgs.parse, {}, 'the request has no "Pod"'),
        (ExtenderPreemptionArgs.parse, {"Pod": 1}, '"Pod" must be a JSON object'),
        (
            ExtenderPreemptionArgs.parse,
            {"Pod": {}, "NodeNameToVictims": []},
            '"NodeNameToVictims" must be a JSON object',
        ),
        (
            ExtenderPreemptionArgs.parse,
            {"Pod": {}, "NodeNameToVictims": {"a": None}},
            '"NodeNameToVictims" must map each node name to a JSON object',
        ),
        (
            ExtenderPreemptionArgs.parse,
            {"Pod": {}, "NodeNameToVictims": {"a": {"Pods": [1]}}},
            'each of "Pods" must be a JSON object',
        ),
        (
            ExtenderPreemptionArgs.parse,
            {"Pod": {}, "NodeNameToMetaVictims": {"a": {"Pods": {"UID": "u"}}}},
            '"Pods" must be a list',
        ),
        (
            ExtenderPreemptionArgs.parse,
            {"Pod": {}, "NodeNameToMetaVictims": {"a": {"Pods": [{"UID": 1}]}}},
            '"UID" must be a string',
        ),
        (
            ExtenderPreemptionArgs.parse,
            {"Pod": {}, "NodeNameToMetaVictims": {"a": {"NumPDBViolations": "1"}}},
            '"NumPDBViolations" must be an integer',
        ),
        (ExtenderPreemptionResult.parse, None, "a preempt answer must be a JSON object"),
        (MetaPod.parse, "u-1", "a MetaPod must be a JSON object"),
    ],
)
def test_malformed_input_is_refused_with_what_is_wrong(
    parse: Parse, data: Any, problem: str
) -> None:
    with pytest.raises(BadRequest) as refused:
        parse(data)
    assert problem in str(refused.value)


def test_with_both_forms_nodes_count_and_node_names_are_not_read() -> None:
    """As the extender has always read them (kube-scheduler sends one, the other null)."""
    args = ExtenderArgs.parse({"Pod": {}, "Nodes": {"items": [NODE]}, "NodeNames": 5})
    assert args == ExtenderArgs({}, nodes=NodeList((NODE,)))


# ---- hostile input ------------------------------------------------------------------------

#: Objects with the keys these types read (in any case), holding anything.
KEYS = [
    "Pod",
    "pod",
    "Nodes",
    "NodeNames",
    "nodenames",
    "items",
    "FailedNodes",
    "Error",
    "Host",
    "Score",
    "PodName",
    "PodNamespace",
    "PodUID",
    "Node",
    "NodeNameToVictims",
    "NodeNameToMetaVictims",
    "Pods",
    "NumPDBViolations",
    "UID",
]
shaped = st.recursive(
    st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6),
    lambda kids: (
        st.dictionaries(st.sampled_from(KEYS), kids, max_size=4) | st.lists(kids, max_size=3)
    ),
    max_leaves=10,
)
hostile = json_values | shaped


@pytest.mark.parametrize("kind", sorted(PARSERS))
@given(data=hostile)
@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_parses_or_is_refused_never_anything_else(kind: str, data: Any) -> None:
    try:
        value = PARSERS[kind](data)
    except BadRequest as e:
        refused = str(e)
    else:
        json.dumps(value.dump())  # whatever parses serialises
        return
    assert refused


@pytest.fixture(params=["standalone", "api"])
def server(request: pytest.FixtureRequest) -> Iterator[ExtenderServer]:
    """Not started: `answer` alone is what each POST runs. "api": nodes come from a watch
    (none here) and no request may add one; binds reach no API server (none is made)."""
    api = None if request.param == "standalone" else object()
    s = ExtenderServer(Extender(ClusterView(), api), "127.0.0.1", 0)  # type: ignore[arg-type]
    yield s
    s.stop()


@given(body=hostile, verb=st.sampled_from(["filter", "prioritize", "bind"]))
@settings(max_examples=examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_json_to_the_server_is_answered_200_or_400(body: Any, verb: str) -> None:
    # A bind that parses would call the API server, and there is none: standalone only.
    for standalone in (True,) if verb == "bind" else (True, False):
        api = None if standalone else object()
        server = ExtenderServer(Extender(ClusterView(), api), "127.0.0.1", 0)  # type: ignore[arg-type]
        try:
            code, answer = server.answer(verb, json.dumps(body).encode())
        finally:
            server.stop()
        assert code in (HTTPStatus.OK, HTTPStatus.BAD_REQUEST), (code, answer)
        json.dumps(answer)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"Pod": {}, "NodeNames": ["gpu-1"] * 200_000 + [7]}, '"NodeNames" must be a list'),
        ({"Pod": {}, "NodeNames": [["gpu-1"]]}, '"NodeNames" must be a list of strings'),
        ({"Pod": {}, "NodeNames": [{"name": "gpu-1"}]}, '"NodeNames" must be a list of strings'),
        ({"Pod": {}, "NodeNames": "gpu-1"}, '"NodeNames" must be a list of strings'),
        # Once a 500 in standalone mode: the view took the node named "", the answer did not.
        ({"Pod": {}, "Nodes": {"items": [{"metadata": {"name": ""}}]}}, "has no metadata.name"),
        ({"pod": {}, "nodes": {"ITEMS": [NODE, NODE, {}]}}, "has no metadata.name"),
    ],
)
@pytest.mark.parametrize("verb", ["filter", "prioritize"])
def test_hostile_requests_are_400(
    server: ExtenderServer, verb: str, body: Any, problem: str
) -> None:
    code, answer = server.answer(verb, json.dumps(body).encode())
    assert code == HTTPStatus.BAD_REQUEST and problem in answer["Error"]
    assert server.extender.view.node_names() == []  # a refused request changed nothing


@pytest.mark.parametrize(
    "body",
    [
        {"PodName": "p", "PodNamespace": "d", "PodUID": "u", "Node": 1 << 80},
        {"PodName": "p", "PodNamespace": "d", "PodUID": ["u"], "Node": "n"},
        [{"PodName": "p"}],
    ],
)
def test_hostile_bind_requests_are_400(server: ExtenderServer, body: Any) -> None:
    code, answer = server.answer("bind", json.dumps(body).encode())
    assert code == HTTPStatus.BAD_REQUEST and "bind request" in answer["Error"]


def test_a_huge_request_of_names_is_served(server: ExtenderServer) -> None:
    body = {"Pod": POD, "NodeNames": [f"n{i}" for i in range(100_000)]}
    code, answer = server.answer("filter", json.dumps(body).encode())
    assert code == HTTPStatus.OK
    result = ExtenderFilterResult.parse(answer)
    assert result.node_names == () and len(result.failed_and_unresolvable_nodes) == 100_000


def test_the_server_reads_keys_in_any_case(server: ExtenderServer) -> None:
    body = {"pod": POD, "nodes": {"ITEMS": [NODE]}}
    code, answer = server.answer("filter", json.dumps(body).encode())
    assert code == HTTPStatus.OK
    assert list(answer) == [
        "Nodes",
        "NodeNames",
        "FailedNodes",
        "FailedAndUnresolvableNodes",
        "Error",
    ]
    if server.extender.standalone:
        assert answer["Nodes"]["items"] == [NODE]
    else:  # the watch has shown no node: the request's cannot add one
        assert answer["Nodes"]["items"] == []
        assert "gpu-1" in answer["FailedAndUnresolvableNodes"]


def test_standalone_the_request_nodes_join_the_view_only_once_it_is_parsed_whole() -> None:
    """Parsing is pure: the extender takes a request's Node objects into its view after the
    whole request parsed, so a request refused for its last Node adds none of the others."""
    extender = Extender(ClusterView())
    refused = {"Pod": POD, "Nodes": {"items": [NODE, {"metadata": {}}]}}
    with pytest.raises(BadRequest):
        extender.filter(ExtenderArgs.parse(refused))
    assert extender.view.node_names() == []
    args = ExtenderArgs.parse({"Pod": POD, "Nodes": {"items": [NODE]}})
    assert extender.view.node_names() == []
    assert extender.filter(args).names() == ("gpu-1",)
    assert extender.view.node_names() == ["gpu-1"]
