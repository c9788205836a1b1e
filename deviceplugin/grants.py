"""What one Allocate granted: immutable records the ledger keeps and the checkpoint stores."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gpulet.api.share import GpuShare

__all__ = ["GpuShare", "Grant"]


@dataclass(frozen=True)
class Grant:
    """One Allocate answered. `pod_uid`/`container` are None in standalone mode (kubelet
    does not say whose the devices are). A grant with no device IDs is *spent*: kubelet
    gave its device IDs to a later container of the same pod (an init container's, reused
    by the app containers). Kubelet does that when it admits the pod, before the init
    container has run: so a spent grant keeps its shares and its region (the init container
    is yet to run under them; they count for the pod's whole life, as the extender counts
    them) and drops only the IDs; and it is kept so that the match does not allocate that
    container again."""

    resource: str
    device_ids: tuple[str, ...]
    #: What each GPU gives the container (with the GPU's index on this node).
    gpus: tuple[GpuShare, ...] = ()
    nics: tuple[str, ...] = ()
    pod_uid: str | None = None
    container: str | None = None
    region_dir: str | None = None
    #: When it was granted (seconds since the epoch).
    granted_at: float = 0.0

    @property
    def spent(self) -> bool:
        return not self.device_ids

    def spend(self) -> Grant:
        return replace(self, device_ids=())
