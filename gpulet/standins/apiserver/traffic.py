"""What each request cost on the wire, for benchmarks: recorded as it is served (a watch's
answer grows while it streams), read as frozen snapshots. One lock-free append per request
and an integer addition per reply or watch event."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Traffic:
    """One request: `path` with its query; the request's body bytes; the response's body
    bytes (a watch's: the event lines streamed so far; HTTP headers and chunk framing are
    not counted); the client's User-Agent header ("" when it sent none)."""

    method: str
    path: str
    request_bytes: int
    response_bytes: int
    user_agent: str


class Entry:
    """A request being served: the handler adds what it writes to `response_bytes`."""

    __slots__ = ("method", "path", "request_bytes", "response_bytes", "user_agent")

    def __init__(self, method: str, path: str, request_bytes: int, user_agent: str) -> None:
        self.method = method
        self.path = path
        self.request_bytes = request_bytes
        self.response_bytes = 0
        self.user_agent = user_agent

    def snapshot(self) -> Traffic:
        return Traffic(
            self.method, self.path, self.request_bytes, self.response_bytes, self.user_agent
        )


class TrafficLog:
    """Every request in arrival order. list.append and a copy of the list are atomic in
    CPython, so neither serving nor reading takes a lock."""

    def __init__(self) -> None:
        self._entries: list[Entry] = []

    def start(self, method: str, path: str, request_bytes: int, user_agent: str) -> Entry:
        entry = Entry(method, path, request_bytes, user_agent)
        self._entries.append(entry)
        return entry

    def entries(self) -> list[Entry]:
        """The entries so far (live: a watch's keeps growing)."""
        return list(self._entries)

    def snapshot(self) -> list[Traffic]:
        return [entry.snapshot() for entry in list(self._entries)]
