"""The extender's settings, from a YAML file (`gpulet scorer serve --config`), every key
optional; flags on the command line override the file. Schema in docs/scorer.md."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import yaml

from scorer.cluster import ASSUME_TTL_S, STALE_HEARTBEAT_S
from scorer.extender import DEFAULT_SCHEDULER_NAMES
from scorer.server import DEFAULT_MAX_BODY, DEFAULT_MAX_PARSE

#: The file's keys and the fields they set.
_KEYS = {
    "host": "host",
    "port": "port",
    "gpuSlots": "gpu_slots",
    "rdmaSlots": "rdma_slots",
    "maxBodyBytes": "max_body",
    "maxParseBytes": "max_parse",
    "schedulerNames": "scheduler_names",
    "assumeTTLSeconds": "assume_ttl_s",
    "watchTimeoutSeconds": "watch_timeout_s",
    "staleHeartbeatSeconds": "stale_heartbeat_s",
}


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class ScorerConfig:
    host: str = "0.0.0.0"
    port: int = 8888
    #: Slots per GPU and per RDMA port: the agents' --gpu-slots and --rdma-slots.
    gpu_slots: int = 100
    rdma_slots: int = 100
    max_body: int = DEFAULT_MAX_BODY
    max_parse: int = DEFAULT_MAX_PARSE
    assume_ttl_s: float = ASSUME_TTL_S
    watch_timeout_s: int = 300
    #: A node whose agent's heartbeat is unchanged this long takes no pods (0: not judged).
    stale_heartbeat_s: float = STALE_HEARTBEAT_S
    #: The schedulers whose pods this extender binds (their profiles call it).
    scheduler_names: tuple[str, ...] = DEFAULT_SCHEDULER_NAMES

    def __post_init__(self) -> None:
        for name in ("port", "gpu_slots", "rdma_slots", "max_body", "max_parse", "watch_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, got {value!r}")
        if not 1 <= self.gpu_slots <= 1000 or not 1 <= self.rdma_slots <= 1000:
            raise ConfigError("gpuSlots and rdmaSlots must be 1..1000")
        if not isinstance(self.assume_ttl_s, int | float) or self.assume_ttl_s <= 0:
            raise ConfigError(f"assumeTTLSeconds must be > 0, got {self.assume_ttl_s!r}")
        names = self.scheduler_names
        if isinstance(names, list):
            object.__setattr__(self, "scheduler_names", names := tuple(names))
        if (
            not isinstance(names, tuple)
            or not names
            or not all(isinstance(n, str) and n for n in names)
        ):
            raise ConfigError(f"schedulerNames must be a list of scheduler names, got {names!r}")
        stale = self.stale_heartbeat_s
        if isinstance(stale, bool) or not isinstance(stale, int | float) or stale < 0:
            raise ConfigError(f"staleHeartbeatSeconds must be >= 0 (0: off), got {stale!r}")

    def overridden(self, **flags: Any) -> ScorerConfig:
        """This config with the flags that were given (not None)."""
        known = {f.name for f in fields(self)}
        return replace(self, **{k: v for k, v in flags.items() if v is not None and k in known})


def load_config(path: Path) -> ScorerConfig:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot be read: {e}") from None
    if doc is None:
        return ScorerConfig()
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of settings")
    unknown = sorted(set(doc) - set(_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(_KEYS)})")
    try:
        return ScorerConfig(**{_KEYS[k]: v for k, v in doc.items()})
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
