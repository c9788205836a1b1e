"""The limiter built here loads and enforces in a process of an older glibc.

It is preloaded into every process of a sliced container, whatever glibc the image has
(Ubuntu 20.04 and Debian 11 have 2.31, UBI 8 has 2.28). A library that asks for a newer
symbol version than the container's glibc has stops every process there from starting, the
shell included. The first test reads the versions the library asks for, on every run. The
others need an older glibc laid out by tests/old_glibc/fetch.sh (named by $GPULET_OLD_GLIBC):
the fakes and the client are built against it and started by its loader, and the limiter
preloaded into them is the one built with this machine's toolchain, as the image ships it.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from native.region import DeviceLimit, Limits, Region, setup
from tests.fakes.cuda import build_cuda_client, build_fake_cuda, fake_uuid
from tests.limiter_harness import (
    GRANULARITY,
    MIB,
    Container,
    build_limiter,
    build_nvml,
    die_holding_the_lock,
    fake_nvml_config,
)
from tests.needs import need, readelf
from tests.old_glibc import ENV, FLOOR, OldGlibc, needed_glibc_versions

ROOT = Path(__file__).resolve().parents[2]
TOTAL_MIB = 16384


def test_the_limiter_asks_for_no_glibc_newer_than_the_floor(tmp_path: Path) -> None:
    readelf()
    built = [build_limiter(tmp_path)]
    shipped = ROOT / "native" / "lib" / "libgpulet-limiter.so"
    if shipped.is_file():  # what `make native` built
        built.append(shipped)
    for library in built:
        versions = needed_glibc_versions(library)
        assert versions, f"{library} asks for no GLIBC version at all"
        assert max(versions) <= FLOOR, (
            f"{library} needs GLIBC_{'.'.join(map(str, max(versions)))}: a container with an "
            "older glibc could not start any process (see native/limiter/glibc_compat.h)"
        )


# ---- on an older glibc ---------------------------------------------------------------------

OLD = OldGlibc.from_env()


@pytest.fixture(scope="module")
def old_box(tmp_path_factory: pytest.TempPathFactory) -> Container:
    """A container whose client, fake libcuda and fake NVML are built against the old glibc
    and started by its loader; the limiter is built as here."""
    need(OLD is not None, f"${ENV} names no older glibc (make one with tests/old_glibc/fetch.sh)")
    assert OLD is not None
    if OLD.version() >= (2, 34):
        pytest.fail(f"${ENV} names glibc {OLD.version()}: the point is one older than 2.34")
    with OLD.compiling():
        cuda = build_fake_cuda(tmp_path_factory.mktemp("old-cuda"))
        client = build_cuda_client(tmp_path_factory.mktemp("old-client"))
        nvml = build_nvml(tmp_path_factory.mktemp("old-nvml"))
    (nvml / "nvml.conf").write_text(fake_nvml_config([fake_uuid(0)], TOTAL_MIB))
    region = tmp_path_factory.mktemp("old-region") / "region"
    setup(region, Limits((DeviceLimit(fake_uuid(0), 1024, 100),)))
    return Container(
        region_dir=region,
        limiter=build_limiter(tmp_path_factory.mktemp("limiter")),
        cuda_dir=cuda,
        nvml_dir=nvml,
        client=client,
        fake_config=f"devices=1,total_mib={TOTAL_MIB},granularity={GRANULARITY}",
        loader=OLD.loader([cuda, nvml]),
    )


def test_without_the_limiter_the_old_client_runs(old_box: Container) -> None:
    """The set-up itself: the client really runs on the old glibc."""
    proc = old_box.run("runtime", ["total"], preload=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["total", str(TOTAL_MIB * MIB)]


@pytest.mark.parametrize("mode", ["runtime", "dlsym"])
def test_the_cap_holds_on_the_old_glibc(old_box: Container, mode: str) -> None:
    out = old_box.lines(mode, ["total", "alloc 1000", "alloc 100", "free", "alloc 100"])
    assert out == [f"total {1024 * MIB}", "alloc 1000 ok", "alloc 100 err 2", "free ok",
                   "alloc 100 ok"]  # fmt: skip


def test_a_lock_left_by_a_dead_holder_on_the_new_glibc_is_taken_over(
    old_box: Container,
) -> None:
    """The region's robust mutex, held by a process of this machine's glibc that is then
    killed, is recovered by a process of the old one (pthread_mutex_consistent@GLIBC_2.12)."""
    die_holding_the_lock(old_box.region_dir)
    start = time.monotonic()
    assert old_box.lines("runtime", ["alloc 900"], timeout=10) == ["alloc 900 ok"]
    assert time.monotonic() - start < 5
    with Region.open(old_box.region_dir) as region:
        assert region.used(0) == 0  # the client has exited: its charge went with it
