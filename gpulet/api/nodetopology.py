"""Where a node's agent reports to the cluster, and how the extender finds it (docs/agent.md,
"What the agent writes to the API"):

- its topology, in a cluster-scoped `NodeTopology` (`nodetopologies.gpulet.io/v1`) named
  after the node and owned by its Node, so that it goes when the Node goes. Its `spec` is the
  topology document (docs/topology-document.md) without `apiVersion` and `kind`, which the
  object itself carries. Written when the document changes, never to say the agent is alive;
- that it is alive, in a `coordination.k8s.io/v1` Lease of its own in the install namespace,
  named `gpulet-node-<node>`, labelled so that a watch with `LEASE_SELECTOR` sees gpulet's
  Leases only, renewed every heartbeat (`renewTime`).

Its `status` carries what the agent last measured its GPUs' production leaving idle
(`idle_status`), less a safety margin: what the extender places batch slices against
(docs/colocation.md). It is written at most once a minute, and only on a change of more than
5%, by the same writer as the spec.

The previous release kept both on the Node, in the annotations `gpulet.io/topology` and
`gpulet.io/heartbeat` (`LEGACY_ANNOTATIONS`); the extender of this release still reads them,
for nodes whose agent has not been upgraded yet (docs/upgrade.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpulet.api.resources import HEARTBEAT_ANNOTATION, TOPOLOGY_ANNOTATION
from gpulet.api.share import Idle
from gpulet.api.stamps import stamp, stamp_micro

GROUP = "gpulet.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "NodeTopology"
PLURAL = "nodetopologies"
SINGULAR = "nodetopology"
SHORT_NAMES = ("ntopo",)
#: The CustomResourceDefinition's name.
CRD_NAME = f"{PLURAL}.{GROUP}"
#: The collection's path on the API server.
COLLECTION_PATH = f"/apis/{GROUP}/{VERSION}/{PLURAL}"

#: The Node annotations of the previous release, removed by an agent of this one.
LEGACY_ANNOTATIONS = (TOPOLOGY_ANNOTATION, HEARTBEAT_ANNOTATION)

LEASE_API_VERSION = "coordination.k8s.io/v1"
#: A heartbeat Lease's name: this prefix and the node's name.
LEASE_PREFIX = "gpulet-node-"
#: The longest node name a Lease can be named after (an object name is at most 253).
MAX_NODE_NAME = 253 - len(LEASE_PREFIX)
LEASE_LABELS = {
    "app.kubernetes.io/name": "gpulet-agent",
    "app.kubernetes.io/component": "heartbeat",
}
#: The label selector that picks gpulet's heartbeat Leases out of the namespace's.
LEASE_SELECTOR = ",".join(f"{k}={v}" for k, v in LEASE_LABELS.items())
#: The agent's default: a renewal every 20 s, and quiet once 60 s pass without one.
HEARTBEAT_S = 20.0
LEASE_DURATION_S = 60
#: The install namespace where none is given (the agent's and extender's `POD_NAMESPACE`).
DEFAULT_NAMESPACE = "kube-system"


def node_topology(
    node: str,
    node_uid: str,
    document: Mapping[str, Any],
    status: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The NodeTopology of `node` (whose Node has `node_uid`), from its topology document,
    with `status` (`idle_status`) where one is given."""
    spec = {k: v for k, v in document.items() if k not in ("apiVersion", "kind")}
    spec["node"] = node
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": node,
            "labels": {"app.kubernetes.io/name": "gpulet-agent"},
            # Not blockOwnerDeletion: that needs `update` on nodes/finalizers, and nothing
            # should wait for this object before the Node goes.
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid}
            ],
        },
        "spec": spec,
        **({"status": dict(status)} if status is not None else {}),
    }


#: The most GPUs a status lists (the CRD's bound on `spec.gpus` too).
MAX_GPUS = 64


def idle_status(idle: Mapping[int, Idle], measured: float) -> dict[str, Any]:
    """A NodeTopology's `status`: per GPU index, what its production leaves idle (percent
    of compute, MiB), measured at `measured` (epoch seconds)."""
    return {
        "idle": [
            {"index": i, "core": idle[i].core, "memory_mib": idle[i].memory_mib}
            for i in sorted(idle)
        ],
        "measuredAt": stamp(measured),
    }


def idle_of(obj: Mapping[str, Any]) -> dict[int, Idle]:
    """The idle room a NodeTopology's status gives each GPU (by index): {} where it has no
    status; ValueError where the status cannot be read (the API server checks its schema;
    this checks again, for an extender reading a stand-in or an older CRD)."""
    status = obj.get("status")
    if status is None:
        return {}
    entries = status.get("idle") if isinstance(status, Mapping) else None
    if not isinstance(entries, list) or len(entries) > MAX_GPUS:
        raise ValueError(f"status.idle must be a list of at most {MAX_GPUS} GPUs")
    out: dict[int, Idle] = {}
    for e in entries:
        values = [e.get(k) if isinstance(e, Mapping) else None for k in _IDLE_KEYS]
        index, core, memory = (v if type(v) is int and v >= 0 else -1 for v in values)
        if min(index, core, memory) < 0:
            raise ValueError(f"status.idle: each entry needs {', '.join(_IDLE_KEYS)} (>= 0)")
        if index in out or core > 100:
            raise ValueError(f"status.idle: GPU {index} listed twice, or with core over 100")
        out[index] = Idle(core, memory)
    return out


_IDLE_KEYS = ("index", "core", "memory_mib")


def document_of(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The topology document a NodeTopology carries (for `from_document`), named after the
    object; raises ValueError when it has no spec object."""
    spec = obj.get("spec")
    meta = obj.get("metadata")
    if not isinstance(spec, Mapping) or not isinstance(meta, Mapping):
        raise ValueError("a NodeTopology without metadata or spec")
    return {"apiVersion": API_VERSION, "kind": KIND, **spec, "node": meta.get("name")}


def owner_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the Node a NodeTopology names as its owner, or None."""
    meta = obj.get("metadata")
    refs = meta.get("ownerReferences") if isinstance(meta, Mapping) else None
    for ref in refs if isinstance(refs, list) else ():
        if isinstance(ref, Mapping) and ref.get("kind") == "Node" and ref.get("apiVersion") == "v1":
            uid = ref.get("uid")
            return uid if isinstance(uid, str) else None
    return None


def lease_name(node: str) -> str:
    """The heartbeat Lease of `node`; raises ValueError for a name too long to carry."""
    if not node or len(node) > MAX_NODE_NAME:
        raise ValueError(
            f"node name {node[:60]!r}... is {len(node)} characters: gpulet names its heartbeat "
            f"Lease {LEASE_PREFIX}<node>, which allows at most {MAX_NODE_NAME}"
        )
    return LEASE_PREFIX + node


def node_of_lease(name: str) -> str | None:
    """The node a heartbeat Lease's name is for, or None for another Lease."""
    node = name.removeprefix(LEASE_PREFIX)
    return node if node and node != name else None


def holder_identity(node: str, pod: str) -> str:
    """Who holds a node's Lease: `<node>/<agent pod>`."""
    return f"{node}/{pod}"


def lease(
    node: str,
    namespace: str,
    holder: str,
    *,
    renewed: float,
    acquired: float,
    duration_s: int = LEASE_DURATION_S,
    transitions: int = 0,
) -> dict[str, Any]:
    """The heartbeat Lease of `node`, renewed at `renewed` (epoch seconds) by `holder` (see
    `holder_identity`), which took it at `acquired`."""
    return {
        "apiVersion": LEASE_API_VERSION,
        "kind": "Lease",
        "metadata": {
            "name": lease_name(node),
            "namespace": namespace,
            "labels": dict(LEASE_LABELS),
        },
        "spec": {
            "holderIdentity": holder,
            "leaseDurationSeconds": duration_s,
            "acquireTime": stamp_micro(acquired),
            "renewTime": stamp_micro(renewed),
            "leaseTransitions": transitions,
        },
    }
