"""Assembling the extender: the view, the extender, its HTTP server and (unless standalone)
the sync with the API server and the API bind needs."""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client

from gpulet.kube.calls import CoreCalls, api_client
from gpulet.placement import Capacity
from scorer.cluster import ClusterView
from scorer.config import ScorerConfig
from scorer.extender import Extender
from scorer.kube import ClusterSync, KubePodApi
from scorer.server import ExtenderServer


@dataclass
class Scorer:
    server: ExtenderServer
    sync: ClusterSync | None

    def start(self) -> None:
        tune_gc()
        if self.sync is not None:
            self.sync.start()
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        if self.sync is not None:
            self.sync.stop()


def tune_gc() -> None:
    """Fewer, smaller collections. The extender keeps a decision per node and pod shape
    (tens of thousands of objects at 5,000 nodes); with the default thresholds the collector
    walked them all every few requests, 100-150 ms each time, in the middle of a filter.
    Young collections every 10,000 allocations, the middle generation kept small (5), and a
    full collection only after 1,000 of those (bench/extender_latency.py: p99 at 5,000 nodes
    190 -> 48 ms in process)."""
    gc.set_threshold(10_000, 5, 1_000)


def build(config: ScorerConfig, kube: client.Configuration | None) -> Scorer:
    """`kube` None: standalone (no API server). ConfigError if the TLS files cannot be used."""
    view = ClusterView(
        Capacity(gpu_slots=config.gpu_slots, nic_slots=config.rdma_slots),
        assume_ttl=config.assume_ttl_s,
        stale_after=config.stale_heartbeat_s,
    )
    tls = config.tls()

    def serve(extender: Extender, ready: Callable[[], bool] = lambda: True) -> ExtenderServer:
        return ExtenderServer(
            extender,
            config.host,
            config.port,
            max_body=config.max_body,
            max_parse=config.max_parse,
            ready=ready,
            tls=tls,
            health_host=config.health_host,
            health_port=config.health_port,
        )

    if kube is None:
        return Scorer(serve(Extender(view)), None)
    core = CoreCalls(api_client(kube, "extender"))
    sync = ClusterSync(
        core, view, namespace=config.lease_namespace, watch_timeout_s=config.watch_timeout_s
    )
    extender = Extender(view, KubePodApi(core), scheduler_names=config.scheduler_names)
    return Scorer(serve(extender, sync.ready), sync)
