"""The previous release's Node publication, kept for the upgrade tests and
bench/api_footprint.py: the agent of that release put its topology document on its own Node
(`gpulet.io/topology`) and renewed a heartbeat there (`gpulet.io/heartbeat`, every 60 s),
one merge patch of the Node each time. This is its `agent.kube.NodePublisher` as it was;
this release writes a NodeTopology and a Lease instead (`agent.publish`, `agent.heartbeat`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from gpulet.api.resources import HEARTBEAT_ANNOTATION, TOPOLOGY_ANNOTATION
from gpulet.api.stamps import stamp
from gpulet.kube.calls import CoreCalls

log = logging.getLogger("gpulet.agent")

#: The previous release's default heartbeat.
LEGACY_HEARTBEAT_S = 60.0


class LegacyNodePublisher:
    """Puts the topology document on this agent's Node (`gpulet.io/topology`), with a
    heartbeat (`gpulet.io/heartbeat`) renewed every `heartbeat_s`; the document again
    whenever `set_topology` changes it."""

    def __init__(
        self,
        core: CoreCalls,
        node: str,
        topology_text: str,
        *,
        heartbeat_s: float = LEGACY_HEARTBEAT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._core = core
        self._node = node
        self._text = topology_text
        self._published: str | None = None
        self._heartbeat = heartbeat_s
        self._clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def set_topology(self, text: str) -> None:
        if text != self._text:
            self._text = text
            self._wake.set()

    def publish(self) -> None:
        """One patch of the Node: the heartbeat, and the document when it changed."""
        annotations = {HEARTBEAT_ANNOTATION: stamp(self._clock())}
        text = self._text
        if text != self._published:
            annotations[TOPOLOGY_ANNOTATION] = text
        self._core.patch_node(self._node, {"metadata": {"annotations": annotations}})
        if text != self._published:
            log.info("event=published node=%s bytes=%d", self._node, len(text))
            self._published = text

    def start(self) -> None:
        self.publish()  # the first one in the caller's thread: an error there is fatal
        self._thread = threading.Thread(target=self._run, name="gpulet-publish", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._heartbeat)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.publish()
            except Exception as e:
                log.warning("event=publish-failed node=%s error=%r", self._node, str(e)[:300])
