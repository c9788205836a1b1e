"""The placement objective: a lexicographic tuple of integer terms, packed into one int.

Fields, most important first (lower is better); docs/placement.md explains each:

    align       GPU-NIC distance: for every GPU the rank of its nearest chosen NIC, and for
                every NIC the rank of its nearest chosen GPU (PIX 0, PXB 1, PHB 2, NODE 3, SYS 4)
    pair_class  GPU-GPU link class over all chosen pairs (NV 0, PIX 1, PXB 2, PHB 3, NODE 4, SYS 5)
    nv_deficit  for NVLink pairs, how many links short of the node's best pair
    numa        number of NUMA nodes the GPUs and NICs span
    touched     binpack: GPUs that were idle before (prefer GPUs already in use)
    numa_broken binpack: NUMA nodes whose GPUs were all idle and now are not
    group_broken binpack: PCIe switch groups whose GPUs were all idle and now are not
    fit         binpack: core % + memory % left free on the chosen GPUs (best fit);
                spread: core % + memory % already used on them (least loaded)
    nic_load    slots already used on the chosen NICs
    order       GPU indices plus NIC positions (in natural name order): ties go to the lowest

Each field gets FIELD_BITS bits, so adding packed costs adds each field and comparing two
packed costs compares the tuples lexicographically, as long as no field overflows (the
largest node this engine takes keeps every field far below 2**FIELD_BITS).
"""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = (
    "align",
    "pair_class",
    "nv_deficit",
    "numa",
    "touched",
    "numa_broken",
    "group_broken",
    "fit",
    "nic_load",
    "order",
)
FIELD_BITS = 24
_MASK = (1 << FIELD_BITS) - 1
_SHIFT = {name: (len(FIELDS) - 1 - i) * FIELD_BITS for i, name in enumerate(FIELDS)}

#: GPU-NIC rank per PCIe class.
NIC_RANK = {"PIX": 0, "PXB": 1, "PHB": 2, "NODE": 3, "SYS": 4}
#: GPU-GPU class rank; NVLink of any count is 0.
PAIR_CLASS = {"NV": 0, "PIX": 1, "PXB": 2, "PHB": 3, "NODE": 4, "SYS": 5}


def unit(name: str) -> int:
    """The packed cost of 1 in one field."""
    return 1 << _SHIFT[name]


def pack(**terms: int) -> int:
    value = 0
    for name, amount in terms.items():
        if not 0 <= amount <= _MASK:
            raise ValueError(f"cost field {name} out of range: {amount}")
        value += amount << _SHIFT[name]
    return value


def unpack(value: int) -> dict[str, int]:
    return {name: (value >> _SHIFT[name]) & _MASK for name in FIELDS}


def pair_cost(link: str, best_nv: int) -> int:
    """Packed cost of one GPU pair joined by `link` (`NV12`, `PXB`, ...)."""
    if link.startswith("NV"):
        return pack(pair_class=0, nv_deficit=max(0, best_nv - int(link[2:])))
    return pack(pair_class=PAIR_CLASS[link])


@dataclass(frozen=True)
class Shape:
    """What bounds the cost of a request, for turning a cost into a 0-100 score."""

    gpus: int
    nics: int
    numa_nodes: int


def score(value: int, shape: Shape) -> float:
    """A 0-100 quality figure (higher is better) comparable across nodes: 40 for GPU-NIC
    alignment, 25 for GPU-GPU links, 15 for NUMA locality, 20 for packing."""
    f = unpack(value)
    k, m = shape.gpus, shape.nics
    align_q = 1.0 - f["align"] / (4 * (k + m)) if k and m else 1.0
    pairs = k * (k - 1) // 2
    pair_q = 1.0 - f["pair_class"] / (5 * pairs) if pairs else 1.0
    spread_numa = max(1, shape.numa_nodes - 1)
    numa_q = 1.0 - max(0, f["numa"] - 1) / spread_numa
    pack_q = 1.0 - min(1.0, f["fit"] / (200 * k)) if k else 1.0
    pack_q -= 0.25 * min(1.0, (f["numa_broken"] + f["group_broken"]) / max(1, 2 * k))
    total = 40 * align_q + 25 * pair_q + 15 * numa_q + 20 * max(0.0, pack_q)
    return round(max(0.0, min(100.0, total)), 2)
