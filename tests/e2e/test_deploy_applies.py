"""Each layout of deploy/, as `kubectl apply -k` renders it, is accepted by a real
kube-apiserver (its validation, defaulting and CEL compilation of the admission policies, the
NodeTopology CRD's structural schema), on the release the suite runs against
(`make e2e-oldest`: the oldest supported)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.dynamic import DynamicClient

from tests.deploy import LAYOUTS, kustomize
from tests.e2e.conftest import World

pytestmark = pytest.mark.e2e

#: cert-manager's kinds: its CRDs are not installed here.
CERT_MANAGER = "cert-manager.io/v1"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_the_layout_applies_to_a_real_api_server(world: World, layout: str) -> None:
    dynamic: Any = DynamicClient(world.cp.api())  # type: ignore[no-untyped-call]
    applied = []
    for doc in kustomize(layout):
        if doc["apiVersion"] == CERT_MANAGER:
            continue
        resource = dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        namespace = doc["metadata"].get("namespace") if resource.namespaced else None
        # Server-side apply, dry run: validated and admitted as the real thing would be,
        # whether or not the object exists already, and nothing is stored.
        resource.server_side_apply(
            body=doc,
            namespace=namespace,
            field_manager="gpulet-test",
            force_conflicts=True,
            dry_run="All",
        )
        applied.append(f"{doc['kind']}/{doc['metadata']['name']}")
    assert {
        "CustomResourceDefinition/nodetopologies.gpulet.io",
        "DaemonSet/gpulet-agent",
        "Role/gpulet-agent-heartbeat",
        "Role/gpulet-extender-heartbeats",
        "ValidatingAdmissionPolicy/gpulet-agent",
        "ValidatingAdmissionPolicy/gpulet-node-reports",
    } <= set(applied)
