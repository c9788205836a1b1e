"""kube-scheduler's extender wire values (`k8s.io/kube-scheduler/extender/v1`, types.go), typed.

Each type parses the decoded JSON (`parse`, refusing what does not follow the protocol with
`BadRequest`) and serialises to a JSON-ready value (`dump`). The Go types carry no JSON tags,
so their keys are the Go field names, capitalised (`"Pod"`, `"NodeNames"`, `"PodUID"`); Go's
decoder matches keys regardless of case, and so does `parse` (`"nodenames"` is `NodeNames`),
while `dump` writes the Go names, every one of them, with null where Go writes a nil pointer
or map (the form of nodes a request or answer does not use). The v1.Pod and v1.Node objects
inside stay the Kubernetes JSON as received (Mappings), never rebuilt or copied: a filter
answer carries the request's own Node objects, and `dump` shares them.

- filter and prioritize: `ExtenderArgs` (Pod, Nodes: a v1.NodeList, NodeNames) in;
  `ExtenderFilterResult` (Nodes, NodeNames, FailedNodes, FailedAndUnresolvableNodes, Error)
  and `HostPriorityList` (a JSON array of `HostPriority`: Host, Score) out;
- bind: `ExtenderBindingArgs` (PodName, PodNamespace, PodUID, Node) in,
  `ExtenderBindingResult` (Error) out;
- preempt: `ExtenderPreemptionArgs` (Pod, NodeNameToVictims, NodeNameToMetaVictims) in,
  `ExtenderPreemptionResult` (NodeNameToMetaVictims) out; per node, `Victims` (Pods: v1.Pod
  objects, NumPDBViolations) or `MetaVictims` (Pods: `MetaPod`s, each a UID;
  NumPDBViolations).

The requests this extender serves are read as strictly as it always read them: `Pod` must be
an object; filter and prioritize need `Nodes` or `NodeNames` (with both, `Nodes` counts and
`NodeNames` is not read), each Node named (`metadata.name`); bind needs all four keys, each a
non-empty string. The answers are read as Go reads them: a missing key or a JSON null is the
zero value (no nodes, no reasons, score 0, no error), a value of the wrong type is refused.
What the extender answers in each case is in docs/scorer.md.

Parsing is pure: it reads the JSON and builds values; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "BadRequest",
    "ExtenderArgs",
    "ExtenderBindingArgs",
    "ExtenderBindingResult",
    "ExtenderFilterResult",
    "ExtenderPreemptionArgs",
    "ExtenderPreemptionResult",
    "HostPriority",
    "HostPriorityList",
    "MetaPod",
    "MetaVictims",
    "NodeList",
    "Victims",
]

#: Go's int64, the type of `Score` and `NumPDBViolations`.
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1

_T = TypeVar("_T")


class BadRequest(ValueError):
    """A request that does not follow the protocol (HTTP 400); also a malformed answer."""


# ---- filter and prioritize ----------------------------------------------------------------


@dataclass(frozen=True)
class NodeList:
    """A v1.NodeList: its Node objects (`items`), each the v1.Node JSON as received."""

    items: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def parse(cls, data: Any, key: str = "Nodes", where: str = "the request") -> Self:
        """`data` as the value of `key`: an object whose `items` are Node objects, each named."""
        problem = f'"{key}" must be a NodeList with "items"'
        items = _fields(data, problem).get("items") if isinstance(data, Mapping) else None
        if not isinstance(items, list) or not all(isinstance(n, Mapping) for n in items):
            raise BadRequest(problem)
        for item in items:
            if _node_name(item) is None:
                raise BadRequest(f"a Node in {where} has no metadata.name")
        return cls(tuple(items))

    def dump(self) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "NodeList", "items": [_obj(n) for n in self.items]}

    def names(self) -> tuple[str, ...]:
        """Each Node's `metadata.name`, in order. ValueError for a Node with none (a list
        `parse` made has none such)."""
        names = []
        for item in self.items:
            name = _node_name(item)
            if name is None:
                raise ValueError("a Node has no metadata.name")
            names.append(name)
        return tuple(names)


@dataclass(frozen=True)
class ExtenderArgs:
    """A filter or prioritize request: the pod, and the candidate nodes, either as Node
    objects (`nodes`; kube-scheduler with `nodeCacheCapable: false`) or by name
    (`node_names`). Exactly one of the two is given."""

    pod: Mapping[str, Any]
    nodes: NodeList | None = None
    node_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if (self.nodes is None) == (self.node_names is None):
            raise ValueError("ExtenderArgs takes either nodes or node_names, not both or neither")

    @classmethod
    def parse(cls, data: Any) -> Self:
        fields = _fields(data, "a filter or prioritize request")
        pod = _pod(fields)
        nodes = fields.get("Nodes")
        if nodes is not None:
            return cls(pod, nodes=NodeList.parse(nodes))
        names = fields.get("NodeNames")
        if names is None:
            raise BadRequest('the request has neither "Nodes" nor "NodeNames"')
        return cls(pod, node_names=_names(names, "NodeNames"))

    def dump(self) -> dict[str, Any]:
        return {
            "Pod": _obj(self.pod),
            "Nodes": None if self.nodes is None else self.nodes.dump(),
            "NodeNames": None if self.node_names is None else list(self.node_names),
        }

    def names(self) -> tuple[str, ...]:
        """The candidate nodes' names, in the request's order, whichever form it took."""
        if self.node_names is not None:
            return self.node_names
        assert self.nodes is not None
        return self.nodes.names()


@dataclass(frozen=True)
class ExtenderFilterResult:
    """A filter answer: the nodes that pass, in the form the request named them (`nodes` or
    `node_names`; neither when there is an `error`); each node that does not, with the
    reason; `failed_and_unresolvable_nodes` where preemption cannot help."""

    nodes: NodeList | None = None
    node_names: tuple[str, ...] | None = None
    failed_nodes: Mapping[str, str] = field(default_factory=dict)
    failed_and_unresolvable_nodes: Mapping[str, str] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def parse(cls, data: Any) -> Self:
        fields = _fields(data, "a filter answer")
        nodes = fields.get("Nodes")
        names = fields.get("NodeNames")
        return cls(
            nodes=None if nodes is None else NodeList.parse(nodes, "Nodes", "the answer"),
            node_names=None if names is None else _names(names, "NodeNames"),
            failed_nodes=_reasons(fields.get("FailedNodes"), "FailedNodes"),
            failed_and_unresolvable_nodes=_reasons(
                fields.get("FailedAndUnresolvableNodes"), "FailedAndUnresolvableNodes"
            ),
            error=_str(fields.get("Error"), "Error"),
        )

    def dump(self) -> dict[str, Any]:
        return {
            "Nodes": None if self.nodes is None else self.nodes.dump(),
            "NodeNames": None if self.node_names is None else list(self.node_names),
            "FailedNodes": _obj(self.failed_nodes),
            "FailedAndUnresolvableNodes": _obj(self.failed_and_unresolvable_nodes),
            "Error": self.error,
        }

    def names(self) -> tuple[str, ...]:
        """The names of the nodes that pass, whichever form the answer took."""
        if self.node_names is not None:
            return self.node_names
        return () if self.nodes is None else self.nodes.names()


@dataclass(frozen=True)
class HostPriority:
    """One node's score (kube-scheduler reads 0-10 from an extender)."""

    host: str
    score: int

    @classmethod
    def parse(cls, data: Any) -> Self:
        return cls(*_host_priority(data))

    def dump(self) -> dict[str, Any]:
        return {"Host": self.host, "Score": self.score}


@dataclass(frozen=True)
class HostPriorityList:
    """A prioritize answer: a JSON array of `HostPriority`, the i-th made of `hosts[i]` and
    `scores[i]`. Kept as the two columns, not an object per node: an answer scores every
    candidate node, thousands of them, and the extender builds one for each request (`of`
    builds one from `HostPriority`s; iterating gives them)."""

    hosts: tuple[str, ...] = ()
    scores: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if len(self.hosts) != len(self.scores):
            raise ValueError(f"{len(self.hosts)} hosts but {len(self.scores)} scores")

    @classmethod
    def of(cls, items: Iterable[HostPriority]) -> Self:
        items = tuple(items)
        return cls(tuple(h.host for h in items), tuple(h.score for h in items))

    @classmethod
    def parse(cls, data: Any) -> Self:
        if data is None:
            return cls()
        if not isinstance(data, list):
            raise BadRequest("a prioritize answer must be a JSON array")
        pairs = [_host_priority(item) for item in data]
        return cls(tuple(h for h, _ in pairs), tuple(s for _, s in pairs))

    def dump(self) -> list[dict[str, Any]]:
        return [{"Host": h, "Score": s} for h, s in zip(self.hosts, self.scores, strict=True)]

    def __iter__(self) -> Iterator[HostPriority]:
        return map(HostPriority, self.hosts, self.scores)

    def __len__(self) -> int:
        return len(self.hosts)

    def by_host(self) -> dict[str, int]:
        """Host -> score (the last one, should a host come twice)."""
        return dict(zip(self.hosts, self.scores, strict=True))


# ---- bind ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtenderBindingArgs:
    """A bind request: bind pod `pod_namespace/pod_name` (`pod_uid`) to `node`."""

    pod_name: str
    pod_namespace: str
    pod_uid: str
    node: str

    @classmethod
    def parse(cls, data: Any) -> Self:
        fields = _fields(data, "a bind request")
        namespace, name, uid, node = (
            _required(fields, key) for key in ("PodNamespace", "PodName", "PodUID", "Node")
        )
        return cls(pod_name=name, pod_namespace=namespace, pod_uid=uid, node=node)

    def dump(self) -> dict[str, Any]:
        return {
            "PodName": self.pod_name,
            "PodNamespace": self.pod_namespace,
            "PodUID": self.pod_uid,
            "Node": self.node,
        }


@dataclass(frozen=True)
class ExtenderBindingResult:
    """A bind answer: empty `error` when the pod was bound."""

    error: str = ""

    @classmethod
    def parse(cls, data: Any) -> Self:
        return cls(_str(_fields(data, "a bind answer").get("Error"), "Error"))

    def dump(self) -> dict[str, Any]:
        return {"Error": self.error}


# ---- preempt ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MetaPod:
    """A pod named by its UID alone."""

    uid: str = ""

    @classmethod
    def parse(cls, data: Any) -> Self:
        return cls(_str(_fields(data, "a MetaPod").get("UID"), "UID"))

    def dump(self) -> dict[str, Any]:
        return {"UID": self.uid}


@dataclass(frozen=True)
class Victims:
    """The pods preempted on one node (v1.Pod objects), and how many PodDisruptionBudgets
    that violates."""

    pods: tuple[Mapping[str, Any], ...] = ()
    num_pdb_violations: int = 0

    @classmethod
    def parse(cls, data: Any) -> Self:
        fields = _fields(data, "a node's Victims")
        pods = _list(fields.get("Pods"), "Pods", _pod_object)
        return cls(pods, _int64(fields.get("NumPDBViolations"), "NumPDBViolations"))

    def dump(self) -> dict[str, Any]:
        return {"Pods": [_obj(p) for p in self.pods], "NumPDBViolations": self.num_pdb_violations}


@dataclass(frozen=True)
class MetaVictims:
    """`Victims` with each pod named by its UID."""

    pods: tuple[MetaPod, ...] = ()
    num_pdb_violations: int = 0

    @classmethod
    def parse(cls, data: Any) -> Self:
        fields = _fields(data, "a node's MetaVictims")
        pods = _list(fields.get("Pods"), "Pods", MetaPod.parse)
        return cls(pods, _int64(fields.get("NumPDBViolations"), "NumPDBViolations"))

    def dump(self) -> dict[str, Any]:
        return {"Pods": [p.dump() for p in self.pods], "NumPDBViolations": self.num_pdb_violations}


@dataclass(frozen=True)
class ExtenderPreemptionArgs:
    """A preempt request: the pod, and per candidate node the pods kube-scheduler would
    preempt there, whole (`node_name_to_victims`, when the extender is not
    `nodeCacheCapable`) or by UID (`node_name_to_meta_victims`). None: the key was null."""

    pod: Mapping[str, Any]
    node_name_to_victims: Mapping[str, Victims] | None = None
    node_name_to_meta_victims: Mapping[str, MetaVictims] | None = None

    @classmethod
    def parse(cls, data: Any) -> Self:
        fields = _fields(data, "a preempt request")
        return cls(
            _pod(fields),
            _node_map(fields.get("NodeNameToVictims"), "NodeNameToVictims", Victims.parse),
            _node_map(
                fields.get("NodeNameToMetaVictims"), "NodeNameToMetaVictims", MetaVictims.parse
            ),
        )

    def dump(self) -> dict[str, Any]:
        return {
            "Pod": _obj(self.pod),
            "NodeNameToVictims": _dump_map(self.node_name_to_victims),
            "NodeNameToMetaVictims": _dump_map(self.node_name_to_meta_victims),
        }


@dataclass(frozen=True)
class ExtenderPreemptionResult:
    """A preempt answer: the nodes where preemption may go ahead, with their victims."""

    node_name_to_meta_victims: Mapping[str, MetaVictims] | None = None

    @classmethod
    def parse(cls, data: Any) -> Self:
        fields = _fields(data, "a preempt answer")
        return cls(
            _node_map(
                fields.get("NodeNameToMetaVictims"), "NodeNameToMetaVictims", MetaVictims.parse
            )
        )

    def dump(self) -> dict[str, Any]:
        return {"NodeNameToMetaVictims": _dump_map(self.node_name_to_meta_victims)}


# ---- reading and writing ------------------------------------------------------------------


#: Every key these types read: the Go field names (and v1.NodeList's `items`).
_KEYS = frozenset({
    "Pod", "Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error",
    "Host", "Score",
    "PodName", "PodNamespace", "PodUID", "Node",
    "NodeNameToVictims", "NodeNameToMetaVictims", "Pods", "NumPDBViolations", "UID",
    "items",
})  # fmt: skip
_BY_FOLD = {key.casefold(): key for key in _KEYS}


def _fields(data: Any, what: str) -> Mapping[str, Any]:
    """An object's values by the Go field names, whatever case its keys are in: Go's decoder
    matches a key to a field regardless of case (`"nodenames"` is `NodeNames`), and the last
    of two keys that match one field wins, as there. Keys no type reads are left out. Not an
    object: BadRequest, "`what` must be a JSON object"."""
    if not isinstance(data, Mapping):
        raise BadRequest(f"{what} must be a JSON object")
    if data.keys() <= _KEYS:
        return data  # as kube-scheduler writes them: nothing to match
    fields = {}
    for key, value in data.items():
        name = _BY_FOLD.get(str(key).casefold())
        if name is not None:
            fields[name] = value
    return fields


def _host_priority(data: Any) -> tuple[str, int]:
    fields = _fields(data, "each of a prioritize answer's items")
    return _str(fields.get("Host"), "Host"), _int64(fields.get("Score"), "Score")


def _pod(fields: Mapping[str, Any]) -> Mapping[str, Any]:
    pod = fields.get("Pod")
    if pod is None:
        raise BadRequest('the request has no "Pod"')
    if not isinstance(pod, Mapping):
        raise BadRequest('"Pod" must be a JSON object')
    return pod


def _pod_object(data: Any) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise BadRequest('each of "Pods" must be a JSON object (a v1.Pod)')
    return data


def _node_name(node: Mapping[str, Any]) -> str | None:
    meta = node.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    return name if isinstance(name, str) and name else None


def _names(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(n, str) for n in value):
        raise BadRequest(f'"{key}" must be a list of strings')
    return tuple(value)


def _reasons(value: Any, key: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping) or not all(isinstance(r, str) for r in value.values()):
        raise BadRequest(f'"{key}" must map node names to reasons (strings)')
    return {str(k): v for k, v in value.items()}


def _str(value: Any, key: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadRequest(f'"{key}" must be a string')
    return value


def _required(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str) or not value:
        raise BadRequest(f'the bind request has no "{key}"')
    return value


def _int64(value: Any, key: str) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f'"{key}" must be an integer')
    if not INT64_MIN <= value <= INT64_MAX:
        raise BadRequest(f'"{key}" must fit in 64 bits, got {value}')
    return value


def _list(value: Any, key: str, item: Callable[[Any], _T]) -> tuple[_T, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise BadRequest(f'"{key}" must be a list')
    return tuple(item(v) for v in value)


def _node_map(value: Any, key: str, item: Callable[[Any], _T]) -> dict[str, _T] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise BadRequest(f'"{key}" must be a JSON object (node name -> victims)')
    out = {}
    for name, victims in value.items():
        if not isinstance(victims, Mapping):
            raise BadRequest(f'"{key}" must map each node name to a JSON object')
        out[str(name)] = item(victims)
    return out


def _dump_map(value: Mapping[str, Victims | MetaVictims] | None) -> dict[str, Any] | None:
    return None if value is None else {name: v.dump() for name, v in value.items()}


def _obj(value: Mapping[str, _T]) -> dict[str, _T]:
    """A Mapping as JSON-ready: the same dict when it is one (the usual case: a pod or node
    object from `json.loads`, the reasons the extender gathered), else a shallow copy. A
    value's `dump` shares these with it rather than copy thousands of Node objects."""
    return value if isinstance(value, dict) else dict(value)
