"""`gpulet demo` end to end: the sample pods are placed, allocated and shown, the one that
cannot fit says why, and nothing is left behind."""

from __future__ import annotations

import tempfile
from pathlib import Path

from gpulet.demo.run import run_demo


def test_demo_places_the_samples_and_explains_the_misfit() -> None:
    before = set(Path(tempfile.gettempdir()).glob("gpulet-demo-*"))
    lines: list[str] = []
    assert run_demo(2, "dgx-h100", lines.append) == 0
    text = "\n".join(lines)
    assert text.count("registered 800 gpulet.io/gpu slots with kubelet") == 3  # one joins later
    for node in ("dgx-h100-0", "dgx-h100-1"):
        published = f"published NodeTopology/{node}, holds Lease kube-system/gpulet-node-{node}"
        assert published in text
    inference = text.split("== pod inference")[1].split("== pod")[0]
    assert "(30% core, 8192 MiB)" in inference and " 8192 MiB, 30% core" in inference
    assert "mount /etc/ld.so.preload <-" in inference  # a slice gets the limiter
    training = text.split("== pod training")[1].split("== pod")[0]
    assert training.count("(whole)") == 4 and training.count("     NIC mlx5_") == 4
    assert 'env NCCL_IB_HCA="=mlx5_' in training and "/dev/infiniband/rdma_cm" in training
    assert "/etc/ld.so.preload" not in training  # whole GPUs get no limiter
    pinned = text.split("== pod numa-pinned")[1].split("== pod")[0]
    assert "NUMA pinning asked: CPUs of NUMA node(s)" in pinned
    misfit = text.split("== pod too-big")[1].split("== batch")[0]
    assert "does not fit" in misfit and "single-numa: needs 8 whole GPUs" in misfit
    # The batch slice: the room measured (none on the GPUs held whole), advertised, used.
    batch = text.split("== batch: the agent of dgx-h100-0")[1].split("== preemption")[0]
    rooms = batch.split("\n")[1]
    assert rooms.count(" 0%/0 GiB") >= 1 and rooms.count(" 90%/") >= 1, rooms
    assert "advertises gpulet.io/batch-gpu-core=" in batch
    assert "(batch: floor 20% core, cap 16384 MiB)" in batch
    assert "16384 MiB, 20% core, batch (paced to the share" in batch
    assert "controller gives it 95% of the GPU" in batch
    # The preemption: kube-scheduler's proposal by the node's sums (two slices on two GPUs),
    # the extender's correction (the other slice of one of them), the pod on that GPU.
    scene = text.split("== preemption: node dgx-h100-2 joins")[1]
    assert "counts 800 of the 800 gpulet.io/gpu-core the agent advertises" in scene
    assert "by the node's sums, proposes: second-0 (GPU0), second-1 (GPU1)" in scene
    added = scene.split("fewest more of lower priority: ")[1].split("\n")[0]
    assert added in ("first-0 (GPU0)", "first-1 (GPU1)"), added
    gpu = added.split("(")[1].rstrip(")")
    assert f"kube-scheduler deletes {added.split()[0]}, second-0, second-1;" in scene
    placed = scene.split("container main on dgx-h100-2:")[1]
    assert placed.split("\n")[1].strip().startswith(f"{gpu} GPU-") and "(60% core" in placed
    assert "limits: GPU-" in placed and "1024 MiB, 60% core" in placed
    # Nothing of this run is left (another demo running meanwhile may remove its own).
    assert not set(Path(tempfile.gettempdir()).glob("gpulet-demo-*")) - before


def test_demo_speaks_of_the_nodes_it_runs_and_shows_what_applies() -> None:
    lines: list[str] = []
    assert run_demo(1, "dgx-a100", lines.append) == 0
    text = "\n".join(lines)
    assert "DGX H100" not in text  # the misfit is explained for the kind that runs
    misfit = text.split("== pod too-big")[1].split("\n")[0]
    assert "a dgx-a100 node has at most 2 GPUs on one NUMA node" in misfit
    # A whole GPU gets no limiter: its limits line says so instead of "100% core".
    training = text.split("== pod training")[1].split("== pod")[0]
    assert "100% core" not in training
    assert training.count("no limiter (whole GPU)") == 4
    # A mount with the same path on both sides shows it once.
    for line in lines:
        if line.strip().startswith("mount ") and " <- " in line:
            inside, host = line.strip()[len("mount ") :].split(" (")[0].split(" <- ")
            assert inside != host, line
    assert any(line.strip().endswith("libgpulet-limiter.so (ro)") for line in lines)
