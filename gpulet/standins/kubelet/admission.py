"""Kubelet's choice of devices for one container (devicesToAllocate), without the plugin call."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from gpulet.standins.kubelet.model import AllocationRecord, Device, PodRef, StandInError


def devices_to_allocate(
    devices: Mapping[str, Device] | None,
    allocations: Sequence[AllocationRecord],
    *,
    pod: PodRef,
    container: str,
    resource: str,
    count: int,
    reused: int = 0,
) -> AllocationRecord | frozenset[str]:
    """The container's existing allocation when it already holds the resource (a restarted
    container: kubelet reuses it without calling the plugin), else the healthy devices no
    container holds, at least `count` of them less the `reused` ones an init container of the
    pod held. `devices` is None for an unregistered resource. Raises StandInError with
    kubelet's reasons, checked in kubelet's order."""
    existing = [
        r
        for r in allocations
        if (r.pod.uid, r.container, r.resource) == (pod.uid, container, resource)
    ]
    held = {i for r in existing for i in r.device_ids}
    if existing and len(held) != count:
        raise StandInError(
            f'pod "{pod.uid}" container "{container}" changed request for resource '
            f'"{resource}" from {len(held)} to {count}'
        )
    if devices is None:
        raise StandInError(f"cannot allocate unregistered device {resource}")
    healthy = frozenset(i for i, d in devices.items() if d.healthy)
    if not healthy:
        raise StandInError(
            f"no healthy devices present; cannot allocate unhealthy devices {resource}"
        )
    if existing:
        if not healthy.issuperset(held):
            raise StandInError(
                "previously allocated devices are no longer healthy; "
                f"cannot allocate unhealthy devices {resource}"
            )
        return existing[0]
    in_use = {i for r in allocations if r.resource == resource for i in r.device_ids}
    available = healthy - in_use
    if len(available) < count - reused:
        raise StandInError(
            f"insufficient {resource}: requested number of devices unavailable. "
            f"Requested: {count - reused}, Available: {len(available)}"
        )
    return available


def choose_devices(
    available: Collection[str], preferred: Iterable[str], count: int, reused: Sequence[str] = ()
) -> list[str]:
    """Kubelet's use of a preference: `reused` (devices an init container of the pod held)
    first, then the preferred IDs that are `available` (others are ignored), and any shortfall
    filled from `available` (in sorted order here; kubelet's order is unspecified)."""
    chosen = list(reused)[:count]
    chosen += [i for i in dict.fromkeys(preferred) if i in available and i not in chosen]
    chosen = chosen[:count]
    rest = [i for i in sorted(available) if i not in chosen]
    return chosen + rest[: count - len(chosen)]
