"""A fake NVIDIA driver library, so that the real pynvml runs without a GPU.

`fake_nvml.c` is built as `libnvidia-ml.so.1` (`build_fake_nvml`). It pretends to be the
node described by the file named in `$GPULET_FAKE_NVML` (format: the comment at the top of
`fake_nvml.c`), which `write_fake_config` writes from a simulated node's `nvml.json`.
`run_pynvml` runs a scenario of `runner.py` in a fresh interpreter that loads the fake before
pynvml's first `nvmlInit` (pynvml keeps its library and init count per process), and returns
what the scenario printed. The `usage` scenario changes the node between two samples through
the fake's own `fake_nvml_reload`.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from native import build_limiter

# No C compiler; the compiler command ($CC, else cc): the build's own (native/build_limiter.py).
CompilerNotFound = build_limiter.CompilerNotFound
c_compiler = build_limiter.compiler

SOURCE = Path(__file__).with_name("fake_nvml.c")
RUNNER = Path(__file__).with_name("runner.py")
SONAME = "libnvidia-ml.so.1"
CONFIG_ENV = "GPULET_FAKE_NVML"
CFLAGS = ("-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-O2")
#: What `link` lines accept as the far end of an NVLink.
REMOTE_TYPES = ("gpu", "ibmnpu", "switch", "unknown")


@dataclass(frozen=True)
class Failure:
    """A `fail` line: `function` returns `code`, for every GPU or only for GPU `gpu`; for
    every call, or only for the first `times`."""

    function: str
    code: int
    gpu: int | None = None
    times: int | None = None


@dataclass(frozen=True)
class Process:
    """A `process` line: a compute process on GPU `gpu`; `used_bytes` None is "-" (unknown)."""

    gpu: int
    pid: int
    used_bytes: int | None


@dataclass(frozen=True)
class UtilSample:
    """A `util` line: one per-process utilisation sample on GPU `gpu`."""

    gpu: int
    pid: int
    sm_percent: int
    timestamp_us: int


@dataclass(frozen=True)
class Run:
    """What a runner scenario printed (parsed JSON) and wrote to stderr."""

    output: Any
    stderr: str


def build_fake_nvml(out_dir: Path, extra_flags: Sequence[str] = ()) -> Path:
    """Compiles fake_nvml.c into `out_dir/libnvidia-ml.so.1` and returns that path."""
    compiler = c_compiler()
    if compiler is None:
        raise CompilerNotFound("no C compiler ($CC, else cc) on PATH")
    out = out_dir / SONAME
    command = [
        *compiler,
        *CFLAGS,
        *extra_flags,
        "-o",
        str(out),
        f"-Wl,-soname,{SONAME}",
        "-Wl,-z,defs",  # every symbol it uses must resolve (libc, or a sanitizer runtime)
        str(SOURCE),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{proc.stderr}")
    return out


def _word(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or any(c.isspace() for c in value):
        raise ValueError(f"{what} must be a non-empty string without blanks, not {value!r}")
    return value


def _number(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{what} must be a non-negative integer, not {value!r}")
    return value


def _flag(value: object, what: str) -> int:
    if not isinstance(value, bool):
        raise ValueError(f"{what} must be true or false, not {value!r}")
    return int(value)


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or value != value.strip() or not value.isprintable() or not value:
        raise ValueError(f"{what} must be printable text without outer blanks, not {value!r}")
    return value


def config_text(
    nvml_json: Mapping[str, Any],
    failures: Iterable[Failure] = (),
    processes: Iterable[Process] = (),
    samples: Iterable[UtilSample] = (),
) -> str:
    """The fake's config for a simulated node's `nvml.json` (version 1), plus `process`,
    `util` and `fail` lines."""
    if nvml_json.get("version") != 1:
        raise ValueError(f"nvml.json version must be 1, not {nvml_json.get('version')!r}")
    lines = [
        f"driver {_word(nvml_json['driver_version'], 'driver_version')}",
        f"cuda {_number(nvml_json['cuda_driver_version'], 'cuda_driver_version')}",
    ]
    for dev in nvml_json["devices"]:
        index = _number(dev["index"], "index")
        where = f"device {index}"
        nvlink = _flag(dev["nvlink_supported"], f"{where} nvlink_supported")
        gpu_fields = [
            "gpu",
            str(index),
            _word(dev["uuid"], f"{where} uuid"),
            str(_number(dev["memory_total_bytes"], f"{where} memory_total_bytes")),
            _word(dev["pci_bus_id"], f"{where} pci_bus_id"),
            str(_number(dev["minor"], f"{where} minor")),
            str(_flag(dev["mig_enabled"], f"{where} mig_enabled")),
            str(nvlink),
            _name(dev["name"], f"{where} name"),
        ]
        lines.append(" ".join(gpu_fields))
        links = dev.get("nvlinks", [])
        if links and not nvlink:
            raise ValueError(f"{where} has nvlinks but nvlink_supported is false")
        for link in links:
            number = _number(link["link"], f"{where} link")
            remote = link["remote_pci"]
            kind = link["remote_type"]
            if kind not in REMOTE_TYPES:
                raise ValueError(f"{where} link {number} remote_type must be one of {REMOTE_TYPES}")
            link_fields = [
                "link",
                str(index),
                str(number),
                str(_flag(link["active"], f"{where} link {number} active")),
                "-" if remote == "" else _word(remote, f"{where} link {number} remote_pci"),
                kind,
            ]
            lines.append(" ".join(link_fields))
    for proc in processes:
        used = "-" if proc.used_bytes is None else str(_number(proc.used_bytes, "used_bytes"))
        lines.append(f"process {_number(proc.gpu, 'gpu')} {_number(proc.pid, 'pid')} {used}")
    for sample in samples:
        util_fields = [
            "util",
            str(_number(sample.gpu, "gpu")),
            str(_number(sample.pid, "pid")),
            str(_number(sample.sm_percent, "sm_percent")),
            str(_number(sample.timestamp_us, "timestamp_us")),
        ]
        lines.append(" ".join(util_fields))
    for failure in failures:
        fail_fields = [
            "fail",
            _word(failure.function, "function"),
            str(_number(failure.code, "code")),
        ]
        if failure.gpu is not None or failure.times is not None:
            fail_fields.append("-" if failure.gpu is None else str(_number(failure.gpu, "gpu")))
        if failure.times is not None:
            fail_fields.append(str(_number(failure.times, "times")))
        lines.append(" ".join(fail_fields))
    return "\n".join(lines) + "\n"


def write_fake_config(
    nvml_json: Mapping[str, Any],
    path: Path,
    failures: Iterable[Failure] = (),
    processes: Iterable[Process] = (),
    samples: Iterable[UtilSample] = (),
) -> Path:
    """Writes `config_text(nvml_json, failures, processes, samples)` to `path`; returns it."""
    path.write_text(config_text(nvml_json, failures, processes, samples), encoding="utf-8")
    return path


def run_pynvml(
    lib: Path,
    scenario: str,
    config: Path | None,
    *args: str,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> Run:
    """Runs `runner.py LIB SCENARIO ARGS` with `$GPULET_FAKE_NVML` = config (unset if None).

    Raises RuntimeError, with its stderr, if the runner does not exit 0.
    """
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    env.update(extra_env or {})
    if config is not None:
        env[CONFIG_ENV] = str(config)
    command = [sys.executable, str(RUNNER), str(lib), scenario, *args]
    proc = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"{shlex.join(command)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}"
        )
    return Run(json.loads(proc.stdout), proc.stderr)
