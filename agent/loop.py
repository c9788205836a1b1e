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


class OnDemand:
    """Calls `fn` from a thread of its own whenever `wake` is called (calls asked for while
    one runs make one more). Where `fn` raises, `failed(error, retry_s)` is called and `fn`
    is called again `retry_s` later, twice as long each time up to `max_retry_s`, until it
    returns."""

    def __init__(
        self,
        name: str,
        fn: Callable[[], object],
        failed: Callable[[Exception, float], object],
        *,
        retry_s: float = 1.0,
        max_retry_s: float = 60.0,
    ) -> None:
        self._fn = fn
        self._failed = failed
        self._retry_s = retry_s
        self._max_retry_s = max_retry_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        delay: float | None = None
        retry = self._retry_s
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self._fn()
            except Exception as e:
                delay = retry
                retry = min(retry * 2, self._max_retry_s)
                self._failed(e, delay)
                continue
            delay, retry = None, self._retry_s
