"""The settings' schema: one frozen dataclass per section, whose defaults are written here and nowhere else, the
checks of every value, and `build`, which makes Settings of the values every layer set.

collector/defaults.toml (package data) documents every setting with these same values, and holds the
per-service sections; tests/unit/test_config_defaults.py fails when the two disagree. Where values come from
and which wins (the package's files, /etc/collector, --config DIR, COLLECTOR_* variables, flags) is
collector/config.py; `collector config show --sources` prints the effective settings and their origins.
Durations are in seconds.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any, get_type_hints

from collector.egress import parse_allow
from collector.selectors import SelectorError, Selectors
from collector.webhook_rules import webhook_problem

ENV_PREFIX = "COLLECTOR_"
MODES = ("initial", "normal")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

Path = tuple[str, ...]  # ("daemon", "concurrency"), ("services", "github", "base_url")
Leaf = tuple[Any, str]  # a value and where it was set: "/etc/collector/site.toml:3", "$MONGODB_URI", "--set ..."


class ConfigError(Exception):
    """A setting is unknown, missing, of the wrong type or out of range; the message says where it was set."""


class Text(str):
    """A value given as text (an environment variable, --set): a TOML literal when it parses as one and the
    setting is no string, else the text itself."""


@dataclass(frozen=True)
class DatabaseSettings:
    uri: str = "mongodb://127.0.0.1:27017/"
    name: str = "collector"
    timeout: float = 10.0
    write_batch: int = 1000
    store_raw: bool = True
    retry_cap: float = 60.0
    write_concern: str | int = "majority"


@dataclass(frozen=True)
class DaemonSettings:
    concurrency: int = 64
    poll_interval: float = 5.0
    lease_ttl: float = 300.0
    shutdown_grace: float = 20.0
    validate_interval: float = 600.0
    stall_grace: float = 60.0
    claim_interval: float = 0.25
    services: tuple[str, ...] = ()  # the selectors (collector/selectors.py): Settings.selectors
    exclude_services: tuple[str, ...] = ()
    partition: str = ""


@dataclass(frozen=True)
class FleetSettings:
    heartbeat_interval: float = 5.0
    ttl: float = 20.0
    retention: float = 86400.0
    backlog_interval: float = 15.0


@dataclass(frozen=True)
class MetricsSettings:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9464


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
    reconcile_interval: float = 86400.0  # removals (collector/reconcile.py); 0: never
    reconcile_pages: int = 10
    reconcile_quota: float = 0.5


@dataclass(frozen=True)
class HttpSettings:
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 60.0
    max_body_bytes: int = 10485760
    max_connections: int = 256
    user_agent: str = "collector/0.1"
    allow_private: bool = False  # the egress policy (collector/egress.py)
    allow: tuple[str, ...] = ()
    transport: str = "aiohttp"  # what carries the requests: collector/http.py TRANSPORTS


@dataclass(frozen=True)
class SecretsSettings:
    """[secrets]: credentials encrypted at rest (collector/secrets.py). An empty master_key_file: encryption off."""
    master_key_file: str = ""  # environment variables expanded when read: "${CREDENTIALS_DIRECTORY}/master-key"
    key_collection: str = "collector_keys"
    require_encrypted: bool = False


@dataclass(frozen=True)
class ChangesSettings:
    """[changes]: the change feed (collector/changes.py)."""
    enabled: bool = True
    publish_interval: float = 1.0
    batch: int = 1000
    lock_ttl: float = 60.0


@dataclass(frozen=True)
class WebhookSettings:
    """[webhooks]: the change feed POSTed to one HTTPS endpoint (collector/webhooks.py). An empty url: off."""
    url: str = ""
    secret: str = ""
    batch: int = 100
    timeout: float = 10.0
    concurrency: int = 4
    backoff_base: float = 5.0
    backoff_cap: float = 3600.0
    dead_after: float = 86400.0


@dataclass(frozen=True)
class LogSettings:
    format: str = "auto"
    level: str = "info"


# the sections of the files, in the order `collector config show` prints them
SECTIONS: dict[str, type] = {
    "database": DatabaseSettings, "daemon": DaemonSettings, "fleet": FleetSettings, "metrics": MetricsSettings,
    "schedule": Schedule, "http": HttpSettings, "secrets": SecretsSettings, "log": LogSettings,
    "changes": ChangesSettings, "webhooks": WebhookSettings,
}


@dataclass(frozen=True)
class ServiceSettings:
    """[services.NAME]: the engine's keys below, any [schedule] key, and the connector's options (the rest)."""
    name: str
    base_url: str | None = None
    concurrency: int = 16
    schedule: Schedule = field(default_factory=Schedule)
    options: dict[str, Any] = field(default_factory=dict)
    max_body_bytes: int | None = None  # None: [http] max_body_bytes


SERVICE_KEYS: dict[str, type] = {"base_url": str, "concurrency": int, "max_body_bytes": int}
# options the engine itself reads for any service (OAuth2 refresh: collector/sdk, collector/model.py)
ENGINE_OPTIONS = ("token_url", "client_id", "client_secret")


@dataclass(frozen=True)
class Settings:
    environment: str = "development"
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    daemon: DaemonSettings = field(default_factory=DaemonSettings)
    fleet: FleetSettings = field(default_factory=FleetSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    schedule: Schedule = field(default_factory=Schedule)
    http: HttpSettings = field(default_factory=HttpSettings)
    secrets: SecretsSettings = field(default_factory=SecretsSettings)
    log: LogSettings = field(default_factory=LogSettings)
    changes: ChangesSettings = field(default_factory=ChangesSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    services: dict[str, ServiceSettings] = field(default_factory=dict)
    # which networks this process claims, from [daemon] services, exclude_services and partition
    selectors: Selectors = field(default_factory=Selectors)
    sources: tuple[str, ...] = ()  # the files read, in order
    origins: dict[Path, str] = field(default_factory=dict)  # where each value set was set (config show --sources)

    def service(self, name: str) -> ServiceSettings:
        """Settings of one service; a service without a section gets the global schedule."""
        return self.services.get(name) or ServiceSettings(name=name, schedule=self.schedule)

    def body_cap(self, service: str) -> int:
        """The largest response body a run of `service` reads: its own cap, else [http] max_body_bytes."""
        cap = self.service(service).max_body_bytes
        return self.http.max_body_bytes if cap is None else cap


@cache
def kinds(cls: type) -> dict[str, Any]:
    """The type of each field of a section."""
    return get_type_hints(cls)


def parse_value(raw: str) -> Any:
    """Text from the environment or --set: a TOML literal when it parses as one, else the text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


_WHAT = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(kind: Any, value: Any, items: str = "strings") -> Any:
    """`value` as a `kind`, or ValueError saying what was expected (`items`: what a list holds)."""
    if isinstance(value, Text):
        value = str(value) if kind is str else parse_value(value)
    if kind == tuple[str, ...]:
        values = value.split(",") if isinstance(value, str) else value
        if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
            raise ValueError(f"must be a list of {items} or one comma-separated string, got {value!r}")
        return tuple(v.strip() for v in values if v.strip())
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind in _WHAT and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
        raise ValueError(f"must be {_WHAT[kind]}, got {value!r}")
    if kind in (int, float) and value < 0:
        raise ValueError(f"must not be negative, got {value!r}")
    return value


def _write_concern(value: Any) -> str | int:
    """"majority", or a number of members >= 1 (w: 0 would not even say whether a lease was taken)."""
    text = str(value).strip()
    if text == "majority":
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise ValueError(f'must be "majority" or a number >= 1, got {value!r}')


def _allow(values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        parse_allow(values)
    except ValueError as exc:
        raise ValueError(f'must be CIDRs or host names, e.g. ["10.0.0.0/8"]: {exc}') from None
    return values


def _collection(name: str) -> str:
    if not name or "$" in name or "\0" in name or name.startswith(("system.", ".")) or name.endswith("."):
        raise ValueError(f"must be a valid collection name, got {name!r}")
    return name


def _within(low: int, high: int) -> Callable[[int], int]:
    def check(value: int) -> int:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value
    return check


def _one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")
        return value
    return check


def _fraction(value: float) -> float:
    if not 0 < value <= 1:
        raise ValueError(f"must be a fraction above 0 and at most 1, got {value!r}")
    return value


# checks beyond the type, by (section, key): the value as kept, or ValueError
CHECKS: dict[tuple[str, str], Callable[[Any], Any]] = {
    ("database", "write_concern"): _write_concern,
    ("daemon", "concurrency"): _within(1, 1_000_000),
    ("http", "allow"): _allow,
    ("http", "transport"): _one_of("aiohttp", "httpx"),  # collector/http.py TRANSPORTS
    ("secrets", "key_collection"): _collection,
    ("metrics", "port"): _within(1, 65535),
    ("log", "format"): _one_of("auto", "console", "json"),
    ("log", "level"): _one_of(*LOG_LEVELS),
    ("schedule", "incident_share"): _fraction,
}


def _field(section: str, key: str, kind: Any, leaf: Leaf) -> Any:
    value, origin = leaf
    check = CHECKS.get(("schedule" if section.startswith("services.") else section, key))
    try:
        if kind != (str | int):
            value = _coerce(kind, value, "CIDRs or host names" if key == "allow" else "service names")
        return check(value) if check else value
    except ValueError as exc:
        raise ConfigError(f"{origin}: [{section}] {key} {exc}") from None


def _section(cls: type, name: str, leaves: Mapping[str, Leaf], base: Any = None) -> Any:
    hints = kinds(cls)
    values = {key: _field(name, key, hints[key], leaf) for key, leaf in leaves.items() if key in hints}
    return replace(base, **values) if base is not None else cls(**values)


def _schedule(name: str, leaves: Mapping[str, Leaf], base: Schedule) -> Schedule:
    schedule: Schedule = _section(Schedule, name, leaves, base)
    low, high = schedule.normal_interval_min, schedule.normal_interval_max
    if low and high and low > high:  # 0: normal_interval (collector/states.py, interval_bounds)
        where = leaves.get("normal_interval_min", leaves.get("normal_interval_max", (None, "defaults")))[1]
        raise ConfigError(f"{where}: [{name}] normal_interval_min must be at most normal_interval_max: "
                          f"{low!r} > {high!r}")
    return schedule


def _service(name: str, leaves: Mapping[str, Leaf], schedule: Schedule) -> ServiceSettings:
    section = f"services.{name}"
    base_url = _field(section, "base_url", str, leaves["base_url"]) if "base_url" in leaves else None
    cap = _field(section, "max_body_bytes", int, leaves["max_body_bytes"]) if "max_body_bytes" in leaves else None
    options = {key: parse_value(value) if isinstance(value, Text) else value for key, (value, _) in leaves.items()
               if key not in SERVICE_KEYS and key not in kinds(Schedule)}
    return ServiceSettings(
        name=name, base_url=base_url.rstrip("/") if base_url else None,
        concurrency=_field(section, "concurrency", int, leaves.get("concurrency", (16, "defaults"))),
        schedule=_schedule(section, {k: v for k, v in leaves.items() if k in kinds(Schedule)}, schedule),
        options=options, max_body_bytes=cap)


def build(values: Mapping[Path, Leaf], environment: str = "development", sources: tuple[str, ...] = ()) -> Settings:
    """Settings from the merged values of every layer (their paths already checked by collector/config.py)."""
    sections: dict[str, dict[str, Leaf]] = {name: {} for name in SECTIONS}
    services: dict[str, dict[str, Leaf]] = {}
    for path, leaf in values.items():
        if path[0] == "services":
            services.setdefault(path[1], {})[path[2]] = leaf
        elif path[0] in sections:
            sections[path[0]][path[1]] = leaf
    built: dict[str, Any] = {name: (_schedule(name, sections[name], Schedule()) if cls is Schedule
                    else _section(cls, name, sections[name])) for name, cls in SECTIONS.items()}
    daemon: DaemonSettings = built["daemon"]
    try:
        selectors = Selectors.build(daemon.services, daemon.exclude_services, daemon.partition)
    except SelectorError as exc:
        where = ", ".join(sections["daemon"][k][1] for k in ("services", "exclude_services", "partition")
                          if k in sections["daemon"])
        raise ConfigError(f"{where or 'defaults'}: [daemon] {exc}") from exc
    settings = Settings(environment=environment, **built, selectors=selectors, sources=sources,
                        services={name: _service(name, leaves, built["schedule"]) for name, leaves in services.items()},
                        origins={path: origin for path, (_, origin) in values.items()})
    _check(settings)
    return settings


def _check(s: Settings) -> None:
    """The rules between settings of different keys."""
    def at(*path: str) -> str:
        return s.origins.get(path, "defaults")

    daemon, fleet, http = s.daemon, s.fleet, s.http
    if http.total_timeout * 2 > daemon.lease_ttl:
        raise ConfigError(
            f"[daemon] lease_ttl ({daemon.lease_ttl:g}s, {at('daemon', 'lease_ttl')}) must be at least twice [http] "
            f"total_timeout ({http.total_timeout:g}s, {at('http', 'total_timeout')}), so a lease never expires under "
            "a run in flight")
    if fleet.heartbeat_interval <= 0:
        raise ConfigError(f"[fleet] heartbeat_interval must be positive ({at('fleet', 'heartbeat_interval')})")
    if fleet.ttl < 2 * fleet.heartbeat_interval:
        raise ConfigError(
            f"[fleet] ttl ({fleet.ttl:g}s, {at('fleet', 'ttl')}) must be at least twice heartbeat_interval "
            f"({fleet.heartbeat_interval:g}s, {at('fleet', 'heartbeat_interval')}), or one late heartbeat would "
            "declare a live process dead")
    if daemon.lease_ttl < 3 * fleet.heartbeat_interval:
        raise ConfigError(
            f"[daemon] lease_ttl ({daemon.lease_ttl:g}s, {at('daemon', 'lease_ttl')}) must be at least three [fleet] "
            f"heartbeat_interval ({fleet.heartbeat_interval:g}s, {at('fleet', 'heartbeat_interval')}): the "
            "heartbeat renews the leases of runs in flight")
    if s.secrets.require_encrypted and not s.secrets.master_key_file.strip():
        raise ConfigError(f"{at('secrets', 'require_encrypted')}: [secrets] require_encrypted needs "
                          "master_key_file: no network could run without it")
    if problem := webhook_problem(s.webhooks.url, s.webhooks.secret):
        raise ConfigError(f"{at('webhooks', 'url')}: [webhooks] {problem}")
