"""Per-process GPU usage: PynvmlUsageSource over the real pynvml and the fake
libnvidia-ml.so.1 (tests/fakes/nvml; the `usage` scenario of its runner changes the node
between samples with fake_nvml_reload), and FileUsageSource."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pynvml
import pytest

from agent.usage import FileUsageSource, ProcessUsage, PynvmlUsageSource, UsageError, UsageSource
from tests.fakes.nvml import (
    Failure,
    Process,
    UtilSample,
    build_fake_nvml,
    run_pynvml,
    write_fake_config,
)
from tests.needs import c_compiler

MIB = 1 << 20
#: The source's clock, standing still: it takes no utilisation samples older than 2 s before
#: (PynvmlUsageSource's default window).
NOW_US = 10_000_000
UUIDS = [f"GPU-{i}{i}{i}{i}{i}{i}{i}{i}-0000-0000-0000-000000000000" for i in range(3)]
NODE: dict[str, Any] = {
    "version": 1,
    "driver_version": "580.159.04",
    "cuda_driver_version": 13000,
    "devices": [
        {
            "index": i,
            "uuid": uuid,
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_bytes": 80 << 30,
            "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0",
            "minor": i,
            "mig_enabled": False,
            "nvlink_supported": False,
        }
        for i, uuid in enumerate(UUIDS)
    ],
}

#: One process on each GPU, none with utilisation samples.
ONE_EACH = [Process(gpu, 100 + gpu, (gpu + 1) * MIB) for gpu in range(3)]


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c_compiler()
    return build_fake_nvml(tmp_path_factory.mktemp("fake-nvml"))


class Node:
    """Writes the fake's config for each step of a run (the first is loaded at nvmlInit)."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.steps: list[Path] = []

    def step(
        self,
        processes: list[Process],
        samples: list[UtilSample] | None = None,
        failures: list[Failure] | None = None,
    ) -> Node:
        path = self.dir / f"step-{len(self.steps)}.conf"
        self.steps.append(write_fake_config(NODE, path, failures or [], processes, samples or []))
        return self

    def run(self, lib: Path) -> dict[str, Any]:
        """Samples once per step; returns readings, reload codes, log and final shutdown."""
        first, *rest = self.steps
        run = run_pynvml(lib, "usage", first, str(NOW_US), *map(str, rest))
        out: dict[str, Any] = run.output
        assert out.pop("fake_loaded"), "pynvml did not load the fake libnvidia-ml.so.1"
        assert out["reloads"] == [0] * len(rest)
        return out


def _usage(gpu: int, pid: int, used_mib: int | None, sm: int | None = None) -> dict[str, Any]:
    return {"gpu_uuid": UUIDS[gpu], "pid": pid, "used_mib": used_mib, "sm_percent": sm}


def _ok(gpus: list[int] = [0, 1, 2]) -> list[dict[str, Any]]:  # noqa: B006 - not mutated
    return [_usage(gpu, 100 + gpu, gpu + 1) for gpu in gpus]


# ---- PynvmlUsageSource over the fake NVML -------------------------------------------------


def test_processes_and_their_memory_per_gpu(fake_lib: Path, tmp_path: Path) -> None:
    processes = [
        Process(0, 4242, 1024 * MIB),
        Process(0, 17, 3 * MIB + 1),  # rounded up
        Process(0, 99, None),  # NVML cannot tell
        Process(1, 4242, 5),
        Process(2, 7, MIB),  # listed twice: the sum
        Process(2, 7, 2 * MIB),
        Process(2, 8, MIB),  # listed twice, once unknown: unknown
        Process(2, 8, None),
    ]
    out = Node(tmp_path).step(processes).run(fake_lib)
    assert out["readings"] == [
        [
            _usage(0, 17, 4),
            _usage(0, 99, None),
            _usage(0, 4242, 1024),
            _usage(1, 4242, 1),
            _usage(2, 7, 3),
            _usage(2, 8, None),
        ]
    ]
    assert out["log"] == []
    # close() ended the source's NVML session: nothing is left initialised.
    assert out["shutdown"] == {"error": pynvml.NVML_ERROR_UNINITIALIZED}


def test_a_node_without_processes(fake_lib: Path, tmp_path: Path) -> None:
    out = Node(tmp_path).step([]).run(fake_lib)
    assert out["readings"] == [[]]


def test_utilisation_since_the_previous_sample(fake_lib: Path, tmp_path: Path) -> None:
    procs = [Process(0, 1, MIB), Process(0, 2, MIB), Process(1, 3, MIB)]
    first = [
        UtilSample(0, 1, 90, NOW_US - 2_000_000),  # not inside the window: left out
        UtilSample(0, 1, 30, NOW_US - 500_000),
        UtilSample(0, 1, 45, NOW_US - 400_000),  # mean of 30 and 45, rounded: 38
        UtilSample(0, 2, 70, NOW_US - 300_000),
        UtilSample(0, 777, 50, NOW_US - 100_000),  # no compute process: not reported
        UtilSample(1, 3, 20, NOW_US),
    ]
    second = [
        *first,
        UtilSample(0, 1, 10, NOW_US + 1_000_000),
        UtilSample(0, 2, 101, NOW_US + 1_000_000),  # over 100: left out
        UtilSample(1, 3, 60, NOW_US + 900_000),
    ]
    node = Node(tmp_path).step(procs, first).step(procs, second).step(procs, second)
    out = node.run(fake_lib)
    assert out["readings"] == [
        [_usage(0, 1, 1, 38), _usage(0, 2, 1, 70), _usage(1, 3, 1, 20)],
        [_usage(0, 1, 1, 10), _usage(0, 2, 1, None), _usage(1, 3, 1, 60)],
        # Nothing new since (NOT_FOUND): memory only.
        [_usage(0, 1, 1), _usage(0, 2, 1), _usage(1, 3, 1)],
    ]
    assert out["log"] == []


def test_more_processes_and_samples_than_a_first_buffer(fake_lib: Path, tmp_path: Path) -> None:
    """Many processes; and lists that grew between pynvml's sizing call and its fetch
    (INSUFFICIENT_SIZE on the fetch: the fake's first calls say so), which are read again."""
    many = [Process(0, pid, pid * MIB) for pid in range(1, 301)]
    samples = [UtilSample(0, pid, pid % 101, NOW_US - pid) for pid in range(1, 301)]
    grew = pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    failures = [
        # pynvml's first sizing call learns of no entries: its fetch finds too many.
        Failure("nvmlDeviceGetComputeRunningProcesses_v3", grew, gpu=0, times=1),
        Failure("nvmlDeviceGetProcessUtilization", grew, gpu=0, times=1),
    ]
    out = Node(tmp_path).step([*many, *ONE_EACH[1:]], samples, failures).run(fake_lib)
    expected = [_usage(0, pid, pid, pid % 101) for pid in range(1, 301)]
    assert out["readings"] == [[*expected, *_ok([1, 2])]]
    assert out["log"] == []


def test_a_list_that_keeps_growing_is_given_up_on(fake_lib: Path, tmp_path: Path) -> None:
    grew = pynvml.NVML_ERROR_INSUFFICIENT_SIZE
    failures = [
        Failure("nvmlDeviceGetComputeRunningProcesses_v3", grew, gpu=0),
        Failure("nvmlDeviceGetProcessUtilization", grew, gpu=1),
    ]
    samples = [UtilSample(1, 101, 40, NOW_US), UtilSample(2, 102, 40, NOW_US)]
    out = Node(tmp_path).step(ONE_EACH, samples, failures).run(fake_lib)
    assert out["readings"] == [[_usage(1, 101, 2), _usage(2, 102, 3, 40)]]
    assert [level for level, _ in out["log"]] == ["WARNING", "WARNING"]
    assert "event=gpu-usage-unreadable gpu=0 " in out["log"][0][1]
    assert "event=gpu-utilization-unreadable gpu=1 " in out["log"][1][1]


def test_a_failing_gpu_is_skipped_and_logged_once_per_change(
    fake_lib: Path, tmp_path: Path
) -> None:
    lost = [Failure("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_GPU_IS_LOST, 1)]
    unknown = [Failure("nvmlDeviceGetUUID", pynvml.NVML_ERROR_UNKNOWN, 1)]
    node = Node(tmp_path)
    for failures in ([], lost, lost, [], unknown):
        node.step(ONE_EACH, failures=failures)
    out = node.run(fake_lib)
    assert out["readings"] == [_ok(), _ok([0, 2]), _ok([0, 2]), _ok(), _ok([0, 2])]
    assert out["log"] == [
        [
            "WARNING",
            f"event=gpu-usage-unreadable gpu=1 uuid={UUIDS[1]} "
            "call=nvmlDeviceGetComputeRunningProcesses_v3 code=15 error='GPU is lost' "
            "action=skip",
        ],
        ["INFO", f"event=gpu-usage-readable gpu=1 uuid={UUIDS[1]}"],
        [
            "WARNING",
            f"event=gpu-usage-unreadable gpu=1 uuid={UUIDS[1]} call=nvmlDeviceGetUUID "
            "code=999 error='Unknown Error' action=skip",
        ],
    ]


def test_a_gpu_failing_from_the_start_is_named_by_index(fake_lib: Path, tmp_path: Path) -> None:
    lost = [Failure("nvmlDeviceGetHandleByIndex_v2", pynvml.NVML_ERROR_GPU_IS_LOST, 2)]
    out = Node(tmp_path).step(ONE_EACH, failures=lost).step(ONE_EACH, failures=lost).run(fake_lib)
    assert out["readings"] == [_ok([0, 1]), _ok([0, 1])]
    assert out["log"] == [
        [
            "WARNING",
            "event=gpu-usage-unreadable gpu=2 uuid=unknown call=nvmlDeviceGetHandleByIndex "
            "code=15 error='GPU is lost' action=skip",
        ]
    ]


def test_utilisation_after_a_failure(fake_lib: Path, tmp_path: Path) -> None:
    """After a GPU failed, samples counted before do not count again, and samples older
    than the window do not count at all."""
    lost = [Failure("nvmlDeviceGetUUID", pynvml.NVML_ERROR_GPU_IS_LOST, 0)]
    procs = [Process(0, 1, MIB)]
    early = [UtilSample(0, 1, 10, NOW_US - 500_000)]
    late = [
        *early,
        UtilSample(0, 1, 90, NOW_US - 3_000_000),
        UtilSample(0, 1, 80, NOW_US - 100_000),
    ]
    node = Node(tmp_path).step(procs, early).step(procs, early, lost).step(procs, late)
    out = node.run(fake_lib)
    assert out["readings"] == [[_usage(0, 1, 1, 10)], [], [_usage(0, 1, 1, 80)]]


def test_no_per_process_utilisation_means_memory_only(fake_lib: Path, tmp_path: Path) -> None:
    unsupported = [Failure("nvmlDeviceGetProcessUtilization", pynvml.NVML_ERROR_NOT_SUPPORTED, 0)]
    samples = [UtilSample(gpu, 100 + gpu, 50, NOW_US) for gpu in range(3)]
    node = Node(tmp_path).step(ONE_EACH, samples, unsupported).step(ONE_EACH, samples, unsupported)
    out = node.run(fake_lib)
    assert out["readings"] == [
        [_usage(0, 100, 1), _usage(1, 101, 2, 50), _usage(2, 102, 3, 50)],
        _ok(),
    ]
    assert out["log"] == [
        [
            "WARNING",
            f"event=gpu-utilization-unreadable gpu=0 uuid={UUIDS[0]} "
            "call=nvmlDeviceGetProcessUtilization code=3 error='Not Supported' "
            "action=memory-only",
        ]
    ]


def test_a_driver_without_the_v3_process_call(fake_lib: Path, tmp_path: Path) -> None:
    """pynvml 13 does not fall back from _v3 itself; the source uses _v2, and says so once."""
    missing = [
        Failure("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
    ]
    out = Node(tmp_path).step(ONE_EACH, failures=missing).step(ONE_EACH).run(fake_lib)
    assert out["readings"] == [_ok(), _ok()]
    assert out["log"] == [
        [
            "INFO",
            "event=nvml-call-missing call=nvmlDeviceGetComputeRunningProcesses_v3 "
            "action=use-nvmlDeviceGetComputeRunningProcesses_v2",
        ]
    ]


def test_no_driver_is_a_usage_error(fake_lib: Path, tmp_path: Path) -> None:
    run = run_pynvml(fake_lib, "usage", None, str(NOW_US))
    assert run.output["readings"] == [
        {"usage_error": "NVML not available: Driver Not Loaded"},
    ]


def test_nvml_gone_under_the_source_is_an_error_then_initialised_again(
    fake_lib: Path, tmp_path: Path
) -> None:
    node = Node(tmp_path).step(ONE_EACH)
    run = run_pynvml(
        fake_lib,
        "usage",
        node.steps[0],
        str(NOW_US),
        str(tmp_path / "missing.conf"),  # the fake's node goes away: NVML uninitialised
        str(node.steps[0]),  # reloading needs an initialised NVML: the source's init reads it
    )
    out = run.output
    assert out["reloads"] == [
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_UNINITIALIZED,
    ]
    assert out["readings"] == [
        _ok(),
        {"usage_error": "nvmlDeviceGetCount failed: Uninitialized"},
        _ok(),
    ]


# ---- FileUsageSource -----------------------------------------------------------------------


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "gpu-usage.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc), encoding="utf-8")
    return path


def test_file_source_reads_the_list(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        [
            {"gpu": UUIDS[0], "pid": 4242, "used_mib": 1024, "sm_percent": 35},
            {"gpu": UUIDS[0], "pid": 17, "used_mib": None, "sm_percent": None},
            {"gpu": UUIDS[1], "pid": 4242},
            {"gpu": UUIDS[1], "pid": 5, "used_mib": 0, "sm_percent": 100},
        ],
    )
    source: UsageSource = FileUsageSource(path)
    assert source.sample() == [
        ProcessUsage(UUIDS[0], 4242, used_mib=1024, sm_percent=35),
        ProcessUsage(UUIDS[0], 17, used_mib=None, sm_percent=None),
        ProcessUsage(UUIDS[1], 4242, used_mib=None, sm_percent=None),
        ProcessUsage(UUIDS[1], 5, used_mib=0, sm_percent=100),
    ]


def test_file_source_reads_the_file_again_each_time(tmp_path: Path) -> None:
    source = FileUsageSource(tmp_path / "gpu-usage.json")
    assert source.sample() == []  # missing: no processes
    _write(tmp_path, [{"gpu": UUIDS[2], "pid": 1, "used_mib": 10, "sm_percent": 5}])
    assert source.sample() == [ProcessUsage(UUIDS[2], 1, 10, 5)]
    _write(tmp_path, [])
    assert source.sample() == []


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ("[{", r"not JSON: .* at line 1, column 3"),
        ({"gpu": "x"}, "must be a JSON list of processes"),
        (["x"], r"\[0\]: must be an object"),
        ([{"gpu": "x", "pid": 1, "used_MiB": 3}], r"\[0\]: unknown key 'used_MiB'"),
        ([{"pid": 1}], r"\[0\]\.gpu: must be a GPU uuid, not None"),
        ([{"gpu": "", "pid": 1}], r"\[0\]\.gpu: must be a GPU uuid"),
        ([{"gpu": "x"}], r"\[0\]\.pid: must be an integer >= 1, not None"),
        ([{"gpu": "x", "pid": 0}], r"\[0\]\.pid: must be an integer >= 1, not 0"),
        ([{"gpu": "x", "pid": True}], r"\.pid: must be an integer >= 1, not True"),
        ([{"gpu": "x", "pid": "12"}], r"\.pid: must be an integer >= 1, not '12'"),
        ([{"gpu": "x", "pid": 1, "used_mib": -1}], r"\.used_mib: must be an integer >= 0"),
        ([{"gpu": "x", "pid": 1, "used_mib": 1.5}], r"\.used_mib: must be an integer >= 0"),
        ([{"gpu": "x", "pid": 1, "sm_percent": 101}], r"\.sm_percent: must be an integer 0\.\.100"),
        (
            [{"gpu": "x", "pid": 1}, {"gpu": "y", "pid": 1}, {"gpu": "x", "pid": 1}],
            r"\[2\]: pid 1 on x twice",
        ),
    ],
)
def test_file_source_refuses_a_malformed_file(tmp_path: Path, doc: object, message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(UsageError, match=message) as err:
        FileUsageSource(path).sample()
    assert str(err.value).startswith(f"{path}: ")


def test_file_source_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"cannot read: Is a directory"):
        FileUsageSource(tmp_path).sample()
    path = tmp_path / "gpu-usage.json"
    path.write_bytes(b'[{"gpu": "\xff"}]')
    with pytest.raises(UsageError, match=r"gpu-usage.json: cannot read: .*utf-8"):
        FileUsageSource(path).sample()


def test_pynvml_source_is_a_usage_source() -> None:
    source: UsageSource = PynvmlUsageSource()  # the check is mypy's, of this assignment
    assert callable(source.sample)
