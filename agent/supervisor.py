"""The agent's lifecycle: its components started in order, stopped in reverse order.

Each mode of the agent (`agent.node_agent`, `agent.standalone`) hands its components to a
`Supervisor` as it builds them, in start order. When one fails to start, or building the
next one fails inside `starting()`, those already started are stopped, last first, and the
original error is raised again: a failed start leaves no thread, socket or frozen cgroup
behind. `stop()` stops what is running, last first, once. A component whose stop fails is
logged (`event=stop-failed`) and the others are stopped all the same.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol, TypeVar

log = logging.getLogger("gpulet.agent")


class Component(Protocol):
    """Something the agent runs: `start` returns once it is running (raising if it could
    not start); `stop` ends it."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class Part:
    """A component made of two callables, for what has no start/stop of its own."""

    on_start: Callable[[], object]
    on_stop: Callable[[], object]

    def start(self) -> None:
        self.on_start()

    def stop(self) -> None:
        self.on_stop()


C = TypeVar("C", bound=Component)


class Supervisor:
    """Starts components in order and stops them in reverse order (see the module)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: list[tuple[str, Component]] = []
        self._stopped = False

    @property
    def running(self) -> tuple[str, ...]:
        """The names of the components running, in start order."""
        with self._lock:
            return tuple(name for name, _ in self._running)

    def start(self, name: str, component: C) -> C:
        """Start `component` (after those already running) and return it. If it fails to
        start, stop those already running, last first, and raise its error."""
        with self._lock:
            if self._stopped:
                raise RuntimeError(f"cannot start {name}: the supervisor was stopped")
        try:
            component.start()
        except BaseException as e:
            log.error("event=start-failed component=%s error=%r action=rollback", name, str(e))
            self.stop()
            raise
        with self._lock:
            self._running.append((name, component))
        log.info("event=component-started component=%s", name)
        return component

    def start_all(self, components: Iterable[tuple[str, Component]]) -> None:
        """Start each (name, component) in order, as `start`."""
        for name, component in components:
            self.start(name, component)

    @contextmanager
    def starting(self) -> Iterator[Supervisor]:
        """A block that builds and starts components: if anything in it raises (building
        the next component, say), what started is stopped, last first, and the error
        raised again."""
        try:
            yield self
        except BaseException as e:
            if self.running:  # a failed `start` has rolled back already
                log.error("event=start-failed error=%r action=rollback", str(e))
            self.stop()
            raise

    def stop(self) -> None:
        """Stop every running component, last first; once (later calls do nothing)."""
        with self._lock:
            self._stopped = True
            running, self._running = self._running, []
        for name, component in reversed(running):
            try:
                component.stop()
            except Exception as e:
                log.error("event=stop-failed component=%s error=%r", name, str(e))
            else:
                log.info("event=component-stopped component=%s", name)
