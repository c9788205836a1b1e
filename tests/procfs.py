"""A process in a container, as the agent's /proc (a stand-in root) shows it: its cgroup (the
path kubelet's systemd driver gives a burstable pod's containerd container) and its pid
inside the container's pid namespace."""

from __future__ import annotations

from pathlib import Path


def run_in(proc: Path, host_pid: int, pod_uid: str, container_id: str, own_pid: int = 1) -> None:
    """Process `host_pid` runs in container `container_id` of pod `pod_uid`, as pid
    `own_pid` inside it."""
    here = proc / str(host_pid)
    here.mkdir(parents=True, exist_ok=True)
    pod_slice = f"kubepods-burstable-pod{pod_uid.replace('-', '_')}.slice"
    (here / "cgroup").write_text(
        f"0::/kubepods.slice/kubepods-burstable.slice/{pod_slice}/"
        f"cri-containerd-{container_id}.scope\n"
    )
    (here / "status").write_text(f"Name:\tpython3\nNSpid:\t{host_pid}\t{own_pid}\n")
