"""Configuration: defaults, then a TOML file, then VIRT_REVERT_* environment variables.

The file is `$VIRT_REVERT_CONFIG`, else `/etc/virt-revert/config.toml` when it
exists.  Keys in the file are the field names below; each has an environment
variable `VIRT_REVERT_<FIELD>` (lists are `:`-separated, like PATH).
"""
from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

DEFAULT_FILE = Path("/etc/virt-revert/config.toml")
LOCAL_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class Config:
    broker_url: str = LOCAL_REDIS
    result_backend: str = ""  # empty: same Redis as the broker
    redis_url: str = ""  # records, events, heartbeats; empty: the result backend
    storage_roots: tuple[str, ...] = ("/var/lib/libvirt/images",)
    state_dir: str = "/var/lib/virt-revert"
    record_ttl: int = 7 * 24 * 3600  # seconds a revert's record is kept in Redis
    heartbeat_interval: float = 10.0
    heartbeat_ttl: int = 30  # a host is offline when its heartbeat is older than this
    host_lost_after: float = 90.0  # a batch gives up on a host's items after this long without heartbeat
    lock_ttl: int = 60  # seconds a domain's lock outlives a lost worker; renewed every lock_ttl/3
    stale_after: float = 300.0  # on-demand recovery leaves a revert alone if its journal moved this recently
    space_reserve: int = 64 * 1024 * 1024  # bytes a storage root keeps free after a revert
    log_format: str = "json"  # "json" or "text" for worker logs

    def __post_init__(self) -> None:
        if not self.result_backend:
            object.__setattr__(self, "result_backend", self.broker_url)
        if not self.redis_url:
            backend = self.result_backend
            object.__setattr__(self, "redis_url", backend if backend.startswith("redis") else self.broker_url)


def to_env(cfg: Config) -> dict[str, str]:
    """The environment that makes `load()` in another process return `cfg` (lists `:`-joined)."""
    env = {}
    for field in dataclasses.fields(Config):
        value = getattr(cfg, field.name)
        env[f"VIRT_REVERT_{field.name.upper()}"] = ":".join(value) if isinstance(value, tuple) else str(value)
    return env


def _coerce(field: dataclasses.Field, value: Any) -> Any:
    if field.type == "tuple[str, ...]":
        if isinstance(value, str):
            value = [part for part in value.split(":") if part]
        return tuple(str(v) for v in value)
    if field.type == "int":
        return int(value)
    if field.type == "float":
        return float(value)
    return str(value)


def load(env: Mapping[str, str] | None = None) -> Config:
    env = os.environ if env is None else env
    path = Path(env["VIRT_REVERT_CONFIG"]) if env.get("VIRT_REVERT_CONFIG") else DEFAULT_FILE
    values: dict[str, Any] = {}
    if path.exists():
        with path.open("rb") as fh:
            values.update(tomllib.load(fh))
    fields = {f.name: f for f in dataclasses.fields(Config)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ValueError(f"{path}: unknown setting(s) {', '.join(sorted(unknown))}; known: {', '.join(fields)}")
    for name in fields:
        key = f"VIRT_REVERT_{name.upper()}"
        if env.get(key):
            values[name] = env[key]
    return Config(**{name: _coerce(fields[name], value) for name, value in values.items()})
