"""Time stamps as the Kubernetes API writes them and the agent writes its heartbeat
(`gpulet.io/heartbeat`): RFC 3339 in UTC, whole seconds, `2026-12-05T12:00:00Z`."""

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
