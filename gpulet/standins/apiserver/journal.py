"""A thread-safe, append-only record, read as a snapshot."""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class Journal(Generic[T]):
    """Items in the order they were appended, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[T] = []

    def append(self, item: T) -> None:
        with self._lock:
            self._items.append(item)

    def items(self) -> list[T]:
        """A copy of every item so far."""
        with self._lock:
            return list(self._items)
