"""List, then watch from the list's resourceVersion; list again when the watch expires (410)
or breaks. Objects are read as raw JSON (`_preload_content=False`): callers need a few
fields, and building the client's models for thousands of objects costs more than the rest.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("gpulet.kube")

Obj = Mapping[str, Any]


class Reflector:
    """Keeps a caller's copy of one list current from a background thread.

    `list_call` is a list call (`CoreCalls.list_nodes`, or one with a field selector) that
    takes the list and watch options (`watch`, `resource_version`, `timeout_seconds`,
    `allow_watch_bookmarks`, `_preload_content`). `replace` receives every item after each
    (re)list; `apply` receives each watch event's type (ADDED, MODIFIED, DELETED) and object.
    """

    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        replace: Callable[[Sequence[Obj]], None],
        apply: Callable[[str, Obj], None],
        *,
        watch_timeout_s: int = 300,
        retry_s: float = 1.0,
        on_synced: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self._list = list_call
        self._replace = replace
        self._apply = apply
        self._watch_timeout = watch_timeout_s
        self.retry_s = retry_s
        self._on_synced = on_synced
        self._stop = threading.Event()
        self.synced = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._open: Any = None

    @classmethod
    def of_one(
        cls,
        name: str,
        list_call: Callable[..., Any],
        saw: Callable[[Obj | None], None],
        *,
        watch_timeout_s: int = 300,
    ) -> Reflector:
        """A Reflector of one object (`list_call` selects it by name): `saw` gets it after each
        (re)list and each change, and None where there is none or it was deleted."""
        return cls(
            name,
            list_call,
            lambda items: saw(items[0] if items else None),
            lambda event, obj: saw(None if event == "DELETED" else obj),
            watch_timeout_s=watch_timeout_s,
        )

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"gpulet-{self.name}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            if self._open is not None:
                # Not resp.close(): that waits for the lock of the thread reading it.
                # Shutting the socket down ends that read at once.
                sock = getattr(getattr(self._open, "connection", None), "sock", None)
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                doc = json.loads(self._list(_preload_content=False).data)
                items = doc.get("items") or []
                self._replace(items)
                first = not self.synced.is_set()
                self.synced.set()
                if first and self._on_synced is not None:
                    self._on_synced()
                version = str((doc.get("metadata") or {}).get("resourceVersion") or "")
                log.info(
                    "event=listed what=%s count=%d resource_version=%s",
                    self.name,
                    len(items),
                    version,
                )
                self._watch(version)
            except Exception as e:
                if self._stop.is_set():
                    return
                log.warning("event=sync-error what=%s error=%r", self.name, str(e)[:300])
                self._stop.wait(self.retry_s)

    def _watch(self, version: str) -> None:
        """Apply events from `version` on until the stream ends for good (then list again)."""
        while not self._stop.is_set():
            resp = self._list(
                watch=True,
                resource_version=version,
                timeout_seconds=self._watch_timeout,
                allow_watch_bookmarks=True,
                _preload_content=False,
            )
            with self._lock:
                self._open = resp
            try:
                for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
                    event = json.loads(line)
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        message = obj.get("message")
                        log.info("event=watch-expired what=%s message=%r", self.name, message)
                        return  # 410 Gone, or another error: list again
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if kind != "BOOKMARK":
                        self._apply(kind, obj)
            finally:
                with self._lock:
                    self._open = None
                resp.release_conn()
