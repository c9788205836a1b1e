"""The ledger's files on disk: a snapshot and the journal of changes made since.

The snapshot (`<path>`) is JSON, replaced atomically (a temporary file renamed over it):

    {"version": 1, "generation": "9f2c...", "grants": [{"resource": "gpulet.io/gpu",
      "device_ids": ["GPU-...::00"], "gpus": [{"uuid": "GPU-...", "index": 3, "core": 100,
      "memory_mib": 81920, "exclusive": true}], "nics": [], "pod_uid": "...",
      "container": "main", "region_dir": "/run/...", "granted_at": 1767225600.0}]}

The journal (`<path>.journal`) holds one JSON document per line: first
`{"generation": "9f2c..."}`, naming the snapshot it continues, then `{"add": GRANT}` or
`{"remove": GRANT}` per change, in order. Appending a line is what an Allocate pays, not
rewriting every grant; the ledger writes a new snapshot (and starts a new journal) once the
journal is longer than the snapshot is worth. A journal of another generation is left over
from before the latest snapshot and ignored; a last line without its newline is a write the
agent did not finish, and is ignored too.

Neither file is fsync'd: renames and appends are whole across a crash of the agent, the case
they are for. A node that loses power loses its containers too; kubelet allocates them again,
and files that came back damaged are set aside and rebuilt from kubelet's pod resources.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from deviceplugin.grants import GpuShare, Grant

VERSION = 1
ADD, REMOVE = "add", "remove"


class CheckpointError(Exception):
    """A checkpoint that cannot be read; `kept` is where the damaged snapshot was moved."""

    def __init__(self, message: str, kept: Path | None = None) -> None:
        super().__init__(message)
        self.kept = kept


@dataclass(frozen=True)
class Stored:
    """What the files hold: the snapshot's grants, then the journal's changes in order."""

    grants: list[Grant]
    changes: list[tuple[str, Grant]]


def journal_path(path: Path) -> Path:
    return path.with_name(f"{path.name}.journal")


def new_generation() -> str:
    return os.urandom(8).hex()


def write_snapshot(path: Path, grants: Iterable[Grant], generation: str) -> None:
    """Replace the snapshot atomically, then drop the journal it supersedes."""
    # Each grant is encoded once (grants are immutable), so a snapshot is a join.
    body = ",".join(grant_json(g) for g in grants)
    data = f'{{"version":{VERSION},"generation":"{generation}","grants":[{body}]}}'.encode()
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}.{threading.get_ident()}")
    try:
        with open(tmp, "wb", opener=_private) as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    journal_path(path).unlink(missing_ok=True)


def append_journal(path: Path, generation: str, changes: Iterable[tuple[str, Grant]]) -> int:
    """Append `changes` to the journal of snapshot `generation`, starting the journal when
    there is none; the journal's size before. On OSError the journal is cut back to that
    size where possible (a cut that fails leaves a torn last line, which a reader ignores)."""
    lines = "".join(f'{{"{op}":{grant_json(g)}}}\n' for op, g in changes)
    journal = journal_path(path)
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            lines = f'{{"generation":"{generation}"}}\n{lines}'
        data = lines.encode()
        try:
            if os.write(fd, data) != len(data):
                raise OSError(f"short write to {journal}")
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise
        return size
    finally:
        os.close(fd)


def read(path: Path) -> Stored | None:
    """The snapshot at `path` and its journal; None when there is no snapshot. Damaged files
    are moved aside (`<name>.corrupt-<UTC time>`, never deleted) and CheckpointError says
    where."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        version = doc.get("version")
        if version != VERSION:
            raise ValueError(f"version {version!r}, this agent reads {VERSION}")
        grants = [grant_from(g) for g in _typed(doc["grants"], list, "grants")]
        generation = doc.get("generation")
    except (ValueError, KeyError, TypeError) as e:
        raise damaged(path, _problem(e)) from None
    try:
        changes = _read_journal(journal_path(path), generation)
    except (ValueError, KeyError, TypeError) as e:
        raise damaged(path, f"its journal: {_problem(e)}") from None
    return Stored(grants, changes)


def damaged(path: Path, problem: str) -> CheckpointError:
    """Move the snapshot and its journal aside; the error says why and where. Also for
    files whose contents contradict themselves (a device granted twice, a removal of what
    was never added)."""
    journal = journal_path(path)
    if journal.exists():
        problem = f"{problem}; its journal was moved to {_keep_aside(journal)}"
    kept = _keep_aside(path)
    return CheckpointError(
        f"checkpoint {path} cannot be read ({problem}); it was moved to {kept}, and "
        "what was granted must be rebuilt from kubelet's pod resources",
        kept,
    )


def _read_journal(journal: Path, generation: object) -> list[tuple[str, Grant]]:
    try:
        raw = journal.read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")
    lines.pop()  # what follows the last newline: empty, or a write the agent did not finish
    if not lines or generation is None:
        return []
    head = json.loads(lines[0])
    if not isinstance(head, dict) or "generation" not in head:
        raise ValueError("line 1 does not name the snapshot's generation")
    if head["generation"] != generation:
        return []  # left over from before the snapshot
    changes: list[tuple[str, Grant]] = []
    for n, line in enumerate(lines[1:], start=2):
        entry = json.loads(line)
        if not isinstance(entry, dict) or len(entry) != 1 or next(iter(entry)) not in (ADD, REMOVE):
            raise ValueError(f"line {n} is neither an add nor a remove")
        ((op, doc),) = entry.items()
        changes.append((op, grant_from(doc)))
    return changes


def _problem(e: Exception) -> str:
    return str(e) if not isinstance(e, KeyError) else f"missing field {e}"


def _private(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_CLOEXEC, 0o600)


@lru_cache(maxsize=4096)
def grant_json(g: Grant) -> str:
    return json.dumps(_grant_doc(g), separators=(",", ":"))


def _grant_doc(g: Grant) -> dict[str, Any]:
    return {
        "resource": g.resource,
        "device_ids": list(g.device_ids),
        "gpus": [
            {
                "uuid": s.uuid,
                "index": s.index,
                "core": s.core,
                "memory_mib": s.memory_mib,
                "exclusive": s.exclusive,
                # Only where true, so that a checkpoint of production grants reads the same
                # to an agent older than batch slices.
                **({"batch": True} if s.batch else {}),
            }
            for s in g.gpus
        ],
        "nics": list(g.nics),
        "pod_uid": g.pod_uid,
        "container": g.container,
        "region_dir": g.region_dir,
        "granted_at": g.granted_at,
    }


def _typed(value: Any, kind: type | tuple[type, ...], what: str) -> Any:
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise TypeError(f"{what} has the wrong type ({type(value).__name__})")
    return value


def grant_from(d: Any) -> Grant:
    _typed(d, dict, "a grant")
    resource = _typed(d["resource"], str, "resource")
    device_ids = tuple(_typed(i, str, "a device ID") for i in _typed(d["device_ids"], list, "ids"))
    gpus = tuple(
        GpuShare(
            _typed(s["uuid"], str, "uuid"),
            _typed(s["core"], int, "core"),
            _typed(s["memory_mib"], int, "memory_mib"),
            _typed(s["exclusive"], bool, "exclusive"),
            index=_typed(s["index"], int, "index"),
            batch=_typed(s.get("batch", False), bool, "batch"),
        )
        for s in _typed(d["gpus"], list, "gpus")
    )
    none_or_str = (str, type(None))
    return Grant(
        resource=resource,
        device_ids=device_ids,
        gpus=gpus,
        nics=tuple(_typed(n, str, "a NIC") for n in _typed(d["nics"], list, "nics")),
        pod_uid=_typed(d["pod_uid"], none_or_str, "pod_uid"),
        container=_typed(d["container"], none_or_str, "container"),
        region_dir=_typed(d["region_dir"], none_or_str, "region_dir"),
        granted_at=float(_typed(d["granted_at"], (int, float), "granted_at")),
    )


def _keep_aside(path: Path) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    kept = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.corrupt-{stamp}-{n}")
    os.replace(path, kept)
    return kept
