"""The NodeTopology schema (gpulet/topology/schema.py) checked against the document's writer
and parser: the API server keeps every field `to_document` writes (none pruned), admits
every document it writes, and refuses every document the parser would refuse for a missing
or mistyped field, so nothing the extender cannot read is ever stored."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpulet.api import nodetopology as nt
from gpulet.kube.crd import node_topology_crd
from gpulet.topology.document import DocumentError, from_document, to_document
from gpulet.topology.schema import SPEC_SCHEMA
from tests.nodes import SHIPPED, shipped
from tests.strategies import topologies

Path = tuple[str | int, ...]


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI v3 schema as JSON Schema: `nullable` becomes a null type."""
    out = {k: v for k, v in schema.items() if k not in ("nullable", "format")}
    if schema.get("nullable"):
        out["type"] = [schema["type"], "null"]
    if "properties" in schema:
        out["properties"] = {k: json_schema(v) for k, v in schema["properties"].items()}
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out[key] = json_schema(schema[key])
    return out


VALIDATOR = jsonschema.Draft4Validator(json_schema(SPEC_SCHEMA))


def spec_of(document: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = nt.node_topology("node-a", "uid-a", document)["spec"]
    return spec


def refusal(spec: dict[str, Any]) -> str | None:
    """Why the parser refuses `spec`, or None."""
    try:
        from_document(nt.document_of({"metadata": {"name": "node-a"}, "spec": spec}))
    except DocumentError as e:
        return str(e)
    return None


def unknown_fields(value: Any, schema: dict[str, Any], path: Path = ()) -> Iterator[Path]:
    """Where `value` has a field the schema does not name (the API server would prune it)."""
    if isinstance(value, dict):
        props = schema.get("properties")
        for key, item in value.items():
            if props is not None and key in props:
                yield from unknown_fields(item, props[key], (*path, key))
            elif isinstance(schema.get("additionalProperties"), dict):
                yield from unknown_fields(item, schema["additionalProperties"], (*path, key))
            else:
                yield (*path, key)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from unknown_fields(item, schema.get("items", {}), (*path, i))


def leaves(value: Any, path: Path = ()) -> Iterator[Path]:
    """Every field's path, containers included."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield (*path, key)
            yield from leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from leaves(item, (*path, i))


def changed(spec: dict[str, Any], path: Path, value: Any = None, *, drop: bool = False) -> Any:
    out = copy.deepcopy(spec)
    parent: Any = out
    for key in path[:-1]:
        parent = parent[key]
    if drop:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return out


@pytest.mark.parametrize("node", SHIPPED)
def test_every_shipped_node_is_admitted_whole(node: str) -> None:
    spec = spec_of(to_document(shipped(node)))
    VALIDATOR.validate(spec)
    assert list(unknown_fields(spec, SPEC_SCHEMA)) == []


@settings(max_examples=60, deadline=None)
@given(topologies())
def test_every_written_document_is_admitted_whole(topo: Any) -> None:
    spec = spec_of(to_document(topo))
    VALIDATOR.validate(spec)
    assert list(unknown_fields(spec, SPEC_SCHEMA)) == []


def _refused(spec: Any) -> bool:
    return not VALIDATOR.is_valid(spec)


@pytest.mark.parametrize("node", ["dgx-h100", "pcie-4gpu"])
def test_a_field_the_parser_needs_is_one_the_schema_requires(node: str) -> None:
    spec = spec_of(to_document(shipped(node)))
    # The link matrix is checked against the tree, which no schema can say: not here.
    needed = [
        p
        for p in leaves(spec)
        if isinstance(p[-1], str)
        and "missing field" in (refusal(changed(spec, p, drop=True)) or "")
    ]
    assert needed, "the parser needs some fields"
    for path in needed:
        assert _refused(changed(spec, path, drop=True)), f"{path}: the parser needs it"


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_a_mistyped_field_the_parser_refuses_the_schema_refuses(data: st.DataObject) -> None:
    spec = spec_of(to_document(shipped("dgx-h100")))
    # Not `links` (checked against the tree) nor the CPU lists (their syntax is the parser's).
    paths = [p for p in leaves(spec) if p[0] != "links" and p[-1] != "cpus"]
    path = data.draw(st.sampled_from(paths))
    wrong = data.draw(st.sampled_from(["text", 7, -3, 2.5, True, None, [], {}, [1], {"k": "v"}]))
    mutated = changed(spec, path, wrong)
    # A refusal for the value's type, not for what it means (a NUMA node that changes the
    # link matrix, a duplicate index): those no schema can say.
    if "expected" in (refusal(mutated) or ""):
        assert _refused(mutated), f"{path} = {wrong!r}: the parser refuses it"


def test_the_crd_carries_the_spec_schema_for_its_one_version() -> None:
    crd = node_topology_crd()
    (version,) = crd["spec"]["versions"]
    assert crd["metadata"]["name"] == nt.CRD_NAME == f"{nt.PLURAL}.{nt.GROUP}"
    assert crd["spec"]["scope"] == "Cluster"
    assert version["name"] == nt.VERSION and version["served"] and version["storage"]
    assert version["schema"]["openAPIV3Schema"]["properties"]["spec"] == SPEC_SCHEMA


@pytest.mark.parametrize(
    ("path", "huge"),
    [
        (("links",), {f"GPU{i}": {} for i in range(400)}),
        (("links", "GPU0"), {f"GPU{i}": "X" for i in range(400)}),
        (("gpus", 0, "nvlink_peers"), {str(i): 1 for i in range(400)}),
    ],
)
def test_a_map_no_node_could_have_is_refused(path: Path, huge: dict[str, Any]) -> None:
    """A compromised agent may not store a NodeTopology the extender would spend long on: its
    maps are bounded like its lists (a key per GPU or NIC port at most)."""
    spec = spec_of(to_document(shipped("dgx-h100")))
    assert _refused(changed(spec, path, huge))
