"""Device IDs: `<owner>::<slot>`, at most 63 characters, one spelling per slot."""

from __future__ import annotations

import click
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deviceplugin.ids import MAX_ID_LENGTH, DeviceIdError, device_id, parse
from deviceplugin.resources import PluginConfig
from gpulet.api.resources import MAX_SLOTS
from gpulet.cli.agent import run as agent_run
from scorer.config import ConfigError, ScorerConfig
from tests.strategies import examples

HEX = "0123456789abcdef"


@st.composite
def gpu_uuids(draw: st.DrawFn) -> str:
    groups = [draw(st.text(HEX, min_size=n, max_size=n)) for n in (8, 4, 4, 4, 12)]
    return "GPU-" + "-".join(groups)


@st.composite
def nic_keys(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["mlx5_", "ibp", "rocep", "bnxt_re"])) + str(
        draw(st.integers(0, 255))
    )
    port = draw(st.integers(1, 4))
    return name if port == 1 else f"{name}:{port}"


slots = st.integers(0, MAX_SLOTS - 1)


@given(owner=st.one_of(gpu_uuids(), nic_keys()), slot=slots)
@settings(max_examples=examples(300))
def test_round_trip_and_length(owner: str, slot: int) -> None:
    made = device_id(owner, slot)
    assert len(made) <= MAX_ID_LENGTH
    assert parse(made) == (owner, slot)


@given(st.text(max_size=80))
@settings(max_examples=examples(300))
def test_any_text_is_refused_or_canonical(text: str) -> None:
    try:
        owner, slot = parse(text)
    except DeviceIdError:
        return
    assert device_id(owner, slot) == text


def test_the_shapes() -> None:
    uuid = "GPU-8b0b9d22-4d8e-8e2a-3f1c-5b6a9e0d7c41"
    assert device_id(uuid, 7) == f"{uuid}::07"
    assert device_id("mlx5_0:2", 123) == "mlx5_0:2::123"
    assert parse("mlx5_0:2::00") == ("mlx5_0:2", 0)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("GPU-1", "is not OWNER::SLOT"),
        ("GPU-1::7", "slot '7' is not a number written with 2 or 3 digits"),
        ("GPU-1::007", "slot '007'"),
        ("GPU-1::1000", "slot '1000'"),
        ("GPU-1::-1", "slot '-1'"),
        ("::05", "is neither a GPU UUID nor an RDMA port"),
        ("a/b::05", "is neither"),
        ("x" * 70, "longer than 63"),
    ],
)
def test_refusals_say_why(text: str, problem: str) -> None:
    with pytest.raises(DeviceIdError, match=problem.replace("(", r"\(")):
        parse(text)


def test_too_long_or_bad_owner() -> None:
    with pytest.raises(DeviceIdError, match="63 at most"):
        device_id("GPU-" + "a" * 60, 1)
    with pytest.raises(DeviceIdError, match=r"not in 0\.\.999"):
        device_id("mlx5_0", 1000)
    with pytest.raises(DeviceIdError, match="cannot own"):
        device_id("a::b", 1)


def test_one_slot_limit_for_the_ids_the_agent_and_the_extender() -> None:
    """MAX_SLOTS slots per device: the last one still has a three-digit ID within kubelet's
    63 characters, and the agent's flags and both configurations take exactly 1..MAX_SLOTS."""
    uuid = "GPU-8b0b9d22-4d8e-8e2a-3f1c-5b6a9e0d7c41"
    assert parse(device_id(uuid, MAX_SLOTS - 1)) == (uuid, MAX_SLOTS - 1)
    with pytest.raises(DeviceIdError):
        device_id(uuid, MAX_SLOTS)
    PluginConfig(gpu_slots=MAX_SLOTS, rdma_slots=MAX_SLOTS)
    with pytest.raises(ValueError, match=f"1..{MAX_SLOTS}"):
        PluginConfig(gpu_slots=MAX_SLOTS + 1)
    ScorerConfig(gpu_slots=MAX_SLOTS, rdma_slots=MAX_SLOTS)
    with pytest.raises(ConfigError, match=f"1..{MAX_SLOTS}"):
        ScorerConfig(rdma_slots=MAX_SLOTS + 1)
    for option in ("gpu_slots", "rdma_slots"):
        (param,) = (p for p in agent_run.params if p.name == option)
        assert isinstance(param.type, click.IntRange)
        assert (param.type.min, param.type.max) == (1, MAX_SLOTS)
