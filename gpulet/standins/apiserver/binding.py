"""A v1 Binding, as kube-scheduler's bind posts it: the pod's spec.nodeName set, once."""

from __future__ import annotations

from gpulet.standins.apiserver.resources import PODS, JsonObject, metadata
from gpulet.standins.apiserver.status import (
    MODIFIED,
    bad_request,
    conflict,
    invalid,
    uid_precondition_failed,
)
from gpulet.standins.apiserver.store import Store


def bind(store: Store, namespace: str, subresource_name: str | None, binding: JsonObject) -> None:
    """Assign the pod the Binding names to its target node. `subresource_name`: the pod the
    path names, for pods/{name}/binding; None for the bindings collection."""
    binding_meta = metadata(binding)
    name = binding_meta.get("name")
    if subresource_name is not None and name != subresource_name:
        raise bad_request("name in URL does not match name in Binding object")
    if not name:
        raise invalid("Binding", "bindings", "", "metadata.name: Required value")
    node_ref = binding.get("target")
    node = node_ref.get("name") if isinstance(node_ref, dict) else None
    if not node:
        raise invalid("Binding", "bindings", name, "target.name: Required value")
    # The pods/{name}/binding subresource takes the Binding's uid as a precondition; the
    # collection (POST .../bindings) is a create, whose uid the API server replaces, so
    # it checks none (kube-apiserver 1.37, tests/e2e/test_standin_parity.py). Both take
    # its resourceVersion as one.
    uid = binding_meta.get("uid") if subresource_name is not None else None
    version = binding_meta.get("resourceVersion")

    def assign(pod: JsonObject) -> JsonObject:
        """The pod on the node; Conflict if it is another pod (uid) or version, or is
        already placed."""
        if uid and uid != pod["metadata"]["uid"]:
            raise uid_precondition_failed("pods/binding", name, uid, pod["metadata"]["uid"])
        if version and version != pod["metadata"].get("resourceVersion"):
            raise conflict("pods/binding", name, MODIFIED)
        assigned = (pod.get("spec") or {}).get("nodeName")
        if assigned:
            raise conflict(
                "pods/binding", name, f'pod {name} is already assigned to node "{assigned}"'
            )
        pod.setdefault("spec", {})["nodeName"] = node
        return pod

    store.update(PODS, namespace, name, assign)
