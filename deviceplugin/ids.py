"""Device IDs: one per slot of a physical device, `<owner>::<slot>`.

The owner is a GPU's UUID (`GPU-8b0b9d22-...`, 40 characters) or an RDMA port's key
(`mlx5_0`, `mlx5_0:2`); the slot is decimal, at least two digits (`00`..`999`). So
`GPU-8b0b9d22-4d8e-8e2a-3f1c-5b6a9e0d7c41::07` is slot 7 of that GPU, 44 characters, under
kubelet's limit of 63. `::` never occurs inside an owner, so the last one splits an ID, and
each slot has exactly one spelling (`7` and `007` are refused), so IDs compare as strings.
"""

from __future__ import annotations

import re

from gpulet.api.resources import MAX_SLOTS

MAX_ID_LENGTH = 63
SEPARATOR = "::"
#: A UUID as NVML writes it, or an RDMA device name with an optional `:port`.
_OWNER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?::[0-9]+)?")
_SLOT = re.compile(r"[0-9]{2,3}")


class DeviceIdError(ValueError):
    """A device ID that is not one this plugin made."""


def device_id(owner: str, slot: int) -> str:
    """The ID of `slot` of `owner`; DeviceIdError when it cannot be one."""
    if not _OWNER.fullmatch(owner):
        raise DeviceIdError(
            f"{owner!r} cannot own device IDs: expected a GPU UUID or an RDMA port like mlx5_0:2"
        )
    if not 0 <= slot < MAX_SLOTS:
        raise DeviceIdError(f"slot {slot} of {owner} is not in 0..{MAX_SLOTS - 1}")
    made = f"{owner}{SEPARATOR}{slot:02d}"
    if len(made) > MAX_ID_LENGTH:
        raise DeviceIdError(
            f"device ID {made!r} is {len(made)} characters; kubelet takes {MAX_ID_LENGTH} at most"
        )
    return made


def parse(text: str) -> tuple[str, int]:
    """(owner, slot) of a device ID; DeviceIdError naming what is wrong with it."""
    if len(text) > MAX_ID_LENGTH:
        raise DeviceIdError(f"device ID {text[:70]!r}... is longer than {MAX_ID_LENGTH}")
    owner, sep, slot = text.rpartition(SEPARATOR)
    if not sep:
        raise DeviceIdError(f"device ID {text!r} is not OWNER{SEPARATOR}SLOT")
    if not _SLOT.fullmatch(slot) or f"{int(slot):02d}" != slot:
        raise DeviceIdError(
            f"device ID {text!r}: slot {slot!r} is not a number written with 2 or 3 digits"
        )
    if not _OWNER.fullmatch(owner):
        raise DeviceIdError(f"device ID {text!r}: {owner!r} is neither a GPU UUID nor an RDMA port")
    return owner, int(slot)
