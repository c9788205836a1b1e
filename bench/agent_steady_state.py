"""The node agent's steady state: RSS and CPU of `gpulet agent run` on a simulated dgx-h100
(8 GPUs) serving 64 containers, each with a GPU process NVML reports every second.

In this process: an API server stand-in and a kubelet stand-in. The agent runs as its own
process, as in its DaemonSet: its NodeTopology and Lease heartbeat, the pods' watch, the device
plugins, the monitor reading usage every second and writing each container's feedback, the
pinning pass, /metrics scraped every 15 s as Prometheus would. 64 pods are bound with
assignments (8 slices of each GPU), allocated through kubelet, and given a running
container and a GPU process attached to its region, as the limiter would; then the agent is
measured for `--seconds`. With `--unlimited` no process attaches, so the agent checks (and
reports) every one of them every second: its worst case.

With `--over-share` every container's process uses 25% of its GPU against a share of 10%,
and the agent runs with `--enforce`: after the first 10 s window each container is judged
over its share and put on the duty cycle, whose cgroups are files under the stand-in cgroup
root (a v2 layout). NVML's figure does not move, so each is held at the largest frozen
fraction: the duty cycle's worst case, every container frozen and thawed every 100 ms.

Run: .venv/bin/python bench/agent_steady_state.py [--seconds 60] [--containers 64] [--unlimited]
        [--over-share]
"""

from __future__ import annotations

import argparse
import http.client
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.simnode import open_simulated
from gpulet.api.assignment import Assignment, ContainerAssignment, dump_assignment
from gpulet.api.share import GpuShare
from gpulet.api.stamps import stamp
from gpulet.demo.run import allocate_once_seen
from gpulet.kube.crd import node_topology_crd
from gpulet.standins.apiserver import ApiServerStandIn
from gpulet.standins.kubelet import KubeletStandIn, PodRef
from gpulet.standins.objects import container, pod_object
from gpulet.topology import Topology
from native.region import Region

NODE = "bench-node"


def start_agent(
    work: Path, api: ApiServerStandIn, kubelet: KubeletStandIn, *, enforce: bool = False
) -> subprocess.Popen[str]:
    api.write_kubeconfig(work / "kubeconfig")
    for d in ("proc", "cgroup", "kubelet"):
        (work / d).mkdir()
    (work / "cgroup" / "cgroup.controllers").write_text("cpuset cpu memory\n")  # v2
    args = [
        sys.executable, "-c", "from gpulet.cli import main; main()", "agent", "run",
        "--simulate", "dgx-h100", "--kubeconfig", str(work / "kubeconfig"),
        "--node-name", NODE, "--kubelet-dir", str(kubelet.plugin_dir),
        "--pod-resources-dir", str(work / "pr"), "--state-dir", str(work / "state"),
        "--region-root", str(work / "regions"), "--library-dir", str(work / "lib"),
        "--cgroup-root", str(work / "cgroup"), "--proc-root", str(work / "proc"),
        "--kubelet-state-dir", str(work / "kubelet"), "--metrics-port", "0",
        "--metrics-auth", "none",  # scraped as before: no review in the measured cost
        "--usage-file", str(work / "gpu-processes.json"), "--log-level", "warning",
        *(["--enforce"] if enforce else []),
    ]  # fmt: skip
    return subprocess.Popen(args, stderr=subprocess.PIPE, text=True)


def metrics_port(agent: subprocess.Popen[str]) -> int:
    assert agent.stderr is not None
    for line in agent.stderr:
        if line.startswith("gpulet agent: node"):
            return int(line.rsplit(":", 1)[1])
    raise RuntimeError(f"the agent exited with {agent.wait()}")


def populate(
    work: Path,
    api: ApiServerStandIn,
    kubelet: KubeletStandIn,
    topo: Topology,
    count: int,
    *,
    limited: bool,
    over_share: bool = False,
) -> list[Region]:
    """`count` pods bound with assignments, allocated, each with a running container and a
    GPU process (its cgroup and status under the stand-in /proc: pid 1 in its container),
    and NVML's view of them. With `limited`, each process is attached to its container's
    region, as the limiter does (the regions returned must stay open for that to last);
    without, every process runs without the limiter and the agent reports all 64."""
    processes = []
    regions: list[Region] = []
    for i in range(count):
        gpu = topo.gpus[i % len(topo.gpus)]
        share = GpuShare(gpu.uuid, 10, 4096)
        assignment = Assignment(NODE, (ContainerAssignment("main", (share,), (), (gpu.numa,)),))
        pod = pod_object(f"infer-{i}", container("main", gpus=1, core=10, memory=4096))
        pod["spec"]["nodeName"] = NODE
        pod["metadata"]["annotations"]["gpulet.io/assignment"] = dump_assignment(assignment)
        pod["metadata"]["creationTimestamp"] = stamp(1_700_000_000 + i)
        stored = api.create_pod(pod)
        uid = stored["metadata"]["uid"]
        ref = PodRef(uid=uid, namespace="default", name=f"infer-{i}")
        allocate_once_seen(kubelet, ref, "main", "gpulet.io/gpu", 1)
        pid = 100_000 + i
        cid = f"{pid:064x}"
        cgroup = work / "proc" / str(pid)
        cgroup.mkdir()
        slice_ = f"kubepods-burstable-pod{uid.replace('-', '_')}.slice"
        path = f"kubepods.slice/kubepods-burstable.slice/{slice_}/cri-containerd-{cid}.scope"
        (cgroup / "cgroup").write_text(f"0::/{path}\n")
        (work / "cgroup" / path).mkdir(parents=True)
        (work / "cgroup" / path / "cgroup.freeze").write_text("0\n")
        (cgroup / "status").write_text(f"Name:\tpython3\nNSpid:\t{pid}\t1\n")
        if limited:
            region = Region.open(work / "regions" / uid / "main")
            region.attach(pid=1, comm="python3")
            regions.append(region)
        stored = api.get_pod("default", f"infer-{i}") or stored
        stored["status"] = {
            "phase": "Running",
            "containerStatuses": [{"name": "main", "containerID": f"containerd://{cid}"}],
        }
        api.update_pod(stored)
        util = 25 if over_share else 9
        processes.append({"gpu": gpu.uuid, "pid": pid, "used_mib": 2048, "sm_percent": util})
    (work / "gpu-processes.json").write_text(json.dumps(processes))
    return regions


def scrape(port: int) -> tuple[int, int, int]:
    """The size of /metrics, how many processes it says run without the limiter, and how
    many containers it says are frozen part of the time."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    body = conn.getresponse().read()
    conn.close()

    def values(name: bytes) -> list[float]:
        return [
            float(line.rsplit(b" ", 1)[1])
            for line in body.splitlines()
            if line.startswith(name + b"{")
        ]

    unlimited = sum(values(b"gpulet_container_unlimited_processes"))
    frozen = sum(1 for v in values(b"gpulet_container_frozen_ratio") if v > 0)
    return len(body), int(unlimited), frozen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--containers", type=int, default=64)
    ap.add_argument(
        "--unlimited",
        action="store_true",
        help="no process attaches to its region: the agent finds every one without the limiter",
    )
    ap.add_argument(
        "--over-share",
        action="store_true",
        help="every container over its compute share, and the agent enforcing: all of them "
        "on the duty cycle",
    )
    args = ap.parse_args()
    sim = open_simulated("dgx-h100")
    topo = sim.topology(NODE)
    work = Path(tempfile.mkdtemp(prefix="gab"))
    print(f"gpulet agent benchmark  python {platform.python_version()}  {platform.machine()}")
    try:
        with ApiServerStandIn() as api, KubeletStandIn(work / "dp", work / "pr") as kubelet:
            api.create_node({"metadata": {"name": NODE}, "spec": {}, "status": {}})
            api.create_crd(node_topology_crd())
            agent = start_agent(work, api, kubelet, enforce=args.over_share)
            regions: list[Region] = []
            try:
                port = metrics_port(agent)
                if not kubelet.wait_for(lambda v: bool(v.devices("gpulet.io/gpu")), timeout=30):
                    raise RuntimeError("the agent did not register with kubelet")
                regions += populate(
                    work,
                    api,
                    kubelet,
                    topo,
                    args.containers,
                    limited=not args.unlimited,
                    over_share=args.over_share,
                )
                proc = psutil.Process(agent.pid)
                # Settle: every container seen by the monitor, metrics warm; over its share,
                # a whole window judged and the duty cycle at its largest fraction.
                time.sleep(20 if args.over_share else 5)
                size, unlimited, frozen = scrape(port)
                rss: list[int] = []
                cpu0, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
                next_scrape = t0 + 15
                while time.monotonic() - t0 < args.seconds:
                    time.sleep(1)
                    rss.append(proc.memory_info().rss)
                    if time.monotonic() >= next_scrape:
                        size, unlimited, frozen = scrape(port)
                        next_scrape += 15
                cpu1, t1 = sum(proc.cpu_times()[:2]), time.monotonic()
            finally:
                agent.terminate()
                agent.wait(timeout=30)
                for region in regions:
                    region.close()
        share = (cpu1 - cpu0) / (t1 - t0) * 100
        limiter = "without the limiter" if args.unlimited else "with the limiter"
        over = ", all over their share, enforcing" if args.over_share else ""
        print(
            f"{args.containers} containers on 8 GPUs ({limiter}{over}), {args.seconds:.0f} s: "
            f"RSS max {max(rss) / 2**20:.1f} MiB (target 80), "
            f"CPU {share:.2f}% of one core (target 2); /metrics {size / 1024:.0f} KiB, "
            f"{unlimited} processes reported without the limiter, {frozen} containers on "
            f"the duty cycle"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
