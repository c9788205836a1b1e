"""The extender acts only within its remit (issue 13's attacks on it, as anyone who can reach
its port): it binds only pods that ask for a gpulet resource, and in API mode its nodes come
from the API server's watch alone, never from a request."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpulet.api.resources import ASSIGNMENT_ANNOTATION
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.objects import container, node_object, pod_object
from scorer.app import Scorer
from scorer.config import ConfigError, load_config
from scorer.wire import ExtenderBindingResult, NodeList
from tests.nodes import shipped
from tests.unit.test_scorer_kube import H100, api, bind, bind_args, filter_, scorer

__all__ = ["api", "scorer"]  # fixtures


def test_bind_refuses_a_pod_that_asks_for_no_gpulet_resource(
    api: ApiServerStandIn, scorer: Scorer
) -> None:
    """Anyone who can reach the extender could have it bind any pending pod, in any
    namespace, to a GPU node (and annotate it)."""
    plain = api.create_pod(pod_object("web", container("main"), namespace="team-b"))
    answer = bind(scorer, bind_args(plain, "gpu-a"))
    assert "asks for no gpulet resource" in answer.error, answer
    stored = api.get_pod("team-b", "web")
    assert stored is not None
    assert not stored["spec"].get("nodeName")
    assert ASSIGNMENT_ANNOTATION not in stored["metadata"].get("annotations", {})


def test_bind_refuses_a_pod_of_another_scheduler(api: ApiServerStandIn, scorer: Scorer) -> None:
    """A pod no scheduler will place (or another scheduler's) is not the extender's to bind,
    even when someone asks it directly."""
    pod = pod_object("stray", container(gpus=1, core=30, memory=8192))
    pod["spec"]["schedulerName"] = "nobody"
    stray = api.create_pod(pod)
    answer = bind(scorer, bind_args(stray, "gpu-a"))
    assert "is for scheduler 'nobody'" in answer.error, answer
    ours = pod_object("ours", container(gpus=1, core=30, memory=8192))
    ours["spec"]["schedulerName"] = "gpulet-scheduler"
    assert bind(scorer, bind_args(api.create_pod(ours), "gpu-a")) == ExtenderBindingResult()


def test_nodes_in_a_request_never_join_the_cluster_view(
    api: ApiServerStandIn, scorer: Scorer
) -> None:
    """In API mode a filter's `Nodes` objects once added the nodes the watch had not shown:
    one request could add thousands of fictitious nodes, and a pod was bound to one."""
    ghosts = NodeList(tuple(node_object(f"ghost-{i}", H100) for i in range(50)))
    pod = api.create_pod(pod_object("infer", container(gpus=1, core=30, memory=8192)))
    answer = filter_(scorer, pod, nodes=ghosts)
    assert answer.nodes == NodeList(())
    failed = {**answer.failed_nodes, **answer.failed_and_unresolvable_nodes}
    assert sorted(failed) == sorted(f"ghost-{i}" for i in range(50))
    assert all(scorer.server.extender.view.node(f"ghost-{i}") is None for i in range(50))
    refused = bind(scorer, bind_args(pod, "ghost-0"))
    assert "ghost-0 is not known" in refused.error, refused
    stored = api.get_pod("default", "infer")
    assert stored is not None and not stored["spec"].get("nodeName")


def test_a_request_cannot_change_a_known_node(api: ApiServerStandIn, scorer: Scorer) -> None:
    """A known node sent with other hardware (a forged topology) is decided as the watch
    shows it."""
    forged = node_object("gpu-a", shipped("pcie-16gpu"))
    pod = api.create_pod(pod_object("wide", container(gpus=12, core=100)))
    answer = filter_(scorer, pod, nodes=NodeList((forged,)))
    assert answer.nodes == NodeList(())  # a DGX H100 has 8 GPUs, whatever the request says
    info = scorer.server.extender.view.node("gpu-a")
    assert info is not None and info.topo is not None and len(info.topo.gpus) == 8


def test_scheduler_names_come_from_the_settings(tmp_path: Path) -> None:
    settings = tmp_path / "scorer.yaml"
    settings.write_text("schedulerNames: [gpu-batch]\n")
    assert load_config(settings).scheduler_names == ("gpu-batch",)
    settings.write_text("schedulerNames: []\n")
    with pytest.raises(ConfigError, match="schedulerNames must be a list of scheduler names"):
        load_config(settings)
