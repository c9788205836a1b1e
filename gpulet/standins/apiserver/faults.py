"""Errors injected into chosen requests (fail_next)."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass


@dataclass
class _Fault:
    method: str
    path: re.Pattern[str]
    code: int
    remaining: int


class Faults:
    """Pending injected errors, each for a number of matching requests, oldest first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []

    def add(self, method: str, path_regex: str, code: int, times: int) -> None:
        """Fail the next `times` requests whose method is `method` and whose path (with its
        query) `path_regex` matches (re.search) with HTTP `code`."""
        if times < 1:
            raise ValueError(f"times must be at least 1, not {times}")
        with self._lock:
            self._faults.append(_Fault(method.upper(), re.compile(path_regex), code, times))

    def take(self, method: str, path: str) -> int | None:
        """The code to fail this request with, using up one of its fault's times; None if
        no fault matches."""
        with self._lock:
            for fault in self._faults:
                if fault.method == method.upper() and fault.path.search(path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    return fault.code
        return None
