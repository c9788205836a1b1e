"""kube-scheduler's extender protocol (filter, prioritize, bind) over a `ClusterView`.

Requests are JSON documents already decoded; answers are JSON-ready. The wire facts
(capitalised keys, `Nodes` vs `NodeNames`) are in ../shared/reference/scheduler-extender-v1.md;
what this extender answers in each case is in docs/scorer.md.

Filter decides each node (`scorer.decide`) and keeps the decision for prioritize and bind,
keyed by the node's generation, so a node that has not changed is not decided twice for the
same request. Bind decides again against the node as it is then: whatever was assumed or bound
there since filter counts.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from gpulet.api.assignment import ANNOTATION, dump_assignment
from gpulet.placement import NodeState
from gpulet.placement.podspec import PodAsk, PodSpecError, pod_ask
from scorer.cluster import ClusterView, NodeInfo
from scorer.decide import Decision, Refusal, decide

log = logging.getLogger("gpulet.scorer")

#: Pod shapes whose decisions are kept (each for every node); emptied past this many.
_SHAPES = 256
#: Pods remembered from filter for a standalone bind; emptied past this many.
_CACHE_SIZE = 200_000
#: Binds re-decide and retry this often when the pod changes under them.
_BIND_ATTEMPTS = 3
#: The schedulers whose pods bind takes by default: deploy/'s gpulet-scheduler, and the
#: cluster's own for the self-managed layout (docs/scorer.md, `schedulerNames`).
DEFAULT_SCHEDULER_NAMES = ("gpulet-scheduler", "default-scheduler")


class BadRequest(ValueError):
    """A request that does not follow the protocol (HTTP 400)."""


class ApiConflict(Exception):
    """The object changed since it was read (HTTP 409 from the API server)."""


class ApiNotFound(Exception):
    """The object does not exist (HTTP 404 from the API server)."""


class PodApi(Protocol):
    """What bind needs of the API server (`scorer.kube.KubePodApi`)."""

    def get_pod(self, namespace: str, name: str) -> Mapping[str, Any]: ...

    def annotate_pod(
        self, namespace: str, name: str, resource_version: str, key: str, value: str
    ) -> None: ...

    def bind_pod(self, namespace: str, name: str, uid: str, node: str) -> None: ...


@dataclass(frozen=True)
class _Nodes:
    names: list[str]
    #: The Node objects as received, when the request sent objects (`nodeCacheCapable: false`).
    objects: list[Mapping[str, Any]] | None


class Extender:
    """`api` None: standalone, nodes come in the requests and only this extender's own
    binds count as allocations."""

    def __init__(
        self,
        view: ClusterView,
        api: PodApi | None = None,
        *,
        scheduler_names: tuple[str, ...] = DEFAULT_SCHEDULER_NAMES,
    ) -> None:
        self.view = view
        self.api = api
        #: Bind takes only pods of these schedulers (spec.schedulerName).
        self.scheduler_names = scheduler_names
        #: Per pod shape (`PodAsk.key`), per node: the decision and the node generation it
        #: was made at; and per hardware shape, whether the pod could never fit.
        self._decisions: dict[object, dict[str, tuple[int, Decision | Refusal]]] = {}
        self._empty: dict[object, dict[int, bool]] = {}
        #: The pods seen in filter and prioritize, for a standalone bind (which names only).
        self._asks: dict[str, PodAsk] = {}
        self._bind_lock = threading.Lock()

    @property
    def standalone(self) -> bool:
        return self.api is None

    # ---- filter -------------------------------------------------------------------------

    def filter(self, args: Any) -> dict[str, Any]:
        pod, nodes = self._args(args)
        passed: list[str] = []
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        try:
            ask = self._ask(pod)
        except PodSpecError as e:
            unresolvable = dict.fromkeys(nodes.names, str(e))
            return self._filter_answer(nodes, [], failed, unresolvable)
        never = self._never_fits(ask)
        for name, info, result in self._decide_all(nodes.names, ask):
            if isinstance(result, Decision):
                passed.append(name)
            elif never(info):
                unresolvable[name] = result.reason
            else:
                failed[name] = result.reason
        log.debug("event=filter pod=%s nodes=%d passed=%d", ask.ref, len(nodes.names), len(passed))
        return self._filter_answer(nodes, passed, failed, unresolvable)

    @staticmethod
    def _filter_answer(
        nodes: _Nodes, passed: list[str], failed: dict[str, str], unresolvable: dict[str, str]
    ) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "Nodes": None,
            "NodeNames": None,
            "FailedNodes": failed,
            "FailedAndUnresolvableNodes": unresolvable,
            "Error": "",
        }
        if nodes.objects is None:
            answer["NodeNames"] = passed
        else:
            keep = set(passed)
            items = [n for n in nodes.objects if _node_name(n) in keep]
            answer["Nodes"] = {"apiVersion": "v1", "kind": "NodeList", "items": items}
        return answer

    # ---- prioritize ---------------------------------------------------------------------

    def prioritize(self, args: Any) -> list[dict[str, Any]]:
        pod, nodes = self._args(args)
        try:
            ask = self._ask(pod)
        except PodSpecError:
            return [{"Host": name, "Score": 0} for name in nodes.names]
        scores = []
        for name, _, result in self._decide_all(nodes.names, ask):
            score = result.score if isinstance(result, Decision) else 0
            scores.append({"Host": name, "Score": score})
        return scores

    # ---- bind ---------------------------------------------------------------------------

    def bind(self, args: Any) -> dict[str, str]:
        """Write the assignment on the pod, then bind it; {"Error": ...} when that fails."""
        fields = _fields(args, "bind")
        namespace, name, uid, node = (
            _text(fields, key) for key in ("podnamespace", "podname", "poduid", "node")
        )
        try:
            if self.api is None:
                self._bind_standalone(uid, node)
            else:
                self._bind_api(self.api, namespace, name, uid, node)
        except ApiNotFound:
            return {"Error": f"pod {namespace}/{name} does not exist (deleted while scheduling?)"}
        except BindFailed as e:
            log.warning(
                "event=bind-failed pod=%s/%s node=%s reason=%r", namespace, name, node, str(e)
            )
            return {"Error": str(e)}
        log.info("event=bound pod=%s/%s pod_uid=%s node=%s", namespace, name, uid, node)
        return {"Error": ""}

    def _bind_standalone(self, uid: str, node: str) -> None:
        ask = self._asks.get(uid)
        if ask is None:
            raise BindFailed(f"pod {uid} was not in any filter request this extender answered")
        decision = self._decide_for_bind(ask, node)
        self.view.set_pod(uid, node, dump_assignment(decision.assignment))

    def _bind_api(self, api: PodApi, namespace: str, name: str, uid: str, node: str) -> None:
        for _ in range(_BIND_ATTEMPTS):
            pod = api.get_pod(namespace, name)
            meta = pod.get("metadata") or {}
            if meta.get("uid") != uid:
                raise BindFailed(
                    f"pod {namespace}/{name} is now another pod (uid {meta.get('uid')})"
                )
            bound = (pod.get("spec") or {}).get("nodeName")
            if bound:
                raise BindFailed(f"pod {namespace}/{name} is already bound to node {bound}")
            try:
                ask = pod_ask(pod)
            except PodSpecError as e:
                raise BindFailed(str(e)) from None
            scheduler = (pod.get("spec") or {}).get("schedulerName") or "default-scheduler"
            if scheduler not in self.scheduler_names:
                raise BindFailed(
                    f"pod {namespace}/{name} is for scheduler {scheduler!r}; this extender "
                    f"binds pods of {', '.join(self.scheduler_names)} only (schedulerNames)"
                )
            if not ask.wants:
                raise BindFailed(
                    f"pod {namespace}/{name} asks for no gpulet resource: the gpulet extender "
                    "binds only pods that do"
                )
            decision = self._decide_for_bind(ask, node)
            text = dump_assignment(decision.assignment)
            try:
                api.annotate_pod(
                    namespace, name, str(meta.get("resourceVersion") or ""), ANNOTATION, text
                )
            except ApiConflict:
                self.view.forget(uid)
                log.info("event=bind-conflict pod=%s/%s node=%s", namespace, name, node)
                continue  # the pod changed: read it again and decide again
            except BaseException:
                self.view.forget(uid)
                raise
            try:
                api.bind_pod(namespace, name, uid, node)
            except ApiConflict as e:
                self.view.forget(uid)
                raise BindFailed(
                    f"binding pod {namespace}/{name} to {node} was refused: {e}"
                ) from None
            except BaseException:
                self.view.forget(uid)
                raise
            return
        raise BindFailed(
            f"pod {namespace}/{name} changed during each of {_BIND_ATTEMPTS} attempts to bind it"
        )

    def _decide_for_bind(self, ask: PodAsk, node: str) -> Decision:
        """Decide against the node as it is now and count the decision at once (assume),
        so that a concurrent bind to the same node sees it."""
        with self._bind_lock:
            info = self.view.node(node)
            if info is None:
                raise BindFailed(f"node {node} is not known to the extender")
            self.view.forget(ask.uid)  # an earlier attempt of this pod must not count against it
            result = decide(info, self.view.state(node), ask)
            if isinstance(result, Refusal):
                raise BindFailed(f"pod {ask.ref} no longer fits node {node}: {result.reason}")
            self.view.assume(ask.uid, result.assignment)
            return result

    # ---- shared -------------------------------------------------------------------------

    def _args(self, args: Any) -> tuple[Any, _Nodes]:
        fields = _fields(args, "filter or prioritize")
        if "pod" not in fields or fields["pod"] is None:
            raise BadRequest('the request has no "Pod"')
        pod = fields["pod"]
        if not isinstance(pod, Mapping):
            raise BadRequest('"Pod" must be a JSON object')
        nodes = fields.get("nodes")
        names = fields.get("nodenames")
        if nodes is not None:
            items = nodes.get("items") if isinstance(nodes, Mapping) else None
            if not isinstance(items, list) or not all(isinstance(n, Mapping) for n in items):
                raise BadRequest('"Nodes" must be a NodeList with "items"')
            listed: list[str] = []
            for item in items:
                # Standalone, the requests are the nodes' only source. With the API server,
                # its watch is: a request's objects only name nodes among those it showed
                # (anyone who reaches the port could otherwise add or reshape nodes).
                try:
                    name = self.view.set_node_object(item) if self.standalone else _node_name(item)
                except ValueError as e:
                    raise BadRequest(str(e)) from None
                listed.append(name)
            return pod, _Nodes(listed, list(items))
        if names is None:
            raise BadRequest('the request has neither "Nodes" nor "NodeNames"')
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise BadRequest('"NodeNames" must be a list of strings')
        return pod, _Nodes(list(names), None)

    def _ask(self, pod: Mapping[str, Any]) -> PodAsk:
        ask = pod_ask(pod)
        if ask.uid:
            # A pod being scheduled is not bound: an assumption left by an earlier attempt
            # whose bind failed must not count against it.
            self.view.forget(ask.uid)
        if self.standalone and ask.uid:
            if len(self._asks) > _CACHE_SIZE:
                self._asks.clear()
            self._asks[ask.uid] = ask
        return ask

    def _decide_all(
        self, names: list[str], ask: PodAsk
    ) -> list[tuple[str, NodeInfo | None, Decision | Refusal]]:
        """Each node (None: unknown) and its decision for `ask`: kept from an earlier request
        of the same shape while the node has not changed, else made now."""
        key = ask.key
        known = self._decisions.get(key)
        if known is None:
            if len(self._decisions) > _SHAPES:
                self._decisions.clear()
            known = self._decisions[key] = {}
        out: list[tuple[str, NodeInfo | None, Decision | Refusal]] = []
        for name, (info, generation) in zip(names, self.view.nodes(names), strict=True):
            kept = known.get(name)
            if kept is not None and kept[0] == generation:
                out.append((name, info, kept[1]))
                continue
            if info is None:
                result: Decision | Refusal = Refusal(
                    f"the extender has no {name!r} node (no gpulet.io/topology seen)"
                )
            else:
                result = decide(info, self.view.state(name), ask)
                if generation >= 0:
                    known[name] = (generation, result)
            out.append((name, info, result))
        return out

    def _never_fits(self, ask: PodAsk) -> Callable[[NodeInfo | None], bool]:
        """Whether the pod would not fit a node even empty (preemption cannot help there).
        Known per hardware shape: one decision serves every node of a model."""
        known = self._empty.get(ask.key)
        if known is None:
            if len(self._empty) > _SHAPES:
                self._empty.clear()
            known = self._empty[ask.key] = {}

        def never(info: NodeInfo | None) -> bool:
            if info is None or info.placer is None:
                return True
            found = known.get(info.shape)
            if found is None:
                found = known[info.shape] = isinstance(decide(info, NodeState(), ask), Refusal)
            return found

        return never


class BindFailed(Exception):
    """A bind that did not happen; the message goes back to kube-scheduler."""


def _fields(args: Any, verb: str) -> dict[str, Any]:
    """The request's keys, lower-cased (kube-scheduler sends them capitalised; Go reads
    either way, and so do we)."""
    if not isinstance(args, Mapping):
        raise BadRequest(f"a {verb} request must be a JSON object")
    return {str(k).lower(): v for k, v in args.items()}


def _text(fields: Mapping[str, Any], key: str) -> str:
    value = fields.get(key)
    if not isinstance(value, str) or not value:
        names = {"podnamespace": "PodNamespace", "podname": "PodName", "poduid": "PodUID"}
        raise BadRequest(f'the bind request has no "{names.get(key, key.capitalize())}"')
    return value


def _node_name(node: Mapping[str, Any]) -> str:
    meta = node.get("metadata")
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        raise ValueError("a Node in the request has no metadata.name")
    return name
