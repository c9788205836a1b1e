"""The batch slices' share of a GPU (agent.colocation.batch_shares): what production leaves
idle, less a margin; a production slice that launches gets its whole reservation back."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.colocation import (
    ACTIVE_MARGIN_PERMILLE,
    MARGIN_PERMILLE,
    MIN_PERMILLE,
    CoLocation,
    Use,
    batch_gpus,
    batch_shares,
    slice_key,
)
from deviceplugin.grants import Grant
from deviceplugin.regions import limits_of, set_up
from gpulet.api.resources import GPU_RESOURCE
from gpulet.api.share import GpuShare
from native.region import inspect, write_share
from tests.strategies import examples


def prod(key: str, share: int, busy: int = 0, launches: int = 0) -> Use:
    return Use(key, False, share, busy, launches)


def batch(key: str, floor: int) -> Use:
    return Use(key, True, floor, 0, 0)


def test_production_idle_leaves_the_gpu_to_batch_but_the_margin() -> None:
    assert batch_shares([prod("p", 500), batch("b", 100)]) == {"b": 1000 - MARGIN_PERMILLE}


def test_production_that_used_a_little_while_idle_counts_what_it_used() -> None:
    # No launch in the interval, but GPU time of kernels launched before it.
    shares = batch_shares([prod("p", 500, busy=120), batch("b", 100)])
    assert shares == {"b": 1000 - 120 - MARGIN_PERMILLE}


def test_production_that_launches_counts_its_whole_reservation() -> None:
    shares = batch_shares([prod("p", 300, busy=40, launches=3), batch("b", 100)])
    assert shares == {"b": 1000 - 300 - ACTIVE_MARGIN_PERMILLE}
    # A reservation of 50% and the margin leave nothing: batch keeps the least share.
    assert batch_shares([prod("p", 500, launches=1), batch("b", 100)]) == {"b": MIN_PERMILLE}


def test_batch_slices_split_what_is_left_by_their_floors() -> None:
    running = prod("p", 200, launches=1)
    shares = batch_shares([running, batch("a", 100), batch("b", 300)], 0, 0)
    assert shares == {"a": 200, "b": 600}


def test_a_gpu_without_production_is_all_batch_and_one_without_batch_gets_none() -> None:
    assert batch_shares([batch("b", 50)], margin_permille=0) == {"b": 1000}
    assert batch_shares([prod("p", 1000, launches=1)]) == {}


uses = st.lists(
    st.builds(
        Use,
        key=st.uuids().map(str),
        batch=st.booleans(),
        share_permille=st.integers(10, 1000),
        busy_permille=st.integers(0, 1000),
        launches=st.integers(0, 5),
    ),
    max_size=6,
    unique_by=lambda u: u.key,
)


@settings(max_examples=examples(300))
@given(uses)
def test_batch_never_takes_what_running_production_reserved(given_uses: list[Use]) -> None:
    """Whatever the slices: every batch slice gets at least the least share; together they
    never take more than what production leaves (running: its reservations; idle: its use)
    less the margin, unless that is less than the least shares themselves."""
    shares = batch_shares(given_uses)
    batches = [u for u in given_uses if u.batch]
    assert set(shares) == {u.key for u in batches}
    assert all(v >= MIN_PERMILLE for v in shares.values())
    production = [u for u in given_uses if not u.batch]
    active = any(u.launches for u in production)
    counted = sum(
        u.share_permille if u.launches else min(u.busy_permille, u.share_permille)
        for u in production
    )
    margin = ACTIVE_MARGIN_PERMILLE if active else MARGIN_PERMILLE
    room = max(0, 1000 - counted - margin)
    assert sum(shares.values()) <= max(room, len(batches) * MIN_PERMILLE + room)
    if all(v > MIN_PERMILLE for v in shares.values()):
        assert sum(shares.values()) <= room


# ---- the controller in the agent: which slices, and the record the backstop reads ---------

GPU_A, GPU_B = "GPU-aaaa", "GPU-bbbb"


def _grant(tmp_path: Path, pod: str, *shares: GpuShare) -> Grant:
    directory = tmp_path / pod / "main"
    set_up(directory, shares)
    ids = tuple(f"{s.uuid}::{pod}" for s in shares)
    return Grant(
        GPU_RESOURCE, ids, shares, pod_uid=pod, container="main", region_dir=str(directory)
    )


def test_the_controller_sees_only_gpus_that_hold_a_batch_slice(tmp_path: Path) -> None:
    grants = [
        _grant(tmp_path, "prod-a", GpuShare(GPU_A, 50, 1024, index=0)),
        _grant(tmp_path, "batch-a", GpuShare(GPU_A, 10, 1024, index=0, batch=True)),
        _grant(
            tmp_path,
            "prod-ab",
            GpuShare(GPU_B, 30, 1024, index=1),
            GpuShare(GPU_A, 20, 512, index=0),
        ),
        _grant(tmp_path, "whole-b", GpuShare.held_whole(GPU_B, 1024, 1)),
    ]
    found = batch_gpus(grants)
    assert set(found) == {GPU_A}
    keys = {s.key: (s.batch, s.device) for s in found[GPU_A]}
    assert keys == {
        slice_key("prod-a", "main", GPU_A): (False, 0),
        slice_key("batch-a", "main", GPU_A): (True, 0),
        slice_key("prod-ab", "main", GPU_A): (False, 1),
    }
    assert batch_gpus(grants[:1] + grants[2:]) == {}


def test_the_backstop_reads_the_controllers_record_not_the_tenants_region(tmp_path: Path) -> None:
    """The controller writes the batch slice its share and keeps its own record; a tenant
    that writes itself 100% into its region changes what its limiter reads, never what the
    compute backstop holds it to. The record goes with the grant."""
    grants = [
        _grant(tmp_path, "prod", GpuShare(GPU_A, 50, 1024, index=0)),
        _grant(tmp_path, "batch", GpuShare(GPU_A, 10, 1024, index=0, batch=True)),
    ]
    controller = CoLocation(lambda: batch_gpus(grants))
    assert controller.share_percent("batch", "main", GPU_A) is None
    controller.tick()
    controller.tick()
    given = controller.share_percent("batch", "main", GPU_A)
    assert given == (1000 - MARGIN_PERMILLE) // 10  # production idle: all but the margin
    limits = limits_of(grants[1].gpus)
    write_share(grants[1].region_dir or "", 0, 1000, limits)  # the tenant, forging
    assert inspect(grants[1].region_dir or "", limits).usage is not None
    assert controller.share_percent("batch", "main", GPU_A) == given
    grants.pop()
    controller.tick()
    assert controller.share_percent("batch", "main", GPU_A) is None
    assert controller.share_percent("prod", "main", GPU_A) is None
