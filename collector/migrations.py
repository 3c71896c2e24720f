"""`collector migrate item-scopes`: the items of services whose ids are per server, moved to their scoped keys.

Item keys are [service, user, itemId] (collector/documents.py). A connector whose servers each number their own items
(Connector.item_scope: Mastodon instances, GitLab installations) has its items keyed [service, user, server, itemId]
since this version, the server stored as the item's `server`. Items stored before carry the old key and no `server`:
this command moves each to its new key, read from its network (the item's `network` field) as a run of that network
would compute it. Per batch: insert the new documents (one that exists already, written since by a daemon or by
another run of this command, is kept, with the earlier `collectedAt`), read back which new keys exist, then delete
the old documents of those only. Idempotent (a moved item has a `server` and is never read again), resumable (an
interruption between the insert and the delete is finished by the next run) and safe with daemons running and with
several runs at once (every step is an insert-if-absent or a delete of what is already copied). Items whose network
is gone, or whose server cannot be told (no or an invalid instance/base_url), are left where they are, counted.

Why a command and not a step of the daemon's start: finding the old items reads the whole `items` collection (no
index has `server`), which a fleet of processes would each repeat at every start, long after the last old item is
gone; and only the operator knows when no process of an older version is left to write old keys again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collector.config import Settings
    from collector.plugins import Registered
    from collector.sdk import Connector
    from collector.store import Store

Echo = Callable[[str], None]
SHOWN = 20  # network ids listed of those that shared items with a network on another server


class Refused(Exception):
    """The database cannot hold the scoped items as it is (the message says what to change)."""


@dataclass
class ScopeMigration:
    scanned: int = 0  # old-key items read
    moved: int = 0  # old documents this run deleted, their new key in place (a concurrent run counts its own)
    orphaned: int = 0  # left: their network is gone (or the item names none)
    unknown: int = 0  # left: their network's server cannot be told, or the item has no user or itemId
    blocked: int = 0  # left: their new key could not be written (the next run tries again)
    shared: list[Any] = field(default_factory=list)  # networks of one user and service on two or more servers

    def line(self) -> str:
        return (f"{self.scanned} items with an old key: {self.moved} moved, {self.orphaned} left (network gone), "
                f"{self.unknown} left (server unknown), {self.blocked} left (not written, run again)")


def scoped_connectors(registry: dict[str, Registered], settings: Settings) -> dict[str, Connector]:
    """The installed connectors whose items are scoped (item_scope of their own), set up with their settings."""
    from collector.sdk import Connector

    return {name: reg.cls(settings.service(name)) for name, reg in sorted(registry.items())
            if reg.cls is not None and reg.cls.item_scope is not Connector.item_scope}


def scope_of(connector: Connector, network: dict[str, Any]) -> str | None:
    """The scope a run of `network` gives its items; None when it cannot be told (a malformed document, no server
    or an invalid one). Read from the network's identity and options only: never its credentials."""
    from collector.clock import utcnow
    from collector.model import Network
    from collector.sdk import Context

    try:
        net = Network.from_doc({k: network[k] for k in ("_id", "user", "service", "options") if k in network})
        scope = connector.item_scope(Context(network=net, mode="normal", cursor={}, now=utcnow()))
    except Exception:  # Malformed, PermanentError (no or a bad server), a connector's own bug: cannot be told
        return None
    return scope if isinstance(scope, str) and scope else None


async def migrate_item_scopes(store: Store, connectors: dict[str, Connector], batch: int, echo: Echo,
                              dry_run: bool = False) -> ScopeMigration:
    """Move every old-key item of `connectors`' services to its scoped key, `batch` at a time, in _id order (one
    pass: what is left behind is not read twice); a progress line per batch. `dry_run`: count, write nothing."""
    from collector.documents import item_key, key_prefix
    from collector.store import ITEM_INDEX

    report = ScopeMigration()
    if not connectors:
        return report
    if (await store.items.index_information()).get(ITEM_INDEX, {}).get("unique"):
        raise Refused(f"the items index {ITEM_INDEX} (user, service, itemId) is unique (made by an earlier version): "
                      "one id on two servers cannot be stored under it. Drop it (db.items.dropIndex('item_key')); "
                      "the daemon creates it again, not unique, at its next start")
    services = sorted(connectors)
    scopes = await _network_scopes(store, connectors, report)
    query: dict[str, Any] = {"service": {"$in": services}, "server": {"$exists": False}}
    last: Any = None
    while True:
        page = query if last is None else {**query, "_id": {"$gt": last}}
        docs = [doc async for doc in store.items.find(page).sort("_id", 1).limit(batch)]
        if not docs:
            break
        last = docs[-1]["_id"]
        report.scanned += len(docs)
        moves: list[tuple[Any, dict[str, Any]]] = []
        for doc in docs:
            network = repr(doc.get("network"))
            if network not in scopes:
                report.orphaned += 1
                continue
            scope, user, item_id = scopes[network], doc.get("user"), doc.get("itemId")
            if scope is None or user is None or not isinstance(item_id, str):
                report.unknown += 1
                continue
            new_id = item_key(user, doc["service"], item_id, key_prefix(user, doc["service"], scope))
            moves.append((doc["_id"], {**doc, "_id": new_id, "server": scope}))
        if dry_run:
            report.moved += len(moves)
        elif moves:
            moved, missing = await _move(store, moves)
            report.moved += moved
            report.blocked += missing
        echo(("dry run: " if dry_run else "") + report.line())
    return report


async def _network_scopes(store: Store, connectors: dict[str, Connector],
                          report: ScopeMigration) -> dict[str, str | None]:
    """{repr(network _id): its scope, None when it cannot be told} of every network of the scoped services; notes in
    `report.shared` the networks of a user and service on more than one server (their items overwrote each other's
    under the old keys: what was lost comes back only by collecting the history again)."""
    scopes: dict[str, str | None] = {}
    servers: defaultdict[tuple[str, str], dict[str, list[Any]]] = defaultdict(dict)
    cursor = store.networks.find({"service": {"$in": sorted(connectors)}}, projection={"user": 1, "service": 1,
                                                                                        "options": 1})
    async for network in cursor:
        connector = connectors.get(network.get("service"))
        scope = scopes[repr(network["_id"])] = scope_of(connector, network) if connector is not None else None
        if scope is not None:
            servers[(repr(network.get("user")), network["service"])].setdefault(scope, []).append(network["_id"])
    report.shared = [nid for by_scope in servers.values() if len(by_scope) > 1 for ids in by_scope.values()
                     for nid in ids]
    return scopes


async def _move(store: Store, moves: list[tuple[Any, dict[str, Any]]]) -> tuple[int, int]:
    """Insert the new documents if absent, then delete the old ones whose new key is in place; returns how many old
    documents this call deleted (another run may have deleted some first) and how many new keys are not in place."""
    from pymongo import UpdateOne
    from pymongo.errors import BulkWriteError

    from collector.store import DUPLICATE_KEY

    existed: set[int] = set()
    try:
        await store.items.insert_many([new for _old, new in moves], ordered=False)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if not errors or any(e.get("code") != DUPLICATE_KEY for e in errors):
            raise
        existed = {e["index"] for e in errors}
    # a document already under the new key (written by a daemon since, or by a concurrent run) is the one kept; it
    # keeps the first sighting of the two
    firsts = [UpdateOne({"_id": moves[i][1]["_id"], "collectedAt": {"$gt": moves[i][1]["collectedAt"]}},
                        {"$set": {"collectedAt": moves[i][1]["collectedAt"]}})
              for i in sorted(existed) if isinstance(moves[i][1].get("collectedAt"), datetime)]
    if firsts:
        await store.items.bulk_write(firsts, ordered=False)
    # read back rather than trusted from the errors: a duplicate key of another index is no copy in place
    new_ids = [new["_id"] for _old, new in moves]
    present = {doc["_id"] async for doc in store.items.find({"_id": {"$in": new_ids}}, projection={"_id": 1})}
    old_ids = [old for old, new in moves if new["_id"] in present]
    if not old_ids:
        return 0, len(moves)
    result = await store.items.delete_many({"_id": {"$in": old_ids}, "server": {"$exists": False}})
    return int(result.deleted_count), len(moves) - len(old_ids)


def command(load_settings: Callable[[click.Context], Any], run: Callable[..., Any]) -> click.Group:
    """The `migrate` group, given the CLI's settings loader and database runner (collector/cli.py)."""

    @click.group()
    def migrate() -> None:
        """Data migrations: idempotent, resumable, safe while daemons run."""

    @migrate.command("item-scopes")
    @click.option("--batch", type=click.IntRange(1, 10_000), default=500, show_default=True,
                  help="Items read at once (and between two progress lines).")
    @click.option("--dry-run", is_flag=True, help="Count what would move; write nothing.")
    @click.pass_context
    def item_scopes(ctx: click.Context, batch: int, dry_run: bool) -> None:
        """Move the items of services whose ids are per server (Mastodon, GitLab) from their old keys
        [service, user, itemId] to [service, user, server, itemId]. Run it once every process runs this version;
        running it again changes nothing more."""
        from collector import plugins

        settings = load_settings(ctx)
        connectors = scoped_connectors(plugins.discover(), settings)
        try:
            report = run(ctx, lambda store: migrate_item_scopes(store, connectors, batch, click.echo, dry_run),
                         settings)
        except Refused as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(f"{'dry run' if dry_run else 'done'}: {report.line()} (services: {', '.join(connectors)})")
        if report.shared:
            shown = ", ".join(str(nid) for nid in report.shared[:SHOWN])
            more = f" and {len(report.shared) - SHOWN} more" if len(report.shared) > SHOWN else ""
            click.echo(f"{len(report.shared)} networks share a user and a service with a network on another server: "
                       f"before this version their items overwrote each other's. `collector networks reset <id>` "
                       f"collects a network's history again: {shown}{more}")

    return migrate
