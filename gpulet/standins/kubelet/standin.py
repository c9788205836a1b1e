"""A kubelet stand-in for device-plugin tests: kubelet's device manager as a plugin sees it,
over real unix sockets in a plugin directory (Registration on `kubelet.sock`, the plugin's
DevicePlugin service on the socket it registers), plus the pod-resources service.

What it reproduces: the Register checks and synchronous dial, ListAndWatch in the background
(each message replaces the device set; a stream that ends leaves the devices unhealthy, and
kubelet never reconnects), allocation as kubelet's admission does it (GetPreferredAllocation
as advice, one container per Allocate, PreStartContainer when asked for, an init container's
devices reused by the pod's next containers), and a restart that drops every connection and
deletes every socket in the directory, keeping the checkpoint. Kubelet's own refusals reach
the plugin as code UNKNOWN (KUBELET_ERROR_CODE), as from kubelet. What it leaves out: the
Topology Manager's NUMA alignment and the 5-minute removal of a resource whose plugin has gone.
Where it is simpler: a re-registration cancels the resource's old stream at once (kubelet
leaves it open until the plugin ends it).

Unix socket paths are limited to 107 bytes: pytest's `tmp_path` can be too long, so tests use
a short directory from `tempfile.mkdtemp(prefix="kl")`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType, TracebackType

from deviceplugin.api import deviceplugin_v1beta1_pb2 as pb
from deviceplugin.api import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from deviceplugin.api import podresources_v1_pb2_grpc as pr_grpc
from gpulet.standins.kubelet.admission import choose_devices, devices_to_allocate
from gpulet.standins.kubelet.checkpoint import write_checkpoint
from gpulet.standins.kubelet.model import (
    DIAL_TIMEOUT_S,
    KUBELET_SOCKET,
    UNHEALTHY,
    AllocationRecord,
    Device,
    PodRef,
    RegisterRecord,
    ResourceView,
    StandInError,
    StandInView,
    StreamEnd,
)
from gpulet.standins.kubelet.plugin_client import PluginClient
from gpulet.standins.kubelet.podresources import PodResourcesService
from gpulet.standins.kubelet.registration import RegistrationService
from gpulet.standins.kubelet.serving import UnixServer, check_socket_path

_JOIN_TIMEOUT_S = 5.0


@dataclass
class _Resource:
    """A registered resource. `devices` is replaced, never mutated, so views can share it."""

    registration: RegisterRecord
    client: PluginClient
    devices: Mapping[str, Device]
    messages: int = 0
    stream_end: StreamEnd | None = None


class KubeletStandIn:
    """Start with `start()` or `with`; all methods are thread-safe."""

    def __init__(
        self,
        plugin_dir: Path,
        pod_resources_dir: Path | None = None,
        *,
        dial_timeout: float = DIAL_TIMEOUT_S,
    ) -> None:
        self.plugin_dir = plugin_dir.absolute()
        self.pod_resources_dir = pod_resources_dir.absolute() if pod_resources_dir else None
        self.dial_timeout = dial_timeout
        check_socket_path(self.socket_path)
        if self.pod_resources_socket:
            check_socket_path(self.pod_resources_socket)
        self._cond = threading.Condition()  # guards everything below, notified on each change
        self._resources: dict[str, _Resource] = {}
        self._registrations: list[RegisterRecord] = []
        self._allocations: list[AllocationRecord] = []
        self._restarts: list[float] = []
        self._servers: list[UnixServer] = []
        self._threads: list[threading.Thread] = []
        self._epoch = 0  # bumped on every shutdown: a registration from before it is refused
        self._lifecycle = threading.Lock()  # start, stop and restart, one at a time
        self._admission = threading.Lock()  # kubelet admits pods one at a time
        #: devicesToReuse: the pod being admitted's devices its init containers held, by
        #: resource, which its next containers take first (guarded by `_admission`).
        self._reusable: dict[str, dict[str, set[str]]] = {}
        self._checkpoint = threading.Lock()

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / KUBELET_SOCKET

    @property
    def pod_resources_socket(self) -> Path | None:
        return self.pod_resources_dir / KUBELET_SOCKET if self.pod_resources_dir else None

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        with self._lifecycle:
            if self._servers:
                raise StandInError("the kubelet stand-in is already serving")
            self.plugin_dir.mkdir(parents=True, exist_ok=True)
            # Kubelet's device manager creates this file in the directory when it starts.
            (self.plugin_dir / "DEPRECATION").touch()
            self._serve()

    def stop(self) -> None:
        """Stops serving, cancels every ListAndWatch stream and closes every channel."""
        with self._lifecycle:
            self._shutdown()

    def restart(self, gap: float = 0.1) -> float:
        """What a kubelet restart looks like to plugins: every connection drops, every socket
        in the plugin directory is deleted, and after `gap` seconds a new `kubelet.sock` (and
        pod-resources socket) serves. Registered resources are forgotten until their plugins
        register again; allocations are kept (kubelet's checkpoint). Returns the monotonic
        time the new kubelet started serving, for `registered_since`."""
        with self._lifecycle:
            if not self._servers:
                raise StandInError("the kubelet stand-in is not serving")
            self._shutdown()
            self._remove_sockets()
            time.sleep(gap)
            return self._serve(restart=True)

    def __enter__(self) -> KubeletStandIn:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _serve(self, restart: bool = False) -> float:
        with self._cond:
            epoch = self._epoch
        started = time.monotonic()
        registration = RegistrationService(
            self.plugin_dir, self.dial_timeout, lambda r, c: self._accept(epoch, r, c)
        )
        servers = [
            UnixServer(
                self.socket_path,
                lambda s: pb_grpc.add_RegistrationServicer_to_server(registration, s),
            )
        ]
        if self.pod_resources_dir and self.pod_resources_socket:
            self.pod_resources_dir.mkdir(parents=True, exist_ok=True)
            lister = PodResourcesService(self.view)
            servers.append(
                UnixServer(
                    self.pod_resources_socket,
                    lambda s: pr_grpc.add_PodResourcesListerServicer_to_server(lister, s),
                )
            )
        with self._cond:
            self._servers = servers
            if restart:
                self._restarts.append(started)
            self._cond.notify_all()
        self._write_checkpoint()
        return started

    def _shutdown(self) -> None:
        with self._cond:
            self._epoch += 1
            servers, self._servers = self._servers, []
            resources, self._resources = self._resources, {}
            threads, self._threads = self._threads, []
            self._cond.notify_all()
        for server in servers:
            server.stop()
        for resource in resources.values():
            resource.client.close()
        for thread in threads:
            thread.join(_JOIN_TIMEOUT_S)

    def _remove_sockets(self) -> None:
        """Kubelet deletes every socket in the directory; other files (its checkpoint) stay."""
        for path in self.plugin_dir.iterdir():
            if path.is_socket():
                path.unlink(missing_ok=True)

    # ---- plugins' side: registration and ListAndWatch -----------------------------------

    def _accept(self, epoch: int, record: RegisterRecord, client: PluginClient) -> bool:
        name = record.resource_name
        with self._cond:
            if epoch != self._epoch or not self._servers:
                return False
            old = self._resources.get(name)
            # Kubelet keeps the previous device set until the new stream's first message.
            devices = old.devices if old else MappingProxyType({})
            resource = _Resource(record, client, devices)
            self._resources[name] = resource
            self._registrations.append(record)
            thread = threading.Thread(
                target=self._watch, args=(name, resource), name=f"kl-watch-{name}", daemon=True
            )
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
            self._cond.notify_all()
        if old:
            old.client.close()  # its stream ends; the end is ignored, it is no longer current
        thread.start()
        return True

    def _watch(self, name: str, resource: _Resource) -> None:
        end = resource.client.list_and_watch(lambda msg: self._on_devices(name, resource, msg))
        with self._cond:
            if self._resources.get(name) is not resource:
                return
            unhealthy = {i: replace(d, health=UNHEALTHY) for i, d in resource.devices.items()}
            resource.devices = MappingProxyType(unhealthy)
            resource.stream_end = end
            self._cond.notify_all()
        self._write_checkpoint()

    def _on_devices(self, name: str, resource: _Resource, msg: pb.ListAndWatchResponse) -> None:
        devices = {d.ID: Device.from_proto(d) for d in msg.devices}
        with self._cond:
            if self._resources.get(name) is not resource:
                return
            resource.devices = MappingProxyType(devices)
            resource.messages += 1
            self._cond.notify_all()
        self._write_checkpoint()

    def _write_checkpoint(self) -> None:
        with self._checkpoint:
            view = self.view()
            if self._servers:
                write_checkpoint(self.plugin_dir, view)

    # ---- queries -------------------------------------------------------------------------

    def view(self) -> StandInView:
        with self._cond:
            return self._view_locked()

    def _view_locked(self) -> StandInView:
        resources = {
            name: ResourceView(r.registration, r.devices, r.messages, r.stream_end)
            for name, r in self._resources.items()
        }
        return StandInView(
            resources=MappingProxyType(resources),
            registrations=tuple(self._registrations),
            allocations=tuple(self._allocations),
            restarts=tuple(self._restarts),
        )

    def wait_for(self, predicate: Callable[[StandInView], bool], timeout: float) -> bool:
        """Waits until `predicate` holds for a snapshot, re-checked on every change."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self._view_locked()), timeout)

    def resources(self) -> list[str]:
        """Resources registered with the running kubelet (forgotten on restart)."""
        return sorted(self.view().resources)

    def registrations(self, resource: str) -> list[RegisterRecord]:
        """Every accepted registration of `resource`, restarts included, oldest first."""
        return [r for r in self.view().registrations if r.resource_name == resource]

    def registered_since(self, resource: str, since: float) -> bool:
        return self.view().registered_since(resource, since)

    def devices(self, resource: str) -> dict[str, Device]:
        return dict(self.view().devices(resource))

    def messages(self, resource: str) -> int:
        """ListAndWatch messages received since the resource's latest registration."""
        return self.view().messages(resource)

    def stream_end(self, resource: str) -> StreamEnd | None:
        view = self.view().resources.get(resource)
        return view.stream_end if view else None

    def allocations(self) -> list[AllocationRecord]:
        return list(self.view().allocations)

    # ---- kubelet's side: allocation ------------------------------------------------------

    def allocate(
        self,
        pod: PodRef,
        container: str,
        resource: str,
        count: int,
        *,
        init: bool = False,
        timeout: float | None = None,
    ) -> pb.AllocateResponse:
        """Allocates `count` devices to a container as kubelet's admission does (`init`: an
        init container that is not a sidecar). Raises StandInError where kubelet refuses
        without calling the plugin, AllocateFailed where a plugin call fails (nothing is
        recorded then) and PreStartFailed (recorded).

        As kubelet's device manager, devices an init container got are reused: the pod's next
        containers take them first (without asking the plugin when they are enough; else
        GetPreferredAllocation is asked with them as `must_include_deviceIDs`), and an app
        container's devices are reusable no more."""
        if count < 1:
            raise ValueError("count must be positive")
        with self._admission:
            reusable = self._reusable_for(pod.uid).setdefault(resource, set())
            reused = sorted(reusable)[:count]
            with self._cond:
                current = self._resources.get(resource)
                devices = current.devices if current else None
                found = devices_to_allocate(
                    devices,
                    self._allocations,
                    pod=pod,
                    container=container,
                    resource=resource,
                    count=count,
                    reused=len(reused),
                )
            if isinstance(found, AllocationRecord):
                return pb.AllocateResponse(container_responses=[found.response])
            assert current is not None
            client, options = current.client, current.registration.plugin_options
            preferred: list[str] = []
            if len(reused) < count and options.get_preferred_allocation_available:
                preferred = client.preferred(sorted({*found, *reused}), reused, count)
            ids = choose_devices(found, preferred, count, reused)
            response = self._commit(
                pod, container, resource, ids, registered=current, timeout=timeout
            )
            if init:
                reusable.update(ids)
            else:
                reusable.difference_update(ids)
            return response

    def _reusable_for(self, pod_uid: str) -> dict[str, set[str]]:
        """The pod's reusable devices; kubelet forgets those of any other pod."""
        for other in [uid for uid in self._reusable if uid != pod_uid]:
            del self._reusable[other]
        return self._reusable.setdefault(pod_uid, {})

    def allocate_ids(
        self,
        pod: PodRef,
        container: str,
        resource: str,
        ids: Sequence[str],
        *,
        timeout: float | None = None,
    ) -> pb.AllocateResponse:
        """Sends exactly `ids` to Allocate, unchecked (what kubelet never does: for testing a
        plugin's handling of bad input). Recorded like `allocate` on success."""
        with self._admission:
            with self._cond:
                current = self._resources.get(resource)
                if current is None:
                    raise StandInError(f"cannot allocate unregistered device {resource}")
            return self._commit(
                pod, container, resource, list(ids), registered=current, timeout=timeout
            )

    def _commit(
        self,
        pod: PodRef,
        container: str,
        resource: str,
        ids: list[str],
        *,
        registered: _Resource,
        timeout: float | None,
    ) -> pb.AllocateResponse:
        """Allocate, record on success, then PreStartContainer if the plugin asked for it."""
        response = registered.client.allocate(ids, timeout)
        if not response.container_responses:
            raise StandInError("no containers return in allocation response")
        with self._cond:
            known = registered.devices
            record = AllocationRecord(
                pod=pod,
                container=container,
                resource=resource,
                devices=tuple(known.get(i, Device(i, "")) for i in ids),
                response=response.container_responses[0],
                time=time.monotonic(),
            )
            self._allocations.append(record)
            self._cond.notify_all()
        self._write_checkpoint()
        if registered.registration.plugin_options.pre_start_required:
            registered.client.pre_start(ids)
        return response

    def release(self, pod_uid: str) -> int:
        """Forgets a deleted pod's allocations; returns how many there were."""
        with self._cond:
            kept = [r for r in self._allocations if r.pod.uid != pod_uid]
            released = len(self._allocations) - len(kept)
            self._allocations = kept
            self._cond.notify_all()
        self._write_checkpoint()
        return released
