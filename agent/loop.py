"""Work the agent repeats on a fixed interval, each on a thread of its own."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("gpulet.agent")


class Every:
    """Calls `fn` every `interval_s` from a thread of its own, logging what it raises."""

    def __init__(self, name: str, interval_s: float, fn: Callable[[], object]) -> None:
        self._fn = fn
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._fn()
            except Exception as e:
                log.warning("event=loop-error loop=%s error=%r", self._thread.name, str(e))
