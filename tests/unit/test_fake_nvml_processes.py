"""The fake libnvidia-ml.so.1's compute processes and per-process utilisation samples
(`process` and `util` lines), through the real pynvml and called directly.

The rest of the fake is tested in test_pynvml_fake.py; each scenario runs in a fresh
interpreter (tests/fakes/nvml/runner.py).
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Any

import pynvml
import pytest

from tests.fakes.nvml import (
    Failure,
    Process,
    UtilSample,
    build_fake_nvml,
    config_text,
    run_pynvml,
    write_fake_config,
)
from tests.needs import asan_runtime, c_compiler

MIB = 1 << 20
NOT_IN_MIG = 0xFFFFFFFF

NODE: dict[str, Any] = {
    "version": 1,
    "driver_version": "580.159.04",
    "cuda_driver_version": 13000,
    "devices": [
        {
            "index": i,
            "uuid": f"GPU-{i}0000000-0000-0000-0000-000000000000",
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_bytes": 80 << 30,
            "pci_bus_id": f"00000000:{0x18 + i:02X}:00.0",
            "minor": i,
            "mig_enabled": False,
            "nvlink_supported": False,
        }
        for i in range(3)
    ],
}

#: GPU 0: three processes (one whose memory NVML cannot tell) and five samples; GPU 1: one
#: process, no samples; GPU 2: nothing.
PROCESSES = [
    Process(0, 4242, 1024 * MIB),
    Process(0, 17, 3 * MIB + 1),
    Process(0, 99, None),
    Process(1, 4242, 5),
]
SAMPLES = [
    UtilSample(0, 4242, 30, 1_000),
    UtilSample(0, 17, 70, 2_000),
    UtilSample(0, 4242, 50, 3_000),
    UtilSample(0, 31337, 5, 2_500),  # a pid with no process line
    UtilSample(0, 17, 250, 4_000),  # more than 100: the fake passes it on as given
]

MINIMAL = "driver 580\ncuda 13000\ngpu 0 GPU-x 1 00000000:07:00.0 0 0 0 X\n"

#: Config texts nvmlInit must refuse: text, the line the message names, the problem.
MALFORMED = [
    (MINIMAL + "process 0 1\n", 4, "process: expected"),
    (MINIMAL + "process 0 1 2 3\n", 4, "process: expected"),
    (MINIMAL + "process 1 1 2\n", 4, "no gpu line above"),
    ("driver 580\ncuda 13000\nprocess 0 1 2\n", 3, "no gpu line above"),
    (MINIMAL + "process 0 4294967296 2\n", 4, "pid must be"),
    (MINIMAL + "process 0 1 18446744073709551615\n", 4, "used_bytes must be"),
    (MINIMAL + "process 0 1 -1\n", 4, "used_bytes must be"),
    (MINIMAL + "util 0 1 50\n", 4, "util: expected"),
    (MINIMAL + "util 1 1 50 7\n", 4, "no gpu line above"),
    (MINIMAL + "util 0 x 50 7\n", 4, "pid must be"),
    (MINIMAL + "util 0 1 4294967296 7\n", 4, "sm_percent must be"),
    (MINIMAL + "util 0 1 50 18446744073709551616\n", 4, "timestamp_us must be"),
    (MINIMAL + "process 0 1 0\n" * 1025, 1028, "more than 1024 process lines"),
    (MINIMAL + "util 0 1 0 1\n" * 1025, 1028, "more than 1024 util lines"),
    (MINIMAL + "fail nvmlDeviceGetComputeRunningProcesses 3\n", 4, "not an entry point"),
    (MINIMAL + "fail nvmlDeviceGetProcessUtilization 3 0 0\n", 4, "times must be"),
    (MINIMAL + "fail nvmlDeviceGetProcessUtilization 3 - x\n", 4, "times must be"),
    (MINIMAL + "fail nvmlDeviceGetProcessUtilization 3 + 1\n", 4, "gpu index must be -"),
    (MINIMAL + "fail nvmlDeviceGetProcessUtilization 3 0 1 2\n", 4, "fail: expected"),
]


@pytest.fixture(scope="module")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c_compiler()
    return build_fake_nvml(tmp_path_factory.mktemp("fake-nvml"))


def _config(tmp_path: Path, failures: list[Failure] | None = None, name: str = "node") -> Path:
    path = tmp_path / f"{name}.conf"
    return write_fake_config(NODE, path, failures or [], PROCESSES, SAMPLES)


def _run(lib: Path, scenario: str, config: Path | None, *args: str) -> Any:
    run = run_pynvml(lib, scenario, config, *args)
    assert run.output.pop("fake_loaded"), "pynvml did not load the fake libnvidia-ml.so.1"
    return run.output


def _proc(pid: int, used: int | None) -> dict[str, Any]:
    return {
        "pid": pid,
        "usedGpuMemory": used,
        "gpuInstanceId": NOT_IN_MIG,
        "computeInstanceId": NOT_IN_MIG,
    }


def _sample(pid: int, sm: int, stamp: int) -> dict[str, Any]:
    return {"pid": pid, "timeStamp": stamp, "smUtil": sm, "memUtil": 0, "encUtil": 0, "decUtil": 0}


def test_struct_layouts_are_pynvml_layouts() -> None:
    # The same numbers are _Static_asserts in fake_nvml.c.
    info = pynvml.c_nvmlProcessInfo_v3_t
    assert pynvml.c_nvmlProcessInfo_v2_t is info
    assert ctypes.sizeof(info) == 24
    assert (info.usedGpuMemory.offset, info.gpuInstanceId.offset) == (8, 16)
    sample = pynvml.c_nvmlProcessUtilizationSample_t
    assert ctypes.sizeof(sample) == 32
    assert (sample.timeStamp.offset, sample.smUtil.offset) == (8, 16)
    assert pynvml.NVML_VALUE_NOT_AVAILABLE_ulonglong.value == (1 << 64) - 1


def test_pynvml_lists_processes_and_samples(fake_lib: Path, tmp_path: Path) -> None:
    out = _run(fake_lib, "processes", _config(tmp_path), "0", "2000", "4000")
    gpu0, gpu1, gpu2 = out["gpus"]
    # In config order; "-" is NVML_VALUE_NOT_AVAILABLE, which pynvml turns into None.
    assert gpu0["procs"] == [_proc(4242, 1024 * MIB), _proc(17, 3 * MIB + 1), _proc(99, None)]
    assert gpu0["procs_v2"] == gpu0["procs"]
    assert gpu1["procs"] == gpu1["procs_v2"] == [_proc(4242, 5)]
    assert gpu2["procs"] == gpu2["procs_v2"] == []
    # Only samples newer than lastSeenTimeStamp; none is NOT_FOUND.
    assert gpu0["util"]["0"] == [
        _sample(4242, 30, 1_000),
        _sample(17, 70, 2_000),
        _sample(4242, 50, 3_000),
        _sample(31337, 5, 2_500),
        _sample(17, 250, 4_000),
    ]
    assert gpu0["util"]["2000"] == [
        _sample(4242, 50, 3_000),
        _sample(31337, 5, 2_500),
        _sample(17, 250, 4_000),
    ]
    not_found = {"error": pynvml.NVML_ERROR_NOT_FOUND}
    assert gpu0["util"]["4000"] == not_found
    assert gpu1["util"] == gpu2["util"] == {"0": not_found, "2000": not_found, "4000": not_found}
    assert out["errors"] == {"6": ["NVMLError_NotFound", "Not Found"]}


def test_the_two_call_protocol(fake_lib: Path, tmp_path: Path) -> None:
    """[return code, count after the call, pids filled in] on GPU 0, called directly."""
    out = _run(fake_lib, "processes", _config(tmp_path), "1500")["protocol"]
    too_small, invalid = pynvml.NVML_ERROR_INSUFFICIENT_SIZE, pynvml.NVML_ERROR_INVALID_ARGUMENT
    assert out["procs"] == {
        "sizing": [too_small, 3, None],  # count 0, no buffer: how many there are
        "short": [too_small, 3, None],
        "exact": [0, 3, [4242, 17, 99]],
        "roomy": [0, 3, [4242, 17, 99]],  # the count comes back as the number filled in
        "null_buffer": [invalid, 5, None],  # a count but no buffer
        "null_count": [invalid, 0, None],
    }
    assert out["util"] == {
        "sizing": [too_small, 4, None],  # the 4 samples after 1500
        "short": [too_small, 4, None],
        "exact": [0, 4, [17, 4242, 31337, 17]],
        "roomy": [0, 4, [17, 4242, 31337, 17]],
        "null_buffer": [too_small, 4, None],  # no buffer: how many, whatever the count
        "null_count": [invalid, 0, None],
    }


def test_a_gpu_without_processes_answers_the_sizing_call_with_success(
    fake_lib: Path, tmp_path: Path
) -> None:
    config = tmp_path / "empty.conf"
    config.write_text(MINIMAL, encoding="utf-8")
    out = _run(fake_lib, "processes", config, "0")["protocol"]
    assert out["procs"]["sizing"] == [0, 0, None]
    # A count with no buffer is refused even when there is nothing to fill in.
    assert out["procs"]["null_buffer"] == [pynvml.NVML_ERROR_INVALID_ARGUMENT, 5, None]
    assert out["util"]["sizing"] == [pynvml.NVML_ERROR_NOT_FOUND, 0, None]


def test_fail_lines_make_the_new_calls_fail(fake_lib: Path, tmp_path: Path) -> None:
    failures = [
        Failure("nvmlDeviceGetComputeRunningProcesses_v3", pynvml.NVML_ERROR_FUNCTION_NOT_FOUND),
        Failure("nvmlDeviceGetComputeRunningProcesses_v2", pynvml.NVML_ERROR_GPU_IS_LOST, gpu=1),
        Failure("nvmlDeviceGetProcessUtilization", pynvml.NVML_ERROR_NOT_SUPPORTED, gpu=0),
    ]
    out = _run(fake_lib, "processes", _config(tmp_path, failures), "0")
    gpu0, gpu1, gpu2 = out["gpus"]
    # pynvml's unversioned call is _v3 only: "function not found" there is a version
    # mismatch error (not an NVMLError), with no fallback to _v2.
    assert "mismatch" in gpu0["procs"]
    assert gpu0["procs_v2"] == [_proc(4242, 1024 * MIB), _proc(17, 3 * MIB + 1), _proc(99, None)]
    assert gpu1["procs_v2"] == {"error": pynvml.NVML_ERROR_GPU_IS_LOST}
    assert gpu2["procs_v2"] == []
    assert gpu0["util"]["0"] == {"error": pynvml.NVML_ERROR_NOT_SUPPORTED}
    assert gpu1["util"]["0"] == {"error": pynvml.NVML_ERROR_NOT_FOUND}


def test_a_fail_line_with_times_fails_only_the_first_calls(fake_lib: Path, tmp_path: Path) -> None:
    failures = [
        Failure("nvmlDeviceGetProcessUtilization", pynvml.NVML_ERROR_GPU_IS_LOST, times=2),
        Failure("nvmlDeviceGetComputeRunningProcesses_v2", pynvml.NVML_ERROR_UNKNOWN, 1, 1),
    ]
    out = _run(fake_lib, "processes", _config(tmp_path, failures), "0", "1", "2")
    gpu0, gpu1, _ = out["gpus"]
    lost = {"error": pynvml.NVML_ERROR_GPU_IS_LOST}
    assert gpu0["util"]["0"] == gpu0["util"]["1"] == lost
    assert len(gpu0["util"]["2"]) == 5
    assert gpu1["util"]["0"] == {"error": pynvml.NVML_ERROR_NOT_FOUND}  # spent on GPU 0
    assert gpu0["procs_v2"] == gpu0["procs"]
    assert gpu1["procs_v2"] == {"error": pynvml.NVML_ERROR_UNKNOWN}
    # Spent: the direct calls of the protocol (on GPU 0) and later calls work.
    assert out["protocol"]["util"]["exact"][0] == 0


@pytest.mark.parametrize(("text", "line", "problem"), MALFORMED)
def test_malformed_process_and_util_lines_fail_init(
    fake_lib: Path, tmp_path: Path, text: str, line: int, problem: str
) -> None:
    config = tmp_path / "bad.conf"
    config.write_text(text, encoding="utf-8")
    run = run_pynvml(fake_lib, "raw", config)
    assert run.output["init"] == {"error": pynvml.NVML_ERROR_UNKNOWN}
    assert f"fake_nvml: {config}:{line}: " in run.stderr
    assert problem in run.stderr


def test_the_limits_are_accepted(fake_lib: Path, tmp_path: Path) -> None:
    config = tmp_path / "full.conf"
    config.write_text(
        MINIMAL
        + "".join(f"process 0 {pid} {pid}\n" for pid in range(1, 1025))
        + "".join(f"util 0 {pid} 1 {pid}\n" for pid in range(1, 1025)),
        encoding="utf-8",
    )
    out = _run(fake_lib, "processes", config, "1000")
    assert [p["pid"] for p in out["gpus"][0]["procs"]] == list(range(1, 1025))
    assert [s["pid"] for s in out["gpus"][0]["util"]["1000"]] == list(range(1001, 1025))


def test_the_largest_values_come_back_as_given(fake_lib: Path, tmp_path: Path) -> None:
    config = tmp_path / "max.conf"
    config.write_text(
        MINIMAL
        + "process 0 4294967295 18446744073709551614\n"
        + "util 0 4294967295 4294967295 18446744073709551615\n",
        encoding="utf-8",
    )
    gpu = _run(fake_lib, "processes", config, "0")["gpus"][0]
    assert gpu["procs"] == [_proc(0xFFFFFFFF, (1 << 64) - 2)]
    assert gpu["util"]["0"] == [_sample(0xFFFFFFFF, 0xFFFFFFFF, (1 << 64) - 1)]


def test_config_text_writes_process_and_util_lines() -> None:
    node = {**NODE, "devices": NODE["devices"][:1]}
    text = config_text(
        node,
        [
            Failure("nvmlDeviceGetProcessUtilization", 3, gpu=0),
            Failure("nvmlDeviceGetProcessUtilization", 7, times=2),
        ],
        [Process(0, 7, 1024), Process(0, 8, None)],
        [UtilSample(0, 7, 55, 123456)],
    )
    assert text.splitlines()[-5:] == [
        "process 0 7 1024",
        "process 0 8 -",
        "util 0 7 55 123456",
        "fail nvmlDeviceGetProcessUtilization 3 0",
        "fail nvmlDeviceGetProcessUtilization 7 - 2",
    ]
    with pytest.raises(ValueError, match="used_bytes"):
        config_text(node, processes=[Process(0, 7, -1)])
    with pytest.raises(ValueError, match="sm_percent"):
        config_text(node, samples=[UtilSample(0, 7, True, 1)])


def test_reload_changes_the_node_under_an_open_session(fake_lib: Path, tmp_path: Path) -> None:
    """fake_nvml_reload: the usage scenario's way to change processes between two samples."""
    first = _config(tmp_path)
    second = write_fake_config(NODE, tmp_path / "second.conf", processes=[Process(2, 5, MIB)])
    out = _run(fake_lib, "usage", first, "0", str(second), str(tmp_path / "missing.conf"))
    assert out["reloads"] == [0, pynvml.NVML_ERROR_DRIVER_NOT_LOADED]
    uuid2 = NODE["devices"][2]["uuid"]
    assert out["readings"][1] == [{"gpu_uuid": uuid2, "pid": 5, "used_mib": 1, "sm_percent": None}]
    # A reload that fails leaves NVML uninitialised, as if the driver went away.
    assert out["readings"][2] == {"usage_error": "nvmlDeviceGetCount failed: Uninitialized"}


def test_clean_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    asan = asan_runtime()
    flags = ["-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    lib = build_fake_nvml(tmp_path, [*flags, "-fno-sanitize-recover=all"])
    env = {
        "LD_PRELOAD": asan,
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }
    config = _config(tmp_path)
    failing = _config(tmp_path, [Failure("nvmlDeviceGetProcessUtilization", 15, 0)], "failing")
    empty = tmp_path / "empty.conf"
    empty.write_text(MINIMAL, encoding="utf-8")
    for scenario, node, args in [
        ("processes", config, ["0", "2000", "5000"]),
        ("processes", empty, ["0"]),
        ("usage", config, ["0", str(failing), str(empty), str(tmp_path / "missing.conf")]),
    ]:
        run = run_pynvml(lib, scenario, node, *args, extra_env=env)
        assert run.output["fake_loaded"], scenario
        assert "Sanitizer" not in run.stderr, run.stderr
    bad = []
    for i, (text, _, _) in enumerate(MALFORMED):
        path = tmp_path / f"bad-{i}.conf"
        path.write_text(text, encoding="utf-8")
        bad.append(str(path))
    run = run_pynvml(lib, "init_each", None, *bad, extra_env=env)
    assert run.output["init"] == [pynvml.NVML_ERROR_UNKNOWN] * len(bad)
    assert "Sanitizer" not in run.stderr, run.stderr[-4000:]
