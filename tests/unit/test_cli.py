"""The command line as a person runs it: a real process, its output and exit status."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def gpulet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpulet", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(
    "args",
    [[], ["node"], ["node", "inspect"], ["place"]],
)
def test_every_command_has_help(args: list[str]) -> None:
    proc = gpulet(*args, "--help")
    assert proc.returncode == 0 and "Usage:" in proc.stdout


def test_inspect_json_has_the_published_fields() -> None:
    proc = gpulet("node", "inspect", "--simulate", "dgx-a100", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    gpu0 = doc["gpus"][0]
    assert {"index", "uuid", "pci", "numa", "switch", "memory_mib"} <= set(gpu0)
    assert {"name", "pci", "numa", "switch", "netdev", "state"} <= set(doc["nics"][0])
    assert doc["links"]["GPU0"]["GPU1"] == "NV12"
    assert doc["links"]["GPU0"]["mlx5_0"] == "PXB"


def test_inspect_text_shows_the_matrix() -> None:
    proc = gpulet("node", "inspect", "--simulate", "dgx-h100")
    assert proc.returncode == 0, proc.stderr
    assert "CPU Affinity" in proc.stdout and "NV18" in proc.stdout and "mlx5_11" in proc.stdout
    # Each NIC's verbs device, as a person checks it against /dev/infiniband.
    rows = [line.split() for line in proc.stdout.splitlines() if line.startswith("mlx5_11 ")]
    assert rows[0][1] == "uverbs11"  # the NIC table comes before the matrix


def test_inspect_text_explains_the_matrix_under_it() -> None:
    # As `nvidia-smi topo -m` does: the legend of the link classes follows the matrix.
    proc = gpulet("node", "inspect", "--simulate", "dgx-h100")
    assert proc.returncode == 0, proc.stderr
    after = proc.stdout.split("CPU Affinity", 1)[1]
    assert "Legend:" in after
    legend = after.split("Legend:", 1)[1]
    for code in ("X ", "NV#", "PIX", "PXB", "PHB", "NODE", "SYS"):
        assert f"  {code}" in legend, code
    assert "NUMA nodes" in legend and "NVLinks" in legend


def test_place_text_says_its_cost_in_words() -> None:
    proc = gpulet("place", "--simulate", "dgx-h100", "--gpus", "3", "--rdma", "2")
    assert proc.returncode == 0, proc.stderr
    # The engine's field names mean nothing to a user; --json keeps them.
    for field in ("numa_broken", "group_broken", "pair_class", "touched", "align=", "order="):
        assert field not in proc.stdout, field
    assert "first GPUs taken on 1 NUMA node" in proc.stdout
    assert "first GPUs taken behind 3 PCIe switches" in proc.stdout
    raw = gpulet("place", "--simulate", "dgx-h100", "--gpus", "3", "--rdma", "2", "--json")
    assert json.loads(raw.stdout)["cost"]["group_broken"] == 3


def test_place_json_answer_and_no_fit() -> None:
    proc = gpulet(
        "place", "--simulate", "dgx-a100", "--gpus", "2", "--rdma", "2",
        "--policy", "restricted", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["fits"] is True
    assert {g["index"] for g in doc["gpus"]} in ({0, 1}, {2, 3}, {4, 5}, {6, 7})
    assert len(doc["nics"]) == 2 and doc["numa"] and isinstance(doc["score"], float)
    none = gpulet("place", "--simulate", "dgx-a100", "--gpus", "9", "--json")
    assert none.returncode == 1
    assert json.loads(none.stdout) == {
        "fits": False,
        "reason": "needs 9 whole GPUs; the node has 8 GPUs",
    }


def test_place_with_allocations(tmp_path: Path) -> None:
    allocated = tmp_path / "alloc.json"
    allocated.write_text(json.dumps({"gpus": {str(i): {"exclusive": True} for i in range(7)}}))
    proc = gpulet("place", "--simulate", "dgx-a100", "--allocated", str(allocated), "--json")
    assert proc.returncode == 0, proc.stderr
    assert [g["index"] for g in json.loads(proc.stdout)["gpus"]] == [7]


def test_unknown_simulated_node_is_one_line() -> None:
    one_line_error(gpulet("node", "inspect", "--simulate", "dgx-z900"), "dgx-z900", "dgx-a100")


def test_malformed_simulated_node_is_one_line(tmp_path: Path) -> None:
    node = tmp_path / "broken"
    (node / "sysfs").mkdir(parents=True)
    (node / "nvml.json").write_text("{not json")
    one_line_error(gpulet("node", "inspect", "--simulate", str(node)), "nvml.json")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--gpus", "1", "--core", "150"], "gpu-core must be 1-100"),
        (["--gpus", "1", "--memory", "0"], "at least 1 MiB"),
        (["--gpus", "2", "--policy", "restricted"], "restricted needs at least one"),
    ],
)
def test_invalid_request_is_one_line(args: list[str], needle: str) -> None:
    one_line_error(gpulet("place", "--simulate", "pcie-4gpu", *args), needle)


def test_impossible_request_says_why() -> None:
    proc = gpulet("place", "--simulate", "pcie-4gpu", "--gpus", "5")
    assert proc.returncode == 1
    assert "does not fit" in proc.stdout and "needs 5 whole GPUs" in proc.stdout
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{oops", "not JSON"),
        ('{"gpus": {"99": {}}}', "no GPU '99'"),
        ('{"gpus": {"0": {"core": 130}}}', "more than the whole GPU"),
        ('{"gpus": {"0": {"cores": 1}}}', "unknown field"),
        ('{"nics": {"mlx5_9": 1}}', "no RDMA NIC 'mlx5_9'"),
    ],
)
def test_bad_allocations_file_is_one_line(tmp_path: Path, content: str, needle: str) -> None:
    bad = tmp_path / "alloc.json"
    bad.write_text(content)
    one_line_error(gpulet("place", "--simulate", "pcie-4gpu", "--allocated", str(bad)), needle)


STOPPED_BY_ANOTHER_THREADS_SIGNAL = """
import signal, threading, time
from gpulet.cli.common import until_signalled
stop = until_signalled()
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
# The main thread blocks SIGTERM, so the kernel must hand it to the other thread: what
# happens at random when gRPC's threads are running.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("waiting", flush=True)
stop.wait()
print("stopped", flush=True)
"""


def test_a_long_running_command_stops_on_sigterm_taken_by_another_thread() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STOPPED_BY_ANOTHER_THREADS_SIGNAL],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "waiting\n"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (0, "stopped\n")
