"""Which GPUs and NICs can take a request, what each would be granted, and its unary cost."""

from __future__ import annotations

from dataclasses import dataclass

from gpulet.api.share import UNMEASURED, GpuShare, GpuUsage, Idle, Shortfall, shortfall_of
from gpulet.placement.cost import unit
from gpulet.placement.request import Capacity, GpuPolicy, NodeState, Request
from gpulet.topology import Gpu, Topology

# The packed cost of one unit in the fields the unary costs use (cost.pack, inlined: this
# runs for every device on every placement).
_TOUCHED, _FIT, _NIC_LOAD, _ORDER = (unit(f) for f in ("touched", "fit", "nic_load", "order"))


def _grant(
    gpu: Gpu, use: GpuUsage, req: Request, cap: Capacity, idle: Idle
) -> GpuShare | Shortfall:
    """The share this GPU would give, or what it lacks. A slice's memory defaults to what
    the GPU has free; a whole GPU is all of it; a batch slice's is what it asked (against
    `idle`)."""
    whole = req.whole
    if whole:
        core, memory = 100, gpu.memory_mib
    else:
        core = 100 if req.core is None else req.core
        memory = gpu.memory_mib - use.memory_mib if req.memory_mib is None else req.memory_mib
    short = shortfall_of(
        use,
        core,
        memory,
        exclusive=whole,
        slots_per_gpu=cap.gpu_slots,
        gpu_memory_mib=gpu.memory_mib,
        batch=req.batch,
        idle=idle,
    )
    if short is not None:
        return short
    return GpuShare(gpu.uuid, core, memory, whole, gpu.index, req.batch)


def gpu_unary(
    gpu: Gpu, use: GpuUsage, grant: GpuShare, policy: GpuPolicy, idle: Idle = UNMEASURED
) -> int:
    """Packed cost of choosing this GPU by itself (the packing terms). A batch slice packs
    by what is left of the GPU's idle room (`idle`), a production one by what is left of the
    GPU; both prefer a GPU something already uses. A whole GPU where batch slices run costs
    one `touched` more than an idle one (taking it evicts them)."""
    total = max(1, gpu.memory_mib)
    if grant.exclusive and use.batch:
        # Taking it evicts the batch slices there: one `touched` more than an idle GPU.
        pristine = _TOUCHED if policy is GpuPolicy.BINPACK else 0
        return pristine + _TOUCHED + gpu.index * _ORDER
    # What the share's class has used of what it may have.
    if grant.batch:
        core_used, memory_used = use.batch_core, use.batch_memory_mib
        core_room, memory_room = idle.core, idle.memory_mib
    else:
        core_used, memory_used = use.core, use.memory_mib
        core_room, memory_room = 100, gpu.memory_mib
    if policy is GpuPolicy.SPREAD:
        return (core_used + memory_used * 100 // total) * _FIT + gpu.index * _ORDER
    left_core = core_room - core_used - grant.core
    left_mem = (memory_room - memory_used - grant.memory_mib) * 100 // total
    return (_TOUCHED if use.idle else 0) + (left_core + left_mem) * _FIT + gpu.index * _ORDER


@dataclass(frozen=True)
class Candidates:
    """Eligible devices with their unary costs, and why the others are not."""

    gpus: dict[int, tuple[GpuShare, int]]
    nics: dict[str, int]
    #: Why each other GPU cannot take it (rendered only for a no-fit reason).
    gpu_reasons: dict[int, str | Shortfall]
    nic_reasons: dict[str, str]


def candidates(topo: Topology, req: Request, state: NodeState, cap: Capacity) -> Candidates:
    gpus: dict[int, tuple[GpuShare, int]] = {}
    gpu_reasons: dict[int, str | Shortfall] = {}
    if req.gpus:
        for gpu in topo.gpus:
            use, idle = state.gpu(gpu.index), state.idle_of(gpu.index)
            got: GpuShare | Shortfall | str
            if gpu.index in state.unhealthy_gpus:
                got = "unhealthy"
            elif gpu.mig:
                got = "MIG enabled"
            else:
                got = _grant(gpu, use, req, cap, idle)
            if not isinstance(got, GpuShare):
                gpu_reasons[gpu.index] = got
            else:
                gpus[gpu.index] = (got, gpu_unary(gpu, use, got, req.gpu_policy, idle))
    nics: dict[str, int] = {}
    nic_reasons: dict[str, str] = {}
    if req.rdma:
        for position, nic in enumerate(topo.nics):
            used = state.nic_slots.get(nic.key, 0)
            if nic.key in state.unhealthy_nics:
                nic_reasons[nic.key] = "unhealthy"
            elif not nic.active:
                nic_reasons[nic.key] = f"port {nic.state.lower()}"
            elif used >= cap.nic_slots:
                nic_reasons[nic.key] = "no free slot"
            else:
                nics[nic.key] = used * _NIC_LOAD + position * _ORDER
    return Candidates(gpus, nics, gpu_reasons, nic_reasons)
