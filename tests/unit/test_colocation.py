"""The batch slices' share of a GPU (agent.colocation.batch_shares): what production leaves
idle, less a margin; a production slice that launches gets its whole reservation back."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.colocation import (
    ACTIVE_MARGIN_PERMILLE,
    MARGIN_PERMILLE,
    MIN_PERMILLE,
    Use,
    batch_shares,
)
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
