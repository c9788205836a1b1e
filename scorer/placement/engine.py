"""The placement engine: the exact optimum of the objective in `cost`, by a tree search.

The link classes nest: two devices are PIX inside one PIX cluster, PXB inside one group
(root port), PHB inside one host bridge, NODE inside one NUMA node, SYS otherwise. So the
cost of a choice splits over the tree machine > NUMA > host bridge > group > PIX cluster,
and a dynamic program over that tree, keeping for every subtree the cheapest way to take
`a` GPUs and `b` NICs from it, finds the optimum in a few thousand steps where the plain
search would take millions. A GPU with no chosen NIC in its own subtree is charged the
rank of the first ancestor that has one; see docs/placement.md for the whole argument.

`Placer` checks at construction that the node's link matrix really nests this way (it does
for every PCIe tree; an NVLink mesh across switches can break it) and otherwise falls back
to `exhaustive.search`, which is exact but slower.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import combinations

from gpulet.topology import Topology
from scorer.placement import exhaustive
from scorer.placement.cost import NIC_RANK, Shape, pair_cost, score, unit, unpack
from scorer.placement.eligibility import Candidates, GpuGrant, candidates
from scorer.placement.locality import group_of, pix_of
from scorer.placement.reasons import no_fit_reason
from scorer.placement.request import (
    Capacity,
    GpuPolicy,
    NodeState,
    Request,
    TopologyPolicy,
)

Entry = tuple[int, tuple[int, ...], tuple[str, ...]]
Table = dict[tuple[int, int], Entry]

#: Tree levels, root first, and the GPU-NIC rank of a pair whose lowest common level it is.
LEVELS = ("machine", "numa", "bridge", "group", "pix")
_RANK = {"machine": 4, "numa": 3, "bridge": 2, "group": 1, "pix": 0}
_ALIGN = unit("align")
_EMPTY: Table = {(0, 0): (0, (), ())}


@dataclass
class _Node:
    level: str
    key: object
    children: list[_Node] = field(default_factory=list)
    gpus: list[int] = field(default_factory=list)  # every GPU in the subtree
    nics: list[str] = field(default_factory=list)  # NICs of a PIX cluster
    pair: int | None = None  # packed cost of a GPU pair whose lowest common node this is
    intra: dict[tuple[int, int], int] = field(default_factory=dict)  # PIX cluster pairs
    numa: int = -1
    switched: bool = False

    def walk(self) -> Iterator[_Node]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class Placement:
    """The chosen devices. `gpus` in index order, `nics` by name, `numa` sorted."""

    gpus: tuple[GpuGrant, ...]
    nics: tuple[str, ...]
    numa: tuple[int, ...]
    cost: int
    score: float

    @property
    def fits(self) -> bool:
        return True

    def cost_terms(self) -> dict[str, int]:
        return unpack(self.cost)


@dataclass(frozen=True)
class NoFit:
    reason: str

    @property
    def fits(self) -> bool:
        return False


class Placer:
    """Places requests on one node. Build once per topology; `place` is pure."""

    def __init__(self, topo: Topology, capacity: Capacity | None = None) -> None:
        self.topo = topo
        self.capacity = capacity or Capacity()
        self.best_nv = exhaustive.best_nv(topo)
        #: For each device ("g<index>", "n<key>"), the ids of the tree nodes above it.
        self._paths: dict[str, tuple[int, ...]] = {}
        self.root, self.hierarchical = self._build()

    # -- construction -------------------------------------------------------------------

    def _build(self) -> tuple[_Node, bool]:
        topo = self.topo
        root = _Node("machine", None)
        index: dict[tuple[object, ...], _Node] = {(): root}
        paths: dict[str, tuple[object, ...]] = {}

        def node_at(path: tuple[object, ...]) -> _Node:
            if path not in index:
                parent = node_at(path[:-1])
                made = _Node(LEVELS[len(path)], path[-1], numa=int(str(path[0])))
                parent.children.append(made)
                index[path] = made
            return index[path]

        for gpu in topo.gpus:
            loc = gpu.location
            path = (gpu.numa, loc.host_bridge, group_of(loc), pix_of(loc))
            paths[gpu.name] = path
            for depth in range(len(path) + 1):
                node_at(path[:depth]).gpus.append(gpu.index)
            node_at(path[:3]).switched = loc.switch is not None
        for nic in topo.nics:
            loc = nic.location
            path = (nic.numa, loc.host_bridge, group_of(loc), pix_of(loc))
            paths[nic.key] = path
            node_at(path).nics.append(nic.key)
            node_at(path[:3]).switched = loc.switch is not None
        for node in root.walk():
            node.children.sort(key=lambda n: str(n.key))

        nested = True
        for gpu in topo.gpus:
            gp = paths[gpu.name]
            for nic in topo.nics:
                depth = _common(gp, paths[nic.key])
                if NIC_RANK.get(topo.link(gpu.name, nic.key)) != _RANK[LEVELS[depth]]:
                    nested = False
        for a, b in combinations(topo.gpus, 2):
            depth = _common(paths[a.name], paths[b.name])
            node = index[paths[a.name][:depth]]
            cost = pair_cost(topo.link(a.name, b.name), self.best_nv)
            if node.level == "pix":
                node.intra[(a.index, b.index)] = cost
            elif node.pair is None:
                node.pair = cost
            elif node.pair != cost:
                nested = False
        _compress(root)
        self._record_paths(root, ())
        return root, nested

    def _record_paths(self, node: _Node, above: tuple[int, ...]) -> None:
        path = (*above, id(node))
        if node.level == "pix":
            for i in node.gpus:
                self._paths[f"g{i}"] = path
            for k in node.nics:
                self._paths[f"n{k}"] = path
        for child in node.children:
            self._record_paths(child, path)

    # -- placing ------------------------------------------------------------------------

    def place(self, req: Request, state: NodeState | None = None) -> Placement | NoFit:
        """The best assignment for `req` on this node, or why it does not fit.
        Raises RequestError for a request that is invalid on any node."""
        req.validate()
        state = state or NodeState()
        cand = candidates(self.topo, req, state, self.capacity)
        found: Entry | None = None
        if len(cand.gpus) >= req.gpus and len(cand.nics) >= req.rdma:
            if self.hierarchical:
                found = self._search(req, state, cand)
            else:
                found = exhaustive.search(self.topo, req, state, cand)
        if found is None:
            return NoFit(no_fit_reason(self.topo, req, cand))
        cost, gpus, nics = found
        by_index = {g.index: g for g in self.topo.gpus}
        by_key = {n.key: n for n in self.topo.nics}
        numa = {by_index[i].numa for i in gpus} | {by_key[k].numa for k in nics}
        shape = Shape(req.gpus, req.rdma, len(self.topo.numa_nodes))
        return Placement(
            gpus=tuple(cand.gpus[i][0] for i in sorted(gpus)),
            nics=tuple(sorted(nics)),
            numa=tuple(sorted(numa)),
            cost=cost,
            score=score(cost, shape),
        )

    def _search(self, req: Request, state: NodeState, cand: Candidates) -> Entry | None:
        target = (req.gpus, req.rdma)
        # Only subtrees holding an eligible device are searched.
        live: set[int] = set()
        for i in cand.gpus:
            live.update(self._paths[f"g{i}"])
        for k in cand.nics:
            live.update(self._paths[f"n{k}"])
        if req.topology is TopologyPolicy.SINGLE_NUMA:
            best: Entry | None = None
            for numa in self.root.children:
                if id(numa) not in live:
                    continue
                entry = self._table(numa, req, state, cand, live=live, target=target).get(target)
                if entry is not None and (best is None or entry[0] < best[0]):
                    best = entry
            return best
        return self._table(self.root, req, state, cand, live=live, target=target).get(target)

    def _table(
        self,
        node: _Node,
        req: Request,
        state: NodeState,
        cand: Candidates,
        *,
        live: set[int],
        target: tuple[int, int] | None = None,
    ) -> Table:
        """For every (a, b) this subtree can give, the cheapest way to take a GPUs and b
        NICs from it. Devices with no partner inside the subtree are not charged yet.
        With a `target`, only that (a, b) is wanted and the merges are pruned to it."""
        if node.level == "pix":
            return self._leaf(node, req, cand)
        tables = [
            self._table(child, req, state, cand, live=live)
            for child in node.children
            if id(child) in live
        ]
        merged = self._merge(node, [t for t in tables if len(t) > 1], req, target)
        return self._finish(node, merged, req, state)

    def _merge(
        self, node: _Node, tables: list[Table], req: Request, target: tuple[int, int] | None
    ) -> Table:
        if not tables:
            return _EMPTY
        if len(tables) == 1:
            return tables[0]  # the rank charged below would be taken back whole
        k, m = req.gpus, req.rdma
        rank_cost = _RANK[node.level] * _ALIGN
        pair = node.pair or 0
        room_g = [max(a for a, _ in t) for t in tables]
        room_n = [max(b for _, b in t) for t in tables]
        merged: Table = {(0, 0): (0, (), ())}
        for i, table in enumerate(tables):
            # A child's unpartnered devices are charged this node's rank now; where the
            # whole subtree ends up with only one kind of device the charge is undone below.
            items = [
                (a, b, c + rank_cost * (a if not b else b if not a else 0), g, n)
                for (a, b), (c, g, n) in table.items()
            ]
            out: Table = {}
            if target is not None and i == len(tables) - 1:
                # Last child at the root: only the target is wanted, so look it up.
                wanted = {(a, b): (c, g, n) for a, b, c, g, n in items}
                for (ma, mb), (mc, mg, mn) in merged.items():
                    hit = wanted.get((target[0] - ma, target[1] - mb))
                    if hit is None:
                        continue
                    total = mc + hit[0] + pair * ma * (target[0] - ma)
                    if target not in out or total < out[target][0]:
                        out[target] = (total, mg + hit[1], mn + hit[2])
                merged = out
                break
            need_g = need_n = 0
            if target is not None:
                need_g = target[0] - sum(room_g[i + 1 :])
                need_n = target[1] - sum(room_n[i + 1 :])
            for (ma, mb), (mc, mg, mn) in merged.items():
                for a, b, c, g, n in items:
                    ta, tb = ma + a, mb + b
                    if ta > k or tb > m or ta < need_g or tb < need_n:
                        continue
                    total = mc + c + pair * ma * a
                    key = (ta, tb)
                    cur = out.get(key)
                    if cur is None or total < cur[0]:
                        out[key] = (total, mg + g, mn + n)
            merged = out
        for (a, b), (c, g, n) in list(merged.items()):
            if a and not b:
                merged[(a, b)] = (c - rank_cost * a, g, n)
            elif b and not a:
                merged[(a, b)] = (c - rank_cost * b, g, n)
        return merged

    def _finish(self, node: _Node, merged: Table, req: Request, state: NodeState) -> Table:
        if node.level not in {"group", "numa"}:
            return merged
        binpack = req.gpu_policy is GpuPolicy.BINPACK
        pristine = binpack and all(state.gpu(i).idle for i in node.gpus)
        out: Table = {}
        for (a, b), (c, g, n) in merged.items():
            if node.level == "group":
                if req.topology is TopologyPolicy.RESTRICTED and a and (not b or not node.switched):
                    continue
                if pristine and a:
                    c += unit("group_broken")
            elif node.level == "numa":
                if a or b:
                    c += unit("numa")
                if pristine and a:
                    c += unit("numa_broken")
            out[(a, b)] = (c, g, n)
        return out

    def _leaf(self, node: _Node, req: Request, cand: Candidates) -> Table:
        gpus = sorted((cand.gpus[i][1], i) for i in node.gpus if i in cand.gpus)
        nics = sorted((cand.nics[k], k) for k in node.nics if k in cand.nics)
        if not gpus and not nics:
            return _EMPTY
        gpu_best: list[tuple[int, tuple[int, ...]]] = []
        costs = set(node.intra.values())
        for a in range(min(req.gpus, len(gpus)) + 1):
            uniform = len(costs) <= 1
            chosen = [gpus[:a]] if uniform else [list(c) for c in combinations(gpus, a)]
            best: tuple[int, tuple[int, ...]] | None = None
            for pick in chosen:
                total = sum(u for u, _ in pick)
                for x, y in combinations(sorted(i for _, i in pick), 2):
                    total += node.intra[(x, y)]
                if best is None or total < best[0]:
                    best = (total, tuple(i for _, i in pick))
            assert best is not None
            gpu_best.append(best)
        table: Table = {}
        for b in range(min(req.rdma, len(nics)) + 1):
            nic_cost = sum(u for u, _ in nics[:b])
            names = tuple(k for _, k in nics[:b])
            for a, (g_cost, picked) in enumerate(gpu_best):
                table[(a, b)] = (g_cost + nic_cost, picked, names)
        return table


def _compress(node: _Node) -> None:
    """Drop host-bridge nodes with one child: merging one table is the identity there."""
    for i, child in enumerate(node.children):
        while child.level == "bridge" and len(child.children) == 1:
            child = child.children[0]
        node.children[i] = child
        _compress(child)


def _common(p: tuple[object, ...], q: tuple[object, ...]) -> int:
    depth = 0
    for x, y in zip(p, q, strict=True):
        if x != y:
            break
        depth += 1
    return depth


def place(
    topo: Topology,
    req: Request,
    state: NodeState | None = None,
    capacity: Capacity | None = None,
) -> Placement | NoFit:
    """One-off placement; build a `Placer` to place many requests on one node."""
    return Placer(topo, capacity).place(req, state)
