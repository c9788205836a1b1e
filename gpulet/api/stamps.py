"""Time stamps as the Kubernetes API writes them, RFC 3339 in UTC: whole seconds
(`2026-12-05T12:00:00Z`: creation times, Events, the previous release's `gpulet.io/heartbeat`
annotation), or with microseconds (`stamp_micro`: a Lease's `renewTime`, which the agent's
heartbeat renews)."""

from __future__ import annotations

import time
from datetime import datetime

FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def stamp(epoch: float) -> str:
    """`epoch` (seconds) as a stamp."""
    return time.strftime(FORMAT, time.gmtime(epoch))


def epoch(text: object) -> float | None:
    """A stamp's seconds since the epoch; None for anything that is not an RFC 3339 time
    with a zone."""
    if not isinstance(text, str):
        return None
    try:
        written = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return None if written.tzinfo is None else written.timestamp()


def stamp_micro(epoch: float) -> str:
    """`epoch` as the API's MicroTime writes it (a Lease's `renewTime`): RFC 3339 in UTC with
    six decimals, `2026-12-05T12:00:00.250000Z`."""
    whole = int(epoch // 1)
    micros = min(999_999, round((epoch - whole) * 1_000_000))
    return f"{time.strftime(FORMAT[:-1], time.gmtime(whole))}.{micros:06d}Z"
