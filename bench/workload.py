"""One measured workload in a process of its own, so that its peak RSS and CPU seconds are its own.

    python bench/workload.py VARIANT --uri URI --db NAME --sandbox URL --networks N --concurrency C ...

Prints one JSON object (the figures) as its last line. Variants:
  collector   the real daemon (collector.app.run_daemon, as `collector --mode M` runs it) until every
              seeded network has had its run persisted; --cycles K repeats that K times in one process
              (normal mode: new items arrive upstream before each cycle), RSS read after each cycle
  ceiling_a   the daemon's pooled clients (its transport) fetching and parsing the same pages at the same concurrency
              (no database)
  ceiling_b   ceiling_a plus one insert_many of each page's items through PyMongo async (the least storage
              work possible: no claim, no state, no duplicate check)
  old         the replaced system's way: one network after another, one lookup (and insert) per item
  claims      due selection alone: claim --due networks through the daemon's own claim path, time-boxed
The networks are seeded by bench/run.py (tokens PREFIX0..PREFIX{N-1}, one sandbox user each).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import sys
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from pymongo import AsyncMongoClient, monitoring  # noqa: E402

from collector import config, http, logs  # noqa: E402
from collector.documents import item_key  # noqa: E402
from collector.sdk import parse_time  # noqa: E402
from collector.store import Store  # noqa: E402

HEADERS = {"Accept": "application/vnd.github.star+json", "X-GitHub-Api-Version": "2022-11-28"}


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def live_blocks() -> int:
    """The interpreter's allocated blocks after a full collection (sys.getallocatedblocks): what the process still
    holds, without the memory the allocators keep for reuse that RSS also counts. A leak grows this."""
    gc.collect()
    return sys.getallocatedblocks()


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_s() -> float:
    t = os.times()
    return t.user + t.system


def proc_cpu(pid: int) -> float:
    """CPU seconds of a process and of its children that have exited (utime+stime+cutime+cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def settings_for(args: argparse.Namespace) -> config.Settings:
    """Production settings pointed at the sandbox and the bench database, at the asked concurrency."""
    over = {
        "database": {"uri": args.uri, "name": args.db},
        "daemon": {"concurrency": args.concurrency},
        # the sandbox listens on loopback, which the egress policy refuses unless it is allowed
        "http": {"max_connections": max(args.concurrency, 16), "allow": ["127.0.0.1"]},
        "log": {"format": "json", "level": "info"},
        "services": {"github": {"base_url": args.sandbox, "concurrency": args.concurrency}},
        "changes": {"enabled": args.feed == "on"},  # the change feed (collector/changes.py)
    }
    return config.load(environment="production", overrides=over, environ={})


def tokens(args: argparse.Namespace) -> list[str]:
    return [f"{args.prefix}{i}" for i in range(args.networks)]


async def fetch_page(client: httpx.AsyncClient, base: str, token: str) -> list[dict[str, Any]]:
    response = await client.get(f"{base}/user/starred", params={"per_page": 100, "sort": "created",
                                                                 "direction": "desc"},
                                headers={**HEADERS, "Authorization": f"Bearer {token}"})
    response.raise_for_status()
    return response.json()


def item_doc(token: str, entry: dict[str, Any], now: datetime) -> dict[str, Any]:
    """The document the daemon stores for one starred repository (same fields, same size)."""
    repo = entry["repo"]
    return {"_id": item_key(token, "github", str(repo["id"])), "user": token, "service": "github",
            "itemId": str(repo["id"]), "network": token, "title": repo.get("full_name"),
            "url": repo.get("html_url"), "author": (repo.get("owner") or {}).get("login"),
            "created": parse_time(entry.get("starred_at")), "collectedAt": now, "updatedAt": now, "raw": entry}


async def ceiling(args: argparse.Namespace, store: bool) -> dict[str, Any]:
    """--clients 1: one client with every connection; more: that many clients sharing them, a request on the
    least busy one (what collector.http.ClientPool does)."""
    shards = max(1, args.clients)
    per = max(1, args.concurrency // shards)
    mongo = AsyncMongoClient(args.uri, tz_aware=True) if store else None
    # a database of its own with the daemon's indexes (Store.ensure_indexes): ceiling B pays for the same index
    # maintenance per insert as the daemon does
    ceiling_db = mongo[f"{args.db}_ceiling"] if mongo is not None else None
    items = ceiling_db.items if ceiling_db is not None else None
    if ceiling_db is not None:
        await mongo.drop_database(ceiling_db.name)
        await Store(ceiling_db).ensure_indexes()
    gate = asyncio.Semaphore(args.concurrency)
    count = 0

    async def one(clients: list[httpx.AsyncClient], token: str) -> None:
        nonlocal count
        async with gate:
            i = busy.index(min(busy))
            busy[i] += 1
            try:
                page = await fetch_page(clients[i], args.sandbox, token)
            finally:
                busy[i] -= 1
            count += len(page)
            if items is not None and page:
                now = datetime.now(UTC)
                await items.insert_many([item_doc(token, e, now) for e in page], ordered=False)

    # the daemon's clients (collector.http.make_client): its transport (`[http] transport`), `shards` of `per`
    # connections; requests sent with their plain httpx API
    settings = settings_for(args)
    clients = http.make_client(replace(settings, http=replace(settings.http, max_connections=shards * per,
                                                                total_timeout=60.0)), per_client=per).clients
    busy = [0] * shards
    if mongo is not None:
        await mongo.admin.command("ping")  # connected before the clock starts, like the daemon
    cpu0, t0 = cpu_s(), time.perf_counter()
    await asyncio.gather(*(one(clients, t) for t in tokens(args)))
    wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    await asyncio.gather(*(client.aclose() for client in clients))
    if mongo is not None:
        stored = await items.count_documents({})
        await mongo.drop_database(ceiling_db.name)
        await mongo.close()
    else:
        stored = None
    return {"runs": args.networks, "items": count, "stored": stored, "wall": wall, "cpu": cpu}


async def old_way(args: argparse.Namespace) -> dict[str, Any]:
    """What the replaced system did: networks one after another, and per item one lookup by
    (user, service, itemId) and one insert if it is new; then one state update per network."""
    mongo = AsyncMongoClient(args.uri, tz_aware=True)
    db = mongo[args.db]
    await mongo.admin.command("ping")
    count = 0
    async with httpx.AsyncClient(timeout=60) as client:
        cpu0, t0 = cpu_s(), time.perf_counter()
        for token in tokens(args):
            page = await fetch_page(client, args.sandbox, token)
            now = datetime.now(UTC)
            for entry in page:
                doc = item_doc(token, entry, now)
                if await db.items.find_one({"user": token, "service": "github", "itemId": doc["itemId"]}) is None:
                    await db.items.insert_one(doc)
                    count += 1
            await db.networks.update_one({"user": token, "service": "github"},
                                         {"$set": {"mode": "normal", "lastExecution": now}})
        wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    await mongo.close()
    return {"runs": args.networks, "items": count, "wall": wall, "cpu": cpu}


class CommandCounter(monitoring.CommandListener):
    """Every command the daemon sends the database, by name (docs/scaling.md's operations per run)."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] = self.counts.get(event.command_name, 0) + 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def collector_cycles(args: argparse.Namespace) -> dict[str, Any]:
    """The real daemon until every network has had `cycles` runs persisted; between two cycles new
    items arrive upstream and every network is due again (normal mode)."""
    from collector.app import run_daemon

    commands = CommandCounter()
    monitoring.register(commands)  # every client made after this (the daemon's) reports its commands

    settings = settings_for(args)
    log_file = Path(args.log or os.devnull).open("w")  # noqa: ASYNC230  (before the clock starts)
    logs.configure("json", "info", stream=log_file)
    scheduler_box: list[Any] = []
    ready = asyncio.Event()
    walls, rss, cpus, items, runs_walls, blocks = [], [], [], [], [], []
    ours: Counter[str] = Counter()  # the commands this driver sends, not the daemon
    mongo = AsyncMongoClient(args.uri, tz_aware=True)
    networks = mongo[args.db]["networks"]

    async def drive() -> None:
        await ready.wait()
        scheduler = scheduler_box[0]
        try:
            done_before = 0
            for cycle in range(args.cycles):
                due = datetime.now(UTC)
                if cycle:  # new items upstream, every network due again (not timed)
                    async with httpx.AsyncClient() as control:
                        await control.post(f"{args.sandbox}/_sandbox/bulk/add", json={"count": args.new_items})
                    await networks.update_many({}, {"$set": {"scheduledTo": due}})
                    scheduler._wake.set()
                t0, cpu0, items0 = time.perf_counter(), cpu_s(), scheduler.stats.items_new
                target = done_before + args.networks
                while sum(scheduler.stats.runs.values()) < target:  # noqa: ASYNC110  (the daemon's own counter)
                    await asyncio.sleep(0.01)
                # a network may have run twice by then (a reconciliation's listing brings it back within seconds:
                # collector/reconcile.py) while another has not run yet: the cycle ends when none is still due from
                # its start (a run schedules its network after `due`)
                ours["aggregate"] += 1
                while await networks.count_documents({"scheduledTo": {"$lte": due}}):
                    ours["aggregate"] += 1
                    await asyncio.sleep(0.05)
                runs_done = time.perf_counter() - t0
                ours["find"] += settings.changes.enabled
                while settings.changes.enabled and await mongo[args.db]["outbox"].find_one(
                        {}, projection={"_id": 1}) is not None:  # every event published: no pointer left
                    ours["find"] += 1
                    await asyncio.sleep(0.05)
                walls.append(time.perf_counter() - t0)
                runs_walls.append(runs_done)
                cpus.append(cpu_s() - cpu0)
                items.append(scheduler.stats.items_new - items0)
                rss.append(round(rss_mb(), 1))
                blocks.append(live_blocks())
                done_before = sum(scheduler.stats.runs.values())
        finally:  # a failing driver stops the daemon too: `await driver` then raises its error
            scheduler.stop()

    driver = asyncio.create_task(drive())
    scheduler = await run_daemon(settings, args.mode,
                                 on_ready=lambda sched: (scheduler_box.append(sched), ready.set()))
    await driver
    events = await mongo[args.db]["changes"].count_documents({})
    await mongo.close()
    log_file.close()
    # the daemon's own commands: less the bench driver's on `mongo` (one update_many per cycle after the first, the
    # waits' counts and finds)
    ours["update"] += args.cycles - 1
    for name, sent in ours.items():
        commands.counts[name] = commands.counts.get(name, 0) - sent
    return {"commands": {k: v for k, v in sorted(commands.counts.items()) if v > 0},
            "runs": sum(scheduler.stats.runs.values()), "outcomes": dict(scheduler.stats.runs),
            "items": sum(items), "wall": walls[0], "cpu": cpus[0], "walls": [round(w, 2) for w in walls],
            "runs_wall": runs_walls[0], "events": events,
            "cpus": [round(c, 2) for c in cpus], "cycle_items": items, "rss_cycles": rss,
            "blocks_cycles": blocks,
            "crashes": scheduler.stats.crashes}


async def claims(args: argparse.Namespace) -> dict[str, Any]:
    """Claims per second through the daemon's own claim path (Scheduler.fill with runs that end at
    once), until every due network is claimed or --seconds pass."""
    from collector.app import make_store

    mongo = AsyncMongoClient(args.uri, tz_aware=True)
    db = mongo[args.db]
    settings = settings_for(args)
    store: Store = await make_store(db, settings)
    owner, now = "bench-claims", datetime.now(UTC)
    claimed = 0
    cpu0, t0 = cpu_s(), time.perf_counter()
    deadline = t0 + args.seconds
    while claimed < args.due and time.perf_counter() < deadline:
        got = await claim_some(store, owner, now, min(args.concurrency, args.due - claimed), settings)
        if not got:
            break
        claimed += got
    wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    await mongo.close()
    return {"claims": claimed, "wall": wall, "cpu": cpu, "claims_per_s": claimed / wall if wall else 0.0}


async def claim_some(store: Any, owner: str, now: datetime, want: int, settings: config.Settings) -> int:
    """Up to `want` claims the way the scheduler's fill takes them (one Store.claim_many)."""
    return len(await store.claim_many("initial", owner, now, settings.daemon.lease_ttl, want))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=("collector", "ceiling_a", "ceiling_b", "old", "claims"))
    parser.add_argument("--uri", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--sandbox", default="")
    parser.add_argument("--prefix", default="u")
    parser.add_argument("--networks", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--mode", default="initial")
    parser.add_argument("--cycles", type=int, default=1)
    parser.add_argument("--new-items", type=int, default=99)
    parser.add_argument("--due", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--log", default="")
    parser.add_argument("--feed", choices=("on", "off"), default="on", help="collector: the change feed")
    parser.add_argument("--clients", type=int, default=1, help="ceilings: httpx clients sharing the connections")
    args = parser.parse_args(argv)
    runner = {"collector": collector_cycles, "ceiling_a": lambda a: ceiling(a, store=False),
              "ceiling_b": lambda a: ceiling(a, store=True), "old": old_way, "claims": claims}[args.variant]
    figures = asyncio.run(runner(args))
    figures.update(variant=args.variant, networks=args.networks, concurrency=args.concurrency,
                   rss_peak=round(peak_mb(), 1))
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
