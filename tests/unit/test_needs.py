"""A test that needs a C compiler, its ASan runtime or readelf skips where one is missing,
but fails under GPULET_REQUIRE_ALL=1, which `./dev test` (and so CI) sets."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests import needs


@pytest.fixture
def no_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")


@pytest.mark.usefixtures("no_compiler")
@pytest.mark.parametrize("need", [needs.c_compiler, needs.asan_runtime])
def test_a_missing_compiler_skips_by_default(
    monkeypatch: pytest.MonkeyPatch, need: Callable[[], object]
) -> None:
    monkeypatch.delenv(needs.REQUIRE_ALL, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no C compiler"):
        need()


@pytest.mark.usefixtures("no_compiler")
@pytest.mark.parametrize("need", [needs.c_compiler, needs.asan_runtime])
def test_a_missing_compiler_fails_when_everything_is_required(
    monkeypatch: pytest.MonkeyPatch, need: Callable[[], object]
) -> None:
    monkeypatch.setenv(needs.REQUIRE_ALL, "1")
    with pytest.raises(pytest.fail.Exception, match="GPULET_REQUIRE_ALL=1"):
        need()


def test_the_test_command_requires_everything() -> None:
    """`./dev test` runs the suite through the Makefile's unit target, which sets it."""
    from tests.source_tree import ROOT  # noqa: PLC0415

    unit = ROOT.joinpath("Makefile").read_text().split("\nunit:", 1)[1].split("\n\n", 1)[0]
    assert f"{needs.REQUIRE_ALL}=1" in unit, unit
