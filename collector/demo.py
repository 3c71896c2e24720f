"""`collector demo`: the whole system in one process, nothing but pip needed.

Starts the sandbox API on 127.0.0.1, a database (mongomock-motor in memory unless --mongodb-uri is
given: in-memory storage is fine for a demo, it is not the production path), seeds networks
across services with a few troublemakers (a rate-limited user, a revoked token, a flapping 5xx),
runs the initial and normal schedulers side by side, shows live progress, makes new items arrive
upstream for a few normal cycles (and others disappear: un-starred, found by the reconciliations), and ends
with a summary whose item count is checked against what the sandbox served, which accounts for every item
upstream: stored, or why not (`account`), and which shows the change feed: a user's events, each removal found.
"""

from __future__ import annotations

import asyncio
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from collector import changes, config, http, outbox, plugins, states
from collector.clock import aware, utcnow
from collector.executor import Executor
from collector.sandbox import Sandbox, Server
from collector.scheduler import Scheduler
from collector.store import Store

SERVICES = ("github", "stackoverflow")
# everything happens within a minute or two: short paces, intervals and backoffs. In code, not in a config file:
# `pip install "collector-daemon[demo]"` ships no config/ directory (the demo ran on production intervals there)
DEMO_SETTINGS: dict[str, Any] = {
    "daemon": {"poll_interval": 0.2, "lease_ttl": 30.0, "shutdown_grace": 5.0, "concurrency": 32},
    "schedule": {"initial_pace": 0.1, "normal_interval": 2.0, "backoff_base": 0.5, "backoff_cap": 5.0,
                 "rate_limit_slack": 0.5, "unauthorized_recheck": 1.0,  # a 401 is confirmed a second later
                 "normal_interval_min": 0.0, "normal_interval_max": 0.0,  # a fixed interval: the demo is short
                 "reconcile_interval": 4.0},  # removals are looked for every few seconds (docs/removals.md)
    "changes": {"publish_interval": 0.5},
    # the sandbox API listens on loopback, which the egress policy refuses unless it is allowed
    "http": {"total_timeout": 5.0, "connect_timeout": 2.0, "read_timeout": 5.0, "allow": ["127.0.0.1"]},
    "log": {"format": "console", "level": "error"},
}
TROUBLE = {0: "rate_limit", 3: "unauthorized", 4: "flapping", 7: "rate_limit", 9: "flapping"}  # by user % 12


def mongomock_compat() -> None:
    """mongomock's bulk builder predates PyMongo 4.9, whose UpdateOne passes `sort`: accept it."""
    from mongomock.collection import BulkOperationBuilder

    original: Callable[..., Any] = BulkOperationBuilder.add_update
    if getattr(original, "_collector_shim", False):
        return

    def add_update(self: Any, selector: Any, doc: Any, multi: bool = False, upsert: bool = False,
                   collation: Any = None, array_filters: Any = None, hint: Any = None, sort: Any = None) -> Any:
        return original(self, selector, doc, multi=multi, upsert=upsert, collation=collation,
                        array_filters=array_filters, hint=hint)

    add_update._collector_shim = True  # type: ignore[attr-defined]
    BulkOperationBuilder.add_update = add_update  # type: ignore[method-assign]


def seed(sandbox: Sandbox, users: int, rng: random.Random,
         now: datetime) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Networks for `users` users across services; every 12th user misbehaves in one way."""
    docs, trouble = [], {}
    for i in range(users):
        service = SERVICES[i % len(SERVICES)]
        token = f"demo-{service}-{i:03d}-{rng.getrandbits(32):08x}"
        sandbox.add_user(service, token, items=rng.randint(15, 120), name=f"user{i:03d}")
        kind = TROUBLE.get(i % 12)
        if kind == "rate_limit":
            sandbox.inject(token, "rate_limit", seconds=3)
        elif kind == "unauthorized":
            sandbox.users[token].revoked = True
        elif kind == "flapping":
            sandbox.inject(token, "status", count=2, status=503)
        if kind:
            trouble[f"user{i:03d}"] = kind
        docs.append({"user": f"user{i:03d}", "service": service, "accessToken": token, "mode": "initial",
                     "scheduledTo": now})
    return docs, trouble


async def progress(store: Store, now: datetime) -> dict[str, int]:
    n = store.networks
    return {
        "initial": await n.count_documents({"mode": "initial", "disabled": {"$ne": True}}),
        "normal": await n.count_documents({"mode": "normal", "disabled": {"$ne": True}}),
        "unauthorized": await n.count_documents(states.WHERE["unauthorized"]),
        "disabled": await n.count_documents(states.WHERE["disabled"]),
        "rate_limited": await n.count_documents({"rateLimitedUntil": {"$gt": now}}),
        "retrying": await n.count_documents({"errors": {"$gt": 0}, "disabled": {"$ne": True}}),
        "items": await store.items.count_documents({}),
    }


def line(p: dict[str, int], served: int, elapsed: float) -> str:
    return (f"[{elapsed:5.1f}s] initial {p['initial']:3d} | normal {p['normal']:3d} | unauthorized "
            f"{p['unauthorized']} | disabled {p['disabled']} | rate-limited {p['rate_limited']} | retrying "
            f"{p['retrying']} | items {p['items']:5d} / served {served}")


@dataclass
class Accounting:
    """Where every item upstream is: `stored`, or held back, counted per reason (with the users it holds back).
    upstream == stored + sum(held) always; `balanced` when no item is unexplained and none is stored that the
    sandbox never had."""

    upstream: int = 0
    stored: int = 0
    held: dict[str, Counter[str]] = field(default_factory=dict)  # reason -> items held back, by user
    strays: int = 0  # stored items the sandbox never had (a bug, were it ever > 0): outside the sum
    removed: int = 0  # items removed upstream, stored and marked removed
    unseen: int = 0  # items removed upstream, stored, their removal not found yet
    wrongly: int = 0  # items marked removed that are still upstream (a bug, were it ever > 0)

    @property
    def balanced(self) -> bool:
        return UNEXPLAINED not in self.held and self.strays == 0 and self.wrongly == 0

    def rows(self) -> list[tuple[int, str]]:
        """(items, what) per line of the summary: stored, then each reason, the most items first."""
        rows = [(self.stored, "stored")]
        for reason, by_user in sorted(self.held.items(), key=lambda kv: -sum(kv[1].values())):
            rows.append((sum(by_user.values()), f"{reason} ({', '.join(sorted(by_user))})"))
        return rows


UNEXPLAINED = "missing, no reason found: MISMATCH"


def held_because(doc: dict[str, Any], missing: list[int], stored: set[int], now: datetime) -> str:
    """Why the network `doc` has not stored the upstream items `missing` (their ids; `stored`: those it has),
    read from its state in the database."""
    reason = str(doc.get("disabledReason") or "")
    state = states.label(doc, confirming=True)
    if state == "unauthorized":
        return "held back by a revoked token: disabled after a second 401"
    if state == "unauthorized?":
        return "held back by a 401 being confirmed"
    if state == "disabled":
        return "network disabled on purpose" if reason.startswith("operator:") else "network disabled after errors"
    if state == "parked":
        return "parked after rate limits in a row"
    limited = doc.get("rateLimitedUntil")
    if isinstance(limited, datetime) and aware(limited) > now:
        return "rate-limited, due at the reset"
    if int(doc.get("errors") or 0) > 0:
        return "retrying after an error"
    if doc.get("mode") == "initial":
        return "history still being back-filled"
    if min(missing) > max(stored, default=0):  # ids grow with time: all newer than anything stored
        return "arrived upstream since its last run, not yet due"
    return UNEXPLAINED


async def account(store: Store, sandbox: Sandbox, now: datetime) -> Accounting:
    """Every item upstream, from the sandbox's users and the database's networks and items (the demo's
    services use the sandbox's item ids as their own)."""
    acc = Accounting()
    stored_ids: dict[Any, set[str]] = {}
    marked: dict[Any, set[str]] = {}  # marked removed
    async for item in store.items.find({}, projection={"network": 1, "itemId": 1, "removedAt": 1}):
        stored_ids.setdefault(item.get("network"), set()).add(str(item.get("itemId")))
        if item.get("removedAt") is not None:
            marked.setdefault(item.get("network"), set()).add(str(item.get("itemId")))
    acc.stored = sum(len(ids) for ids in stored_ids.values())
    async for doc in store.networks.find({}):
        user = sandbox.users.get(sandbox.key(str(doc.get("accessToken") or "")) or "")
        stored = stored_ids.pop(doc["_id"], set())
        upstream = {str(i["id"]): int(i["id"]) for i in user.items} if user is not None else {}
        gone = {str(i) for i in user.removed} if user is not None else set()
        removed = marked.get(doc["_id"], set())
        acc.removed += len(removed & gone)
        acc.unseen += len((stored - removed) & gone)
        acc.wrongly += len(removed & upstream.keys())
        acc.stored -= len(stored & gone)  # no longer upstream: counted apart
        stored -= gone
        acc.upstream += len(upstream)
        acc.strays += len(stored - upstream.keys())
        missing = [n for key, n in upstream.items() if key not in stored]
        if missing:
            reason = held_because(doc, missing, {upstream[k] for k in stored if k in upstream}, now)
            acc.held.setdefault(reason, Counter())[str(doc.get("user"))] += len(missing)
    acc.strays += sum(len(ids) for ids in stored_ids.values())  # items of no network
    acc.stored -= acc.strays
    return acc


async def feed_summary(db: Any, acc: Accounting, removed_upstream: int, echo: Callable[[str], None]) -> None:
    """The change feed's part of the summary: events by kind, the removals found, one user's latest events."""
    kinds: Counter[str] = Counter()
    users: Counter[str] = Counter()
    async for event in db[changes.CHANGES].find({}, projection={"kind": 1, "user": 1}):
        kinds[event["kind"]] += 1
        if event["kind"] == "items.removed":
            users[str(event["user"])] += 1
    echo(f"  feed         {sum(kinds.values())} events: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    echo(f"  removals     {acc.removed} of the {removed_upstream} items removed upstream marked removed"
         + (f", {acc.unseen} not found yet" if acc.unseen else "")
         + (f", {acc.wrongly} marked removed though still upstream: MISMATCH" if acc.wrongly else ""))
    if users:
        user = users.most_common(1)[0][0]
        echo(f"  {user}'s feed (collector changes --user {user}), latest first:")
        async for event in db[changes.CHANGES].find({"user": user}).sort("seq", -1).limit(4):
            named = ", ".join(str(i.get("title") or i.get("id")) for i in event.get("items") or [])[:70]
            echo(f"    seq {event['seq']:>3}  {event['kind']:<16} {named or event.get('reason') or ''}")


async def run_demo(users: int = 36, cycles: int = 2, mongodb_uri: str | None = None, time_limit: float = 180.0,
                   echo: Callable[[str], None] = print, seed_value: int = 2026) -> bool:
    """Run the demo; True when every item the sandbox served is stored exactly once."""
    rng = random.Random(seed_value)
    server = Server(Sandbox(latency=0.02, page_cap=25)).start()
    sandbox = server.sandbox
    overrides: dict[str, Any] = {**DEMO_SETTINGS,
                                 "services": {"github": {"base_url": server.url, "initial_pace": 0.1},
                                              "stackoverflow": {"base_url": f"{server.url}/2.3", "initial_pace": 0.1}}}
    if mongodb_uri:
        overrides["database"] = {"uri": mongodb_uri}
    settings = config.load(environment="demo", overrides=overrides)
    mongo = None
    if mongodb_uri:
        from collector.app import connect, make_store

        mongo, db = await connect(settings)
        db = mongo[f"collector_demo_{int(time.time())}"]
        store = await make_store(db, settings)
    else:
        try:
            from mongomock_motor import AsyncMongoMockClient
        except ImportError:
            server.stop()
            echo('collector demo without --mongodb-uri needs the in-memory database of the "demo" extra: '
                 'pip install "collector-daemon[demo]" (from a clone: pip install -e ".[demo]"), '
                 'or give --mongodb-uri')
            return False
        mongomock_compat()
        db = AsyncMongoMockClient(tz_aware=True)["collector_demo"]
        store = Store(db, feed=settings.changes.enabled)
        await store.ensure_indexes()
        await changes.ensure_indexes(db)
    docs, trouble = seed(sandbox, users, rng, utcnow())
    await store.networks.insert_many(docs)
    echo(f"sandbox API on {server.url}; database: {mongodb_uri or 'mongomock-motor (in memory)'}")
    seeded = sum(len(u.items) for u in sandbox.users.values())
    echo(f"{users} networks seeded ({seeded:,} items upstream); "
         f"troublemakers: {', '.join(f'{u} ({k})' for u, k in sorted(trouble.items()))}")
    client = http.make_client(settings)
    executor = Executor(store, client, settings, plugins.discover())
    schedulers = [Scheduler(store, executor, settings, mode) for mode in ("initial", "normal")]
    publishing = asyncio.create_task(changes.Publisher(db, settings).run())
    tasks = [asyncio.create_task(s.run()) for s in schedulers]
    healthy = [t for t, u in sandbox.users.items() if u.name not in trouble]  # their removals are found in time
    removed_upstream = 0
    started = time.monotonic()
    tty = sys.stdout.isatty()
    last_print = 0.0
    cycle, cycle_started, ok = 0, None, False

    def served() -> int:
        return sum(sandbox.stats()["unique_served"].values())

    try:
        while time.monotonic() - started < time_limit:
            await asyncio.sleep(0.25)
            now = utcnow()
            p = await progress(store, now)
            elapsed = time.monotonic() - started
            if tty:
                print("\r" + line(p, served(), elapsed), end="", flush=True)
            elif elapsed - last_print >= 2:
                echo(line(p, served(), elapsed))
                last_print = elapsed
            caught_up = p["initial"] == 0 and p["retrying"] == 0 and p["items"] == served()
            found = await store.items.count_documents({"removedAt": {"$exists": True}})
            if not caught_up or found < removed_upstream or await db[outbox.POINTERS].count_documents({}):
                continue
            if cycle_started is not None:
                pending = await store.networks.count_documents(
                    {"mode": "normal", "disabled": {"$ne": True}, "lastExecution": {"$lt": cycle_started}})
                if pending:
                    continue
            if cycle == cycles:
                ok = True
                break
            cycle += 1
            cycle_started = utcnow()
            fresh = 0
            for token, user in sandbox.users.items():
                if not user.revoked and rng.random() < 0.5:
                    sandbox.add_items(token, 3)
                    fresh += 3
            if tty:
                print()
            gone = 0
            for token in rng.sample(healthy, max(1, len(healthy) // 4)):  # un-starred, un-liked upstream
                user = sandbox.users[token]
                gone += len(sandbox.remove_items(token, [rng.choice(user.items)["id"]] if user.items else []))
            removed_upstream += gone
            echo(f"normal cycle {cycle}/{cycles}: {fresh} new items arrive upstream, {gone} are removed")
    finally:
        for s in schedulers:
            s.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        await changes.Publisher(db, settings).publish()  # what the last runs wrote
        publishing.cancel()
        await asyncio.gather(publishing, return_exceptions=True)
        await client.aclose()
        server.stop()
    if tty:
        print()
    p = await progress(store, utcnow())
    stats = sandbox.stats()
    served_unique = sum(stats["unique_served"].values())
    runs = sum((s.stats.runs for s in schedulers), Counter())
    echo("summary")
    echo(f"  networks     normal {p['normal']}, unauthorized {p['unauthorized']}, disabled {p['disabled']}")
    echo(f"  runs         {sum(runs.values())} ({', '.join(f'{k} {v}' for k, v in sorted(runs.items()))})")
    echo(f"  requests     {stats['requests']} served by the sandbox; faults injected {stats['faults']}")
    echo(f"  items        {p['items']:,} stored, {served_unique:,} distinct items served: "
         + ("equal" if p["items"] == served_unique else "MISMATCH"))
    acc = await account(store, sandbox, utcnow())
    echo(f"  upstream     {acc.upstream:,} items ({seeded:,} seeded + {acc.upstream - seeded + removed_upstream:,} "
         f"arrived - {removed_upstream} removed in {cycle} normal cycles), each one stored or held back:")
    for n, what in acc.rows():
        echo(f"  {n:>12,}  {what}")
    echo(f"  {acc.upstream:>12,}  = upstream" + ("" if acc.balanced else "  MISMATCH")
         + (f"; and {acc.strays:,} stored items the sandbox never had: MISMATCH" if acc.strays else ""))
    await feed_summary(db, acc, removed_upstream, echo)
    echo(f"  time         {time.monotonic() - started:.1f}s" + ("" if ok else " (timed out before the end)"))
    if mongo is not None:
        await mongo.drop_database(db.name)
        await mongo.close()
    return ok and p["items"] == served_unique and acc.balanced and acc.removed == removed_upstream
