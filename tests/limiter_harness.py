"""Runs the real limiter library over the fake driver: a container is a region directory,
the preload, and the environment that points the fake CUDA and NVML libraries at it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from native import build_limiter as limiter_build
from tests.fakes.nvml import build_fake_nvml
from tests.needs import asan_runtime

ROOT = Path(__file__).resolve().parent.parent
SONAME = limiter_build.SONAME
MIB = 1 << 20
#: What the fake driver rounds each allocation's reserved size up to, unless a test picks
#: another: 2 MiB, what cuMemAlloc reserves in on many GPUs (tests/fakes/cuda/fake_cuda.c).
GRANULARITY = 2 * MIB
SANITIZE = ("-fsanitize=address,undefined", "-fno-omit-frame-pointer")


def build_limiter(out_dir: Path, sanitize: bool = False) -> Path:
    """Compiles the limiter into `out_dir` with the build's own command (native/build_limiter.py),
    plus sanitizers when asked, and returns the library's path."""
    if sanitize:
        return limiter_build.build(out_dir / SONAME, optimize="-O1", extra=SANITIZE)
    return limiter_build.build(out_dir / SONAME)


def reserved(size: int, granularity: int) -> int:
    """What the fake driver reserves for an allocation of `size` bytes: whole granules."""
    return -(-size // granularity) * granularity


def fake_nvml_config(uuids: Sequence[str], total_mib: int) -> str:
    lines = ["driver 580.159.04", "cuda 13000"]
    for i, uuid in enumerate(uuids):
        bus = f"0000:{0x10 + i:02x}:00.0"
        lines.append(f"gpu {i} {uuid} {total_mib * MIB} {bus} {i} 0 0 NVIDIA H100 80GB HBM3")
    return "\n".join(lines) + "\n"


def build_nvml(out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    return build_fake_nvml(out_dir).parent


@dataclass
class Container:
    """One container's view: where its region lives and how its processes are started."""

    region_dir: Path
    limiter: Path
    cuda_dir: Path
    nvml_dir: Path
    client: Path
    fake_config: str = ""
    asan: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)
    #: A dynamic loader to start the client with (another glibc's `ld.so --library-path
    #: ...`); empty: the client starts as it is.
    loader: Sequence[str] = ()

    def env(self, preload: bool = True) -> dict[str, str]:
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = f"{self.cuda_dir}:{self.nvml_dir}"
        env["GPULET_FAKE_CUDA"] = self.fake_config
        env["GPULET_FAKE_NVML"] = str(self.nvml_dir / "nvml.conf")
        env["GPULET_REGION_DIR"] = str(self.region_dir)
        if preload:
            libs = [asan_runtime(), str(self.limiter)] if self.asan else [str(self.limiter)]
            env["LD_PRELOAD"] = ":".join(libs)
        if self.asan:
            env["ASAN_OPTIONS"] = "detect_leaks=0:abort_on_error=0:exitcode=23"
            env["UBSAN_OPTIONS"] = "halt_on_error=1:exitcode=24:print_stacktrace=1"
        env.update(self.extra_env)
        return env

    def command(self, mode: str, commands: Sequence[str]) -> list[str]:
        return [*self.loader, str(self.client), *mode.split(), *commands]

    def run(
        self, mode: str, commands: Sequence[str], timeout: float = 30, preload: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(mode, commands),
            env=self.env(preload),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def lines(self, mode: str, commands: Sequence[str], timeout: float = 30) -> list[str]:
        """Runs the client under the limiter; its stdout lines (fails on a non-zero exit)."""
        proc = self.run(mode, commands, timeout)
        if proc.returncode != 0:
            raise AssertionError(f"client exited {proc.returncode}:\n{proc.stderr}")
        return proc.stdout.splitlines()

    def start(self, mode: str, commands: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.command(mode, commands),
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def die_holding_the_lock(region_dir: Path, reserve_bytes: int = 0) -> None:
    """A process of this Python attaches to the region, reserves `reserve_bytes` on device 0
    (if any), takes the region's lock and is killed with SIGKILL while holding it."""
    script = (
        "import time\n"
        "from native.region import Region\n"
        f"region = Region.open({str(region_dir)!r})\n"
        "region.attach()\n"
        f"assert {reserve_bytes} == 0 or region.reserve(0, {reserve_bytes}, {reserve_bytes})\n"
        "region.lock()\n"
        "print('locked', flush=True)\n"
        "time.sleep(60)\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "locked"
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
