"""kube-scheduler's extender protocol (filter, prioritize, bind) over a `ClusterView`.

Each verb takes and gives the typed wire values of `scorer.wire` (kube-scheduler's
extender/v1 types); `scorer.server` parses the requests and serialises the answers. The wire
facts (capitalised keys, `Nodes` vs `NodeNames`) are in scorer/wire.py and docs/scorer.md;
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
from typing import Any, Protocol

from gpulet.api.assignment import ANNOTATION, dump_assignment
from gpulet.placement.podspec import PodAsk, PodSpecError, pod_ask
from scorer.cluster import ClusterView, NodeInfo
from scorer.decide import Decision, Refusal, decide, empty
from scorer.preemption import MAX_CANDIDATES, node_budget, pod_priority, victims_for
from scorer.wire import (
    BadRequest,
    ExtenderArgs,
    ExtenderBindingArgs,
    ExtenderBindingResult,
    ExtenderFilterResult,
    ExtenderPreemptionArgs,
    ExtenderPreemptionResult,
    HostPriorityList,
    MetaPod,
    MetaVictims,
    NodeList,
)

__all__ = [
    "DEFAULT_SCHEDULER_NAMES",
    "ApiConflict",
    "ApiNotFound",
    "BadRequest",  # from scorer.wire, where it lives; importable from here as before
    "BindFailed",
    "Extender",
    "PodApi",
]

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

    def filter(self, args: ExtenderArgs) -> ExtenderFilterResult:
        names = self._node_names(args)
        passed: list[str] = []
        failed: dict[str, str] = {}
        unresolvable: dict[str, str] = {}
        try:
            ask = self._ask(args.pod)
        except PodSpecError as e:
            unresolvable = dict.fromkeys(names, str(e))
            return self._filter_answer(args, names, [], failed, unresolvable)
        never = self._never_fits(ask)
        for name, info, result in self._decide_all(names, ask):
            if isinstance(result, Decision):
                passed.append(name)
            elif never(info):
                unresolvable[name] = result.reason
            else:
                failed[name] = result.reason
        log.debug("event=filter pod=%s nodes=%d passed=%d", ask.ref, len(names), len(passed))
        return self._filter_answer(args, names, passed, failed, unresolvable)

    @staticmethod
    def _filter_answer(
        args: ExtenderArgs,
        names: list[str],
        passed: list[str],
        failed: dict[str, str],
        unresolvable: dict[str, str],
    ) -> ExtenderFilterResult:
        """The nodes that pass in the form the request named them: names, or the request's
        own Node objects (`names` are theirs, in order)."""
        if args.nodes is None:
            return ExtenderFilterResult(
                node_names=tuple(passed),
                failed_nodes=failed,
                failed_and_unresolvable_nodes=unresolvable,
            )
        keep = set(passed)
        items = tuple(n for n, name in zip(args.nodes.items, names, strict=True) if name in keep)
        return ExtenderFilterResult(
            nodes=NodeList(items), failed_nodes=failed, failed_and_unresolvable_nodes=unresolvable
        )

    # ---- prioritize ---------------------------------------------------------------------

    def prioritize(self, args: ExtenderArgs) -> HostPriorityList:
        names = self._node_names(args)
        try:
            ask = self._ask(args.pod)
        except PodSpecError:
            return HostPriorityList(tuple(names), (0,) * len(names))
        scores = [
            result.score if isinstance(result, Decision) else 0
            for _, _, result in self._decide_all(names, ask)
        ]
        return HostPriorityList(tuple(names), tuple(scores))

    # ---- preempt ------------------------------------------------------------------------

    def preempt(self, args: ExtenderPreemptionArgs) -> ExtenderPreemptionResult:
        """kube-scheduler's victims per candidate node, checked per GPU (scorer.preemption):
        each node where evicting them, plus the fewest further lower-priority pods, frees a
        placement, with those victims; the others are dropped. A pod that asks for no gpulet
        resource is not this extender's to judge: its victims stand as proposed."""
        proposals: dict[str, MetaVictims] = {
            name: MetaVictims(tuple(MetaPod(_uid(p)) for p in v.pods), v.num_pdb_violations)
            for name, v in (args.node_name_to_victims or {}).items()
        }
        proposals.update(args.node_name_to_meta_victims or {})
        try:
            ask = pod_ask(args.pod)
        except PodSpecError as e:
            log.info("event=preempt-refused reason=%r", str(e))
            return ExtenderPreemptionResult({})
        if not ask.wants:
            return ExtenderPreemptionResult(proposals)
        priority = pod_priority(args.pod)
        kept: dict[str, MetaVictims] = {}
        if len(proposals) > MAX_CANDIDATES:
            log.warning(
                "event=preempt-candidates-capped pod=%s candidates=%d judged=%d",
                ask.ref,
                len(proposals),
                MAX_CANDIDATES,
            )
            proposals = dict(list(proposals.items())[:MAX_CANDIDATES])
        budget = node_budget(len(proposals))
        for name, proposal in proposals.items():
            info = self.view.node(name)
            if info is None or info.problem is not None:
                continue
            proposed = {p.uid for p in proposal.pods}
            holders = self.view.holders(name)
            found = victims_for(info, holders, ask, priority, proposed, budget=budget)
            if found is not None:
                kept[name] = MetaVictims(
                    tuple(MetaPod(uid) for uid in found), proposal.num_pdb_violations
                )
        log.info("event=preempt pod=%s candidates=%d kept=%d", ask.ref, len(proposals), len(kept))
        return ExtenderPreemptionResult(kept)

    # ---- bind ---------------------------------------------------------------------------

    def bind(self, args: ExtenderBindingArgs) -> ExtenderBindingResult:
        """Write the assignment on the pod, then bind it; the error when that fails."""
        namespace, name, uid, node = args.pod_namespace, args.pod_name, args.pod_uid, args.node
        try:
            if self.api is None:
                self._bind_standalone(uid, node)
            else:
                self._bind_api(self.api, namespace, name, uid, node)
        except ApiNotFound:
            return ExtenderBindingResult(
                f"pod {namespace}/{name} does not exist (deleted while scheduling?)"
            )
        except BindFailed as e:
            log.warning(
                "event=bind-failed pod=%s/%s node=%s reason=%r", namespace, name, node, str(e)
            )
            return ExtenderBindingResult(str(e))
        log.info("event=bound pod=%s/%s pod_uid=%s node=%s", namespace, name, uid, node)
        return ExtenderBindingResult()

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

    def _node_names(self, args: ExtenderArgs) -> list[str]:
        """The request's candidate nodes, by name. Standalone, Node objects in the request
        are the nodes' only source: each goes into the view. With the API server, its watch
        is: a request's objects only name nodes among those it showed (anyone who reaches
        the port could otherwise add or reshape nodes)."""
        try:
            if args.nodes is None or not self.standalone:
                return list(args.names())
            return [self.view.set_node_object(item) for item in args.nodes.items]
        except ValueError as e:  # a Node with no name (not from ExtenderArgs.parse, which checks)
            raise BadRequest(str(e)) from None

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
                    f"the extender has not seen node {name!r} (no Node object)"
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
                found = known[info.shape] = isinstance(decide(info, empty(info), ask), Refusal)
            return found

        return never


class BindFailed(Exception):
    """A bind that did not happen; the message goes back to kube-scheduler."""


def _uid(pod: Mapping[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("uid") or "")
