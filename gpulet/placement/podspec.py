"""What a pod asks of gpulet, read from its Kubernetes JSON (a v1.Pod as kube-scheduler sends
it): per container, a placement `Request`; per pod, the policies of its annotations.

Resource values are whole numbers: `gpulet.io/gpu` and `gpulet.io/rdma` count devices,
`gpulet.io/gpu-core` is percent of each GPU (1-100), `gpulet.io/gpu-memory` is MiB of each
GPU; `gpulet.io/batch-gpu-core` and `gpulet.io/batch-gpu-memory` the same for a batch slice
(docs/colocation.md), which gives both and neither of the others. Extended resources are
read from `limits` (Kubernetes requires requests to equal them, and kubelet allocates
devices by the limits), else from `requests`.

Each value is a Kubernetes quantity, read as Kubernetes reads it (apimachinery's
`ParseQuantity`): the API server writes 16000 as `16k`, and kubelet allocates `1e0` devices
as 1. It must come to a whole number from 0 to 2**40. A binary suffix is refused on
gpu-memory rather than guessed at: `8Gi` of it could mean 8 GiB or 8 Gi MiB.

`pod_ask` reads everything the extender places by; `pod_counts` only the device counts, for
the node agent, which must tie kubelet's Allocate calls to a pod even when `pod_ask` refuses
it. Both read every quantity with `_quantity`, so they never disagree on a count.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple, TypeVar

from gpulet.api.resources import (
    BATCH_CORE_RESOURCE,
    BATCH_MEMORY_RESOURCE,
    CORE_RESOURCE,
    GPU_POLICY_ANNOTATION,
    GPU_RESOURCE,
    MANAGED_RESOURCES,
    MEMORY_RESOURCE,
    NUMA_PIN_ANNOTATION,
    RDMA_RESOURCE,
    TOPOLOGY_POLICY_ANNOTATION,
)
from gpulet.placement import GpuPolicy, Request, RequestError, TopologyPolicy

_Policy = TypeVar("_Policy", TopologyPolicy, GpuPolicy)
#: A Kubernetes quantity: sign, digits with an optional fraction, then a binary-SI suffix, a
#: decimal-SI one, or a decimal exponent (`1E` is 10**18; `1E3` is 1000).
_QUANTITY = re.compile(
    r"(?P<sign>[+-]?)(?P<int>[0-9]*)(?:\.(?P<frac>[0-9]*))?"
    r"(?:(?P<binary>[KMGTPE]i)|(?P<si>[numkMGTPE])|[eE](?P<exp>[+-]?[0-9]+))?"
)
_SI = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
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
    meta, spec, where = _pod(pod)
    annotations = _mapping(meta.get("annotations"), "metadata.annotations")
    topology = _choice(annotations, TOPOLOGY_POLICY_ANNOTATION, TopologyPolicy, where)
    gpu_policy = _choice(annotations, GPU_POLICY_ANNOTATION, GpuPolicy, where)
    pin = annotations.get(NUMA_PIN_ANNOTATION, "false")
    if pin not in ("true", "false"):
        raise PodSpecError(f'{where}: {NUMA_PIN_ANNOTATION} must be "true" or "false", got {pin!r}')
    containers = tuple(
        ContainerAsk(name, _request(value, cwhere, topology, gpu_policy), init)
        for name, init, value, cwhere in _containers(spec, where, known=True)
    )
    return PodAsk(
        uid=str(meta.get("uid") or ""),
        namespace=str(meta.get("namespace") or "default"),
        name=str(meta.get("name") or ""),
        containers=containers,
        numa_pin=pin == "true",
    )


class DeviceCounts(NamedTuple):
    """One container's device counts: what kubelet allocates it."""

    name: str
    gpus: int
    rdma: int


def pod_counts(pod: Any) -> tuple[DeviceCounts, ...]:
    """Each container's `gpulet.io/gpu` and `gpulet.io/rdma` counts (init containers first,
    then the others: kubelet's order), read as `pod_ask` reads them and checking nothing
    else: for the node agent, which ties kubelet's Allocate calls to a pod by these counts,
    also for a pod `pod_ask` refuses on other grounds (its core, its memory, an annotation).
    Where `pod_ask` accepts the pod, these are its requests' counts. PodSpecError where the
    containers, or a count, cannot be read (then `pod_ask` refuses the pod too)."""
    _, spec, where = _pod(pod)
    return tuple(
        DeviceCounts(name, value(GPU_RESOURCE) or 0, value(RDMA_RESOURCE) or 0)
        for name, _, value, _ in _containers(spec, where)
    )


def _pod(pod: Any) -> tuple[Mapping[str, Any], Mapping[str, Any], str]:
    """The pod's metadata, its spec, and how messages name it."""
    if not isinstance(pod, Mapping):
        raise PodSpecError(f"the Pod must be a JSON object, got {type(pod).__name__}")
    meta = _mapping(pod.get("metadata"), "metadata")
    spec = _mapping(pod.get("spec"), "spec")
    return meta, spec, f"pod {meta.get('namespace') or 'default'}/{meta.get('name') or ''}"


#: A container's value of a gpulet resource (`_reader`).
_Value = Callable[[str], int | None]


def _containers(
    spec: Mapping[str, Any], where: str, known: bool = False
) -> Iterator[tuple[str, bool, _Value, str]]:
    """Each container in kubelet's order: its name, whether it is an init container, its
    values (`_reader`), and how messages name it. With `known`, PodSpecError for a container
    that asks for a `gpulet.io/` resource gpulet does not place (`_check_known`)."""
    for field, init in (("initContainers", True), ("containers", False)):
        listed = spec.get(field) or []
        if not isinstance(listed, list):
            raise PodSpecError(f"{where}: spec.{field} must be a list")
        for container in listed:
            c = _mapping(container, f"spec.{field}[]")
            name = str(c.get("name") or "")
            cwhere = f"{where} container {name!r}"
            reader = _reader(c, cwhere)
            if known:
                _check_known(c, cwhere)
            yield name, init, reader, cwhere


#: The `gpulet.io/` resources a pod may ask for (`MANAGED_RESOURCES`).
_KNOWN = frozenset(MANAGED_RESOURCES)


def _check_known(container: Mapping[str, Any], where: str) -> None:
    """PodSpecError for a `gpulet.io/` resource other than gpulet's: read as nothing, a pod
    asking `gpu: 1` with a misspelt `gpu-cores: 30` would be placed as a whole GPU."""
    resources = container.get("resources") or {}
    asked = set(resources.get("limits") or {}) | set(resources.get("requests") or {})
    for resource in sorted(r for r in asked if str(r).startswith("gpulet.io/")):
        if resource not in _KNOWN:
            known = ", ".join(sorted(_KNOWN))
            raise PodSpecError(f"{where}: unknown resource {resource}: gpulet serves {known}")


#: Resources in MiB, where a binary suffix is refused rather than guessed at.
_MIB = frozenset({MEMORY_RESOURCE, BATCH_MEMORY_RESOURCE})
_UNIT = {
    CORE_RESOURCE: "percent of each GPU",
    MEMORY_RESOURCE: "MiB of each GPU",
    BATCH_CORE_RESOURCE: "percent of each GPU",
    BATCH_MEMORY_RESOURCE: "MiB of each GPU",
}


def _reader(container: Mapping[str, Any], where: str) -> _Value:
    """The container's value of a gpulet resource (None: not given); PodSpecError for one
    that is not a whole number."""
    resources = _mapping(container.get("resources"), f"{where}: resources")
    limits = _mapping(resources.get("limits"), f"{where}: resources.limits")
    requests = _mapping(resources.get("requests"), f"{where}: resources.requests")

    def value(resource: str) -> int | None:
        raw = limits.get(resource, requests.get(resource))
        if raw is None:
            return None
        read = _quantity(raw)
        if read is None or (resource in _MIB and read[1]):
            raise PodSpecError(
                f"{where}: {resource} must be a whole number"
                f"{' (' + _UNIT[resource] + ')' if resource in _UNIT else ''}, got {raw!r}"
            )
        return read[0]

    return value


def whole_quantity(raw: object) -> int | None:
    """A Kubernetes quantity's value where it is a whole number from 0 to 2**40, as gpulet
    reads every one of its resources (a Node's capacity too); else None."""
    read = _quantity(raw)
    return None if read is None else read[0]


def _quantity(raw: object) -> tuple[int, bool] | None:
    """The value Kubernetes gives quantity `raw` (a string, as the API server writes it, or
    a JSON number), and whether it has a binary suffix; None unless it is a whole number
    from 0 to _MAX_VALUE."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        return None
    if isinstance(raw, int):
        return (raw, False) if 0 <= raw <= _MAX_VALUE else None
    text = str(raw)
    m = _QUANTITY.fullmatch(text) if len(text) <= 64 else None
    if m is None or not (m["int"] or m["frac"]):
        return None
    digits, frac = m["int"] or "0", m["frac"] or ""
    number = Fraction(int(digits + frac), 10 ** len(frac))
    if m["binary"]:
        number *= 2 ** _BINARY[m["binary"]]
    elif number:
        exponent = _SI[m["si"]] if m["si"] else int(m["exp"] or 0)
        if abs(exponent) > 64:
            return None  # far too large, or not whole
        number *= Fraction(10) ** exponent
    if m["sign"] == "-":
        number = -number
    if number.denominator != 1 or not 0 <= number <= _MAX_VALUE:
        return None
    return int(number), m["binary"] is not None


def _request(
    value: _Value, where: str, topology: TopologyPolicy, gpu_policy: GpuPolicy
) -> Request | None:
    gpus, core, memory, rdma = (
        value(r) for r in (GPU_RESOURCE, CORE_RESOURCE, MEMORY_RESOURCE, RDMA_RESOURCE)
    )
    batch_core, batch_memory = value(BATCH_CORE_RESOURCE), value(BATCH_MEMORY_RESOURCE)
    batch = batch_core is not None or batch_memory is not None
    if batch and (core is not None or memory is not None):
        raise PodSpecError(
            f"{where}: a container is a production slice ({CORE_RESOURCE}, {MEMORY_RESOURCE}) "
            f"or a batch slice ({BATCH_CORE_RESOURCE}, {BATCH_MEMORY_RESOURCE}), never both"
        )
    if batch and (batch_core is None or batch_memory is None or not gpus):
        raise PodSpecError(
            f"{where}: a batch slice asks for all three of {GPU_RESOURCE}, "
            f"{BATCH_CORE_RESOURCE} (its floor, percent of each GPU) and "
            f"{BATCH_MEMORY_RESOURCE} (its cap, MiB of each GPU)"
        )
    if not gpus and not rdma:
        if core is not None or memory is not None:
            raise PodSpecError(
                f"{where}: {CORE_RESOURCE} or {MEMORY_RESOURCE} without any {GPU_RESOURCE}"
            )
        return None
    request = Request(
        gpus=gpus or 0,
        core=batch_core if batch else core,
        memory_mib=batch_memory if batch else memory,
        rdma=rdma or 0,
        topology=topology,
        gpu_policy=gpu_policy,
        batch=batch,
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
