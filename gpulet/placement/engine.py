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

from gpulet.api.share import GpuShare
from gpulet.placement import exhaustive
from gpulet.placement.cost import NIC_RANK, Shape, pair_cost, score, unit, unpack
from gpulet.placement.eligibility import Candidates, candidates
from gpulet.placement.locality import group_of, pix_of
from gpulet.placement.reasons import no_fit_reason
from gpulet.placement.request import (
    Capacity,
    GpuPolicy,
    NodeState,
    Request,
    TopologyPolicy,
)
from gpulet.topology import Topology

Entry = tuple[int, tuple[int, ...], tuple[str, ...]]
#: (a GPUs, b NICs) -> the cost of the cheapest way to take them, keyed `a << _B | b` so
#: that keys add. What that way is, `_Memo` records.
Table = dict[int, int]
_B = 10
_NMASK = (1 << _B) - 1

#: Tree levels, root first, and the GPU-NIC rank of a pair whose lowest common level it is.
LEVELS = ("machine", "numa", "bridge", "group", "pix")
_RANK = {"machine": 4, "numa": 3, "bridge": 2, "group": 1, "pix": 0}
_ALIGN = unit("align")


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
    # Filled once the tree is final:
    uid: int = -1
    rank_cost: int = 0
    uniform: bool = True  # all GPU pairs inside this leaf cost the same
    intra_cost: int = 0  # ... namely this
    leaf: bool = False  # a PIX cluster, or a group of one-device PIX clusters

    def walk(self) -> Iterator[_Node]:
        yield self
        for child in self.children:
            yield from child.walk()


@dataclass(frozen=True)
class Placement:
    """The chosen devices. `gpus` in index order, `nics` in the node's (natural) order,
    `numa` sorted."""

    gpus: tuple[GpuShare, ...]
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
        if len(topo.gpus) > _NMASK or len(topo.nics) > _NMASK:
            raise ValueError(f"node {topo.node}: more than {_NMASK} GPUs or NICs")
        self.topo = topo
        self.capacity = capacity or Capacity()
        self.best_nv = exhaustive.best_nv(topo)
        self._gpu_numa = {g.index: g.numa for g in topo.gpus}
        self._nic_numa = {n.key: n.numa for n in topo.nics}
        self._nic_position = {n.key: i for i, n in enumerate(topo.nics)}
        #: For each GPU index and NIC key, the uids of the tree nodes from the root to it.
        self._gpu_path: dict[int, tuple[int, ...]] = {}
        self._nic_path: dict[str, tuple[int, ...]] = {}
        self._order: list[_Node] = []
        self.root, self.hierarchical = self._build()
        #: Per GPU, the GPUs of its NUMA node and of its group (every device has a group:
        #: a switch, a root port or a slot on the root bus): what a single-GPU placement
        #: breaks when they are all idle.
        self._gpu_pristine: dict[int, tuple[frozenset[int], frozenset[int]]] = {}
        for i, path in self._gpu_path.items():
            above = {self._order[uid].level: self._order[uid] for uid in path}
            self._gpu_pristine[i] = (frozenset(above["numa"].gpus), frozenset(above["group"].gpus))

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
        for nic in topo.nics:
            loc = nic.location
            path = (nic.numa, loc.host_bridge, group_of(loc), pix_of(loc))
            paths[nic.key] = path
            node_at(path).nics.append(nic.key)
            # Whether the group is a PCIe switch: read by the restricted rule, and only for a
            # group with a NIC (whose devices all sit behind the same switch, or none).
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
        for node in root.walk():
            costs = set(node.intra.values())
            node.uniform = len(costs) <= 1
            node.intra_cost = costs.pop() if len(costs) == 1 else 0
            node.leaf = node.level == "pix"
        for group in (n for n in root.walk() if n.level == "group"):
            if all(len(c.gpus) + len(c.nics) == 1 for c in group.children):
                # One device per PIX cluster: every pair meets at the group, so the group
                # is solved as one leaf (uniform pairs, partners at the group's rank).
                group.nics = [k for c in group.children for k in c.nics]
                group.intra_cost, group.uniform, group.leaf = group.pair or 0, True, True
                group.children = []
        self._order = list(_postorder(root))
        for uid, node in enumerate(self._order):
            node.uid = uid
            node.rank_cost = _RANK[node.level] * _ALIGN
        self._record_paths(root, ())
        return root, nested

    def _record_paths(self, node: _Node, above: tuple[int, ...]) -> None:
        path = (*above, node.uid)
        if node.leaf:
            for i in node.gpus:
                self._gpu_path[i] = path
            for k in node.nics:
                self._nic_path[k] = path
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
            if req.gpus == 1 and not req.rdma and self.hierarchical:
                found = self._one_gpu(req, state, cand)
            elif self.hierarchical:
                found = self._search(req, state, cand)
            else:
                found = exhaustive.search(self.topo, req, state, cand, self.best_nv)
        if found is None:
            return NoFit(no_fit_reason(self.topo, req, cand))
        cost, gpus, nics = found
        numa = {self._gpu_numa[i] for i in gpus} | {self._nic_numa[k] for k in nics}
        shape = Shape(req.gpus, req.rdma, len(self.topo.numa_nodes))
        return Placement(
            gpus=tuple(cand.gpus[i][0] for i in sorted(gpus)),
            nics=tuple(sorted(nics, key=self._nic_position.__getitem__)),
            numa=tuple(sorted(numa)),
            cost=cost,
            score=score(cost, shape),
        )

    def _one_gpu(self, req: Request, state: NodeState, cand: Candidates) -> Entry:
        """One GPU and no NIC, the commonest request (an inference slice): what the tree
        search would find, without the tables. No pair, no NIC, one NUMA node: the cost is
        the GPU's own, plus, when binpacking, the pristine NUMA node and group it breaks."""
        best: tuple[int, int] | None = None
        busy: frozenset[int] | None = None
        if req.gpu_policy is GpuPolicy.BINPACK:
            busy = frozenset(i for i, use in state.gpus.items() if not use.idle)
        for i, (_, unary) in cand.gpus.items():
            cost = unary + _NUMA
            if busy is not None:
                numa, group = self._gpu_pristine[i]
                if busy.isdisjoint(numa):
                    cost += _NUMA_BROKEN
                if busy.isdisjoint(group):
                    cost += _GROUP_BROKEN
            if best is None or cost < best[0]:
                best = (cost, i)
        assert best is not None  # the caller checked that a GPU is eligible
        return best[0], (best[1],), ()

    def _search(self, req: Request, state: NodeState, cand: Candidates) -> Entry | None:
        """Fill the cost tables bottom-up over the subtrees that hold an eligible device,
        then follow the recorded choices down from the best entry."""
        k, m = req.gpus, req.rdma
        target = k << _B | m
        gpu_buckets: dict[int, list[tuple[int, int]]] = {}
        nic_buckets: dict[int, list[tuple[int, str]]] = {}
        # Eligible GPUs and NICs in each subtree; a subtree is live when it has any.
        inside = [0] * len(self._order)
        for i, (_, unary) in cand.gpus.items():
            path = self._gpu_path[i]
            gpu_buckets.setdefault(path[-1], []).append((unary, i))
            for uid in path:
                inside[uid] += 1 << _B
        for key, unary in cand.nics.items():
            path = self._nic_path[key]
            nic_buckets.setdefault(path[-1], []).append((unary, key))
            for uid in path:
                inside[uid] += 1
        total = inside[self.root.uid]
        busy = frozenset(i for i, use in state.gpus.items() if not use.idle)
        ctx = _Context(
            k,
            m,
            restricted=req.topology is TopologyPolicy.RESTRICTED,
            binpack=req.gpu_policy is GpuPolicy.BINPACK,
            busy=busy,
            memo=_Memo(),
        )
        single = req.topology is TopologyPolicy.SINGLE_NUMA
        tables: dict[int, Table] = {}
        best: tuple[int, int] | None = None  # (cost, uid of the NUMA node) for single-numa
        for node in self._order:
            uid = node.uid
            if not inside[uid]:
                continue
            if node.leaf:
                table = _leaf(node, gpu_buckets.get(uid), nic_buckets.get(uid), ctx)
            elif single and node.level == "machine":
                break
            else:
                kids = [
                    (c.uid, tables[c.uid], inside[c.uid])
                    for c in node.children
                    if inside[c.uid] and tables[c.uid].keys() != {0}  # not just "none"
                ]
                root = node.level == "machine" or (single and node.level == "numa")
                # What the rest of the node cannot supply, this subtree must.
                outside = total - inside[uid]
                need = (max(0, k - (outside >> _B)), max(0, m - (outside & _NMASK)))
                table = _merge(node, kids, ctx, need, target if root else None)
            table = _finish(node, table, ctx)
            if single and node.level == "numa":
                cost = table.get(target)
                if cost is not None and (best is None or cost < best[0]):
                    best = (cost, uid)
            tables[uid] = table
        if single:
            if best is None:
                return None
            cost, top = best
        else:
            top = self.root.uid
            found = tables[top].get(target)
            if found is None:
                return None
            cost = found
        gpus: list[int] = []
        nics: list[str] = []
        ctx.memo.follow(top, target, gpus, nics)
        return cost, tuple(gpus), tuple(nics)


#: How a merged table was made: per child, in merge order, its uid and for each key of the
#: table after that child the key before it (`None`: the child's table was taken whole).
Steps = list[tuple[int, dict[int, int] | None]]


@dataclass
class _Memo:
    """The choices behind every table of one search, so that tables hold bare costs and
    the chosen devices are found once, for the winning entry only."""

    picks: dict[int, dict[int, tuple[tuple[int, ...], tuple[str, ...]]]] = field(
        default_factory=dict
    )
    steps: dict[int, Steps] = field(default_factory=dict)

    def follow(self, uid: int, key: int, gpus: list[int], nics: list[str]) -> None:
        """Append the devices behind entry `key` of subtree `uid`."""
        leaf = self.picks.get(uid)
        if leaf is not None:
            chosen_gpus, chosen_nics = leaf[key]
            gpus.extend(chosen_gpus)
            nics.extend(chosen_nics)
            return
        for child, back in reversed(self.steps[uid]):
            before = 0 if back is None else back[key]
            if key != before:
                self.follow(child, key - before, gpus, nics)
            key = before


@dataclass(frozen=True)
class _Context:
    """What every step of one search needs to know about the request."""

    gpus: int
    nics: int
    restricted: bool
    binpack: bool
    #: GPUs that carry any allocation: a node none of whose GPUs is busy is pristine.
    busy: frozenset[int]
    #: The choices behind this search's tables.
    memo: _Memo


def _merge(
    node: _Node,
    kids: list[tuple[int, Table, int]],
    ctx: _Context,
    need: tuple[int, int],
    target: int | None,
) -> Table:
    """Combine the children's tables: every way to split (a, b) among them, plus the
    GPU pairs that meet at this node. States below `need` (what the rest of the node cannot
    supply) are dropped; with a target, only the target is kept."""
    if not kids:
        return {0: 0}
    if not all(table for _, table, _ in kids):
        return {}  # a subtree that must give something cannot: nothing fits here
    if len(kids) == 1:
        ctx.memo.steps[node.uid] = [(kids[0][0], None)]
        return kids[0][1]  # the rank charged below would be taken back whole
    k, m = ctx.gpus, ctx.nics
    rank_cost, pair = node.rank_cost, node.pair or 0
    merged: Table = {0: 0}
    steps: Steps = []
    ctx.memo.steps[node.uid] = steps
    last = len(kids) - 1
    # Room: at most how many GPUs and NICs the children after this one can give (their
    # eligible devices, packed like keys), to prune toward `need`.
    bounded = need != (0, 0)
    rooms = sum(room for _, _, room in kids)
    room_g, room_n = rooms >> _B, rooms & _NMASK
    for i, (uid, table, room) in enumerate(kids):
        # A child's unpartnered devices are charged this node's rank now; where the whole
        # subtree ends up with only one kind of device the charge is undone below.
        items = []
        for key, cost in table.items():
            if key:  # the (0, 0) state is handled in bulk below
                a, b = key >> _B, key & _NMASK
                items.append((key, a, b, cost + rank_cost * (a if not b else b if not a else 0)))
        # Taking nothing from a subtree costs nothing (every term is charged for a chosen
        # device), but pruning may have dropped that state.
        can_skip = 0 in table
        if target is not None and i == last:
            # Last child at the root: only the target is wanted, so look it up.
            wanted = {key: c for key, _, _, c in items}
            if can_skip:
                wanted[0] = 0
            ta = target >> _B
            found: tuple[int, int] | None = None
            for mkey, mc in merged.items():
                hit = wanted.get(target - mkey)
                if hit is not None:
                    ma = mkey >> _B
                    total = mc + hit + pair * ma * (ta - ma)
                    if found is None or total < found[0]:
                        found = (total, mkey)
            merged = {} if found is None else {target: found[0]}
            steps.append((uid, {} if found is None else {target: found[1]}))
            break
        need_g = need_n = 0
        if bounded:
            room_g -= room >> _B
            room_n -= room & _NMASK
            need_g, need_n = need[0] - room_g, need[1] - room_n
        # Taking nothing from this child keeps every state as it is: copy those in bulk,
        # then try the child's other states.
        costs: Table = {}
        back: dict[int, int] = {}
        if can_skip:
            for mkey, mc in merged.items():
                if mkey >> _B >= need_g and mkey & _NMASK >= need_n:
                    costs[mkey] = mc
                    back[mkey] = mkey
        for mkey, base in merged.items():
            ma, mb = mkey >> _B, mkey & _NMASK
            a_lo, a_hi, b_lo, b_hi = need_g - ma, k - ma, need_n - mb, m - mb
            per_gpu = pair * ma
            for key, a, b, c in items:
                if a_lo <= a <= a_hi and b_lo <= b <= b_hi:
                    total = base + c + per_gpu * a
                    cur = costs.get(mkey + key)
                    if cur is None or total < cur:
                        costs[mkey + key] = total
                        back[mkey + key] = mkey
        merged = costs
        steps.append((uid, back))
    for a in range(1, k + 1):
        if a << _B in merged:
            merged[a << _B] -= rank_cost * a
    for b in range(1, m + 1):
        if b in merged:
            merged[b] -= rank_cost * b
    return merged


_NUMA = unit("numa")
_NUMA_BROKEN = unit("numa_broken")
_GROUP_BROKEN = unit("group_broken")


def _finish(node: _Node, merged: Table, ctx: _Context) -> Table:
    """The terms a group or NUMA node adds: the restricted rule, NUMA count, broken
    pristine groups and NUMA nodes."""
    pristine = ctx.binpack and ctx.busy.isdisjoint(node.gpus)
    if node.level == "group":
        if not ctx.restricted and not pristine:
            return merged
        out: Table = {}
        for key, c in merged.items():
            has_gpu, has_nic = key >> _B, key & _NMASK
            if ctx.restricted and has_gpu and (not has_nic or not node.switched):
                continue
            out[key] = c + _GROUP_BROKEN if pristine and has_gpu else c
        return out
    if node.level == "numa":
        broken = _NUMA + _NUMA_BROKEN if pristine else _NUMA
        return {
            key: c + (broken if key >> _B else _NUMA if key else 0) for key, c in merged.items()
        }
    return merged


def _leaf(
    node: _Node,
    gpus: list[tuple[int, int]] | None,
    nics: list[tuple[int, str]] | None,
    ctx: _Context,
) -> Table:
    """A leaf: its eligible devices (unary cost, id) are interchangeable but for their own
    cost and, where NVLink differs between them, their pairs. With both GPUs and NICs taken,
    each is charged the leaf's rank (0 in a PIX cluster, PXB in a group of them)."""
    table: Table = {0: 0}
    # Only chosen devices are looked up (`_Memo.follow` skips an empty share).
    picks: dict[int, tuple[tuple[int, ...], tuple[str, ...]]] = {}
    ctx.memo.picks[node.uid] = picks
    if (not gpus or len(gpus) == 1) and (not nics or len(nics) == 1):
        # The common case (every group of a DGX): at most one GPU and one NIC.
        if gpus and ctx.gpus:
            table[1 << _B] = gpus[0][0]
            picks[1 << _B] = ((gpus[0][1],), ())
        if nics and ctx.nics:
            table[1] = nics[0][0]
            picks[1] = ((), (nics[0][1],))
            if gpus and ctx.gpus:
                table[1 << _B | 1] = gpus[0][0] + nics[0][0] + 2 * node.rank_cost
                picks[1 << _B | 1] = ((gpus[0][1],), (nics[0][1],))
        return table
    gpus = sorted(gpus) if gpus else []
    nics = sorted(nics) if nics else []
    gpu_best: list[tuple[int, tuple[int, ...]]] = [(0, ())]
    total = 0
    for a in range(1, min(ctx.gpus, len(gpus)) + 1):
        if node.uniform:
            total += gpus[a - 1][0] + node.intra_cost * (a - 1)
            gpu_best.append((total, tuple(i for _, i in gpus[:a])))
            continue
        best: tuple[int, tuple[int, ...]] | None = None
        for pick in combinations(gpus, a):
            cost = sum(u for u, _ in pick)
            chosen = sorted(i for _, i in pick)
            for x, y in combinations(chosen, 2):
                cost += node.intra[(x, y)]
            if best is None or cost < best[0]:
                best = (cost, tuple(chosen))
        assert best is not None
        gpu_best.append(best)
    nic_cost = 0
    for b in range(min(ctx.nics, len(nics)) + 1):
        if b:
            nic_cost += nics[b - 1][0]
        names = tuple(k for _, k in nics[:b])
        for a, (g_cost, picked) in enumerate(gpu_best):
            align = node.rank_cost * (a + b) if a and b else 0
            table[a << _B | b] = g_cost + nic_cost + align
            picks[a << _B | b] = (picked, names)
    return table


def _postorder(node: _Node) -> Iterator[_Node]:
    for child in node.children:
        yield from _postorder(child)
    yield node


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
