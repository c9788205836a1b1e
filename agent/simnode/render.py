"""A spec to the full simulated-node directory, in memory: `sysfs/`, `nvml.json`, `node.yaml`."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from agent.simnode.files import Files
from agent.simnode.layout import lay_out
from agent.simnode.nvmljson import nvml_document
from agent.simnode.spec import NodeSpec
from agent.simnode.sysfs import sysfs_files

SYSFS = PurePosixPath("sysfs")
NVML_JSON = PurePosixPath("nvml.json")
NODE_YAML = PurePosixPath("node.yaml")


def render(spec: NodeSpec) -> Files:
    """Every file of the node's directory; SimulationError when the spec cannot be laid out."""
    layout = lay_out(spec)
    files: Files = {SYSFS / path: entry for path, entry in sysfs_files(layout).items()}
    files[NVML_JSON] = json.dumps(nvml_document(layout), indent=2) + "\n"
    files[NODE_YAML] = f"name: {spec.name}\n"
    return files
