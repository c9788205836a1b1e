"""What a pod asks of gpulet, read from its Kubernetes JSON (a v1.Pod as kube-scheduler sends
it): per container, a placement `Request`; per pod, the policies of its annotations.

Resource values are whole numbers: `gpulet.io/gpu` and `gpulet.io/rdma` count devices,
`gpulet.io/gpu-core` is percent of each GPU (1-100), `gpulet.io/gpu-memory` is MiB of each
GPU. Extended resources are read from `limits` (Kubernetes requires requests to equal them),
else from `requests`. A quantity with a unit suffix is refused rather than guessed at:
`8Gi` of gpu-memory could mean 8 GiB or 8 Gi MiB.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from gpulet.api.resources import (
    CORE_RESOURCE,
    GPU_POLICY_ANNOTATION,
    GPU_RESOURCE,
    MEMORY_RESOURCE,
    NUMA_PIN_ANNOTATION,
    RDMA_RESOURCE,
    TOPOLOGY_POLICY_ANNOTATION,
)
from scorer.placement import GpuPolicy, Request, RequestError, TopologyPolicy

_Policy = TypeVar("_Policy", TopologyPolicy, GpuPolicy)
_WHOLE = re.compile(r"[0-9]{1,12}")
#: Far above any GPU's memory in MiB or any sensible device count; keeps arithmetic sane.
_MAX_VALUE = 1 << 40


class PodSpecError(ValueError):
    """A pod whose gpulet request is invalid on any node; the message says what to fix."""


@dataclass(frozen=True)
class ContainerAsk:
    name: str
    #: None: the container asks for no gpulet resource.
    request: Request | None
    init: bool = False


@dataclass(frozen=True)
class PodAsk:
    uid: str
    namespace: str
    name: str
    #: Init containers first, then the others, each in spec order (kubelet's order).
    containers: tuple[ContainerAsk, ...]
    numa_pin: bool = False

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def wants(self) -> tuple[ContainerAsk, ...]:
        """The containers that ask for a gpulet resource."""
        return tuple(c for c in self.containers if c.request is not None)

    @functools.cached_property
    def key(self) -> tuple[tuple[str, Request | None], ...]:
        """What placement depends on: two pods with the same key get the same answer."""
        return tuple((c.name, c.request) for c in self.containers)


def pod_ask(pod: Any) -> PodAsk:
    """Read `pod` (a v1.Pod as JSON). PodSpecError for what no node could honour."""
    if not isinstance(pod, Mapping):
        raise PodSpecError(f"the Pod must be a JSON object, got {type(pod).__name__}")
    meta = _mapping(pod.get("metadata"), "metadata")
    spec = _mapping(pod.get("spec"), "spec")
    name = str(meta.get("name") or "")
    annotations = _mapping(meta.get("annotations"), "metadata.annotations")
    where = f"pod {meta.get('namespace') or 'default'}/{name}"
    topology = _choice(annotations, TOPOLOGY_POLICY_ANNOTATION, TopologyPolicy, where)
    gpu_policy = _choice(annotations, GPU_POLICY_ANNOTATION, GpuPolicy, where)
    pin = annotations.get(NUMA_PIN_ANNOTATION, "false")
    if pin not in ("true", "false"):
        raise PodSpecError(f'{where}: {NUMA_PIN_ANNOTATION} must be "true" or "false", got {pin!r}')
    containers: list[ContainerAsk] = []
    for field, init in (("initContainers", True), ("containers", False)):
        listed = spec.get(field) or []
        if not isinstance(listed, list):
            raise PodSpecError(f"{where}: spec.{field} must be a list")
        for container in listed:
            c = _mapping(container, f"spec.{field}[]")
            cname = str(c.get("name") or "")
            request = _request(c, f"{where} container {cname!r}", topology, gpu_policy)
            containers.append(ContainerAsk(cname, request, init))
    return PodAsk(
        uid=str(meta.get("uid") or ""),
        namespace=str(meta.get("namespace") or "default"),
        name=name,
        containers=tuple(containers),
        numa_pin=pin == "true",
    )


def device_counts(container: Any) -> tuple[int, int]:
    """One container's `gpulet.io/gpu` and `gpulet.io/rdma` counts, read as `pod_ask` reads
    them: for a pod it refuses on other grounds, whose Allocate must still be matched (and
    refused with pod_ask's message). PodSpecError where the counts themselves are bad."""
    value = _reader(_mapping(container, "container"), "container")
    return value(GPU_RESOURCE) or 0, value(RDMA_RESOURCE) or 0


def _reader(container: Mapping[str, Any], where: str) -> Callable[[str], int | None]:
    """The container's value of a gpulet resource (None: not given); PodSpecError for one
    that is not a whole number."""
    resources = _mapping(container.get("resources"), f"{where}: resources")
    limits = _mapping(resources.get("limits"), f"{where}: resources.limits")
    requests = _mapping(resources.get("requests"), f"{where}: resources.requests")

    def value(resource: str) -> int | None:
        raw = limits.get(resource, requests.get(resource))
        if raw is None:
            return None
        text = str(raw) if not isinstance(raw, bool) else "?"
        if not _WHOLE.fullmatch(text) or int(text) > _MAX_VALUE:
            unit = {CORE_RESOURCE: "percent of each GPU", MEMORY_RESOURCE: "MiB of each GPU"}
            raise PodSpecError(
                f"{where}: {resource} must be a whole number"
                f"{' (' + unit[resource] + ')' if resource in unit else ''}, got {raw!r}"
            )
        return int(text)

    return value


def _request(
    container: Mapping[str, Any], where: str, topology: TopologyPolicy, gpu_policy: GpuPolicy
) -> Request | None:
    value = _reader(container, where)
    gpus, core, memory, rdma = (
        value(r) for r in (GPU_RESOURCE, CORE_RESOURCE, MEMORY_RESOURCE, RDMA_RESOURCE)
    )
    if not gpus and not rdma:
        if core is not None or memory is not None:
            raise PodSpecError(
                f"{where}: {CORE_RESOURCE} or {MEMORY_RESOURCE} without any {GPU_RESOURCE}"
            )
        return None
    request = Request(
        gpus=gpus or 0,
        core=core,
        memory_mib=memory,
        rdma=rdma or 0,
        topology=topology,
        gpu_policy=gpu_policy,
    )
    try:
        request.validate()
    except RequestError as e:
        raise PodSpecError(f"{where}: {e}") from None
    return request


def _mapping(value: Any, what: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise PodSpecError(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _choice(annotations: Mapping[str, Any], key: str, kind: type[_Policy], where: str) -> _Policy:
    default = next(iter(kind))
    raw = annotations.get(key, default.value)
    try:
        return kind(raw)
    except ValueError:
        known = ", ".join(m.value for m in kind)
        raise PodSpecError(f"{where}: {key} must be one of {known}, got {raw!r}") from None
