"""Opening a simulated node: by shipped name, from a spec file, or an existing directory."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import TracebackType

from agent.discovery import discover
from agent.discovery.netlink import SysfsLinkState
from agent.simnode.errors import SimulationError
from agent.simnode.generate import generate
from agent.simnode.nvml import SimulatedNvml
from agent.simnode.parse import parse_spec
from agent.simnode.spec import NodeSpec
from agent.simnode.yamlload import load_yaml
from gpulet.topology import Topology

SPEC_SUFFIXES = (".yaml", ".yml")

#: Directories `open_simulated` made and has not removed yet; removed at exit.
_temporary: set[Path] = set()


@dataclass(frozen=True)
class SimulatedNode:
    """A simulated node on disk: `sysfs` plays `/sys`, `nvml` plays the NVML library."""

    name: str
    root: Path
    sysfs: Path
    nvml: SimulatedNvml
    #: Whether `root` is a temporary directory that `close()` (or interpreter exit) removes.
    temporary: bool = False

    def topology(self, node_name: str | None = None) -> Topology:
        """What discovery reads from this node (as from a real one: its sysfs tree, its
        NVML, link states from sysfs), named `node_name` or the node's own name."""
        return discover(self.sysfs, self.nvml, SysfsLinkState(self.sysfs), node_name or self.name)

    def close(self) -> None:
        """Remove the directory if `open_simulated` made it; a no-op otherwise."""
        if self.temporary:
            _temporary.discard(self.root)
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SimulatedNode:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


def shipped_nodes() -> list[str]:
    """Names of the specs shipped in `agent/simnode/nodes/`."""
    folder = resources.files(__package__) / "nodes"
    return sorted(
        entry.name.removesuffix(".yaml")
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def shipped_spec(name: str) -> NodeSpec:
    """The parsed spec of a shipped node."""
    if name not in shipped_nodes():
        raise SimulationError(_unknown(name))
    text = (resources.files(__package__) / "nodes" / f"{name}.yaml").read_text(encoding="utf-8")
    return parse_spec(text, source=f"{name}.yaml", default_name=name)


def load_spec(path: Path) -> NodeSpec:
    """Parse a spec file; the node is named after the file unless the spec says `name:`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise SimulationError(f"{path}: cannot read: {err.strerror}") from None
    return parse_spec(text, source=str(path), default_name=path.stem)


def open_simulated(
    name_or_path: str | os.PathLike[str], *, into: Path | None = None
) -> SimulatedNode:
    """A simulated node, ready for discovery.

    A shipped name (`dgx-h100`, see `shipped_nodes()`) or a spec file (`.yaml`) is generated
    into `into` (new or empty), or else into a fresh temporary directory removed by `close()`
    or at exit. An existing simulated-node directory is used in place. A shipped name wins
    over a same-named directory; write `./dgx-h100` for the directory.
    """
    text = os.fspath(name_or_path)
    if os.sep not in text and text in shipped_nodes():
        return _materialise(shipped_spec(text), into)
    path = Path(text)
    if path.is_dir():
        return load_directory(path)
    if path.is_file() and path.suffix in SPEC_SUFFIXES:
        return _materialise(load_spec(path), into)
    if path.exists():
        raise SimulationError(f"{path}: neither a simulated-node directory nor a spec (.yaml)")
    raise SimulationError(_unknown(text))


def load_directory(root: Path, *, temporary: bool = False) -> SimulatedNode:
    """Check and open a simulated-node directory (`sysfs/`, `nvml.json`, optional `node.yaml`)."""
    sysfs = root / "sysfs"
    if not sysfs.is_dir():
        raise SimulationError(f"{root}: not a simulated-node directory (no sysfs/ in it)")
    if not (root / "nvml.json").is_file():
        raise SimulationError(f"{root}: not a simulated-node directory (no nvml.json in it)")
    return SimulatedNode(
        name=_node_name(root),
        root=root,
        sysfs=sysfs,
        nvml=SimulatedNvml(root / "nvml.json"),
        temporary=temporary,
    )


def _materialise(spec: NodeSpec, into: Path | None) -> SimulatedNode:
    if into is not None:
        return load_directory(generate(spec, into))
    root = Path(tempfile.mkdtemp(prefix=f"gpulet-sim-{spec.name}-"))
    _temporary.add(root)
    try:
        generate(spec, root)
        return load_directory(root, temporary=True)
    except BaseException:
        _temporary.discard(root)
        shutil.rmtree(root, ignore_errors=True)
        raise


def _node_name(root: Path) -> str:
    path = root / "node.yaml"
    if not path.exists():
        return root.resolve().name
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise SimulationError(f"{path}: cannot read: {err.strerror}") from None
    except SimulationError as err:
        raise SimulationError(f"{path}: {err}") from None
    if not isinstance(doc, dict) or set(doc) - {"name"}:
        raise SimulationError(f"{path}: expected a mapping with only 'name: <node name>'")
    name = doc.get("name", root.resolve().name)
    if not isinstance(name, str) or not name.strip():
        raise SimulationError(f"{path}: name: expected the node's name, got {name!r}")
    return name.strip()


def _unknown(name: str) -> str:
    return (
        f"unknown simulated node {name!r} (shipped: {', '.join(shipped_nodes())}; "
        "or give a simulated-node directory)"
    )


@atexit.register
def _remove_temporary() -> None:
    for root in list(_temporary):
        shutil.rmtree(root, ignore_errors=True)
    _temporary.clear()
