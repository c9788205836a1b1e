"""Preemption checked per GPU: whether evicting kube-scheduler's proposed victims on a node
frees a placement for the pending pod, and if not, which further victims do.

kube-scheduler's DefaultPreemption picks victims by the node-level aggregates it counts; it
cannot see that two 40% slices on different GPUs do not make room for one 60% slice. The
extender's preempt verb corrects each candidate node with `victims_for`: the proposed victims
stand, and when they are not enough it adds the fewest further pods of lower priority than the
pending pod, preferring the lowest priorities (only when no set drawn from the lowest
priorities frees a placement is the next priority drawn on), then the fewest pods, then the
newest; a node where even every lower-priority pod gone leaves no placement is dropped (None).
Pods the extender has placed but the API has not shown bound (assumptions) are never victims.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gpulet.api.share import GpuUsage
from gpulet.placement.podspec import PodAsk
from gpulet.placement.request import NodeState
from scorer.cluster import Charges, Holder, NodeInfo, charges, total
from scorer.decide import Decision, decide

#: How many victim sets one node's search may try before it settles for adding candidates in
#: preference order until the pod fits (fewer then no longer guaranteed).
SEARCH_BUDGET = 2000
#: How many one preempt request may try over all its candidate nodes: kube-scheduler may
#: send a hundred or more, and waits `httpTimeout` (10 s in the shipped configurations) for
#: the answer. About 25 µs a try on the development VM (bench/preemption.py).
REQUEST_BUDGET = 20000
#: The least a node is given, however many candidates share the request's budget.
NODE_BUDGET_FLOOR = 50
#: The most candidate nodes one request is judged on; the rest are dropped. kube-scheduler's
#: DefaultPreemption proposes at most the larger of 100 nodes and 10% of the cluster
#: (`minCandidateNodesAbsolute`, `minCandidateNodesPercentage`): 500 at 5,000 nodes. At the
#: floor's 50 tries, these cost about 0.6 s of CPU, whoever asks.
MAX_CANDIDATES = 500


def node_budget(candidates: int) -> int:
    """Each candidate node's share of one request's budget."""
    share = REQUEST_BUDGET // max(1, candidates)
    return max(NODE_BUDGET_FLOOR, min(SEARCH_BUDGET, share))


def pod_priority(pod: Mapping[str, Any]) -> int:
    """A pod's spec.priority (set by the API server from its PriorityClass); 0 without one."""
    value = (pod.get("spec") or {}).get("priority")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def victims_for(
    info: NodeInfo,
    holders: Sequence[Holder],
    ask: PodAsk,
    priority: int,
    proposed: Collection[str],
    *,
    budget: int = SEARCH_BUDGET,
) -> list[str] | None:
    """The UIDs to evict on the node so that `ask` (of `priority`) fits: `proposed` and the
    fewest further lower-priority holders, in the order of the module's docstring; None when
    no such set frees a placement."""
    fits = _Fits(info, holders, ask)
    chosen = set(proposed)
    if fits(chosen):
        return sorted(chosen)
    candidates = sorted(
        (h for h in holders if h.uid not in chosen and not h.assumed and h.priority < priority),
        key=lambda h: (h.priority, -h.created, h.uid),
    )
    if not fits(chosen | {h.uid for h in candidates}):
        return None
    tries = 0
    for level in sorted({h.priority for h in candidates}):
        pool = [h for h in candidates if h.priority <= level]
        for extra in _smallest_first(pool):
            if all(h.priority < level for h in extra):
                continue  # tried at a lower level
            tries += 1
            if tries > budget:
                return _greedy(fits, chosen, candidates)
            if fits(chosen | {h.uid for h in extra}):
                return sorted(chosen | {h.uid for h in extra})
    raise AssertionError("every candidate evicted fits, so some set must")  # pragma: no cover


def _smallest_first(pool: Sequence[Holder]) -> Iterator[tuple[Holder, ...]]:
    """Every non-empty subset of `pool`, smaller ones first; among equals, those with newer
    holders first (`pool` is sorted newest first within a priority)."""
    by_recency = sorted(pool, key=lambda h: (-h.created, h.uid))
    for size in range(1, len(by_recency) + 1):
        yield from itertools.combinations(by_recency, size)


def _greedy(fits: _Fits, chosen: set[str], candidates: Sequence[Holder]) -> list[str]:
    """Past the search's budget: candidates added in preference order until the pod fits;
    then, for each GPU, the same with that GPU's holders first, kept where it needs fewer.
    The focused passes free one GPU for a slice where the plain order takes pods from every
    GPU. The plain order's highest victim priority is already the lowest any set can have
    (fitting only gets easier with more gone), so a focused pass draws on those priorities
    only, and stops once it is no shorter."""
    best = _first_fit(fits, chosen, candidates, len(candidates) + 1)
    assert best is not None  # every candidate gone fits (the caller checked)
    level = max((h.priority for h in candidates if h.uid in best), default=-1)
    pool = [h for h in candidates if h.priority <= level]
    for index in sorted({i for h in pool for i, _ in fits.charges[h.uid].gpus}):
        on_it = [h for h in pool if any(i == index for i, _ in fits.charges[h.uid].gpus)]
        found = _first_fit(fits, chosen, on_it + [h for h in pool if h not in on_it], len(best))
        if found is not None:
            best = found
    return sorted(chosen | best)


def _first_fit(
    fits: _Fits, chosen: set[str], order: Sequence[Holder], limit: int
) -> set[str] | None:
    """The first holders of `order`, fewer than `limit`, whose eviction (with `chosen`)
    lets the pod fit; None when no such prefix does."""
    left = fits.without(chosen)
    taken: set[str] = set()
    for h in order:
        if len(taken) + 1 >= limit:
            return None
        taken.add(h.uid)
        left.give_back(fits.charges.get(h.uid))
        if fits.fits(left):
            return taken
    return None


@dataclass
class _Left:
    """A node's state as a try changes it: what is left taken once some holders are gone."""

    gpus: dict[int, GpuUsage]
    nics: dict[str, int]

    def give_back(self, taken: Charges | None) -> None:
        """Take a holder's charges out (None: not on this node, nothing to give back)."""
        if taken is None:
            return
        for index, charge in taken.gpus:
            self.gpus[index] = self.gpus[index].minus(charge)
        for key in taken.nics:
            self.nics[key] -= 1


class _Fits:
    """Whether the pod fits once a set of holders is gone: the node's state with every holder
    counted once, less the charges of those gone (a try costs its victims, not the node)."""

    def __init__(self, info: NodeInfo, holders: Sequence[Holder], ask: PodAsk) -> None:
        self.info, self.ask = info, ask
        each = charges(info, (h.assignment for h in holders))
        self.charges = dict(zip((h.uid for h in holders), each, strict=True))
        self.full = total(self.charges.values())

    def __call__(self, gone: Collection[str]) -> bool:
        return self.fits(self.without(gone))

    def without(self, gone: Collection[str]) -> _Left:
        """The node's state with `gone` evicted."""
        left = _Left(dict(self.full.gpus), dict(self.full.nic_slots))
        for uid in gone:
            left.give_back(self.charges.get(uid))
        return left

    def fits(self, left: _Left) -> bool:
        state = NodeState(gpus=left.gpus, nic_slots=left.nics, idle=self.info.idle)
        return isinstance(decide(self.info, state, self.ask), Decision)
