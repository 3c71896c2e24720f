"""The command line: `collector --mode initial|normal` runs the daemon; subcommands for the rest."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from typing import TYPE_CHECKING, Any

import click

from collector import changes_cli, config_cli, early_stop, logs, migrations, model, plugins, webhooks_cli
from collector import config as config_mod
from collector.config import MODES
from collector.selectors import SLOTS

if TYPE_CHECKING:
    from collector.store import Store
from collector.config_cli import load_settings
from collector.operations import STATES
from collector.secrets_cli import command as secrets_command
from collector.states import PERMANENT_KINDS, TRANSIENT_KINDS, label


@click.group(invoke_without_command=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--mode", type=click.Choice(MODES),
              help="Run the daemon: 'initial' back-fills history page by page for new networks; "
                   "'normal' fetches only what is new for networks whose history is complete.")
@click.option("--env", metavar="NAME", help="Settings environment: development (the default, or $COLLECTOR_ENV), "
                                            "production, test or demo: collector/defaults.NAME.toml, then NAME.toml "
                                            "of /etc/collector and of --config DIR.")
@click.option("--config", "config", metavar="DIR", type=click.Path(file_okay=False),
              help="Read DIR/*.toml too (sorted), after /etc/collector/*.toml ($COLLECTOR_CONFIG_DIR).")
@click.option("--verbose", "-v", is_flag=True, help="On an error, print its full detail (e.g. the database driver's).")
@click.option("--concurrency", type=click.IntRange(1), help="Runs in flight in this process.")
@click.option("--services", metavar="NAME,...", help="Claim only these services' networks ([daemon] services).")
@click.option("--exclude-services", metavar="NAME,...",
              help="Claim every service's networks but these ([daemon] exclude_services).")
@click.option("--partition", metavar="K/N",
              help="Claim only the networks of the users in partition K of N, K from 0 ([daemon] partition). "
                   "Changing N moves about 1/N of the users (docs/scaling.md).")
@click.option("--mongodb-uri", help="MongoDB URI (default: $MONGODB_URI, then [database] uri).")
@click.option("--log-format", type=click.Choice(["auto", "console", "json"]))
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--set", "set", multiple=True, metavar="SECTION.KEY=VALUE",
              help="Override any setting, e.g. --set services.github.base_url=http://127.0.0.1:9000")
@click.version_option(package_name="collector-daemon")  # the distribution (fleet.DISTRIBUTION)
@click.pass_context
def main(ctx: click.Context, /, mode: str | None, **_: Any) -> None:
    """collector: keeps users' data in sync from third-party APIs.

    Run the daemon with `collector --mode initial` and `collector --mode normal` (any number of
    processes, on any number of machines, sharing one MongoDB). Settings, later wins: the package's defaults
    (and its --env overlay), /etc/collector/*.toml, --config DIR/*.toml, COLLECTOR_<SECTION>__<KEY> variables
    (MONGODB_URI: the database), then the flags. `collector config show --sources` prints them and their origins.
    """
    if ctx.invoked_subcommand is not None:
        early_stop.release()  # a stop signal is fatal again for every command but the daemon
        return
    if mode is None:
        click.echo(ctx.get_help())
        ctx.exit(2)
    settings = load_settings(ctx)
    from collector.app import DatabaseUnavailable, StoppedWhileStarting, UnsafeDatabase, run_daemon
    from collector.metrics import MetricsError
    from collector.secrets import SecretsError
    from collector.selectors import SelectorError

    try:
        asyncio.run(run_daemon(settings, mode))
    except StoppedWhileStarting as exc:  # a clean stop: nothing had started
        click.echo(f"collector: {exc}", err=True)
    except (DatabaseUnavailable, UnsafeDatabase, MetricsError, SelectorError, SecretsError) as exc:
        # 3: no database (restarted); 4: an unsafe one, 5: no usable master key (a restart cannot fix either: the unit
        # does not restart on them); 2: a port taken, a service nobody installed. A clear message each time.
        click.echo(f"collector: {exc}", err=True)
        if ctx.params.get("verbose") and getattr(exc, "detail", ""):
            click.echo(getattr(exc, "detail", ""), err=True)  # the driver's whole report
        ctx.exit({DatabaseUnavailable: 3, UnsafeDatabase: 4, SecretsError: 5}.get(type(exc), 2))


@main.command()
@click.option("--users", type=click.IntRange(1, 2000), default=36, show_default=True, help="Networks to seed.")
@click.option("--cycles", type=click.IntRange(0, 20), default=2, show_default=True,
              help="Normal cycles with new upstream items after the back-fill.")
@click.option("--mongodb-uri", "demo_uri", help="Use this MongoDB instead of the in-memory database.")
@click.option("--timeout", type=float, default=180.0, show_default=True, help="Give up after this many seconds.")
def demo(users: int, cycles: int, demo_uri: str | None, timeout: float) -> None:
    """Run the whole system against a local sandbox API and show it working."""
    from collector.demo import run_demo

    logs.configure("console", "error")
    if not asyncio.run(run_demo(users=users, cycles=cycles, mongodb_uri=demo_uri, time_limit=timeout,
                                echo=click.echo)):
        raise SystemExit(1)


@main.command()
def connectors() -> None:
    """List every installed connector, its package, version and API."""
    found = plugins.discover()
    if not found:
        click.echo("no connectors installed (entry-point group collector.connectors)")
        return
    width = max(len(n) for n in found)
    packages = {name: f"{reg.package or '?'} {reg.version or '?'}" for name, reg in found.items()}
    pwidth = max(len(p) for p in packages.values())
    for name, reg in sorted(found.items()):
        what = reg.cls.api if reg.cls else f"BROKEN: {reg.error}"
        click.echo(f"{name:<{width}}  {packages[name]:<{pwidth}}  {what}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The whole report as one JSON document (exact figures).")
@click.option("--overdue-after", type=click.FloatRange(0), default=60.0, show_default=True,
              help="A network due for longer than this many seconds, still unclaimed, counts as overdue.")
@click.pass_context
def status(ctx: click.Context, as_json: bool, overdue_after: float) -> None:
    """The fleet, the backlog, paused services and disabled networks, at a glance."""
    from collector import status as fleet_status
    from collector.clock import ServerClock
    settings = load_settings(ctx)  # read once: the lease_ttl here, the database in _run

    async def read(store: Store) -> dict[str, Any]:
        clock = ServerClock()  # heartbeats and due times are on the database server's clock, not this host's
        await clock.sync(store.db)
        return await fleet_status.status(store, clock(), overdue_after=overdue_after,
                                         lease_ttl=settings.daemon.lease_ttl)

    report = _run(ctx, read, settings)
    if as_json:
        click.echo(json.dumps(report, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v), indent=2))
    else:
        click.echo(fleet_status.render(report))


@main.command()
@click.argument("count", type=click.IntRange(1, SLOTS))
@click.option("--from", "before", type=click.IntRange(1, SLOTS), help="Show what changing from this count moves.")
@click.option("--zones", metavar="DB.COLLECTION", help="Print the mongosh zone ranges of each partition.")
def partitions(count: int, before: int | None, zones: str | None) -> None:
    """How COUNT partitions share the users' slots (for --partition K/COUNT)."""
    from collector.selectors import Partition, moves, ranges
    for k in range(count):
        slots = Partition(k, count).slots
        click.echo(f"partition {k}/{count}: {len(slots)} of {SLOTS} slots ({len(slots) / SLOTS:.1%} of the users)")
        for start, end in ranges(slots) if zones else ():
            click.echo(f'  sh.updateZoneKeyRange("{zones}", {{slot: {start}, _id: MinKey}}, '
                       f'{{slot: {end}, _id: MinKey}}, "partition-{k}-of-{count}")')
    if before is not None:
        moved = moves(before, count)
        click.echo(f"from {before} to {count}: {len(moved)} of {SLOTS} slots move ({len(moved) / SLOTS:.1%} of the "
                   f"users); " + ", ".join(f"{a}/{before} -> {b}/{count}: {n}" for (a, b), n in
                                         sorted(Counter((a, b) for _s, a, b in moved).items())))


@main.group()
def networks() -> None:
    """Inspect, add, enable, disable and reset networks."""


def _run(ctx: click.Context, fn: Any, settings: config_mod.Settings | None = None) -> Any:
    settings = settings or load_settings(ctx)
    from collector.app import DatabaseUnavailable, connect, make_store
    from collector.secrets import SecretsError

    async def go() -> Any:
        client, db = await connect(settings)
        try:
            return await fn(await make_store(db, settings))
        finally:
            await client.close()

    try:
        return asyncio.run(go())
    except (DatabaseUnavailable, SecretsError) as exc:
        detail = getattr(exc, "detail", "") if ctx.find_root().params.get("verbose") else ""
        raise click.ClickException("\n".join(filter(None, [str(exc), detail]))) from exc


@networks.command("add")
@click.option("--user", help="The user the network belongs to.")
@click.option("--service", help="Connector name (see `collector connectors`).")
@click.option("--token-env", metavar="VAR", help="Read the access token from this environment variable "
                                                 "(never pass a token as a flag: it would show in `ps`).")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Connector option (repeatable).")
@click.option("--stdin", "from_stdin", is_flag=True,
              help='Read one JSON document per line from stdin, e.g. {"user": "u1", "service": "github", '
                   '"accessToken": "..."}.')
@click.pass_context
def networks_add(ctx: click.Context, user: str | None, service: str | None, token_env: str | None,
                 options: tuple[str, ...], from_stdin: bool) -> None:
    """Add a network, due now, in initial mode."""
    from collector.clock import utcnow
    from collector.model import Malformed, Network
    from collector.secrets import open_vault

    docs, settings = [], load_settings(ctx)
    if from_stdin:
        for n, line in enumerate(sys.stdin, 1):
            if not line.strip():
                continue
            try:
                docs.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise click.ClickException(f"stdin line {n}: invalid JSON: {exc}") from exc
    else:
        if not user or not service:
            raise click.UsageError("--user and --service are required (or use --stdin)")
        doc: dict[str, Any] = {"user": user, "service": service}
        if token_env:
            token = os.environ.get(token_env)
            if not token:
                raise click.ClickException(f"environment variable {token_env} is empty or not set")
            doc["accessToken"] = token
        if options:
            doc["options"] = dict(o.partition("=")[::2] for o in options)
        docs.append(doc)
    known = plugins.discover()
    for doc in docs:
        if not isinstance(doc, dict):
            raise click.ClickException("each network must be a JSON object")
        reg = known.get(str(doc.get("service")))
        if reg is None:
            installed = ", ".join(sorted(known))
            raise click.ClickException(f"unknown service {doc.get('service')!r} (installed: {installed})")
        try:
            Network.from_doc({"_id": 0, **doc}, required=reg.cls.required if reg.cls else ())
        except Malformed as exc:
            raise click.ClickException(f"network for user {doc.get('user')!r}: {exc}") from exc

    async def add(store: Store) -> list[Any]:
        now, vault = utcnow(), await open_vault(store.db, settings)  # credentials sealed when a master key is set
        return [await store.insert_network({**vault.seal_document(d), "mode": "initial", "scheduledTo": now,
                                            "errors": 0}) for d in docs]

    for network_id in _run(ctx, add, settings):
        click.echo(str(network_id))


def _network_id(raw: str) -> Any:
    from bson import ObjectId
    from bson.errors import InvalidId

    try:
        return ObjectId(raw)
    except (InvalidId, TypeError):
        return raw


@networks.command("list")
@click.option("--user", help="Only this user's networks.")
@click.option("--service", help="Only this service.")
@click.option("--mode", "mode_", type=click.Choice(MODES), help="Only this mode.")
@click.option("--state", type=click.Choice(STATES), help="Only this state (parked: rate limited many times in a row).")
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line.")
@click.pass_context
def networks_list(ctx: click.Context, user: str | None, service: str | None, mode_: str | None,
                  state: str | None, limit: int, as_json: bool) -> None:
    """List networks with their state (tokens redacted)."""

    async def fetch(store: Store) -> list[dict[str, Any]]:
        return await store.list_networks(user, service, mode_, state, limit)

    for doc in _run(ctx, fetch):
        if as_json:
            click.echo(json.dumps(doc, default=str))
            continue
        last = (doc.get("lastOutcome") or {}).get("reason", "")
        reason = doc.get("disabledReason") or doc.get("parkedReason") or last
        every = f"{i:.0f}s" if (i := model.poll_interval(doc)) else "-"  # adaptive polling's interval
        shown = label(doc, confirming=True)  # a first 401 being confirmed as "unauthorized?"
        click.echo(f"{doc['_id']}  {doc.get('user')!s:<16} {doc.get('service')!s:<14} {shown:<12} "
                   f"next={doc.get('scheduledTo')} every={every}  {reason}")


@networks.command("show")
@click.argument("network_id")
@click.pass_context
def networks_show(ctx: click.Context, network_id: str) -> None:
    """One network in full: state, last error, schedule (tokens redacted)."""
    from collector.documents import public_view

    async def fetch(store: Store) -> dict[str, Any] | None:
        return await store.get_network(_network_id(network_id))

    doc = _run(ctx, fetch)
    if doc is None:
        raise click.ClickException(f"no network {network_id}")
    click.echo(json.dumps(public_view(doc), default=str, indent=2))


def _operator(ctx: click.Context, network_id: str, action: str, reason: str = "") -> None:
    from collector.clock import utcnow

    async def act(store: Store) -> bool:
        nid = _network_id(network_id)
        if action == "disable":
            return await store.disable(nid, reason, utcnow())
        return bool(await getattr(store, action)(nid, utcnow()))

    if not _run(ctx, act):
        raise click.ClickException(f"no network {network_id}")
    click.echo(f"{network_id}: {action}d")


REASON_KINDS = (*TRANSIENT_KINDS, *PERMANENT_KINDS, "unauthorized")


@networks.command("enable")
@click.argument("network_id", required=False)
@click.option("--service", help="Bulk: every disabled network of this service...")
@click.option("--reason-kind", type=click.Choice(REASON_KINDS),
              help="Bulk: ...whose last error was of this kind (e.g. http_5xx after an API outage).")
@click.option("--dry-run", is_flag=True, help="Bulk: say how many would be enabled (and show some), change nothing.")
@click.pass_context
def networks_enable(ctx: click.Context, network_id: str | None, service: str | None, reason_kind: str | None,
                    dry_run: bool) -> None:
    """Clear disabled/unauthorized/errors; due now (e.g. after the user re-authorized). With --service and/or
    --reason-kind instead of an id: every disabled network that matches, except those an operator disabled."""
    if network_id is not None:
        if service or reason_kind or dry_run:
            raise click.UsageError("give a network id or --service/--reason-kind, not both")
        _operator(ctx, network_id, "enable")
        return
    if not service and not reason_kind:
        raise click.UsageError("give a network id, or --service and/or --reason-kind for a bulk enable")
    from collector.clock import utcnow

    async def act(store: Store) -> tuple[int, list[dict[str, Any]]]:
        return await store.enable_many(utcnow(), service, reason_kind, dry_run)

    count, sample = _run(ctx, act)
    what = " ".join(filter(None, [f"service={service}" if service else "",
                                  f"last error kind={reason_kind}" if reason_kind else ""]))
    if dry_run:
        click.echo(f"dry run: {count} disabled networks match ({what}); nothing changed")
        for doc in sample:
            click.echo(f"  {doc['_id']}  {doc.get('user')!s:<16} {doc.get('service')!s:<14} "
                       f"{doc.get('disabledReason', '')}"[:200])
        return
    click.echo(f"enabled {count} networks ({what}), due now")


@networks.command("disable")
@click.argument("network_id")
@click.option("--reason", default="disabled by an operator", show_default=True)
@click.pass_context
def networks_disable(ctx: click.Context, network_id: str, reason: str) -> None:
    """Stop collecting this network until it is enabled."""
    _operator(ctx, network_id, "disable", reason)


@networks.command("reset")
@click.argument("network_id")
@click.pass_context
def networks_reset(ctx: click.Context, network_id: str) -> None:
    """Back to initial mode: re-collect the whole history (stored items are kept, not duplicated)."""
    _operator(ctx, network_id, "reset")


main.add_command(secrets_command(load_settings, _run))  # `collector secrets ...` (collector/secrets_cli.py)
main.add_command(migrations.command(load_settings, _run))  # `collector migrate ...` (collector/migrations.py)
main.add_command(config_cli.command())  # `collector config show [--sources]` (collector/config_cli.py)
main.add_command(changes_cli.command(load_settings, _run))  # `collector changes --user U` (collector/changes_cli.py)
main.add_command(webhooks_cli.command(load_settings, _run))  # `collector webhooks retry` (webhooks_cli.py)
