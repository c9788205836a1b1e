"""The real pynvml (nvidia-ml-py) against the fake libnvidia-ml.so.1 in tests/fakes/nvml.

Each scenario runs in a fresh interpreter (pynvml keeps its library and init count per
process): see tests/fakes/nvml/runner.py.
"""

from __future__ import annotations

import ctypes
import json
import random
import re
from pathlib import Path
from typing import Any

import pynvml
import pytest

from agent.discovery.nvml import NvlinkInfo, NvmlGpu
from agent.simnode import SimulatedNvml, open_simulated, shipped_nodes
from tests.fakes.nvml import (
    SOURCE,
    Failure,
    Run,
    build_fake_nvml,
    config_text,
    run_pynvml,
    write_fake_config,
)
from tests.needs import asan_runtime, c_compiler

GIB = 1 << 30


def _link(link: int, remote_pci: str, remote_type: str, active: bool = True) -> dict[str, Any]:
    return {"link": link, "active": active, "remote_pci": remote_pci, "remote_type": remote_type}


#: A hand-written node: GPU 0 on NVSwitches (one link down, link numbers with a gap),
#: GPUs 1 and 2 joined by two direct NVLinks, GPU 3 without NVLink and with MIG on.
NODE: dict[str, Any] = {
    "version": 1,
    "driver_version": "580.159.04",
    "cuda_driver_version": 13000,
    "devices": [
        {
            "index": 0,
            "uuid": "GPU-3ebba5ba-457d-495d-9ccc-6b9684c30591",
            "name": "NVIDIA H100 80GB HBM3",
            "memory_total_bytes": 85520809984,
            "pci_bus_id": "00000000:18:00.0",
            "minor": 0,
            "mig_enabled": False,
            "nvlink_supported": True,
            "nvlinks": [
                _link(0, "00000000:C7:00.0", "switch"),
                _link(1, "00000000:C8:00.0", "switch"),
                _link(2, "00000000:CA:00.0", "switch", active=False),
                _link(17, "00000000:C9:00.0", "switch"),
            ],
        },
        {
            "index": 1,
            "uuid": "GPU-11111111-2222-3333-4444-555555555555",
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_total_bytes": 40 * GIB,
            "pci_bus_id": "00000000:07:00.0",
            "minor": 1,
            "mig_enabled": False,
            "nvlink_supported": True,
            "nvlinks": [
                _link(0, "00000000:0F:00.0", "gpu"),
                _link(1, "00000000:0F:00.0", "gpu"),
            ],
        },
        {
            "index": 2,
            "uuid": "GPU-66666666-7777-8888-9999-000000000000",
            "name": "NVIDIA A100-SXM4-40GB",
            "memory_total_bytes": 40 * GIB,
            "pci_bus_id": "00000000:0F:00.0",
            "minor": 2,
            "mig_enabled": False,
            "nvlink_supported": True,
            "nvlinks": [
                _link(0, "00000000:07:00.0", "gpu"),
                _link(1, "00000000:07:00.0", "gpu"),
            ],
        },
        {
            "index": 3,
            "uuid": "GPU-abcdefab-cdef-abcd-efab-cdefabcdefab",
            "name": "NVIDIA A100-PCIE-40GB",
            "memory_total_bytes": 40 * GIB,
            "pci_bus_id": "00000001:B1:00.0",
            "minor": 7,
            "mig_enabled": True,
            "nvlink_supported": False,
            "nvlinks": [],
        },
    ],
}

#: What discovery must see of NODE: PynvmlBackend does not ask NVML about the far end of an
#: inactive link (GPU 0 link 2) and reports it as ("", "unknown").
NODE_GPUS = [
    NvmlGpu(
        index=0,
        uuid="GPU-3ebba5ba-457d-495d-9ccc-6b9684c30591",
        name="NVIDIA H100 80GB HBM3",
        memory_total_bytes=85520809984,
        pci_bus_id="00000000:18:00.0",
        minor=0,
        mig_enabled=False,
        nvlinks=(
            NvlinkInfo(0, active=True, remote_pci="00000000:C7:00.0", remote_type="switch"),
            NvlinkInfo(1, active=True, remote_pci="00000000:C8:00.0", remote_type="switch"),
            NvlinkInfo(2, active=False, remote_pci="", remote_type="unknown"),
            NvlinkInfo(17, active=True, remote_pci="00000000:C9:00.0", remote_type="switch"),
        ),
    ),
    NvmlGpu(
        index=1,
        uuid="GPU-11111111-2222-3333-4444-555555555555",
        name="NVIDIA A100-SXM4-40GB",
        memory_total_bytes=40 * GIB,
        pci_bus_id="00000000:07:00.0",
        minor=1,
        mig_enabled=False,
        nvlinks=(
            NvlinkInfo(0, active=True, remote_pci="00000000:0F:00.0", remote_type="gpu"),
            NvlinkInfo(1, active=True, remote_pci="00000000:0F:00.0", remote_type="gpu"),
        ),
    ),
    NvmlGpu(
        index=2,
        uuid="GPU-66666666-7777-8888-9999-000000000000",
        name="NVIDIA A100-SXM4-40GB",
        memory_total_bytes=40 * GIB,
        pci_bus_id="00000000:0F:00.0",
        minor=2,
        mig_enabled=False,
        nvlinks=(
            NvlinkInfo(0, active=True, remote_pci="00000000:07:00.0", remote_type="gpu"),
            NvlinkInfo(1, active=True, remote_pci="00000000:07:00.0", remote_type="gpu"),
        ),
    ),
    NvmlGpu(
        index=3,
        uuid="GPU-abcdefab-cdef-abcd-efab-cdefabcdefab",
        name="NVIDIA A100-PCIE-40GB",
        memory_total_bytes=40 * GIB,
        pci_bus_id="00000001:B1:00.0",
        minor=7,
        mig_enabled=True,
        nvlinks=(),
    ),
]

MINIMAL = "driver 580.159.04\ncuda 13000\n"


#: Config texts nvmlInit must refuse: text, the line the message names (0: whole file), problem.
MALFORMED = [
    ("cuda 13000\n", 0, "no driver line"),
    ("driver 580\n", 0, "no cuda line"),
    (MINIMAL + "gpu 1 GPU-x 1 00000000:07:00.0 0 0 0 X\n", 0, "without gaps"),
    (MINIMAL + "gpu 0 GPU-x 1 00000000:07:00.0 0 0 0\n", 3, "gpu: expected"),
    (MINIMAL + "gpu 64 GPU-x 1 00000000:07:00.0 0 0 0 X\n", 3, "below 64"),
    (MINIMAL + "gpu 0 GPU-x -1 00000000:07:00.0 0 0 0 X\n", 3, "memory_total_bytes"),
    (MINIMAL + "gpu 0 GPU-x 1 0:07:00.0 0 0 0 X\n", 3, "bus id"),
    (MINIMAL + "gpu 0 GPU-x 1 00000000:07:20.0 0 0 0 X\n", 3, "bus id"),
    (MINIMAL + "gpu 0 GPU-x 1 00000000:07:00.0 0 2 0 X\n", 3, "mig must be 0 or 1"),
    (MINIMAL + "gpu 0 " + "u" * 96 + " 1 00000000:07:00.0 0 0 0 X\n", 3, "uuid longer"),
    (MINIMAL + "gpu 0 GPU-x 1 00000000:07:00.0 0 0 0 " + "n" * 96 + "\n", 3, "name longer"),
    (MINIMAL + "link 0 0 1 - gpu\n", 3, "no gpu line above"),
    (MINIMAL + "gpu 0 GPU-x 1 00000000:07:00.0 0 0 0 X\nlink 0 0 1 - gpu\n", 4, "nvlink 0"),
    (MINIMAL + "gpu 0 GPU-x 1 00000000:07:00.0 0 0 1 X\nlink 0 36 1 - gpu\n", 4, "below 36"),
    (MINIMAL + "gpu 0 GPU-x 1 00000000:07:00.0 0 0 1 X\nlink 0 0 1 - cpu\n", 4, "type must"),
    (MINIMAL + "fail nvmlDeviceGetFanSpeed 3\n", 3, "not an entry point"),
    (MINIMAL + "fail nvmlDeviceGetUUID 0\n", 3, "non-zero"),
    (MINIMAL + "driver 1 2\n", 3, "expected: <directive> <value>"),
    (MINIMAL + "gpus 0\n", 3, "unknown directive"),
    (MINIMAL + "# " + "x" * 600 + "\n", 3, "longer than 511"),
]


@pytest.fixture(scope="session")
def fake_lib(tmp_path_factory: pytest.TempPathFactory) -> Path:
    c_compiler()
    return build_fake_nvml(tmp_path_factory.mktemp("fake-nvml"))


def _write(tmp_path: Path, text: str, name: str = "fake-nvml.conf") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _run(lib: Path, scenario: str, config: Path | None, *args: str) -> Any:
    run: Run = run_pynvml(lib, scenario, config, *args)
    assert run.output.pop("fake_loaded"), "pynvml did not load the fake libnvidia-ml.so.1"
    return run.output


def _gpus(listing: list[dict[str, Any]]) -> list[NvmlGpu]:
    return [
        NvmlGpu(**{**g, "nvlinks": tuple(NvlinkInfo(**link) for link in g["nvlinks"])})
        for g in listing
    ]


def _c_defines() -> dict[str, int]:
    """`#define NVML_... <number>` lines of fake_nvml.c."""
    text = SOURCE.read_text(encoding="utf-8")
    pattern = r"^#define (NVML_\w+) (0x[0-9A-Fa-f]+|\d+)u?$"
    return {name: int(value, 0) for name, value in re.findall(pattern, text, re.MULTILINE)}


def _c_entry_points() -> list[str]:
    """The names in fake_nvml.c's FAKE_NVML_ENTRY_POINTS list."""
    return re.findall(r"^\s*X\((nvml\w+),", SOURCE.read_text(encoding="utf-8"), re.MULTILINE)


# ---- the fake agrees with pynvml's declarations -------------------------------------------


def test_c_constants_are_pynvml_values() -> None:
    defines = _c_defines()
    assert {"NVML_SUCCESS", "NVML_ERROR_DRIVER_NOT_LOADED", "NVML_NVLINK_MAX_LINKS"} <= set(defines)
    assert {name: getattr(pynvml, name) for name in defines} == defines


def test_struct_layouts_are_pynvml_layouts() -> None:
    # The same numbers are _Static_asserts in fake_nvml.c.
    assert ctypes.sizeof(pynvml.nvmlPciInfo_t) == 68
    assert pynvml.nvmlPciInfo_t.busId.offset == 36
    assert ctypes.sizeof(pynvml.c_nvmlMemory_t) == 24
    assert ctypes.sizeof(pynvml.c_nvmlMemory_v2_t) == 40
    assert pynvml.c_nvmlMemory_v2_t.total.offset == 8
    assert pynvml.nvmlMemory_v2 == (2 << 24) | 40


def test_entry_points_are_the_symbols_pynvml_looks_up() -> None:
    pynvml_source = Path(pynvml.__file__).read_text(encoding="utf-8")
    names = _c_entry_points()
    assert len(names) == 22
    # nvmlInit_v2 is for C callers and older pynvml; pynvml 13's nvmlInit is nvmlInitWithFlags(0).
    unused = [n for n in names if f'_nvmlGetFunctionPointer("{n}")' not in pynvml_source]
    assert unused == ["nvmlInit_v2"]


# ---- raw pynvml calls ---------------------------------------------------------------------


def test_pynvml_reads_what_the_config_says(fake_lib: Path, tmp_path: Path) -> None:
    out = _run(fake_lib, "raw", write_fake_config(NODE, tmp_path / "node.conf"))

    assert out["init"] is None
    assert out["driver"] == "580.159.04"
    assert out["cuda"] == out["cuda_v2"] == 13000
    assert out["count"] == 4
    assert out["bad_index"] == {"error": pynvml.NVML_ERROR_INVALID_ARGUMENT}
    assert out["shutdown"] is None
    for gpu, dev in zip(out["gpus"], NODE["devices"], strict=True):
        total = dev["memory_total_bytes"]
        mig = int(dev["mig_enabled"])
        assert gpu["index"] == dev["index"]
        assert gpu["uuid"] == dev["uuid"]
        assert gpu["name"] == dev["name"]
        assert gpu["minor"] == dev["minor"]
        assert gpu["mig"] == [mig, mig]
        assert gpu["memory"] == {"total": total, "free": total, "used": 0}
        assert gpu["memory_v2"] == {
            "version": pynvml.nvmlMemory_v2,
            "total": total,
            "reserved": 0,
            "free": total,
            "used": 0,
        }
        assert gpu["pci"]["busId"] == dev["pci_bus_id"]
    gpu0 = out["gpus"][0]
    assert gpu0["pci"] == {
        "busId": "00000000:18:00.0",
        "busIdLegacy": "0000:18:00.0",
        "domain": 0,
        "bus": 0x18,
        "device": 0,
        "pciDeviceId": 0,
        "pciSubSystemId": 0,
    }
    assert out["gpus"][3]["pci"]["domain"] == 1
    assert sorted(gpu0["links"], key=int) == ["0", "1", "2", "17"]
    assert gpu0["links"]["0"]["active"] == pynvml.NVML_FEATURE_ENABLED
    assert gpu0["links"]["0"]["remote_pci"]["busId"] == "00000000:C7:00.0"
    assert gpu0["links"]["0"]["remote_pci"]["bus"] == 0xC7
    assert gpu0["links"]["0"]["remote_type"] == pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
    assert gpu0["links"]["2"]["active"] == pynvml.NVML_FEATURE_DISABLED
    assert gpu0["links"]["2"]["remote_pci"]["busId"] == "00000000:CA:00.0"
    gpu1_link1 = out["gpus"][1]["links"]["1"]
    assert gpu1_link1["remote_pci"]["busId"] == "00000000:0F:00.0"
    assert gpu1_link1["remote_type"] == pynvml.NVML_NVLINK_DEVICE_TYPE_GPU
    # Links a GPU with NVLink does not have (3..16, 18..35, and 36 past NVML's maximum) are
    # INVALID_ARGUMENT; every link of a GPU without NVLink is NOT_SUPPORTED.
    assert gpu0["link_errors"] == [pynvml.NVML_ERROR_INVALID_ARGUMENT]
    assert out["gpus"][3]["links"] == {}
    assert out["gpus"][3]["link_errors"] == [pynvml.NVML_ERROR_NOT_SUPPORTED]
    assert out["errors"] == {
        "2": ["NVMLError_InvalidArgument", "Invalid Argument"],
        "3": ["NVMLError_NotSupported", "Not Supported"],
    }


def test_bus_ids_come_back_upper_case_with_an_8_digit_domain(
    fake_lib: Path, tmp_path: Path
) -> None:
    config = _write(
        tmp_path,
        MINIMAL
        + "gpu 0 GPU-x 1024 0001:c7:1f.0 0 0 1 Some  GPU\n"
        + "link 0 3 1 000A:0b:00.1 ibmnpu\n"
        + "link 0 5 0 - unknown\n",
    )
    gpu = _run(fake_lib, "raw", config)["gpus"][0]
    assert gpu["name"] == "Some  GPU"
    assert gpu["pci"]["busId"] == "00000001:C7:1F.0"
    assert gpu["pci"]["busIdLegacy"] == "0001:C7:1F.0"
    assert (gpu["pci"]["domain"], gpu["pci"]["bus"], gpu["pci"]["device"]) == (1, 0xC7, 0x1F)
    assert gpu["links"]["3"]["remote_pci"]["busId"] == "0000000A:0B:00.1"
    assert gpu["links"]["3"]["remote_type"] == pynvml.NVML_NVLINK_DEVICE_TYPE_IBMNPU
    # "-": nothing known behind the link, an all-zero nvmlPciInfo_t.
    assert gpu["links"]["5"] == {
        "active": pynvml.NVML_FEATURE_DISABLED,
        "remote_pci": {
            "busId": "",
            "busIdLegacy": "",
            "domain": 0,
            "bus": 0,
            "device": 0,
            "pciDeviceId": 0,
            "pciSubSystemId": 0,
        },
        "remote_type": pynvml.NVML_NVLINK_DEVICE_TYPE_UNKNOWN,
    }


def test_a_node_without_gpus(fake_lib: Path, tmp_path: Path) -> None:
    out = _run(fake_lib, "raw", _write(tmp_path, MINIMAL))
    assert (out["init"], out["count"], out["gpus"]) == (None, 0, [])
    assert out["bad_index"] == {"error": pynvml.NVML_ERROR_INVALID_ARGUMENT}


def test_no_config_means_no_driver(fake_lib: Path, tmp_path: Path) -> None:
    not_loaded = {"error": pynvml.NVML_ERROR_DRIVER_NOT_LOADED}
    for config in (None, tmp_path / "missing.conf", tmp_path):
        out = _run(fake_lib, "raw", config)
        assert out["init"] == not_loaded, config
        assert out["errors"] == {"9": ["NVMLError_DriverNotLoaded", "Driver Not Loaded"]}


@pytest.mark.parametrize(("text", "line", "problem"), MALFORMED)
def test_a_malformed_config_fails_init_and_says_where(
    fake_lib: Path, tmp_path: Path, text: str, line: int, problem: str
) -> None:
    config = _write(tmp_path, text)
    run = run_pynvml(fake_lib, "raw", config)
    assert run.output["init"] == {"error": pynvml.NVML_ERROR_UNKNOWN}
    assert f"fake_nvml: {config}:{line}: " in run.stderr
    assert problem in run.stderr


def test_fail_lines_make_calls_fail(fake_lib: Path, tmp_path: Path) -> None:
    failures = [
        Failure("nvmlDeviceGetUUID", pynvml.NVML_ERROR_GPU_IS_LOST, gpu=1),
        Failure("nvmlDeviceGetMigMode", pynvml.NVML_ERROR_NOT_SUPPORTED, gpu=0),
        Failure("nvmlSystemGetDriverVersion", pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH),
        Failure("nvmlDeviceGetNvLinkRemoteDeviceType", pynvml.NVML_ERROR_UNKNOWN),
    ]
    out = _run(fake_lib, "raw", write_fake_config(NODE, tmp_path / "node.conf", failures))
    gpus = out["gpus"]
    assert [g["uuid"] for g in gpus] == [
        NODE["devices"][0]["uuid"],
        {"error": pynvml.NVML_ERROR_GPU_IS_LOST},
        NODE["devices"][2]["uuid"],
        NODE["devices"][3]["uuid"],
    ]
    assert [g["mig"] for g in gpus] == [{"error": 3}, [0, 0], [0, 0], [1, 1]]
    assert out["driver"] == {"error": pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH}
    assert gpus[0]["links"]["0"]["remote_type"] == {"error": pynvml.NVML_ERROR_UNKNOWN}
    assert out["errors"]["15"] == ["NVMLError_GpuIsLost", "GPU is lost"]
    # pynvml has no text of its own for 25: it asked the library's nvmlErrorString.
    assert out["errors"]["25"] == ["NVMLError_ArgumentVersionMismatch", "Argument version mismatch"]


def test_a_fail_line_can_fail_init(fake_lib: Path, tmp_path: Path) -> None:
    config = _write(tmp_path, MINIMAL + "fail nvmlInitWithFlags 18\n")
    out = _run(fake_lib, "raw", config)
    assert out["init"] == {"error": pynvml.NVML_ERROR_LIB_RM_VERSION_MISMATCH}


def test_init_is_counted_like_nvml(fake_lib: Path, tmp_path: Path) -> None:
    out = _run(fake_lib, "lifecycle", write_fake_config(NODE, tmp_path / "node.conf"))
    uninitialized = {"error": pynvml.NVML_ERROR_UNINITIALIZED}
    assert out["steps"] == [
        ["init", None],
        ["init", None],
        ["shutdown", None],
        ["count", 4],
        ["shutdown", None],
        ["count", uninitialized],
        ["driver", uninitialized],
        ["shutdown", uninitialized],
        ["init", None],
        ["count", 4],
    ]


def test_stale_and_bogus_handles_are_refused(fake_lib: Path, tmp_path: Path) -> None:
    out = _run(fake_lib, "stale_handle", write_fake_config(NODE, tmp_path / "node.conf"))
    assert out["after_shutdown"] == {"error": pynvml.NVML_ERROR_UNINITIALIZED}
    assert out["bogus"] == {"error": pynvml.NVML_ERROR_INVALID_ARGUMENT}


def test_error_strings(fake_lib: Path, tmp_path: Path) -> None:
    out = _run(fake_lib, "error_strings", _write(tmp_path, MINIMAL), "0", "9", "19", "999", "4242")
    assert out == {
        "0": "Success",
        "9": "Driver Not Loaded",
        "19": "In use by another client",
        "999": "Unknown Error",
        "4242": "Unknown Error",
    }


def _garbled_configs(tmp_path: Path, count: int = 150) -> list[str]:
    """A valid config (first) and `count` mangled copies of it, as file paths."""
    good = config_text(NODE, [Failure("nvmlDeviceGetName", 3, gpu=2)])
    rng = random.Random(1234)
    alphabet = " \t\n#-:.0123456789abcdefxABCDEFX" + "gpu link fail driver cuda "
    paths = [str(_write(tmp_path, good, "good.conf"))]
    for i in range(count):
        text = list(good)
        for _ in range(rng.randint(1, 6)):
            at = rng.randrange(len(text))
            action = rng.choice(("drop", "insert", "replace", "cut", "repeat"))
            if action == "drop":
                del text[at]
            elif action == "insert":
                text.insert(at, rng.choice(alphabet))
            elif action == "replace":
                text[at] = rng.choice(alphabet)
            elif action == "cut":
                del text[at:]
                text.append("x")
            else:
                text[at:at] = text[at : at + rng.randint(1, 700)]
        paths.append(str(_write(tmp_path, "".join(text), f"garbled-{i}.conf")))
    return paths


def test_garbled_configs_fail_cleanly(fake_lib: Path, tmp_path: Path) -> None:
    """Mangled configs either load or fail init with UNKNOWN: never a crash."""
    codes = _run(fake_lib, "init_each", None, *_garbled_configs(tmp_path))["init"]
    assert codes[0] == 0
    assert set(codes) <= {0, pynvml.NVML_ERROR_UNKNOWN}
    assert codes.count(0) > 1
    assert codes.count(pynvml.NVML_ERROR_UNKNOWN) > 50


def test_clean_under_address_and_undefined_behaviour_sanitizers(tmp_path: Path) -> None:
    """The fake built with -fsanitize=address,undefined runs every scenario without a report."""
    asan = asan_runtime()
    flags = ["-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined"]
    lib = build_fake_nvml(tmp_path, [*flags, "-fno-sanitize-recover=all"])
    env = {
        "LD_PRELOAD": asan,  # the ASan runtime must come first; python is not built with it
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",  # python itself leaks at exit
        "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
    }
    node = write_fake_config(NODE, tmp_path / "node.conf", [Failure("nvmlDeviceGetUUID", 15, 1)])
    for scenario in ("raw", "lifecycle", "stale_handle", "backend"):
        run = run_pynvml(lib, scenario, node, extra_env=env)
        assert run.output["fake_loaded"], scenario
        assert "Sanitizer" not in run.stderr, run.stderr
    bad = [str(_write(tmp_path, text, f"bad-{i}.conf")) for i, (text, _, _) in enumerate(MALFORMED)]
    run = run_pynvml(lib, "init_each", None, *bad, *_garbled_configs(tmp_path), extra_env=env)
    assert run.output["init"][: len(bad)] == [pynvml.NVML_ERROR_UNKNOWN] * len(bad)
    assert "Sanitizer" not in run.stderr, run.stderr[-4000:]


# ---- the Python side of the config --------------------------------------------------------


def test_config_text_is_the_line_format() -> None:
    node = {**NODE, "devices": NODE["devices"][:1]}
    assert config_text(node, [Failure("nvmlDeviceGetUUID", 15, gpu=0)]).splitlines() == [
        "driver 580.159.04",
        "cuda 13000",
        "gpu 0 GPU-3ebba5ba-457d-495d-9ccc-6b9684c30591 85520809984 00000000:18:00.0 0 0 1 "
        "NVIDIA H100 80GB HBM3",
        "link 0 0 1 00000000:C7:00.0 switch",
        "link 0 1 1 00000000:C8:00.0 switch",
        "link 0 2 0 00000000:CA:00.0 switch",
        "link 0 17 1 00000000:C9:00.0 switch",
        "fail nvmlDeviceGetUUID 15 0",
    ]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version must be 1"),
        ({"uuid": "GPU x"}, "device 3 uuid"),
        ({"minor": True}, "device 3 minor"),
        ({"mig_enabled": 1}, "device 3 mig_enabled"),
        ({"name": "two\nlines"}, "device 3 name"),
        (
            {"nvlinks": [_link(0, "", "gpu")]},
            "nvlink_supported is false",
        ),
    ],
)
def test_config_text_refuses_what_the_format_cannot_say(
    change: dict[str, Any], message: str
) -> None:
    node = json.loads(json.dumps(NODE))
    if "version" in change:
        node.update(change)
    else:
        node["devices"][3].update(change)
    with pytest.raises(ValueError, match=message):
        config_text(node)


# ---- PynvmlBackend over the fake ----------------------------------------------------------


def test_pynvml_backend_sees_the_node(fake_lib: Path, tmp_path: Path) -> None:
    out = _run(fake_lib, "backend", write_fake_config(NODE, tmp_path / "node.conf"))
    assert out["driver"] == "580.159.04"
    assert _gpus(out["gpus"]) == NODE_GPUS


def test_simulated_nvml_agrees_with_pynvml_on_links_that_are_down(
    fake_lib: Path, tmp_path: Path
) -> None:
    """NODE has an inactive NVLink: both backends report it the same way."""
    nvml_json = tmp_path / "nvml.json"
    nvml_json.write_text(json.dumps(NODE), encoding="utf-8")
    out = _run(fake_lib, "backend", write_fake_config(NODE, tmp_path / "node.conf"))
    assert SimulatedNvml(nvml_json).gpus() == _gpus(out["gpus"])
    down = [link for link in SimulatedNvml(nvml_json).gpus()[0].nvlinks if not link.active]
    assert [(d.link, d.remote_pci, d.remote_type) for d in down] == [(2, "", "unknown")]


def test_pynvml_backend_treats_mig_not_supported_as_off(fake_lib: Path, tmp_path: Path) -> None:
    failures = [Failure("nvmlDeviceGetMigMode", pynvml.NVML_ERROR_NOT_SUPPORTED, gpu=3)]
    out = _run(fake_lib, "backend", write_fake_config(NODE, tmp_path / "node.conf", failures))
    assert [g.mig_enabled for g in _gpus(out["gpus"])] == [False, False, False, False]


def test_pynvml_backend_error_names_the_call(fake_lib: Path, tmp_path: Path) -> None:
    failures = [Failure("nvmlDeviceGetUUID", pynvml.NVML_ERROR_GPU_IS_LOST, gpu=2)]
    out = _run(fake_lib, "backend", write_fake_config(NODE, tmp_path / "node.conf", failures))
    message = out["nvml_error"]
    assert "nvmlDeviceGetUUID" in message
    assert "GPU 2" in message
    assert "GPU is lost" in message


def test_pynvml_backend_without_a_driver(fake_lib: Path) -> None:
    out = _run(fake_lib, "backend", None)
    assert "NVML not available" in out["nvml_error"]
    assert "Driver Not Loaded" in out["nvml_error"]


def _shipped_nodes() -> list[Any]:
    names: list[Any] = list(shipped_nodes())
    if not names:
        reason = "agent/simnode/nodes ships no node specs yet"
        names = [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    return names


@pytest.mark.parametrize("node", _shipped_nodes())
def test_pynvml_backend_equals_simulated_nvml(fake_lib: Path, tmp_path: Path, node: str) -> None:
    """The same discovery code sees the same GPUs through pynvml as through SimulatedNvml."""
    with open_simulated(node) as sim:
        nvml_json = json.loads((sim.root / "nvml.json").read_text(encoding="utf-8"))
        driver, gpus = sim.nvml.driver_version(), sim.nvml.gpus()
    out = _run(fake_lib, "backend", write_fake_config(nvml_json, tmp_path / "node.conf"))
    assert out["driver"] == driver
    assert _gpus(out["gpus"]) == gpus
