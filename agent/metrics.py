"""The agent's Prometheus metrics and health endpoint (`/metrics`, `/healthz`).

Computed at scrape time from what the agent holds (the ledger's grants, device health, the
monitor's latest sample, the containers' regions), so the series of a pod that is gone go
with it: nothing has to be removed.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from agent.access import Access
from agent.backstop import ShareStatus
from agent.colocation import CoLocation, slice_of
from agent.eviction import BatchEvictor
from agent.idle import IdleMeter
from agent.monitor import Monitor
from deviceplugin.core import DevicePluginCore
from deviceplugin.grants import Grant
from deviceplugin.regions import limits_of
from gpulet.api.resources import GPU_RESOURCE
from gpulet.httpd import BackgroundServer, Handler
from native.region import RegionError, inspect

log = logging.getLogger("gpulet.agent")
MIB = 1 << 20


@dataclass(frozen=True)
class BatchParts:
    """What the agent runs for batch slices, for their metrics."""

    colocation: CoLocation
    idle: IdleMeter
    evictor: BatchEvictor


class AgentCollector(Collector):
    def __init__(
        self, core: DevicePluginCore, monitor: Monitor | None, batch: BatchParts | None = None
    ) -> None:
        self._core = core
        self._monitor = monitor
        self._batch = batch

    def collect(self) -> Iterator[Metric]:
        yield from self._gpus()
        yield from self._containers()
        if self._batch is not None:
            yield from self._batch_metrics(self._batch)

    def _batch_metrics(self, batch: BatchParts) -> Iterator[Metric]:
        labels = ["gpu", "uuid"]
        room_core = GaugeMetricFamily(
            "gpulet_gpu_batch_room_core_percent",
            "Compute production leaves idle, less the margin, as last published",
            labels=labels,
        )
        room_memory = GaugeMetricFamily(
            "gpulet_gpu_batch_room_memory_bytes",
            "Memory production leaves idle, less the margin, as last published",
            labels=labels,
        )
        floors = GaugeMetricFamily(
            "gpulet_gpu_batch_core_percent", "Batch slices' floors granted", labels=labels
        )
        published = batch.idle.published
        state = self._core.node_state()
        for gpu in self._core.topo.gpus:
            key = [str(gpu.index), gpu.uuid]
            floors.add_metric(key, state.gpu(gpu.index).batch_core)
            if published is not None and gpu.index in published:
                room_core.add_metric(key, published[gpu.index].core)
                room_memory.add_metric(key, published[gpu.index].memory_mib * MIB)
        shares = GaugeMetricFamily(
            "gpulet_container_batch_share_percent",
            "The compute share the co-location controller last gave a batch container",
            labels=["pod_uid", "container", "uuid"],
        )
        for given, permille in dict(batch.colocation.shares).items():
            shares.add_metric(list(slice_of(given)), permille / 10)
        evictions = CounterMetricFamily(
            "gpulet_batch_evictions",
            "Batch pods evicted: their GPU's memory ran short, or it was granted whole",
            labels=["reason"],
        )
        for reason in ("memory", "whole"):
            evictions.add_metric([reason], batch.evictor.counts.get(reason, 0))
        yield from (room_core, room_memory, floors, shares, evictions)

    def _gpus(self) -> Iterator[Metric]:
        labels = ["gpu", "uuid"]
        total = GaugeMetricFamily("gpulet_gpu_memory_total_bytes", "GPU memory", labels=labels)
        used = GaugeMetricFamily(
            "gpulet_gpu_memory_used_bytes", "GPU memory held by processes (NVML)", labels=labels
        )
        util = GaugeMetricFamily(
            "gpulet_gpu_utilization_percent",
            "SM utilisation of all processes (NVML)",
            labels=labels,
        )
        core = GaugeMetricFamily(
            "gpulet_gpu_allocated_core_percent", "Compute granted to containers", labels=labels
        )
        memory = GaugeMetricFamily(
            "gpulet_gpu_allocated_memory_bytes", "Memory granted to containers", labels=labels
        )
        slots = GaugeMetricFamily("gpulet_gpu_slots_used", "Slots granted", labels=labels)
        healthy = GaugeMetricFamily("gpulet_gpu_healthy", "1: in service, 0: lost", labels=labels)
        state = self._core.node_state()
        sick = self._core.unhealthy_gpus()
        sample = self._monitor.latest if self._monitor is not None else None
        for gpu in self._core.topo.gpus:
            key = [str(gpu.index), gpu.uuid]
            use = state.gpu(gpu.index)
            total.add_metric(key, gpu.memory_mib * MIB)
            core.add_metric(key, use.core)
            memory.add_metric(key, use.memory_mib * MIB)
            slots.add_metric(key, use.slots)
            healthy.add_metric(key, 0 if gpu.index in sick else 1)
            if sample is not None:
                used.add_metric(key, sample.gpu_used_mib.get(gpu.uuid, 0) * MIB)
                util.add_metric(key, sample.gpu_util.get(gpu.uuid, 0))
        yield from (total, used, util, core, memory, slots, healthy)

    def _containers(self) -> Iterator[Metric]:
        labels = ["pod_uid", "container", "uuid"]
        cap = GaugeMetricFamily(
            "gpulet_container_memory_cap_bytes", "GPU memory cap", labels=labels
        )
        share = GaugeMetricFamily(
            "gpulet_container_core_percent", "Compute share granted", labels=labels
        )
        used = GaugeMetricFamily(
            "gpulet_container_memory_used_bytes", "GPU memory held (NVML)", labels=labels
        )
        util = GaugeMetricFamily(
            "gpulet_container_utilization_percent", "SM utilisation measured (NVML)", labels=labels
        )
        throttled = CounterMetricFamily(
            "gpulet_container_throttled_seconds",
            "Time the limiter held kernel launches back",
            labels=labels,
        )
        violations = CounterMetricFamily(
            "gpulet_container_backstop_violations",
            "Samples in which the container held more GPU memory than its cap by NVML's count",
            labels=["pod_uid", "container"],
        )
        unlimited = GaugeMetricFamily(
            "gpulet_container_unlimited_processes",
            "Processes using a GPU slice without the limiter (never attached to the region)",
            labels=labels,
        )
        over_share = GaugeMetricFamily(
            "gpulet_container_over_share",
            "1 while the container keeps the GPU busier than its share (its mean over the "
            "window past the tolerance, or held to its share by the duty cycle)",
            labels=labels,
        )
        frozen = GaugeMetricFamily(
            "gpulet_container_frozen_ratio",
            "Fraction of each duty-cycle period the container's cgroup is frozen (enforcement)",
            labels=["pod_uid", "container"],
        )
        untrusted = GaugeMetricFamily(
            "gpulet_container_region_untrusted",
            "1 while the container's region is not what its grant made it (or unreadable)",
            labels=["pod_uid", "container"],
        )
        measured = {}
        compute: Mapping[tuple[str, str, str], ShareStatus] = {}
        bad: Mapping[tuple[str, str], tuple[str, ...]] = {}
        if self._monitor is not None:
            measured = {
                (c.pod_uid, c.container, c.gpu_uuid): c for c in self._monitor.latest.containers
            }
            compute, bad = self._monitor.compute.status, self._monitor.untrusted
        for grant in self._core.grants():
            if grant.resource != GPU_RESOURCE or not grant.pod_uid or not grant.container:
                continue
            throttle = _throttled(grant)
            fraction = 0.0
            for i, s in enumerate(grant.gpus):
                key = [grant.pod_uid, grant.container, s.uuid]
                cap.add_metric(key, s.memory_mib * MIB)
                share.add_metric(key, s.core)
                m = measured.get((grant.pod_uid, grant.container, s.uuid))
                used.add_metric(key, (m.used_mib if m else 0) * MIB)
                if m is not None and m.util_percent is not None:
                    util.add_metric(key, m.util_percent)
                if not s.exclusive:
                    unlimited.add_metric(key, len(m.unlimited) if m else 0)
                if i < len(throttle):
                    throttled.add_metric(key, throttle[i])
                status = compute.get((grant.pod_uid, grant.container, s.uuid))
                if status is not None:
                    over_share.add_metric(key, 1 if status.over else 0)
                    fraction = max(fraction, status.frozen)
            if self._monitor is not None and grant.gpus:
                who = [grant.pod_uid, grant.container]
                frozen.add_metric(who, fraction)
                untrusted.add_metric(who, 1 if (grant.pod_uid, grant.container) in bad else 0)
        if self._monitor is not None:
            for (pod_uid, container), n in dict(self._monitor.violations).items():
                violations.add_metric([pod_uid, container], n)
        yield from (cap, share, used, util, throttled, violations, unlimited)
        yield from (over_share, frozen, untrusted)


def _throttled(grant: Grant) -> list[float]:
    """Seconds of launches held back, per device, from the container's region read as
    untrusted input (clamped; none when it cannot be read)."""
    if not grant.region_dir or not (Path(grant.region_dir) / "region").exists():
        return []
    expected = limits_of(grant.gpus)
    try:
        seen = inspect(grant.region_dir, expected)
    except RegionError:
        return []
    return [] if seen.usage is None else [d.throttled_ns / 1e9 for d in seen.usage.devices]


class Denials(Collector):
    """Requests refused by the access check, by its reason."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}

    def count(self, reason: str) -> None:
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1

    def collect(self) -> Iterator[Metric]:
        denied = CounterMetricFamily(
            "gpulet_agent_http_denied",
            "Requests to the agent's HTTP server refused: no-token, invalid-token (401), "
            "forbidden (403), unavailable (503: the API server could not be asked)",
            labels=["reason"],
        )
        with self._lock:
            counts = dict(self._counts)
        for reason, n in sorted(counts.items()):
            denied.add_metric([reason], n)
        yield denied


class MetricsServer:
    """`/metrics` and `/healthz` on `port` (0: a free one), from a background thread, and
    JSON documents at the paths of `documents`. With `access`, every path but `/healthz`
    (kubelet's probes carry no credentials) is served only to the requests it allows; the
    others, unknown paths included, get its refusal (401, 403 or 503) and nothing else."""

    def __init__(
        self,
        collector: Collector,
        port: int,
        *,
        host: str = "0.0.0.0",
        healthy: Callable[[], bool] = lambda: True,
        documents: Mapping[str, Callable[[], Any]] | None = None,
        access: Access | None = None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(collector)
        denials = Denials()
        if access is not None:
            self.registry.register(denials)
        registry, is_healthy, docs = self.registry, healthy, dict(documents or {})

        class MetricsHandler(Handler):
            def do_GET(self) -> None:
                path = self.path.split("?")[0].rstrip("/") or "/"
                if path == "/healthz":
                    ok = is_healthy()
                    code = HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE
                    self.reply(code, b"ok\n" if ok else b"not serving kubelet\n", "text/plain")
                    return
                if access is not None:
                    decision = access.check(self.headers.get("Authorization"), path)
                    if not decision.allowed:
                        denials.count(decision.reason)
                        log.debug(
                            "event=http-denied status=%d reason=%s path=%r client=%s",
                            decision.status,
                            decision.reason,
                            path,
                            self.client_address[0],
                        )
                        self.refuse(decision.status)
                        return
                if path == "/metrics":
                    self.reply(HTTPStatus.OK, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif path in docs:
                    body = json.dumps(docs[path](), separators=(",", ":")).encode()
                    self.reply(HTTPStatus.OK, body, "application/json")
                else:
                    self.reply(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")

            def refuse(self, code: int) -> None:
                challenge = {"WWW-Authenticate": 'Bearer realm="gpulet-agent"'}
                headers = challenge if code == HTTPStatus.UNAUTHORIZED else None
                self.reply(code, f"{HTTPStatus(code).phrase}\n".encode(), "text/plain", headers)

        # Polls for shutdown twice a second: an idle agent's wake-ups are its CPU cost.
        self._http = BackgroundServer(host, port, MetricsHandler, name="gpulet-metrics", poll_s=0.5)

    @property
    def port(self) -> int:
        return self._http.port

    def start(self) -> None:
        self._http.start()

    def stop(self) -> None:
        self._http.stop()
