"""The `gpulet.io/assignment` pod annotation: what the extender decided for each container of
a pod, written at bind time and followed by the agent's Allocate. Format: docs/assignment.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

from gpulet.api.resources import ASSIGNMENT_ANNOTATION, GPU_RESOURCE, check_resource
from gpulet.api.share import GpuShare

ANNOTATION = ASSIGNMENT_ANNOTATION
VERSION = 1
#: A container's limits file takes 16 devices at most (docs/limiter.md): the limiter's
#: GPULET_MAX_DEVICES, which tests/unit/test_region.py holds this equal to.
MAX_GPUS = 16
_UUID = re.compile(r"[A-Za-z0-9-]{1,63}")
_NIC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?::[0-9]+)?")
_TOP_KEYS = frozenset({"version", "node", "containers"})
_CONTAINER_KEYS = frozenset({"gpus", "nics", "numa"})
#: Optional in a container: its class, "production" (the default, and never written) or
#: "batch". An agent older than batch slices refuses an annotation that names one.
_CLASS_KEY = "class"
BATCH = "batch"
PRODUCTION = "production"
_GPU_KEYS = frozenset({"uuid", "core", "memory_mib", "exclusive"})


class AssignmentError(ValueError):
    """An annotation that cannot be followed; the message starts with the annotation's name."""


@dataclass(frozen=True)
class ContainerAssignment:
    name: str
    #: What each GPU gives the container (the GPUs are named by UUID: `index` is -1).
    gpus: tuple[GpuShare, ...] = ()
    #: RDMA port keys (`mlx5_0`, `mlx5_0:2`).
    nics: tuple[str, ...] = ()
    numa: tuple[int, ...] = ()

    @property
    def batch(self) -> bool:
        """A batch slice (docs/colocation.md); its shares say so too."""
        return any(g.batch for g in self.gpus)

    def count(self, resource: str) -> int:
        check_resource(resource)
        return len(self.gpus) if resource == GPU_RESOURCE else len(self.nics)


@dataclass(frozen=True)
class Assignment:
    node: str
    containers: tuple[ContainerAssignment, ...]

    def container(self, name: str) -> ContainerAssignment | None:
        return next((c for c in self.containers if c.name == name), None)


# ---- the annotation ------------------------------------------------------------------------


def _fail(where: str, problem: str) -> AssignmentError:
    return AssignmentError(f"{ANNOTATION}: {where}{problem}")


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    if isinstance(value, int | float) and not isinstance(value, bool):
        return "a number"
    return names.get(type(value), type(value).__name__)


def _object(
    value: object, where: str, keys: frozenset[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"expected an object, got {_kind(value)}")
    for key in value:
        if key not in keys and key not in optional:
            known = ", ".join(sorted(keys | optional))
            raise _fail(where, f'unknown field "{key}" (known: {known})')
    for key in sorted(keys):
        if key not in value:
            raise _fail(where, f'"{key}" is missing')
    return value


def _int(value: object, where: str, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(where, f"{what} must be an integer, got {_kind(value)}")
    if not low <= value <= high:
        raise _fail(where, f"{what} {value} is not in {low}..{high}")
    return value


def _list(value: object, where: str, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _fail(where, f'"{what}" must be a list, got {_kind(value)}')
    return value


def _gpu(value: object, where: str) -> GpuShare:
    d = _object(value, where, _GPU_KEYS)
    uuid = d["uuid"]
    if not isinstance(uuid, str) or not _UUID.fullmatch(uuid):
        raise _fail(where, f"uuid {json.dumps(uuid)} is not 1..63 characters of A-Z a-z 0-9 -")
    core = _int(d["core"], where, "core", 1, 100)
    memory = _int(d["memory_mib"], where, "memory_mib", 1, 1 << 40)
    exclusive = d["exclusive"]
    if not isinstance(exclusive, bool):
        raise _fail(where, f'"exclusive" must be true or false, got {_kind(exclusive)}')
    if exclusive and core != 100:
        raise _fail(where, f"{uuid} is exclusive (a whole GPU) but core is {core}, not 100")
    return GpuShare(uuid, core, memory, exclusive)


def _container(name: str, value: object) -> ContainerAssignment:
    where = f"container {json.dumps(name)}: "
    if not name:
        raise _fail("", "a container name is empty")
    d = _object(value, where, _CONTAINER_KEYS, frozenset({_CLASS_KEY}))
    kind = d.get(_CLASS_KEY, PRODUCTION)
    if kind not in (PRODUCTION, BATCH):
        raise _fail(where, f'"class" must be "{PRODUCTION}" or "{BATCH}", got {json.dumps(kind)}')
    gpus = tuple(_gpu(g, where) for g in _list(d["gpus"], where, "gpus"))
    if kind == BATCH:
        if not gpus or any(g.exclusive for g in gpus):
            raise _fail(where, "a batch container takes slices of one GPU or more, never whole")
        gpus = tuple(replace(g, batch=True) for g in gpus)
    if len(gpus) > MAX_GPUS:
        raise _fail(where, f"{len(gpus)} GPUs; a container takes {MAX_GPUS} at most")
    if len({g.uuid for g in gpus}) != len(gpus):
        raise _fail(where, "a GPU is listed twice; each GPU of a container is a different one")
    if len({g.exclusive for g in gpus}) > 1:
        raise _fail(where, "mixes whole GPUs and slices; a container gets one or the other")
    nics: list[str] = []
    for nic in _list(d["nics"], where, "nics"):
        if not isinstance(nic, str) or not _NIC.fullmatch(nic):
            raise _fail(where, f"NIC {json.dumps(nic)} is not an RDMA port like mlx5_0 or mlx5_0:2")
        if nic in nics:
            raise _fail(where, f"NIC {nic} is listed twice")
        nics.append(nic)
    numa = tuple(_int(n, where, "NUMA node", 0, 1 << 16) for n in _list(d["numa"], where, "numa"))
    return ContainerAssignment(name, gpus, tuple(nics), numa)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _fail("", f'key "{key}" appears twice in one object')
        out[key] = value
    return out


def parse_assignment(text: str) -> Assignment:
    """The annotation's value, checked; AssignmentError naming the first problem."""
    try:
        doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise _fail("", f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    if not isinstance(doc, dict):
        raise _fail("", f"expected a JSON object, got {_kind(doc)}")
    if "version" not in doc:
        raise _fail("", '"version" is missing')
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail("", f'"version" must be an integer, got {_kind(version)}')
    if version != VERSION:
        raise _fail(
            "",
            f"version {version} is not supported (this agent reads version {VERSION}): "
            "run an agent and a scheduler extender of the same release",
        )
    d = _object(doc, "", _TOP_KEYS)
    node = d["node"]
    if not isinstance(node, str):
        raise _fail("", f'"node" must be a string, got {_kind(node)}')
    if not node:
        raise _fail("", '"node" is empty: it names the node the pod was bound to')
    containers = d["containers"]
    if not isinstance(containers, dict):
        raise _fail("", f'"containers" must be an object, got {_kind(containers)}')
    return Assignment(node, tuple(_container(n, c) for n, c in containers.items()))


def dump_assignment(assignment: Assignment) -> str:
    """The annotation's value; `parse_assignment` reads it back equal."""
    containers = {
        c.name: {
            **({_CLASS_KEY: BATCH} if c.batch else {}),
            "gpus": [
                {
                    "uuid": g.uuid,
                    "core": g.core,
                    "memory_mib": g.memory_mib,
                    "exclusive": g.exclusive,
                }
                for g in c.gpus
            ],
            "nics": list(c.nics),
            "numa": list(c.numa),
        }
        for c in assignment.containers
    }
    doc = {"version": VERSION, "node": assignment.node, "containers": containers}
    return json.dumps(doc, separators=(",", ":"))
