"""A fake CUDA driver library and a client that loads it the way real programs do.

`fake_cuda.c` is built as `libcuda.so.1` (`build_fake_cuda`); its behaviour and the format of
`$GPULET_FAKE_CUDA` are in the comment at its top. `cuda_client.c` (`build_cuda_client`) never
links libcuda: it dlopens `libcuda.so.1` like the CUDA runtime (`runtime`, `runtime-v1`) or
like Triton and CuPy (`dlsym`), then runs commands, one output line each (grammar: the
comment above its `run_command`). With an LD_PRELOADed limiter, the same client exercises the
limiter's hooks on every path a real program takes.
"""

from __future__ import annotations

import os
import shlex
import struct
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.fakes.nvml import CompilerNotFound, c_compiler

HERE = Path(__file__).parent
LIB_SOURCE = HERE / "fake_cuda.c"
CLIENT_SOURCE = HERE / "cuda_client.c"
#: Where cuda_api.h (the CUDA and NVML types both sources use) lives.
INCLUDE_DIR = HERE.parents[2] / "native" / "limiter"
SONAME = "libcuda.so.1"
CLIENT = "cuda_client"
CONFIG_ENV = "GPULET_FAKE_CUDA"
CONFIG_KEYS = ("devices", "total_mib", "granularity", "graph_us", "capturing")
MODES = ("runtime", "runtime-v1", "dlsym")
CFLAGS = ("-std=c11", "-D_GNU_SOURCE", "-O2", "-Wall", "-Wextra", "-Werror")
SANITIZE_FLAGS = (
    "-g",
    "-fno-omit-frame-pointer",
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
)
#: For processes running sanitized builds. verify_asan_link_order=0 lets a non-sanitized
#: library be LD_PRELOADed ahead of the ASan runtime the client links.
SANITIZER_ENV = {
    "ASAN_OPTIONS": "abort_on_error=1:detect_leaks=1:verify_asan_link_order=0",
    "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
}


class ClientError(RuntimeError):
    """The client exited non-zero: 2 for a malformed command, 3 if loading libcuda failed."""

    def __init__(self, message: str, returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr


def _compile(args: Sequence[str]) -> None:
    compiler = c_compiler()
    if compiler is None:
        raise CompilerNotFound("no C compiler ($CC, else cc) on PATH")
    command = [*compiler, *CFLAGS, f"-I{INCLUDE_DIR}", *args]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(command)} failed:\n{proc.stderr}")


def build_fake_cuda(out_dir: Path, sanitize: bool = False) -> Path:
    """Compiles fake_cuda.c into `out_dir/libcuda.so.1`; returns `out_dir`."""
    extra = SANITIZE_FLAGS if sanitize else ()
    out = out_dir / SONAME
    _compile(
        [
            "-shared",
            "-fPIC",
            *extra,
            "-o",
            str(out),
            f"-Wl,-soname,{SONAME}",
            "-Wl,-z,defs",  # every symbol it uses must resolve (libc, or a sanitizer runtime)
            str(LIB_SOURCE),
            "-pthread",
        ]
    )
    return out_dir


def build_cuda_client(out_dir: Path, sanitize: bool = False) -> Path:
    """Compiles cuda_client.c into `out_dir/cuda_client` and returns that path.

    A sanitized client links the sanitizer runtimes, so a sanitized libcuda can load into it.
    """
    extra = SANITIZE_FLAGS if sanitize else ()
    out = out_dir / CLIENT
    _compile([*extra, "-o", str(out), str(CLIENT_SOURCE), "-ldl"])
    return out


def fake_cuda_env(lib_dir: Path, **config: int) -> dict[str, str]:
    """LD_LIBRARY_PATH (lib_dir first) and $GPULET_FAKE_CUDA for `config` (keys: CONFIG_KEYS)."""
    unknown = sorted(set(config) - set(CONFIG_KEYS))
    if unknown:
        raise ValueError(f"unknown fake CUDA settings {unknown}; known: {CONFIG_KEYS}")
    paths = [str(lib_dir), *filter(None, os.environ.get("LD_LIBRARY_PATH", "").split(":"))]
    return {
        "LD_LIBRARY_PATH": ":".join(paths),
        CONFIG_ENV: ",".join(f"{key}={int(value)}" for key, value in config.items()),
    }


def fake_uuid(i: int) -> str:
    """The UUID the fake reports for device `i`."""
    if not 0 <= i < 16:
        raise ValueError(f"the fake has devices 0..15, not {i}")
    return f"GPU-fa4e0000-0000-4000-8000-0000000000{i:02x}"


def run_client(
    client: Path,
    mode: str,
    commands: Sequence[str],
    env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> list[str]:
    """Runs `client MODE... COMMANDS...` and returns its stdout lines.

    `mode` is "runtime", "runtime-v1" or "dlsym", optionally followed by " --ptsz". `env`
    is laid over this process's environment (without $GPULET_FAKE_CUDA). Raises ClientError,
    with the client's stderr, if it exits non-zero.
    """
    full_env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    full_env.update(env or {})
    command = [str(client), *mode.split(), *commands]
    proc = subprocess.run(
        command, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise ClientError(
            f"{shlex.join(command)} exited {proc.returncode}:\n{proc.stderr}",
            proc.returncode,
            proc.stdout,
            proc.stderr,
        )
    return proc.stdout.splitlines()


#: The shared file of `timeline=PATH` (fake_cuda.c, `struct shared`): each device's busy-until,
#: then per process slot its pid and each device's bytes.
_DEVICES = 16
_SLOTS = 64
_SLOT = struct.Struct(f"<iI{_DEVICES}Q")
_UNTIL = 8 * _DEVICES


def timeline_processes(path: Path) -> list[tuple[int, int, int]]:
    """What the processes sharing a timeline hold, as NVML would list them: (pid, device,
    bytes) for every live, not exited process and device it holds memory of."""
    data = path.read_bytes()
    out = []
    for slot in range(_SLOTS):
        pid, _, *used = _SLOT.unpack_from(data, _UNTIL + slot * _SLOT.size)
        if pid <= 0 or not _holds_memory(pid):
            continue
        out += [(pid, device, n) for device, n in enumerate(used) if n]
    return out


def _holds_memory(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(") ", 1)[1][:1] not in ("Z", "X")
