"""The stamps the agent's heartbeat and the API's creationTimestamp are written in."""

from __future__ import annotations

import pytest

from gpulet.api.stamps import epoch, stamp

NOON = 1_796_472_000.0  # 2026-12-05T12:00:00Z


def test_a_stamp_reads_back_to_its_second() -> None:
    assert stamp(NOON) == "2026-12-05T12:00:00Z"
    assert epoch(stamp(NOON)) == NOON
    assert epoch("2026-12-05T13:00:00+01:00") == NOON  # RFC 3339 with an offset


@pytest.mark.parametrize("text", [None, 17, "", "yesterday", "2026-12-05T12:00:00"])
def test_what_is_not_a_stamp_with_a_zone_reads_as_none(text: object) -> None:
    assert epoch(text) is None
