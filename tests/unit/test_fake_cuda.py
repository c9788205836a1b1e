"""The fake libcuda.so.1 and cuda_client in tests/fakes/cuda, without any limiter.

Each test runs the client, which loads the fake by soname through LD_LIBRARY_PATH, in each
of the ways real programs load the driver: through the runtime's cuGetProcAddress_v2 or its
4-argument predecessor, or by plain dlsym of exact names.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.fakes.cuda import (
    CONFIG_ENV,
    MODES,
    SANITIZER_ENV,
    ClientError,
    fake_cuda_env,
    fake_uuid,
    run_client,
)
from tests.fakes.nvml import build_fake_nvml

MIB = 1 << 20
GRANULE = 2 * MIB  # the fake's default granularity


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _run(client: Path, lib_dir: Path, mode: str, *commands: str, **config: int) -> list[str]:
    return run_client(client, mode, commands, fake_cuda_env(lib_dir, **config))


def test_allocations_fit_up_to_the_total_then_fail_out_of_memory(
    cuda_client: Path, fake_cuda_dir: Path, mode: str
) -> None:
    out = _run(
        cuda_client,
        fake_cuda_dir,
        mode,
        *("alloc 512", "alloc 512", "alloc 1", "alloc-bytes 1", "info"),
        *("free", "alloc 513", "alloc 512", "info"),
        total_mib=1024,
    )
    total = 1024 * MIB
    assert out == [
        "alloc 512 ok",
        "alloc 512 ok",
        "alloc 1 err 2",
        "alloc-bytes 1 err 2",
        f"info free=0 total={total}",  # the failures reserved nothing
        "free ok",
        "alloc 513 err 2",
        "alloc 512 ok",
        f"info free=0 total={total}",
    ]


def test_every_allocation_kind_reserves_and_its_free_returns_it(
    cuda_client: Path, fake_cuda_dir: Path, mode: str
) -> None:
    allocs = {
        "alloc 4": 4 * MIB,
        "pitch 1000 10": GRANULE,  # pitch 1024 x 10 rows, rounded up to the granularity
        "managed 4": 4 * MIB,
        "async 4": 4 * MIB,
        "pool 4": 4 * MIB,
        "vmm 3": 4 * MIB,  # the client rounds cuMemCreate's size up to the granularity
        "array 100 100": GRANULE,  # 100 x 100 floats
    }
    out = _run(cuda_client, fake_cuda_dir, mode, *allocs, "stats", *["free"] * 8, "stats")
    reserved = sum(allocs.values())
    assert out == [
        *(f"{command} ok" for command in allocs),
        f"stats launches=0 reserved={reserved}",
        *["free ok"] * len(allocs),
        "free none",
        "stats launches=0 reserved=0",
    ]
    out = _run(cuda_client, fake_cuda_dir, mode, *allocs, "free-all", "info", "free-all")
    assert out[len(allocs) :] == [
        f"free-all ok {len(allocs)}",
        f"info free={16384 * MIB} total={16384 * MIB}",
        "free-all ok 0",
    ]


def test_info_total_and_uuid_report_the_configured_devices(
    cuda_client: Path, fake_cuda_dir: Path, mode: str
) -> None:
    total = 3000 * MIB
    out = _run(
        cuda_client,
        fake_cuda_dir,
        mode,
        *("info", "total", "uuid", "device 1", "alloc 100", "info", "uuid"),
        *("device 0", "info", "device 2", "info"),
        devices=2,
        total_mib=3000,
    )
    assert out == [
        f"info free={total} total={total}",
        f"total {total}",
        f"uuid {fake_uuid(0)}",
        "device 1 ok",
        "alloc 100 ok",
        f"info free={total - 100 * MIB} total={total}",
        f"uuid {fake_uuid(1)}",
        "device 0 ok",
        f"info free={total} total={total}",
        "device 2 err 101",  # CUDA_ERROR_INVALID_DEVICE; device 0 stays current
        f"info free={total} total={total}",
    ]


def test_sizes_round_up_to_the_granularity(
    cuda_client: Path, fake_cuda_dir: Path, mode: str
) -> None:
    out = _run(cuda_client, fake_cuda_dir, mode, "alloc-bytes 1", "alloc-bytes 1", "stats", "info")
    assert out[2:] == [
        f"stats launches=0 reserved={2 * GRANULE}",
        f"info free={16384 * MIB - 2 * GRANULE} total={16384 * MIB}",
    ]
    out = _run(
        cuda_client, fake_cuda_dir, mode, "pitch 100 3", "array 3 3", "stats", granularity=512
    )
    # pitch: 100 bytes -> a 512-byte pitch, 3 rows; array: 36 bytes -> one granule
    assert out[2] == f"stats launches=0 reserved={3 * 512 + 512}"
    out = _run(
        cuda_client, fake_cuda_dir, mode, "alloc-bytes 3000001", "vmm 3", "stats", granularity=1
    )
    assert out[2] == f"stats launches=0 reserved={3000001 + 3 * MIB}"  # exact sizes


#: (name, version, flags) -> the exported symbol cuGetProcAddress gives, or None: not found.
LOOKUPS: dict[tuple[str, int, int], str | None] = {
    ("cuInit", 2000, 0): "cuInit",
    ("cuMemAlloc", 3020, 0): "cuMemAlloc_v2",
    ("cuMemAlloc", 12000, 2): "cuMemAlloc_v2",  # not stream-ordered: no _ptsz
    ("cuMemAlloc", 3010, 0): None,  # there is no v1 here
    ("cuMemGetInfo", 3020, 0): "cuMemGetInfo_v2",
    ("cuDeviceTotalMem", 3020, 0): "cuDeviceTotalMem_v2",
    ("cuArray3DCreate", 3020, 0): "cuArray3DCreate_v2",
    ("cuEventDestroy", 3020, 0): None,
    ("cuEventDestroy", 4000, 0): "cuEventDestroy_v2",
    ("cuDeviceGetUuid", 11030, 0): "cuDeviceGetUuid",
    ("cuDeviceGetUuid", 11040, 0): "cuDeviceGetUuid_v2",
    ("cuEventElapsedTime", 12070, 0): "cuEventElapsedTime",
    ("cuEventElapsedTime", 12080, 0): "cuEventElapsedTime_v2",
    ("cuGetProcAddress", 11020, 0): None,
    ("cuGetProcAddress", 11030, 0): "cuGetProcAddress",
    ("cuGetProcAddress", 12000, 0): "cuGetProcAddress_v2",
    ("cuLaunchKernel", 4000, 0): "cuLaunchKernel",
    ("cuLaunchKernel", 6050, 2): "cuLaunchKernel",  # per-thread streams came with 7.0
    ("cuLaunchKernel", 7000, 2): "cuLaunchKernel_ptsz",
    ("cuLaunchKernel", 13000, 1): "cuLaunchKernel",  # legacy stream
    ("cuLaunchKernelEx", 11060, 2): "cuLaunchKernelEx_ptsz",
    ("cuLaunchCooperativeKernel", 9000, 2): "cuLaunchCooperativeKernel_ptsz",
    ("cuGraphLaunch", 10000, 2): "cuGraphLaunch_ptsz",
    ("cuMemAllocAsync", 11010, 2): None,
    ("cuMemAllocAsync", 11020, 2): "cuMemAllocAsync_ptsz",
    ("cuMemAllocFromPoolAsync", 11020, 2): "cuMemAllocFromPoolAsync_ptsz",
    ("cuMemFreeAsync", 11020, 2): "cuMemFreeAsync_ptsz",
    ("cuEventRecord", 7000, 2): "cuEventRecord_ptsz",
    ("cuEventRecordWithFlags", 11010, 2): "cuEventRecordWithFlags_ptsz",
    ("cuStreamSynchronize", 7000, 2): "cuStreamSynchronize_ptsz",
    ("cuStreamSynchronize", 7000, 0): "cuStreamSynchronize",
    ("cuMemCreate", 10020, 2): "cuMemCreate",
    ("cuArrayGetMemoryRequirements", 11060, 0): "cuArrayGetMemoryRequirements",
    ('""', 13000, 0): None,
    ("cuMemAlloc_v2", 13000, 0): None,  # the driver knows base names only
    ("cuNoSuchFunction", 13000, 0): None,
}


def test_get_proc_address_maps_base_name_version_and_flags(
    cuda_client: Path, fake_cuda_dir: Path, mode: str
) -> None:
    # dlsym mode asks cuGetProcAddress_v2; the runtime modes the pointer they loaded with.
    commands = [f"lookup {name} {version} {flags}" for name, version, flags in LOOKUPS]
    out = _run(cuda_client, fake_cuda_dir, mode, *commands)
    # `found SYMBOL`: the pointer is exactly that exported symbol's address (dladdr).
    expected = [
        f"lookup {name} " + (f"found {symbol}" if symbol else "missing")
        for (name, _, _), symbol in LOOKUPS.items()
    ]
    assert out == expected


@pytest.mark.parametrize("mode_ptsz", ["runtime --ptsz", "runtime-v1 --ptsz", "dlsym --ptsz"])
def test_per_thread_default_stream_paths_work(
    cuda_client: Path, fake_cuda_dir: Path, mode_ptsz: str
) -> None:
    commands = [
        *("async 4", "pool 4", "launch 3 100", "launch-ex 2 100", "coop 1 100", "graph 2"),
        *("sync", "events 1000", "free-all", "stats"),
    ]
    out = _run(cuda_client, fake_cuda_dir, mode_ptsz, *commands, graph_us=100)
    assert out[:7] == [f"{c.split()[0]} {c.split()[1]} ok" for c in commands[:6]] + ["sync ok"]
    assert out[7].startswith("events ms=")
    assert out[8:] == ["free-all ok 2", "stats launches=9 reserved=0"]


def test_launches_keep_the_fake_gpu_busy(cuda_client: Path, fake_cuda_dir: Path, mode: str) -> None:
    out = _run(cuda_client, fake_cuda_dir, mode, "run 2 1000")
    assert len(out) == 3
    assert out[-1] == "run done"
    for i, line in enumerate(out[:2]):
        words = line.split()
        assert words[:2] == ["window", str(i)], line
        busy = float(words[2].removeprefix("busy="))
        launches = int(words[3].removeprefix("launches="))
        assert 0.9 <= busy <= 1.01, line
        assert 900 <= launches <= 1200, line  # 1 ms kernels, ~25 ms queued ahead


def test_events_time_the_kernel_between_them(
    cuda_client: Path, fake_cuda_dir: Path, mode: str
) -> None:
    out = _run(cuda_client, fake_cuda_dir, mode, "events 20000", "launch 1 30000", "events 5000")
    idle_ms = float(out[0].removeprefix("events ms="))
    assert 20.0 <= idle_ms < 21.0
    # recorded behind a busy GPU: the first event is the end of the 30 ms kernel, exactly
    assert out[1:] == ["launch 1 ok", "events ms=5.000"]


def test_graph_launch_lasts_graph_us_and_counts_as_a_launch(
    cuda_client: Path, fake_cuda_dir: Path
) -> None:
    out = _run(cuda_client, fake_cuda_dir, "runtime", "graph 3", "events 1000", graph_us=2000)
    assert out[0] == "graph 3 ok"
    assert out[1] == "events ms=1.000"  # recorded once the three graphs (6 ms) had run


def test_launch_errors_are_printed_not_fatal(cuda_client: Path, fake_cuda_dir: Path) -> None:
    out = _run(cuda_client, fake_cuda_dir, "dlsym", "launch 2 0", "free", "pid")
    assert out[:2] == ["launch 2 err 1", "free none"]
    assert out[2].startswith("pid ")


def test_nvml_commands_read_libnvidia_ml(
    cuda_client: Path, fake_cuda_dir: Path, tmp_path: Path
) -> None:
    build_fake_nvml(tmp_path)
    conf = tmp_path / "nvml.conf"
    conf.write_text(
        f"driver 580.1\ncuda 13000\ngpu 0 {fake_uuid(0)} {1 << 30} 00000000:07:00.0 0 0 0 Fake\n",
        encoding="utf-8",
    )
    env = fake_cuda_env(fake_cuda_dir)
    env["LD_LIBRARY_PATH"] = f"{tmp_path}:{env['LD_LIBRARY_PATH']}"
    env["GPULET_FAKE_NVML"] = str(conf)
    out = run_client(cuda_client, "runtime", ["nvml", "nvml2"], env)
    assert out == [f"nvml total={1 << 30} free={1 << 30} used=0"] * 2


def test_files_hold_pid_and_clock(cuda_client: Path, fake_cuda_dir: Path, tmp_path: Path) -> None:
    flag = tmp_path / "flag"
    out = _run(cuda_client, fake_cuda_dir, "dlsym", f"touch {flag}", f"wait-file {flag}", "hold 0")
    assert out == ["touch ok", "wait-file ok", "hold ok"]
    assert flag.exists()
    first, held, last = _run(cuda_client, fake_cuda_dir, "dlsym", "clock", "hold 0.05", "clock")
    assert held == "hold ok"
    elapsed_ns = int(last.removeprefix("clock ")) - int(first.removeprefix("clock "))
    assert 50_000_000 <= elapsed_ns < 5_000_000_000


@pytest.mark.parametrize("command", ["alloc", "alloc x", "alloc -1", "launch 1", "bogus", ""])
def test_malformed_commands_exit_2(cuda_client: Path, fake_cuda_dir: Path, command: str) -> None:
    with pytest.raises(ClientError) as caught:
        _run(cuda_client, fake_cuda_dir, "dlsym", "info", command)
    assert caught.value.returncode == 2
    assert "malformed command" in caught.value.stderr
    assert caught.value.stdout.startswith("info free=")  # earlier commands ran


@pytest.mark.parametrize(
    ("config", "message"),
    [({"devices": 17}, "devices must be 1..16"), ({"granularity": 0}, "granularity must be 1..")],
    ids=["devices", "granularity"],
)
def test_a_bad_config_fails_cu_init(
    cuda_client: Path, fake_cuda_dir: Path, config: dict[str, int], message: str
) -> None:
    with pytest.raises(ClientError) as caught:
        _run(cuda_client, fake_cuda_dir, "runtime", "info", **config)
    assert caught.value.returncode == 3
    assert f"fake_cuda: GPULET_FAKE_CUDA: {message}" in caught.value.stderr
    assert "cuInit(0): error 999" in caught.value.stderr
    with pytest.raises(ValueError, match="unknown fake CUDA settings"):
        fake_cuda_env(fake_cuda_dir, memory=1)


def test_clean_under_address_and_undefined_behaviour_sanitizers(
    cuda_client_asan: Path, fake_cuda_asan_dir: Path
) -> None:
    """Both built with -fsanitize=address,undefined: any report aborts the client."""
    commands = [
        *("alloc 4", "alloc-bytes 1", "pitch 100 3", "managed 1", "async 1", "pool 1", "vmm 1"),
        *("array 10 10", "info", "total", "uuid", "device 1", "alloc 1", "free", "device 0"),
        *("free", "free-all", "launch 5 100", "launch-ex 2 100", "coop 1 100", "graph 2"),
        *("events 500", "sync", "stats", 'lookup "" 13000 0', "lookup cuMemAlloc 3020 0"),
        *("alloc 2000", "alloc 1"),
    ]
    env = {**fake_cuda_env(fake_cuda_asan_dir, devices=2, total_mib=2000), **SANITIZER_ENV}
    for mode in ("runtime --ptsz", "runtime-v1", "dlsym"):
        out = run_client(cuda_client_asan, mode, commands, env)
        assert out[-2:] == ["alloc 2000 ok", "alloc 1 err 2"], mode
    assert run_client(cuda_client_asan, "runtime", ["run 1 500"], env)[-1] == "run done"


def test_processes_given_one_timeline_share_one_gpu(
    cuda_client: Path, fake_cuda_dir: Path, tmp_path: Path
) -> None:
    """timeline=PATH: two processes each launching without pause get half the GPU each (one
    queue, as containers on one real GPU); a bad path fails cuInit."""
    env = {**os.environ, **fake_cuda_env(fake_cuda_dir)}
    env[CONFIG_ENV] = f"timeline={tmp_path / 'gpu'}"
    command = [str(cuda_client), "runtime", "run", "3", "1000"]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(2)
    ]
    shares = []
    for proc in procs:
        out, _ = proc.communicate(timeout=30)
        windows = [float(w.split()[2].split("=")[1]) for w in out.splitlines() if "busy=" in w]
        shares.append(windows[1:])
    for mine, theirs in zip(*shares, strict=False):
        assert 0.35 <= mine <= 0.65 and 0.9 <= mine + theirs <= 1.02, shares
    env[CONFIG_ENV] = f"timeline={tmp_path / 'missing' / 'gpu'}"
    info = [*command[:2], "info"]
    bad = subprocess.run(info, env=env, capture_output=True, text=True, check=False)
    assert bad.returncode == 3 and "timeline" in bad.stderr and "cannot be opened" in bad.stderr


def test_processes_given_one_timeline_share_its_memory_while_they_live(
    cuda_client: Path, fake_cuda_dir: Path, tmp_path: Path
) -> None:
    """timeline=PATH: what one process holds is not free for another, as on one real GPU;
    once it has exited (reaped or not: a zombie holds no GPU memory) it is."""
    env = {**os.environ, **fake_cuda_env(fake_cuda_dir)}
    env[CONFIG_ENV] = f"timeline={tmp_path / 'gpu'},total_mib=16384"
    ready = tmp_path / "ready"
    holder = subprocess.Popen(
        [str(cuda_client), "runtime", "alloc 10000", f"touch {ready}", "hold 30"],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert time.monotonic() < deadline and holder.poll() is None
            time.sleep(0.01)
        other = [str(cuda_client), "runtime", "info", "alloc 8000", "alloc 6000"]
        out = subprocess.run(other, env=env, capture_output=True, text=True, check=True).stdout
        assert out.splitlines() == [
            f"info free={(16384 - 10000) * MIB} total={16384 * MIB}",
            "alloc 8000 err 2",
            "alloc 6000 ok",
        ]
        holder.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{holder.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        again = [str(cuda_client), "runtime", "alloc 16000"]  # the zombie's memory is free
        out = subprocess.run(again, env=env, capture_output=True, text=True, check=True).stdout
        assert out.splitlines() == ["alloc 16000 ok"]
    finally:
        holder.kill()
        holder.wait()
