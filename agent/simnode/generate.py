"""Writing a simulated node's directory: the only module here that writes files."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from agent.simnode.errors import SimulationError
from agent.simnode.files import Symlink
from agent.simnode.render import render
from agent.simnode.spec import NodeSpec


def generate(spec: NodeSpec, out_dir: Path) -> Path:
    """Write the node `spec` describes into `out_dir` (created; must be new or empty).

    The same spec always gives the same files, byte for byte. Returns `out_dir`.
    """
    files = render(spec)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise SimulationError(f"{out_dir}: exists and is not an empty directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    folders = {parent for rel in files for parent in rel.parents} - {PurePosixPath(".")}
    for folder in sorted(folders):
        (out_dir / folder).mkdir()
    for rel in sorted(files):
        path = out_dir / rel
        entry = files[rel]
        if isinstance(entry, Symlink):
            os.symlink(entry.target, path)
        else:
            path.write_text(entry, encoding="utf-8")
    return out_dir
