"""The kinds the stand-in serves, and the metadata every stored object carries."""

from __future__ import annotations

import secrets
import string
import time
import uuid
from dataclasses import dataclass
from typing import Any

from gpulet.api.stamps import stamp
from gpulet.standins.apiserver.status import bad_request

JsonObject = dict[str, Any]

API_VERSION = "v1"


@dataclass(frozen=True)
class Resource:
    """One kind of the core v1 API, as the API server names it."""

    kind: str
    plural: str
    namespaced: bool

    @property
    def list_kind(self) -> str:
        """The kind of a list of these objects, e.g. PodList."""
        return f"{self.kind}List"


PODS = Resource("Pod", "pods", namespaced=True)
NODES = Resource("Node", "nodes", namespaced=False)
#: Events are stored and listed as they come; nothing reads them but tests.
EVENTS = Resource("Event", "events", namespaced=True)


def metadata(obj: JsonObject) -> JsonObject:
    """The object's metadata, created empty if absent."""
    meta = obj.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise bad_request("metadata must be an object")
    return meta


def key_of(obj: JsonObject) -> tuple[str, str]:
    """(namespace, name); the namespace is "" for cluster-scoped objects."""
    meta = metadata(obj)
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def now_rfc3339() -> str:
    """The current time, as metadata.creationTimestamp spells it."""
    return stamp(time.time())


def generated_name(prefix: str) -> str:
    """The name the API server makes from metadata.generateName: prefix plus 5 characters."""
    alphabet = string.ascii_lowercase + string.digits
    return prefix + "".join(secrets.choice(alphabet) for _ in range(5))


def stamp_new(resource: Resource, obj: JsonObject) -> None:
    """Set what the API server sets on create: kind, apiVersion, uid and creationTimestamp
    (a client's own are replaced, as the real one replaces them), and a Pending phase for
    pods. The name and resourceVersion are the store's to set."""
    obj["apiVersion"] = API_VERSION
    obj["kind"] = resource.kind
    meta = metadata(obj)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now_rfc3339()
    if resource is PODS:
        status = obj.setdefault("status", {})
        if isinstance(status, dict):
            status.setdefault("phase", "Pending")
