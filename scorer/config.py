"""The extender's settings, from a YAML file (`gpulet scorer serve --config`), every key
optional; flags on the command line override the file. Schema in docs/scorer.md."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from gpulet.api.nodetopology import DEFAULT_NAMESPACE
from gpulet.api.resources import MAX_SLOTS
from gpulet.httpd import ServerTLS, TLSError, TLSFiles
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
    "leaseNamespace": "lease_namespace",
    "healthHost": "health_host",
    "healthPort": "health_port",
    "tlsCertFile": "tls_cert_file",
    "tlsKeyFile": "tls_key_file",
    "clientCAFile": "client_ca_file",
}
#: The TLS files' keys, by field; all three or none.
_TLS_KEYS = {
    "tls_cert_file": "tlsCertFile",
    "tls_key_file": "tlsKeyFile",
    "client_ca_file": "clientCAFile",
}

#: A namespace's name (a DNS-1123 label).
_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def default_namespace() -> str:
    """The install namespace: the pod's own (`POD_NAMESPACE`, from the downward API), else
    kube-system."""
    return os.environ.get("POD_NAMESPACE") or DEFAULT_NAMESPACE


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
    #: Where the agents' heartbeat Leases are: the install namespace.
    lease_namespace: str = field(default_factory=default_namespace)
    #: The schedulers whose pods this extender binds (their profiles call it).
    scheduler_names: tuple[str, ...] = DEFAULT_SCHEDULER_NAMES
    #: A second listener, plain HTTP, for `GET /healthz` and `GET /metrics` only (None: none).
    health_host: str = "0.0.0.0"
    health_port: int | None = None
    #: HTTPS on the main listener, with a client certificate signed by `client_ca_file`
    #: required: all three, or none (plain HTTP).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    client_ca_file: Path | None = None

    def __post_init__(self) -> None:
        for name in ("port", "gpu_slots", "rdma_slots", "max_body", "max_parse", "watch_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, got {value!r}")
        if not 1 <= self.gpu_slots <= MAX_SLOTS or not 1 <= self.rdma_slots <= MAX_SLOTS:
            raise ConfigError(f"gpuSlots and rdmaSlots must be 1..{MAX_SLOTS}")
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
        namespace = self.lease_namespace
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ConfigError(f"leaseNamespace must be a namespace's name, got {namespace!r}")
        self._check_listeners()
        self._check_tls()

    def _check_listeners(self) -> None:
        for key, host in (("host", self.host), ("healthHost", self.health_host)):
            if not isinstance(host, str) or not host:
                raise ConfigError(f"{key} must be an address, got {host!r}")
        if self.port > 65535:
            raise ConfigError(f"port must be 0..65535, got {self.port!r}")
        health = self.health_port
        if health is None:
            return
        if isinstance(health, bool) or not isinstance(health, int) or not 0 <= health <= 65535:
            raise ConfigError(f"healthPort must be a port, 0..65535, got {health!r}")
        if health != 0 and health == self.port:
            raise ConfigError(f"healthPort must differ from port (both {health})")

    def _check_tls(self) -> None:
        given = {}
        for name, key in _TLS_KEYS.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, str) and value:
                object.__setattr__(self, name, value := Path(value))
            if not isinstance(value, Path) or not str(value):
                raise ConfigError(f"{key} must be a file path, got {value!r}")
            given[name] = key
        missing = [key for name, key in _TLS_KEYS.items() if name not in given]
        if given and missing:
            raise ConfigError(
                f"{missing[0]} is missing: HTTPS needs tlsCertFile, tlsKeyFile and clientCAFile "
                f"together (given: {', '.join(given.values())})"
            )

    def tls(self) -> ServerTLS | None:
        """The main listener's TLS, its files loaded now (None: plain HTTP). ConfigError,
        naming the setting, for a file that cannot be read or used."""
        if self.tls_cert_file is None or self.tls_key_file is None or self.client_ca_file is None:
            return None
        files = TLSFiles(self.tls_cert_file, self.tls_key_file, self.client_ca_file)
        try:
            return ServerTLS(files)
        except TLSError as e:
            key = {"cert": "tlsCertFile", "key": "tlsKeyFile", "client_ca": "clientCAFile"}
            raise ConfigError(f"{key[e.which]}: {e}") from None

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
