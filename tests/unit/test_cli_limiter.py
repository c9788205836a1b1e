"""`gpulet limiter setup | usage | path`."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import native.library
from gpulet.cli import main
from native.region import DeviceLimit, Limits, Region, read_limits

MIB = 1 << 20
UUID_A = "GPU-8b0b9d22-4d8e-8e2a-3f1c-5b6a9e0d7c41"
UUID_B = "GPU-3ebba5ba-0c12-44b5-9d3f-0a1b2c3d4e5f"


def gpulet(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def one_line_error(result: Result, exit_code: int, *needles: str) -> None:
    assert result.exit_code == exit_code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ")
    if exit_code == 1:
        assert len(lines) == 1, result.stderr
    for needle in needles:
        assert needle in lines[-1], lines[-1]


@pytest.fixture
def container(tmp_path: Path) -> Path:
    directory = tmp_path / "c"
    result = gpulet(
        "limiter",
        "setup",
        str(directory),
        "--device",
        f"{UUID_A}:1024:50",
        "--device",
        f"{UUID_B}:2048:100",
    )
    assert result.exit_code == 0, result.output
    return directory


def test_setup_writes_the_limits_and_the_region(container: Path) -> None:
    assert read_limits(container / "limits") == Limits(
        (DeviceLimit(UUID_A, 1024, 50), DeviceLimit(UUID_B, 2048, 100))
    )
    assert stat.S_IMODE((container / "limits").stat().st_mode) == 0o444
    with Region.open(container) as region:
        assert region.devices == 2


def test_usage_shows_devices_and_processes(container: Path) -> None:
    with Region.open(container) as region:
        region.attach(comm="trainer")
        assert region.reserve(1, 300 * MIB, 2048 * MIB)
        region.set_feedback(0, 42.0)
        text = gpulet("limiter", "usage", str(container))
        doc = gpulet("limiter", "usage", str(container), "--json")
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert lines[0].split() == [
        "DEV",
        "UUID",
        "USED",
        "MiB",
        "CAP",
        "MiB",
        "CORE",
        "UTIL",
        "THROTTLED",
    ]
    assert lines[1].split() == ["0", UUID_A, "0.0", "1024", "50%", "42.0%", "0.0", "s"]
    assert lines[2].split() == ["1", UUID_B, "300.0", "2048", "100%", "-", "0.0", "s"]
    assert lines[4].split() == ["PID", "COMM", "DEV0", "MiB", "DEV1", "MiB"]
    assert lines[5].split()[1:] == ["trainer", "0.0", "300.0"]

    assert doc.exit_code == 0, doc.output
    usage = json.loads(doc.output)
    assert set(usage) == {"generation", "devices", "processes"}
    assert usage["devices"][1] == {
        "index": 1,
        "uuid": UUID_B,
        "memory_bytes": 2048 * MIB,
        "core_percent": 100,
        "used_bytes": 300 * MIB,
        "util_percent": None,
        "util_stamp_ns": 0,
        "throttled_ns": 0,
        "launches": 0,
        "busy_ns": 0,
    }
    assert usage["devices"][0]["util_percent"] == 42.0
    [proc] = usage["processes"]
    assert proc["comm"] == "trainer" and proc["used_bytes"] == [0, 300 * MIB]
    assert set(proc) == {"pid", "slot", "comm", "used_bytes"}


def test_usage_with_no_process(container: Path) -> None:
    result = gpulet("limiter", "usage", str(container))
    assert result.exit_code == 0 and "no process attached" in result.output


#: What a malformed UUID is told the form is.
FORM = "GPU- or MIG- followed by 8-4-4-4-12 hex digits"
MIG = "MIG-5c89852c-d268-c3f3-1b07-005d5ae1dc3f"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"{UUID_A}:1024", f"'{UUID_A}:1024': expected UUID:MEMORY_MIB:CORE_PERCENT"),
        (f"{UUID_A}:1:2:3", "expected UUID:MEMORY_MIB:CORE_PERCENT"),
        (f"{UUID_A}:1G:50", f"'{UUID_A}:1G:50': MEMORY_MIB '1G' is not a whole number"),
        (f"{UUID_A}:1024:half", "CORE_PERCENT 'half' is not a whole number"),
        (f"{UUID_A}:1024:-5", "CORE_PERCENT -5 is negative: it must be 1..100"),
        (f"{UUID_A}:-5:50", "MEMORY_MIB -5 is negative: it must be 1..1099511627776"),
        (f"{UUID_A}:1024:150", f"device {UUID_A}: core percent 150 is not in 1..100"),
        (f"{UUID_A}:1024:0", "core percent 0 is not in 1..100"),
        (f"{UUID_A}:0:50", f"device {UUID_A}: memory 0 MiB is not in 1.."),
        ("nonsense:4096:30", f"UUID 'nonsense' does not start with GPU- or MIG-; expected {FORM}"),
        (":1:50", f"the UUID is empty; expected {FORM}"),
        ("GPU-a:1:50", f"UUID 'GPU-a' is not {FORM}"),
        (f"{UUID_A[:-1]}g:1:50", f"UUID '{UUID_A[:-1]}g' is not {FORM}"),
        (f"{UUID_A}0:1:50", f"is not {FORM}"),
        (f"{UUID_A[:12]}{UUID_A[13:]}:1:50", f"is not {FORM}"),
        (f" {UUID_A}:1:50", "does not start with GPU- or MIG-"),
        (f"MIG-{UUID_A}/7/0:1:50", "the MIG-GPU-<uuid>/<gi>/<ci> form of older drivers"),
    ],
)
def test_a_bad_device_spec_is_named(tmp_path: Path, spec: str, message: str) -> None:
    result = gpulet("limiter", "setup", str(tmp_path / "c"), "--device", spec)
    one_line_error(result, 2, "--device", message)
    assert not (tmp_path / "c").exists()


def test_uuids_are_taken_in_either_case_and_written_as_nvml_spells_them(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    result = gpulet(
        "limiter",
        "setup",
        str(directory),
        "--device",
        f"{UUID_A.upper()}:1024:50",
        "--device",
        f"{MIG.lower()}:512:25",
    )
    assert result.exit_code == 0, result.output
    assert read_limits(directory / "limits") == Limits(
        (DeviceLimit(UUID_A, 1024, 50), DeviceLimit(MIG, 512, 25))
    )


def test_setup_needs_a_device_and_distinct_ones(tmp_path: Path) -> None:
    one_line_error(gpulet("limiter", "setup", str(tmp_path)), 2, "Missing option '--device'")
    devices = ("--device", f"{UUID_A}:1:1", "--device", f"{UUID_A.upper()}:2:2")
    result = gpulet("limiter", "setup", str(tmp_path / "c"), *devices)
    one_line_error(result, 1, f"duplicate device {UUID_A}")


def test_usage_of_a_missing_directory_is_one_line(tmp_path: Path) -> None:
    result = gpulet("limiter", "usage", str(tmp_path / "nope"))
    one_line_error(result, 1, "cannot open region", "nope/region", "No such file")


def test_usage_of_a_broken_region_is_one_line(container: Path) -> None:
    (container / "region").write_bytes(b"not a region at all")
    one_line_error(gpulet("limiter", "usage", str(container)), 1, "is not a gpulet region")


def test_path_when_the_library_is_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native.library, "LIBRARY", tmp_path / "lib" / "libgpulet-limiter.so")
    one_line_error(gpulet("limiter", "path"), 1, "is not built: run `make native`")


def test_path_when_the_library_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    library = tmp_path / "lib" / "libgpulet-limiter.so"
    library.parent.mkdir()
    library.write_bytes(b"\x7fELF")
    monkeypatch.setattr(native.library, "LIBRARY", library)
    result = gpulet("limiter", "path")
    assert result.exit_code == 0 and result.output == f"{library}\n"


def test_every_limiter_command_has_help() -> None:
    for args in (["limiter"], ["limiter", "setup"], ["limiter", "usage"], ["limiter", "path"]):
        result = gpulet(*args, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output
