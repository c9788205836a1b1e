"""The topology document: what an agent publishes reads back the same, and a document that
lies or is broken is refused with the field it got wrong."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from gpulet.topology.document import DocumentError, dumps, from_document, loads, to_document
from tests.nodes import SHIPPED, shipped


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_node_reads_back_as_it_was_published(name: str) -> None:
    topo = shipped(name)
    assert loads(dumps(topo)) == topo


def test_a_discovered_node_records_each_rdma_devices_verbs_number() -> None:
    doc = to_document(shipped("dgx-h100"))
    numbers = [n["uverbs"] for n in doc["nics"]]
    assert sorted(numbers) == list(range(len(numbers)))


def test_a_document_without_verbs_numbers_still_reads() -> None:
    """Written before `uverbs` existed: the NICs read with no number."""
    doc = to_document(shipped("dgx-h100"))
    for nic in doc["nics"]:
        del nic["uverbs"]
    assert all(n.uverbs is None for n in from_document(doc).nics)


Edit = Callable[[dict[str, Any]], object]


def _first_nic(key: str, value: object) -> Edit:
    return lambda doc: doc["nics"][0].__setitem__(key, value)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda d: d.__setitem__("apiVersion", "gpulet.io/v2"), "apiVersion 'gpulet.io/v2'"),
        (lambda d: d.pop("gpus"), "topology: missing field 'gpus'"),
        (lambda d: d["gpus"][0].pop("uuid"), r"gpus\[0\]: missing field 'uuid'"),
        (
            lambda d: d["gpus"][0].__setitem__("memory_mib", "80 GiB"),
            r"gpus\[0\].memory_mib: expected int",
        ),
        (lambda d: d["gpus"][0].__setitem__("minor", True), "expected an integer"),
        (lambda d: d["gpus"][1].__setitem__("index", 0), "duplicate GPU index"),
        (lambda d: d["nics"][1].__setitem__("device", "mlx5_0"), "duplicate NIC name"),
        (lambda d: d["numa"][0].__setitem__("cpus", "0-x"), r"numa\[0\].cpus"),
        (
            lambda d: d["links"]["GPU0"].__setitem__("GPU1", "PIX"),
            "links: the published matrix does not match",
        ),
        (_first_nic("uverbs", "0"), r"nics\[0\].uverbs: expected int"),
        (_first_nic("uverbs", -1), "uverbs -1 is negative"),
        (_first_nic("uverbs", 1), "uverbs1 is both"),
    ],
)
def test_a_broken_document_is_refused_with_the_field_it_got_wrong(change: Edit, error: str) -> None:
    doc = json.loads(dumps(shipped("dgx-h100")))
    change(doc)
    with pytest.raises(DocumentError, match=error):
        from_document(doc)


def test_the_ports_of_one_device_must_name_one_verbs_device() -> None:
    base = shipped("pcie-4gpu")
    nic = base.nics[0]
    two_ports = replace(base, nics=(nic, replace(nic, port=2, uverbs=5)))
    with pytest.raises(DocumentError, match="the ports of mlx5_0 name different uverbs devices"):
        from_document(to_document(two_ports))


@pytest.mark.parametrize("text", ["", "{", "[]", '"a string"'])
def test_text_that_is_not_a_document_object(text: str) -> None:
    with pytest.raises(DocumentError, match=r"not JSON|expected a JSON object"):
        loads(text)
