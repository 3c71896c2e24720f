"""The command line's settings: the flags as the last layer (collector/config.py), and `collector config show
[--sources]`, which prints the effective settings as TOML (secrets masked) and where each value was set."""

from __future__ import annotations

import json
import re
from dataclasses import fields
from typing import Any

import click

from collector import config, logs
from collector.config import SECTIONS, ConfigError, Settings, Text

# the flags that set a setting: (option, path, the option's spelling)
FLAGS: tuple[tuple[str, config.Path, str], ...] = (
    ("concurrency", ("daemon", "concurrency"), "--concurrency"),
    ("services", ("daemon", "services"), "--services"),
    ("exclude_services", ("daemon", "exclude_services"), "--exclude-services"),
    ("partition", ("daemon", "partition"), "--partition"),
    ("mongodb_uri", ("database", "uri"), "--mongodb-uri"),
    ("log_format", ("log", "format"), "--log-format"),
    ("log_level", ("log", "level"), "--log-level"),
)


def flags(opts: dict[str, Any]) -> list[tuple[config.Path, Any, str]]:
    """(path, value, flag) of every setting the command line sets; --set SECTION.KEY=VALUE last."""
    out = [(path, opts[name], flag) for name, path, flag in FLAGS if opts.get(name) not in (None, "")]
    for item in opts.get("set") or ():
        key, sep, raw = item.partition("=")
        if not sep or "." not in key:
            raise click.BadParameter(f"--set expects section.key=value, got {item!r}")
        path = tuple(key.split("."))
        out.append((path, Text(raw), f"--set {key}"))
    return out


class SettingsRefused(click.ClickException):
    exit_code = 2  # a setting the daemon cannot work with (systemd/README.md, exit codes)


def load_settings(ctx: click.Context) -> Settings:
    """The settings of this command line (its group's --env, --config and flags), logging configured."""
    opts = ctx.find_root().params
    try:
        settings = config.load(environment=opts.get("env"), config_dir=opts.get("config"), flags=flags(opts))
    except ConfigError as exc:
        raise SettingsRefused(f"configuration error: {exc}") from exc
    logs.configure(settings.log.format, settings.log.level)
    return settings


# keys whose values are secrets (client_secret, a Stack Apps key, a password, a token), not their *_url or *_file
_SECRET_KEY = re.compile(r"(secret|password|passwd|credential|(^|_)token|(^|_)key)$", re.I)
_URI_CREDENTIALS = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/@\s]*:)[^@/\s]+(?P<at>@)", re.I)
_INLINE_SECRET = re.compile(r"(?i)((?:password|secret|token|key)=)[^&\s]+")
MASK = "****"


def mask(key: str, value: Any) -> Any:
    """A value fit to print: a secret's replaced (when set), a URI's password and key=... parameters hidden."""
    if isinstance(value, str):
        if value and _SECRET_KEY.search(key):
            return MASK
        return _INLINE_SECRET.sub(rf"\g<1>{MASK}", _URI_CREDENTIALS.sub(rf"\g<head>{MASK}\g<at>", value))
    if isinstance(value, dict):
        return {k: mask(k, v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [mask(key, v) for v in value]
    return MASK if value and _SECRET_KEY.search(key) and not isinstance(value, bool) else value


def _key(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


def literal(value: Any) -> str:
    """A value as a TOML literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {literal(v)}" for k, v in value.items()) + " }"
    return json.dumps(str(value))


def _entries(settings: Settings) -> list[tuple[str, list[tuple[str, Any, str]]]]:
    """(table, [(key, value, origin)]) of every effective setting, in the files' order."""
    def origin(*path: str) -> str:
        return settings.origins.get(path, "built-in default (collector/config.py)")

    tables = []
    for name in SECTIONS:
        section = getattr(settings, name)
        tables.append((name, [(f.name, getattr(section, f.name), origin(name, f.name)) for f in fields(section)]))
    for name, service in sorted(settings.services.items()):
        keys = [p[2] for p in settings.origins if p[:2] == ("services", name)]
        rows = []
        for key in keys:
            value = (getattr(service, key) if key in ("base_url", "concurrency", "max_body_bytes") else
                     getattr(service.schedule, key) if key in config.kinds(config.Schedule) else service.options[key])
            if value is not None:
                rows.append((key, value, origin("services", name, key)))
        tables.append((f"services.{name}", rows))
    return tables


def render(settings: Settings, sources: bool = False) -> str:
    """The effective settings as TOML (secrets masked); with `sources`, each value's origin as a comment."""
    lines = [f'# collector settings, environment "{settings.environment}"']
    if sources:
        lines.append("# files read, in order (later wins): " + ", ".join(settings.sources))
    for table, rows in _entries(settings):
        lines += ["", f"[{table}]"]
        texts = [f"{_key(key)} = {literal(mask(key, value))}" for key, value, _ in rows]
        width = max((len(t) for t in texts), default=0)
        lines += [f"{t:<{width}}  # {origin}" if sources else t for t, (_, _, origin) in zip(texts, rows, strict=True)]
    return "\n".join(lines)


def command() -> click.Group:
    """`collector config ...`, registered on the main group by collector/cli.py."""

    @click.group("config")
    def group() -> None:
        """The settings: what they are, and where each comes from."""

    @group.command("show")
    @click.option("--sources", is_flag=True, help="Say which file (path:line), variable or flag set each value.")
    @click.pass_context
    def show(ctx: click.Context, sources: bool) -> None:
        """Print the effective settings as TOML (secrets masked): the package's defaults, /etc/collector/*.toml,
        --config DIR, COLLECTOR_* variables and the flags, later wins."""
        click.echo(render(load_settings(ctx), sources))

    return group
