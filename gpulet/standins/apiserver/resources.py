"""The kinds the stand-in stores, and the metadata every stored object carries."""

from __future__ import annotations

import re
import secrets
import string
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from gpulet.api.stamps import stamp
from gpulet.standins.apiserver.status import FieldError, bad_request

JsonObject = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    """One kind of object as the API server stores it. Identified by its group and plural
    alone: a custom resource keeps its objects whichever of its versions is served."""

    kind: str = field(compare=False)
    plural: str
    namespaced: bool = field(compare=False)
    group: str = ""
    #: The version objects are stored at (a custom resource's storage version).
    version: str = field(default="v1", compare=False)

    @property
    def list_kind(self) -> str:
        """The kind of a list of these objects, e.g. PodList."""
        return f"{self.kind}List"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The resource as errors name it: `pods`, `leases.coordination.k8s.io`."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """The kind as validation errors name it: `Pod`, `Lease.coordination.k8s.io`."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


PODS = Resource("Pod", "pods", namespaced=True)
NODES = Resource("Node", "nodes", namespaced=False)
#: Events are stored and listed as they come; nothing reads them but tests.
EVENTS = Resource("Event", "events", namespaced=True)
LEASES = Resource("Lease", "leases", namespaced=True, group="coordination.k8s.io")
CRDS = Resource(
    "CustomResourceDefinition",
    "customresourcedefinitions",
    namespaced=False,
    group="apiextensions.k8s.io",
)


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
    obj["apiVersion"] = resource.api_version
    obj["kind"] = resource.kind
    meta = metadata(obj)
    meta["uid"] = str(uuid.uuid4())
    meta["creationTimestamp"] = now_rfc3339()
    if resource == PODS:
        status = obj.setdefault("status", {})
        if isinstance(status, dict):
            status.setdefault("phase", "Pending")


_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def name_errors(obj: JsonObject) -> list[FieldError]:
    """What is wrong with the object's name, as a DNS subdomain (RFC 1123), the rule for
    Leases, custom resources and CustomResourceDefinitions."""
    name = metadata(obj).get("name")
    if not isinstance(name, str) or not name:
        return []  # the store refuses a missing name, or generates one
    if len(name) > 253:
        return [
            FieldError(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": must be no more than 253 characters',
            )
        ]
    if _SUBDOMAIN.fullmatch(name) is None:
        return [
            FieldError(
                "metadata.name",
                "FieldValueInvalid",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                "case alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character (e.g. 'example.com', regex used for validation is "
                "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')",
            )
        ]
    return []
