"""The device plugin without gRPC (`DevicePluginCore`): what to advertise, which device IDs
to prefer, what an Allocate grants, and what is released. Thread-safe: one lock, under which
each call reads the health state (`devicehealth`), decides (`decisions`, pure) and applies
the decision (`transaction`: region, ledger, checkpoint, rolled back together).

Kubelet and the ledger count differently. Kubelet counts device IDs (slots); a whole GPU
holds one of its slot IDs in kubelet's books but all of the GPU in ours. Kubelet may then
offer another slot of that GPU: `preferred` never does, and `allocate` refuses it with an
error naming the GPU, so kubelet fails that pod's admission and its controller retries.
Kubelet remains the authority on IDs: it hands out an ID again either to a later container of
the same pod (an init container's IDs, reused by the app containers when kubelet admits the
pod, before any has run) or once the container holding it is gone (see `decisions`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence, Set
from pathlib import Path

from deviceplugin import preference
from deviceplugin.assignment import PodSource
from deviceplugin.container import ContainerView, view
from deviceplugin.decisions import AllocateError, Decider
from deviceplugin.devicehealth import DeviceHealth
from deviceplugin.grants import Grant
from deviceplugin.inventory import Advertised, Inventory, advertised, owner_of
from deviceplugin.ledger import Ledger
from deviceplugin.resources import GPU_RESOURCE, PluginConfig, check_resource
from deviceplugin.transaction import GrantWriter
from gpulet.placement import NodeState, Placer
from gpulet.topology import Topology

__all__ = ["AllocateError", "DevicePluginCore"]


class DevicePluginCore:
    def __init__(
        self,
        topo: Topology,
        config: PluginConfig,
        ledger: Ledger,
        pods: PodSource | None = None,
        checkpoint: Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_granted: Callable[[Grant], None] = lambda grant: None,
    ) -> None:
        """`on_granted` is told of every grant once it is recorded (it must not block:
        Allocate is waiting)."""
        if pods is not None and not config.node_name:
            raise ValueError("matching pods needs config.node_name (the Kubernetes node's name)")
        self._inventory = Inventory.of(topo, config)
        self._health = DeviceHealth(self._inventory)
        self._ledger = ledger
        self._pods = pods
        self._decider = Decider(self._inventory, self._health, ledger, pods)
        self._writer = GrantWriter(ledger, config, checkpoint)
        self._clock = clock
        self._on_granted = on_granted
        self._lock = threading.Lock()
        self._placer = Placer(topo, config.capacity)

    @property
    def topo(self) -> Topology:
        return self._inventory.topo

    @property
    def config(self) -> PluginConfig:
        return self._inventory.config

    # ---- inventory and health ------------------------------------------------------------

    def devices(self, resource: str) -> list[Advertised]:
        with self._lock:
            gpus, nics = self._health.gpus(), self._health.nics()
        return advertised(self.topo, self.config, resource, gpus, nics)

    def set_gpu_health(self, index: int, healthy: bool, reason: str | None = None) -> bool:
        """Mark GPU `index` (un)healthy, with why (`XID 79`); whether its health changed."""
        with self._lock:
            return self._health.set_gpu(index, healthy, reason)

    def set_nic_health(self, key: str, healthy: bool, reason: str | None = None) -> bool:
        """Mark RDMA port `key` (un)healthy; whether its health changed. A port that is not
        ACTIVE is advertised unhealthy whatever is set here."""
        with self._lock:
            return self._health.set_nic(key, healthy, reason)

    def unhealthy_gpus(self) -> frozenset[int]:
        with self._lock:
            return self._health.gpus()

    def unhealthy_nics(self) -> frozenset[str]:
        """The ports marked unhealthy (ports that are not ACTIVE are not listed)."""
        with self._lock:
            return self._health.nics()

    def grants(self) -> tuple[Grant, ...]:
        return self._ledger.grants()

    def node_state(self) -> NodeState:
        """What the grants take of each GPU and port, as the placement engine counts it."""
        return self._ledger.node_state(self.topo, self.config)

    # ---- GetPreferredAllocation ----------------------------------------------------------

    def preferred(
        self, resource: str, available: Sequence[str], must_include: Sequence[str], size: int
    ) -> list[str]:
        """The IDs to ask kubelet for: `must_include` first, then one slot of each device
        chosen (the assignment's, else the placement engine's). Only IDs from `available` and
        `must_include`; advisory, so problems are left for `allocate` to report."""
        check_resource(resource)
        with self._lock:
            must = list(dict.fromkeys(must_include))
            slots = self._inventory.slots_by_owner(resource, [*must, *available])
            must_owners = list(dict.fromkeys(o for o in map(owner_of, must) if o))
            owners = self._decider.assigned_devices(resource, size) if self._pods else None
            if owners is None:
                if resource == GPU_RESOURCE:
                    owners = self._pick_whole_gpus(size, slots, must_owners)
                else:
                    owners = self._pick_nics(size, slots, must_owners)
            answer = must
            for owner in owners:
                if len(answer) >= size:
                    break
                if owner not in must_owners and slots.get(owner):
                    answer.append(slots[owner][0])
            return answer

    def _pick_whole_gpus(
        self, size: int, slots: Mapping[str, list[str]], must: Sequence[str]
    ) -> list[str]:
        return preference.whole_gpus(
            self._placer,
            self._inventory.gpus,
            self.node_state(),
            size=size,
            offered=slots,
            slots_per_gpu=self.config.gpu_slots,
            sick=self._health.gpus(),
            must=must,
        )

    def _pick_nics(
        self, size: int, slots: Mapping[str, list[str]], must: Sequence[str]
    ) -> list[str]:
        """Close to the GPUs of the latest grant when that is a GPU grant: kubelet allocates
        one container's resources back to back, so these are most likely its GPUs."""
        must = [o for o in must if o in self._inventory.nics]
        usable = {k for k in slots if self._health.port_problem(k) is None}
        latest = next((g for g in reversed(self._ledger.grants()) if not g.spent), None)
        near = (
            {s.index for s in latest.gpus} if latest and latest.resource == GPU_RESOURCE else set()
        )
        return preference.ports(
            self._placer,
            self.node_state().nic_slots,
            size=size,
            usable=usable | set(must),
            near=near,
            must=must,
        )

    # ---- Allocate -------------------------------------------------------------------------

    def allocate(self, resource: str, device_ids: Sequence[str]) -> ContainerView:
        """Grant `device_ids` (one container's, for one resource): record it, set up the
        container's region, and say what the container gets. AllocateError when refused."""
        with self._lock:
            decision = self._decider.decide(resource, device_ids)
            region_dir = self._writer.region_dir(decision)
            try:
                result = view(self.topo, self.config, decision.gpus, decision.nics, region_dir)
            except ValueError as e:
                raise AllocateError(str(e)) from None
            grant = self._writer.apply(decision, region_dir, self._clock())
        self._on_granted(grant)
        return result

    # ---- release ----------------------------------------------------------------------------

    def release_pod(self, uid: str) -> list[Grant]:
        """Forget pod `uid`'s grants and remove their region directories."""
        with self._lock:
            return self._writer.release_pod(uid)

    def reconcile(
        self, live: Mapping[str, Set[str]], listed_at: float | None = None
    ) -> list[Grant]:
        """Drop the grants whose device IDs kubelet's pod-resources List (taken at
        `listed_at`) no longer shows in use; see `Ledger.reconcile`."""
        with self._lock:
            return self._writer.reconcile(live, listed_at)
