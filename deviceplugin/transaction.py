"""Applying the device plugin's decisions: each grant's region directory (its limits, through
`deviceplugin.regions`), the ledger, and the checkpoint, all or nothing; and the release path
(grants dropped, their regions removed, the checkpoint saved). The caller holds the lock."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from pathlib import Path

from deviceplugin import regions
from deviceplugin.decisions import AllocateError, Decision
from deviceplugin.grants import GpuShare, Grant
from deviceplugin.ledger import DoubleGrantError, Ledger
from deviceplugin.resources import GPU_RESOURCE, PluginConfig
from native.region import RegionError


class GrantWriter:
    """Writes grants into `ledger` (saved at `checkpoint`, when there is one) and their
    regions under the config's region root."""

    def __init__(self, ledger: Ledger, config: PluginConfig, checkpoint: Path | None) -> None:
        self._ledger = ledger
        self._root = config.region_root
        self._checkpoint = checkpoint

    def region_dir(self, decision: Decision) -> Path | None:
        """Where the grant's region will be: a GPU grant has one, a port grant none."""
        if decision.resource != GPU_RESOURCE or not decision.gpus:
            return None
        first = decision.device_ids[0]
        return regions.region_dir(self._root, decision.pod_uid, decision.container, first)

    def apply(self, decision: Decision, region_dir: Path | None, granted_at: float) -> Grant:
        """Set up the region at `region_dir` and record the grant in place of what it
        supersedes; AllocateError, with nothing changed, when any of it cannot be done."""
        grant = Grant(
            resource=decision.resource,
            device_ids=decision.device_ids,
            gpus=decision.gpus,
            nics=decision.nics,
            pod_uid=decision.pod_uid,
            container=decision.container,
            region_dir=None if region_dir is None else str(region_dir),
            granted_at=granted_at,
        )
        if region_dir is not None:
            _set_up_region(region_dir, decision.gpus)
        self._commit(grant, decision)
        return grant

    def _commit(self, grant: Grant, decision: Decision) -> None:
        """Record `grant` in place of what it supersedes and save the checkpoint; undo all of
        it (region included) when the checkpoint cannot be written."""
        spent = [g.spend() for g in decision.superseded] if decision.spend else []
        for old in decision.superseded:
            self._ledger.remove(old)
        added: list[Grant] = []
        try:
            for g in [*spent, grant]:
                self._ledger.add(g)
                added.append(g)
            self._save()
        except (OSError, DoubleGrantError) as e:
            for g in added:
                self._ledger.remove(g)
            for old in decision.superseded:
                self._ledger.add(old)
            kept = {g.region_dir for g in decision.superseded}
            if grant.region_dir and grant.region_dir not in kept:
                regions.remove(self._root, grant.region_dir)
            if isinstance(e, DoubleGrantError):
                raise AllocateError(str(e)) from None
            raise AllocateError(f"cannot write the checkpoint {self._checkpoint}: {e}") from None
        self._remove_regions(decision.superseded)

    # ---- release ----------------------------------------------------------------------------

    def release_pod(self, uid: str) -> list[Grant]:
        """Forget pod `uid`'s grants and remove their region directories."""
        dropped = self._ledger.remove_pod(uid)
        self._after_drop(dropped)
        return dropped

    def reconcile(self, live: Mapping[str, Set[str]], listed_at: float | None) -> list[Grant]:
        """Drop the grants kubelet no longer shows in use (`Ledger.reconcile`), and their
        regions."""
        dropped = self._ledger.reconcile(live, listed_at)
        self._after_drop(dropped)
        return dropped

    def _after_drop(self, dropped: Sequence[Grant]) -> None:
        if dropped:
            self._remove_regions(dropped)
            self._save()

    def _save(self) -> None:
        if self._checkpoint is not None:
            self._ledger.save(self._checkpoint)

    def _remove_regions(self, grants: Iterable[Grant]) -> None:
        """Remove the regions of `grants` that no grant still in force uses."""
        in_use = {g.region_dir for g in self._ledger.grants()}
        for g in grants:
            if g.region_dir and g.region_dir not in in_use:
                regions.remove(self._root, g.region_dir)


def _set_up_region(directory: Path, gpus: Sequence[GpuShare]) -> None:
    try:
        regions.set_up(directory, gpus)
    except RegionError as e:
        raise AllocateError(f"cannot set up the container's limits in {directory}: {e}") from None
