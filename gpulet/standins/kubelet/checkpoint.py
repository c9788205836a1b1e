"""The checkpoint file kubelet keeps in the plugin directory. Plugins never read it, but one
that watches the directory sees it written on every device update and allocation."""

from __future__ import annotations

import base64
import json
import os
import tempfile
from pathlib import Path

from gpulet.standins.kubelet.model import CHECKPOINT_FILE, StandInView


def checkpoint_json(view: StandInView) -> str:
    """Kubelet's layout (PodDeviceEntries, RegisteredDevices); the checksum is not computed."""
    entries = []
    for record in view.allocations:
        per_node: dict[str, list[str]] = {}
        for device in record.devices:
            for node in device.numa_nodes or (-1,):
                per_node.setdefault(str(node), []).append(device.id)
        entries.append(
            {
                "PodUID": record.pod.uid,
                "ContainerName": record.container,
                "ResourceName": record.resource,
                "DeviceIDs": per_node,
                "AllocResp": base64.b64encode(record.response.SerializeToString()).decode(),
            }
        )
    registered = {name: sorted(r.healthy_ids) for name, r in view.resources.items()}
    data = {"PodDeviceEntries": entries, "RegisteredDevices": registered}
    return json.dumps({"Data": data, "Checksum": 0})


def write_checkpoint(plugin_dir: Path, view: StandInView) -> None:
    """Atomically, through a `.kubelet_internal_checkpoint*` temporary file, as kubelet does."""
    fd, tmp = tempfile.mkstemp(dir=plugin_dir, prefix=f".{CHECKPOINT_FILE}")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(checkpoint_json(view))
        os.replace(tmp, plugin_dir / CHECKPOINT_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
