"""The connectors installed: every class registered under the entry-point group `collector.connectors`, loaded
and checked once, at discovery. The built-in connectors are registered in pyproject.toml the way a third-party
package registers its own. A plugin that cannot run is reported with its error, never fatal: `collector
connectors` lists it as BROKEN, and the executor disables its networks as `bad_connector`."""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from collector import config
from collector.sdk import Connector

# config reads the same group (the services a settings file may name) and sits below this layer
ENTRY_POINT_GROUP = config.GROUP


@dataclass(frozen=True)
class Registered:
    """One installed connector: its class, or (`cls` None) the error that keeps it from running."""

    service: str
    cls: type[Connector] | None
    package: str | None
    version: str | None
    error: str | None = None


def discover() -> dict[str, Registered]:
    """Every connector installed under the entry-point group; a broken plugin is reported, not fatal."""
    found: dict[str, Registered] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(ep, "dist", None)
        package = dist.name if dist else None
        version = dist.version if dist else None
        try:
            found[ep.name] = Registered(ep.name, load(ep), package, version)
        except Exception as exc:  # a plugin that fails to import must not take the daemon down
            found[ep.name] = Registered(ep.name, None, package, version, f"{type(exc).__name__}: {exc}")
    return found


def load(ep: EntryPoint) -> type[Connector]:
    """The connector class `ep` names; TypeError when it cannot run a network: not a Connector, an abstract
    method left unimplemented (a run would fail the same way at every attempt), or another service name."""
    cls = ep.load()
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        raise TypeError(f"{ep.value} is not a collector.sdk.Connector subclass")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TypeError(f"connector class {ep.value} does not implement {' and '.join(missing)}")
    if getattr(cls, "service", None) != ep.name:
        raise TypeError(f"{ep.value}.service must be {ep.name!r} (its entry-point name)")
    return cls
