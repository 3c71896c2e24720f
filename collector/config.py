"""Settings: where they come from, later wins (their schema, defaults and checks: collector/config_schema.py):

1. the package's defaults: collector/defaults.toml, then collector/defaults.<ENV>.toml (the environment's overlay);
2. the system directory, /etc/collector (COLLECTOR_CONFIG_DIR names another): every *.toml file there, sorted by
   name, except the overlays of environments (a file named after one: production.toml...), then <ENV>.toml;
3. the directory given with `--config DIR`, the same way (nothing is read from the working directory otherwise);
4. COLLECTOR_<SECTION>__<KEY> environment variables (COLLECTOR_SERVICES__<NAME>__<KEY> for a service), and
   MONGODB_URI for [database] uri;
5. command-line flags (--concurrency, --mongodb-uri, --set SECTION.KEY=VALUE, ...), then settings from code.

The environment (--env, else $COLLECTOR_ENV, else "development") is one the package has an overlay for. Every value
is checked where it is read: an unknown section, key, service or environment is an error that names the file and
line (or the variable, or the flag) that set it, and every value keeps its origin for `collector config show
--sources`. tomllib keeps no line numbers: the line is found by scanning the file's text for the key or header.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path as FilePath
from typing import Any

from collector.config_schema import (
    ENGINE_OPTIONS,
    ENV_PREFIX,
    LOG_LEVELS,
    MODES,
    SECTIONS,
    SERVICE_KEYS,
    ConfigError,
    DaemonSettings,
    DatabaseSettings,
    FleetSettings,
    HttpSettings,
    Leaf,
    LogSettings,
    MetricsSettings,
    Path,
    Schedule,
    SecretsSettings,
    ServiceSettings,
    Settings,
    Text,
    build,
    kinds,
    parse_value,
)

__all__ = [  # the schema's names, for `from collector.config import ...`
    "LOG_LEVELS", "MODES", "SECTIONS", "ConfigError", "DaemonSettings", "DatabaseSettings", "FleetSettings",
    "HttpSettings", "Leaf", "LogSettings", "MetricsSettings", "Path", "Schedule", "SecretsSettings",
    "ServiceSettings", "Settings", "Text", "build", "kinds", "load", "parse_value",
]

PACKAGE = FilePath(__file__).resolve().parent
DEFAULTS = PACKAGE / "defaults.toml"
SYSTEM_DIR = FilePath("/etc/collector")
SYSTEM_DIR_VARIABLE = "COLLECTOR_CONFIG_DIR"
DEFAULT_ENVIRONMENT = "development"
GROUP = "collector.connectors"  # the entry points of the connectors (collector/plugins.py)


def environments() -> tuple[str, ...]:
    """The environments: those the package has an overlay for (collector/defaults.<ENV>.toml)."""
    return tuple(sorted(p.name[len("defaults."):-len(".toml")] for p in PACKAGE.glob("defaults.*.toml")))


def choose_environment(environment: str | None, environ: Mapping[str, str]) -> str:
    """--env, else $COLLECTOR_ENV, else development; ConfigError for one the package has no overlay for."""
    env, how = ((environment, "--env") if environment else
                (environ["COLLECTOR_ENV"], "$COLLECTOR_ENV") if environ.get("COLLECTOR_ENV") else
                (DEFAULT_ENVIRONMENT, "the default"))
    if env not in environments():
        raise ConfigError(f"unknown environment {env!r} (from {how}): the environments are "
                          f"{', '.join(environments())} (collector/defaults.<ENV>.toml); a file <ENV>.toml in "
                          f"{SYSTEM_DIR} or --config DIR adds to one of them")
    return env


def config_files(env: str, environ: Mapping[str, str],
                 config_dir: str | os.PathLike[str] | None = None) -> list[FilePath]:
    """The files read, in order (see the module's docstring)."""
    files = [DEFAULTS, PACKAGE / f"defaults.{env}.toml"]
    overlays = set(environments())
    system = environ.get(SYSTEM_DIR_VARIABLE)
    for directory, how in ((FilePath(system) if system else SYSTEM_DIR, f"${SYSTEM_DIR_VARIABLE}" if system else ""),
                           (FilePath(config_dir) if config_dir is not None else None, "--config")):
        if directory is None:
            continue
        if not directory.is_dir():
            if how:  # /etc/collector may be missing; a directory asked for by name must not
                raise ConfigError(f"no directory {directory} (from {how})")
            continue
        found = sorted(p for p in directory.glob("*.toml") if p.is_file())
        files += [p for p in found if p.stem not in overlays] + [p for p in found if p.stem == env]
    return files


@cache
def installed_connectors() -> frozenset[str]:
    """The services an installed connector serves (entry point names, read without importing the connectors)."""
    return frozenset(ep.name for ep in metadata.entry_points(group=GROUP))


_BARE = r'[A-Za-z0-9_-]+|"[^"]*"|\'[^\']*\''
_HEADER = re.compile(r"^\s*\[(?!\[)\s*([^\]]+?)\s*\]")
_KEY = re.compile(rf"^\s*((?:{_BARE})(?:\s*\.\s*(?:{_BARE}))*)\s*=")


def _parts(dotted: str) -> Path:
    return tuple(p.strip("\"'") for p in re.findall(_BARE, dotted))


def locate(text: str, path: Path) -> int | None:
    """The line (from 1) of the first header or key of a TOML text that sets `path` or something under it."""
    table: Path = ()
    for number, line in enumerate(text.splitlines(), 1):
        if header := _HEADER.match(line):
            table = full = _parts(header[1])
        elif key := _KEY.match(line):
            full = table + _parts(key[1])
        else:
            continue
        if full[:len(path)] == path:
            return number
    return None


def leaves(tree: Mapping[str, Any], origin: Callable[[Path], str]) -> Iterator[tuple[Path, Any]]:
    """(path, value) of every setting of a settings tree; ConfigError for a table where a value belongs or the
    other way round."""
    for section, body in tree.items():
        if section == "services" and isinstance(body, dict):
            for name, table in body.items():
                if not isinstance(table, dict):
                    where = origin(("services", name))
                    raise ConfigError(f"{where}: [services.{name}] must be a table, got {table!r}")
                for key, value in table.items():
                    yield ("services", name, key), value
        elif isinstance(body, dict):
            for key, value in body.items():
                yield (section, key), value
        elif section in SECTIONS or section == "services":
            raise ConfigError(f"{origin((section,))}: [{section}] must be a table, got {body!r}")
        else:
            raise ConfigError(f"{origin((section,))}: unknown setting {section!r}: every setting is in a section "
                              "such as [daemon]")


def _hint(key: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), 1, 0.75)
    return f" (did you mean {close[0]}?)" if close else ""


class Schema:
    """What a path may name: the sections' keys, and the services (with `services`: only those names)."""

    def __init__(self, packaged: Mapping[str, Collection[str]], services: Collection[str] | None):
        self.packaged = packaged  # the packaged services and their keys (collector/defaults.toml)
        self.services = services

    def unknown(self, path: Path) -> tuple[int, str] | None:
        """Why `path` names no setting (how many of its parts are at fault, and the message), or None."""
        section = path[0]
        if section == "services":
            if len(path) != 3:
                return len(path), "a service's setting is services.NAME.KEY"
            name, key = path[1], path[2]
            if self.services is not None and name not in self.services:
                return 2, (f"unknown service [services.{name}]: no installed connector serves it"
                           f"{_hint(name, self.services)} (installed: {', '.join(sorted(self.services)) or 'none'})")
            engine = [*SERVICE_KEYS, *kinds(Schedule), *ENGINE_OPTIONS]
            if key in engine or key in self.packaged.get(name, ()):
                return None
            if name in self.packaged or _hint(key, engine):  # a built-in's options are known; a plugin's are its own
                return 3, (f"unknown setting {key!r} in [services.{name}]"
                           f"{_hint(key, [*engine, *self.packaged.get(name, ())])}")
            return None
        if section not in SECTIONS:
            return 1, (f"unknown section [{section}]{_hint(section, SECTIONS)} "
                       f"(the sections: {', '.join(SECTIONS)}, services)")
        if len(path) != 2 or path[1] not in kinds(SECTIONS[section]):
            return 2, f"unknown setting {path[1]!r} in [{section}]{_hint(path[1], kinds(SECTIONS[section]))}"
        return None

    def check(self, path: Path, origin: Callable[[Path], str]) -> None:
        why = self.unknown(path)
        if why is not None:
            raise ConfigError(f"{origin(path[:why[0]])}: {why[1]}")


@cache
def _packaged(path: FilePath) -> tuple[str, dict[str, Any]]:
    text = path.read_text(encoding="utf-8")
    return text, tomllib.loads(text)


def read_file(path: FilePath, schema: Schema) -> dict[Path, Leaf]:
    """The settings of one TOML file, each with its origin `path:line`."""
    try:
        text, tree = _packaged(path) if path.parent == PACKAGE else (path.read_text(encoding="utf-8"), None)
        tree = tree if tree is not None else tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc

    def origin(at: Path) -> str:
        # the key's own line; else its table's (a value inside an inline table or a multi-line array)
        line = next((n for depth in range(len(at), 0, -1) if (n := locate(text, at[:depth]))), None)
        return f"{path}:{line}" if line else str(path)

    out = {}
    for where, value in leaves(tree, origin):
        schema.check(where, origin)
        out[where] = (value, origin(where))
    return out


def named(label: str) -> Callable[[Path], str]:
    """The origin of every value of a layer that is not a file: the variable or the flag."""
    return lambda _at: label


def from_environ(environ: Mapping[str, str], schema: Schema) -> dict[Path, Leaf]:
    """COLLECTOR_DAEMON__CONCURRENCY=8 -> ("daemon", "concurrency"): 8; MONGODB_URI -> [database] uri."""
    out: dict[Path, Leaf] = {}
    for variable, raw in sorted(environ.items()):
        if not variable.startswith(ENV_PREFIX) or "__" not in variable:
            continue  # COLLECTOR_ENV, COLLECTOR_MODE, COLLECTOR_CONFIG_DIR... are no settings
        path = tuple(p.lower() for p in variable[len(ENV_PREFIX):].split("__"))
        schema.check(path, named(f"${variable}"))
        out[path] = (Text(raw), f"${variable}")
    if environ.get("MONGODB_URI"):
        out["database", "uri"] = (environ["MONGODB_URI"], "$MONGODB_URI")
    return out


def from_tree(tree: Mapping[str, Any], schema: Schema, label: str) -> dict[Path, Leaf]:
    out = {}
    for path, value in leaves(tree, named(label)):
        schema.check(path, named(label))
        out[path] = (value, label)
    return out


def load(environment: str | None = None, overrides: Mapping[str, Any] | None = None,
         environ: Mapping[str, str] | None = None, *, config_dir: str | os.PathLike[str] | None = None,
         flags: Iterable[tuple[Path, Any, str]] = ()) -> Settings:
    """The settings of `environment` from every layer; `flags`: (path, value, the flag that set it) from the command
    line; `overrides`: a settings tree from code (tests, the demo, benchmarks), applied last (its service names are
    not checked: a test's own services)."""
    environ = os.environ if environ is None else environ
    env = choose_environment(environment, environ)
    files = config_files(env, environ, config_dir)
    packaged = {name: tuple(table) for name, table in _packaged(DEFAULTS)[1].get("services", {}).items()}
    schema = Schema(packaged, installed_connectors() | set(packaged))
    values: dict[Path, Leaf] = {}
    for file in files:
        values.update(read_file(file, schema))
    values.update(from_environ(environ, schema))
    for path, value, flag in flags:
        schema.check(path, named(flag))
        values[path] = (value, flag)
    values.update(from_tree(overrides or {}, Schema(packaged, None), "overrides (from code)"))
    return build(values, env, tuple(str(f) for f in files))
