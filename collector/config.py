"""Settings: config/default.toml, then config/<env>.toml, then COLLECTOR_* variables, then flags.

Everything tunable lives in the TOML files, not in code. The values are read into frozen
dataclasses so the rest of the engine sees typed, validated settings and nothing else.
"""

from __future__ import annotations

import copy
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from collector.egress import parse_allow
from collector.selectors import SelectorError, Selectors

ENV_PREFIX = "COLLECTOR_"
MODES = ("initial", "normal")


class ConfigError(Exception):
    """A setting is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class Schedule:
    initial_pace: float = 1.0
    normal_interval: float = 900.0
    backoff_base: float = 30.0
    backoff_cap: float = 3600.0
    max_errors: int = 5
    disable_after: float = 86400.0
    rate_limit_floor: int = 1
    jitter: float = 0.1
    rate_limit_slack: float = 2.0
    rate_limit_wait: float = 60.0
    rate_limit_cap: float = 3600.0
    park_after: int = 6
    park_for: float = 21600.0
    unauthorized_recheck: float = 600.0
    incident_share: float = 0.2
    incident_window: float = 900.0
    incident_min_runs: int = 10
    incident_pause: float = 300.0
    incident_min_refused: int = 10
    incident_max: float = 21600.0
    normal_interval_min: float = 300.0
    normal_interval_max: float = 3600.0


@dataclass(frozen=True)
class ServiceSettings:
    name: str
    base_url: str | None = None
    concurrency: int = 16
    schedule: Schedule = field(default_factory=Schedule)
    options: dict[str, Any] = field(default_factory=dict)
    max_body_bytes: int | None = None  # None: [http] max_body_bytes


@dataclass(frozen=True)
class SecretsSettings:
    """[secrets]: credentials encrypted at rest (collector/secrets.py). An empty master_key_file: encryption off."""
    master_key_file: str = ""  # environment variables expanded when read: "${CREDENTIALS_DIRECTORY}/master-key"
    key_collection: str = "collector_keys"
    require_encrypted: bool = False


@dataclass(frozen=True)
class Settings:
    environment: str
    database_uri: str
    database_name: str
    database_timeout: float
    write_batch: int
    store_raw: bool
    concurrency: int
    poll_interval: float
    lease_ttl: float
    shutdown_grace: float
    validate_interval: float
    schedule: Schedule
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    max_body_bytes: int
    max_connections: int
    user_agent: str
    log_format: str
    log_level: str
    services: dict[str, ServiceSettings]
    sources: tuple[str, ...] = ()
    db_retry_cap: float = 60.0
    heartbeat_interval: float = 5.0
    fleet_ttl: float = 20.0
    fleet_retention: float = 86400.0
    backlog_interval: float = 15.0
    metrics_enabled: bool = False
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9464
    # w of the leases', states' and items' writes: "majority" (a rollback on a replica set cannot undo them) or
    # a number of members
    write_concern: str | int = "majority"
    stall_grace: float = 60.0
    claim_interval: float = 0.25
    # which networks this process claims ([daemon] services, exclude_services, partition): collector/selectors.py
    selectors: Selectors = field(default_factory=Selectors)
    # the egress policy (collector/egress.py): private networks allowed, and the CIDRs or host names always allowed
    allow_private: bool = False
    allow: tuple[str, ...] = ()
    secrets: SecretsSettings = field(default_factory=SecretsSettings)

    def service(self, name: str) -> ServiceSettings:
        """Settings of one service; a service without a section gets the global schedule."""
        return self.services.get(name) or ServiceSettings(name=name, schedule=self.schedule)

    def body_cap(self, service: str) -> int:
        """The largest response body a run of `service` reads: its own cap, else [http] max_body_bytes."""
        cap = self.service(service).max_body_bytes
        return self.max_body_bytes if cap is None else cap


def config_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Where TOML files are looked up, first found wins per file name."""
    environ = os.environ if environ is None else environ
    dirs = []
    if environ.get("COLLECTOR_CONFIG_DIR"):
        dirs.append(Path(environ["COLLECTOR_CONFIG_DIR"]))
    dirs.append(Path(__file__).resolve().parent.parent / "config")
    dirs.append(Path("/etc/collector"))
    return dirs


def _find(name: str, environ: dict[str, str]) -> Path | None:
    for d in config_dirs(environ):
        if (d / name).is_file():
            return d / name
    return None


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_value(raw: str) -> Any:
    """Environment values are TOML literals when they parse as one, else plain strings."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    """COLLECTOR_DAEMON__CONCURRENCY=8 -> {"daemon": {"concurrency": 8}}."""
    tree: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__")]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = parse_value(raw)
    if environ.get("MONGODB_URI"):
        tree.setdefault("database", {})["uri"] = environ["MONGODB_URI"]
    return tree


def _typed(section: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ConfigError(f"[{section}] {key} must be a {kind.__name__}, got {value!r}")
    if kind in (int, float) and isinstance(value, int | float) and value < 0:
        raise ConfigError(f"[{section}] {key} must not be negative, got {value!r}")
    return value


def _schedule(section: str, raw: dict[str, Any], base: Schedule) -> Schedule:
    values = {}
    for f in fields(Schedule):
        if f.name in raw:
            values[f.name] = _typed(section, f.name, raw[f.name], type(getattr(base, f.name)))
        else:
            values[f.name] = getattr(base, f.name)
    if not 0 < values["incident_share"] <= 1:
        raise ConfigError(f"[{section}] incident_share must be a fraction above 0 and at most 1, "
                          f"got {values['incident_share']!r}")
    low, high = values["normal_interval_min"], values["normal_interval_max"]
    if low and high and low > high:  # 0: normal_interval (collector/states.py, interval_bounds)
        raise ConfigError(f"[{section}] normal_interval_min must be at most normal_interval_max: {low!r} > {high!r}")
    return Schedule(**values)


def _write_concern(value: Any) -> str | int:
    """"majority", or a number of members >= 1 (w: 0 would not even say whether a lease was taken)."""
    text = str(value).strip()
    if text == "majority":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ConfigError(f'[database] write_concern must be "majority" or a number >= 1, got {value!r}')


def _selectors(daemon: dict[str, Any]) -> Selectors:
    """[daemon] services / exclude_services (a list, or one string of comma-separated names) and partition
    ("K/N"). The names are checked against the installed connectors when the daemon starts."""
    for key in ("services", "exclude_services"):
        value = daemon.get(key)
        if value is not None and not (isinstance(value, str) or
                                      (isinstance(value, list) and all(isinstance(v, str) for v in value))):
            raise ConfigError(f"[daemon] {key} must be a list of service names or a comma-separated string, "
                              f"got {value!r}")
    partition = daemon.get("partition")
    if partition is not None and not isinstance(partition, str):
        raise ConfigError(f'[daemon] partition must be "K/N" (a string, e.g. "0/3"), got {partition!r}')
    try:
        return Selectors.build(daemon.get("services"), daemon.get("exclude_services"), partition)
    except SelectorError as exc:
        raise ConfigError(f"[daemon] {exc}") from exc


def _allow(value: Any) -> tuple[str, ...]:
    """[http] allow: a list of CIDRs, addresses or host names (or one comma-separated string), checked here."""
    values = value.split(",") if isinstance(value, str) else value
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ConfigError(f'[http] allow must be a list of CIDRs or host names, e.g. ["10.0.0.0/8"], got {value!r}')
    values = [v.strip() for v in values if v.strip()]
    try:
        parse_allow(values)
    except ValueError as exc:
        raise ConfigError(f"[http] allow: {exc}") from None
    return tuple(values)


def _secrets(raw: Any) -> SecretsSettings:
    """[secrets]: typed, a collection name MongoDB accepts, require_encrypted only with a master key."""
    if not isinstance(raw, dict):
        raise ConfigError("[secrets] must be a table")
    values = {f.name: _typed("secrets", f.name, raw.get(f.name, f.default), type(f.default))
              for f in fields(SecretsSettings)}
    name = values["key_collection"]
    if not name or "$" in name or "\0" in name or name.startswith(("system.", ".")) or name.endswith("."):
        raise ConfigError(f"[secrets] key_collection must be a valid collection name, got {name!r}")
    if values["require_encrypted"] and not values["master_key_file"].strip():
        raise ConfigError("[secrets] require_encrypted needs master_key_file: no network could run without it")
    return SecretsSettings(**values)


def build(tree: dict[str, Any], sources: tuple[str, ...] = ()) -> Settings:
    """Validate a merged settings tree into Settings."""

    def get(section: str, key: str, kind: type, default: Any) -> Any:
        value = tree.get(section, {}).get(key, default)
        return _typed(section, key, value, kind)

    schedule = _schedule("schedule", tree.get("schedule", {}), Schedule())
    services = {}
    schedule_keys = {f.name for f in fields(Schedule)}
    for name, raw in (tree.get("services") or {}).items():
        if not isinstance(raw, dict):
            raise ConfigError(f"[services.{name}] must be a table")
        base_url = raw.get("base_url")
        if base_url is not None and not isinstance(base_url, str):
            raise ConfigError(f"[services.{name}] base_url must be a string")
        cap = raw.get("max_body_bytes")
        services[name] = ServiceSettings(
            name=name,
            base_url=base_url.rstrip("/") if base_url else None,
            concurrency=_typed(f"services.{name}", "concurrency", raw.get("concurrency", 16), int),
            schedule=_schedule(f"services.{name}", raw, schedule),
            options={k: v for k, v in raw.items()
                     if k not in schedule_keys | {"base_url", "concurrency", "max_body_bytes"}},
            max_body_bytes=None if cap is None else _typed(f"services.{name}", "max_body_bytes", cap, int),
        )
    write_concern = _write_concern(tree.get("database", {}).get("write_concern", "majority"))
    selectors = _selectors(tree.get("daemon", {}))
    settings = Settings(
        write_concern=write_concern,
        selectors=selectors,
        allow_private=get("http", "allow_private", bool, False),
        allow=_allow(tree.get("http", {}).get("allow", [])),
        secrets=_secrets(tree.get("secrets", {})),
        environment=str(tree.get("environment", "development")),
        database_uri=get("database", "uri", str, "mongodb://127.0.0.1:27017/"),
        database_name=get("database", "name", str, "collector"),
        database_timeout=get("database", "timeout", float, 10.0),
        write_batch=get("database", "write_batch", int, 1000),
        store_raw=get("database", "store_raw", bool, True),
        concurrency=get("daemon", "concurrency", int, 64),
        poll_interval=get("daemon", "poll_interval", float, 5.0),
        lease_ttl=get("daemon", "lease_ttl", float, 300.0),
        shutdown_grace=get("daemon", "shutdown_grace", float, 20.0),
        validate_interval=get("daemon", "validate_interval", float, 600.0),
        stall_grace=get("daemon", "stall_grace", float, 60.0),
        claim_interval=get("daemon", "claim_interval", float, 0.25),
        schedule=schedule,
        connect_timeout=get("http", "connect_timeout", float, 10.0),
        read_timeout=get("http", "read_timeout", float, 30.0),
        total_timeout=get("http", "total_timeout", float, 60.0),
        max_body_bytes=get("http", "max_body_bytes", int, 10 * 1024 * 1024),
        max_connections=get("http", "max_connections", int, 256),
        user_agent=get("http", "user_agent", str, "collector/0.1"),
        log_format=get("log", "format", str, "auto"),
        log_level=get("log", "level", str, "info"),
        services=services,
        sources=sources,
        db_retry_cap=get("database", "retry_cap", float, 60.0),
        heartbeat_interval=get("fleet", "heartbeat_interval", float, 5.0),
        fleet_ttl=get("fleet", "ttl", float, 20.0),
        fleet_retention=get("fleet", "retention", float, 86400.0),
        backlog_interval=get("fleet", "backlog_interval", float, 15.0),
        metrics_enabled=get("metrics", "enabled", bool, False),
        metrics_host=get("metrics", "host", str, "127.0.0.1"),
        metrics_port=get("metrics", "port", int, 9464),
    )
    if settings.concurrency < 1:
        raise ConfigError("[daemon] concurrency must be at least 1")
    if settings.total_timeout * 2 > settings.lease_ttl:
        raise ConfigError(
            f"[daemon] lease_ttl ({settings.lease_ttl}s) must be at least twice [http] total_timeout "
            f"({settings.total_timeout}s), so a lease never expires under a run in flight"
        )
    if settings.heartbeat_interval <= 0:
        raise ConfigError("[fleet] heartbeat_interval must be positive")
    if settings.fleet_ttl < 2 * settings.heartbeat_interval:
        raise ConfigError(
            f"[fleet] ttl ({settings.fleet_ttl}s) must be at least twice heartbeat_interval "
            f"({settings.heartbeat_interval}s), or one late heartbeat would declare a live process dead"
        )
    if settings.lease_ttl < 3 * settings.heartbeat_interval:
        raise ConfigError(
            f"[daemon] lease_ttl ({settings.lease_ttl}s) must be at least three [fleet] heartbeat_interval "
            f"({settings.heartbeat_interval}s): the heartbeat renews the leases of runs in flight"
        )
    if not 0 < settings.metrics_port < 65536:
        raise ConfigError(f"[metrics] port must be between 1 and 65535, got {settings.metrics_port}")
    if settings.log_format not in ("auto", "console", "json"):
        raise ConfigError("[log] format must be auto, console or json")
    return settings


def load(
    environment: str | None = None,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Load settings the documented way; `overrides` are CLI flags in tree form."""
    environ = dict(os.environ if environ is None else environ)
    env = environment or environ.get("COLLECTOR_ENV") or "development"
    tree: dict[str, Any] = {}
    sources = []
    for name in ("default.toml", f"{env}.toml"):
        path = _find(name, environ)
        if path is None:
            continue
        try:
            tree = _merge(tree, tomllib.loads(path.read_text()))
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        sources.append(str(path))
    tree = _merge(tree, env_overrides(environ))
    tree = _merge(tree, overrides or {})
    tree["environment"] = env
    return build(tree, tuple(sources))
