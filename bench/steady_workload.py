"""The steady-state benchmark's measured processes (bench/steady.py seeds them and reads their figures).

    python bench/steady_workload.py VARIANT --uri URI --db NAME --sandbox URL --concurrency C --transport T ...

Prints one JSON object (the figures) as its last line. Variants:
  warm     every network's back-fill of its empty history (one page: the users have no item yet) through the
           connectors and the daemon's clients, then mode normal with the cursor the connector left, not due: so a
           normal run is answered as the API answers when nothing is new (not timed)
  ceiling  ceiling A': the daemon's pooled clients (collector.http.make_client, `[http] transport` T) sending the
           requests the connectors build for the stored cursors of the --plan's networks (the daemon's backlog
           pass) at the same concurrency, through collector.http.fetch (caps and decoding included), no database
  steady   the real daemon in normal mode (collector.app.run_daemon), two passes, each from a quiet daemon (nothing
           due, nothing in flight): `backlog`, the --plan's networks due at once (their new items arrived before,
           as for the ceiling): runs/s, CPU, database commands and engine CPU per run; `paced`, due times spread
           over --paced-seconds at 0.8 of the backlog's runs/s (--share of those users get 1-3 new items first):
           the lag behind scheduledTo. A pass in which no network runs for --stall seconds is stopped and reported
           as a stall
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from pymongo import AsyncMongoClient, UpdateOne, monitoring  # noqa: E402

from bench.workload import CommandCounter, cpu_s, proc_cpu  # noqa: E402
from collector import config, http, logs, plugins, sdk  # noqa: E402
from collector.model import Network  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def watched(pids: str) -> float:
    return sum(proc_cpu(int(p)) for p in pids.split(",") if p)


def bases(sandbox: str) -> dict[str, str]:
    """Each service's base URL in the sandbox (Mastodon and GitLab networks name theirs in their options too)."""
    special = {"stackoverflow": f"{sandbox}/2.3", "hackernews": f"{sandbox}/api/v1"}
    return {s: special.get(s, sandbox) for s in plugins.discover()}


def settings_for(args: argparse.Namespace, mode: str) -> config.Settings:
    """Production settings pointed at the sandbox and the bench database, every service at the concurrency."""
    services: dict[str, Any] = {s: {"base_url": url, "concurrency": args.concurrency}
                                for s, url in bases(args.sandbox).items()}
    over = {
        "database": {"uri": args.uri, "name": args.db},
        "daemon": {"concurrency": args.concurrency},
        # the sandbox listens on loopback, which the egress policy refuses unless it is allowed
        "http": {"max_connections": max(args.concurrency, 16), "allow": ["127.0.0.1"], "transport": args.transport},
        "log": {"format": "json", "level": "info"},  # a production daemon's logs, written to /dev/null
        "services": services,
    }
    return config.load(environment="production", overrides=over, environ={})


def quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def daemon(args: argparse.Namespace, mode: str, drive: Any) -> Any:
    """Run the real daemon in `mode` while `drive(scheduler)` runs; stop it when the drive returns."""
    from collector.app import run_daemon

    log_file = Path(os.devnull).open("w")  # noqa: ASYNC230  (before anything is timed)
    logs.configure("json", "info", stream=log_file)
    box: list[Any] = []
    ready = asyncio.Event()
    result: dict[str, Any] = {}

    async def driver() -> None:
        await ready.wait()
        try:
            result.update(await drive(box[0]))
        finally:
            box[0].stop()

    task = asyncio.create_task(driver())
    scheduler = await run_daemon(settings_for(args, mode), mode, on_ready=lambda s: (box.append(s), ready.set()))
    await task
    log_file.close()
    return scheduler, result


def request_for(connector: sdk.Connector, ctx: sdk.Context) -> sdk.Request:
    """The request the executor sends for `ctx` (collector/executor.py `_call`): the connector's, with its auth."""
    request = connector.request(ctx)
    return sdk.Request(request.url, method=request.method, params=request.params, form=request.form,
                       headers={**connector.auth_headers(ctx), **request.headers})


class Connectors:
    def __init__(self, settings: config.Settings):
        self.settings, self.registry, self.made = settings, plugins.discover(), {}  # type: ignore[var-annotated]

    def __call__(self, service: str) -> sdk.Connector:
        if service not in self.made:
            cls = self.registry[service].cls
            assert cls is not None, self.registry[service].error
            self.made[service] = cls(self.settings.service(service))
        return self.made[service]  # type: ignore[no-any-return]


FAR = timedelta(days=30)  # "not due": a network the passes leave alone


async def warm(args: argparse.Namespace) -> dict[str, Any]:
    """Every network's back-fill of its (empty) history, the way the executor runs it: the connector's requests
    through the daemon's clients until its page says no more, then mode normal with the connector's cursor, not
    due (written by _id: the daemon's own initial runs cost a collection scan each on an engine without indexes,
    ~16 ms at 20,000 networks on mongo-java-server, for a step that is not measured)."""
    settings = settings_for(args, "normal")
    connectors = Connectors(settings)
    mongo = AsyncMongoClient(args.uri, tz_aware=True)
    networks = mongo[args.db].networks
    docs = [doc async for doc in networks.find({"mode": "initial"})]
    gate = asyncio.Semaphore(args.concurrency)
    statuses: Counter[str] = Counter()
    updates: list[UpdateOne] = []
    far = datetime.now(UTC) + FAR
    pool = http.make_client(settings)

    async def one(doc: dict[str, Any]) -> None:
        connector = connectors(doc["service"])
        network = Network.from_doc(doc, required=connector.required)
        cursor = network.cursor
        async with gate:
            for _ in range(5):
                ctx = sdk.Context(network=network, mode="initial", cursor=cursor, now=datetime.now(UTC))
                response = await http.fetch(pool, request_for(connector, ctx), max_bytes=settings.body_cap(
                    network.service), total_timeout=settings.http.total_timeout)
                statuses[f"{doc['service']} {response.status_code}"] += 1
                connector.check(ctx, response)
                page = connector.parse(ctx, response)
                cursor = page.cursor if page.cursor is not None else cursor
                if not page.more:
                    updates.append(UpdateOne({"_id": doc["_id"]}, {"$set": {"mode": "normal", "cursor": cursor,
                                                                          "scheduledTo": far}}))
                    return
        statuses[f"{doc['service']} not done after 5 pages"] += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(one(doc) for doc in docs))
    for lo in range(0, len(updates), 5000):
        await networks.bulk_write(updates[lo:lo + 5000], ordered=False)
    await pool.aclose()
    left = await networks.count_documents({"mode": "initial"})
    await mongo.close()
    return {"wall": round(time.perf_counter() - t0, 1), "networks": len(docs), "left": left,
            "statuses": dict(sorted(statuses.items()))}


class Seen:
    """The networks run in this pass (the scheduler's Stats.record, wrapped): how many of `due` (counted as they
    come: the driver's polling must cost the measured process next to nothing), and what a network run again was."""

    def __init__(self, scheduler: Any, due: dict[Any, Any]):
        self.ids: set[Any] = set()
        self.done = 0  # networks of `due` run
        self.again: Counter[str] = Counter()  # "service: reason" of the runs of a network already run in the pass
        record = scheduler.stats.record

        def seen(result: Any, at: float | None = None) -> None:
            if result.network_id in self.ids:
                self.again[f"{result.service}: {result.transition.reason}"[:120]] += 1
            else:
                self.done += result.network_id in due
            self.ids.add(result.network_id)
            record(result, at)

        scheduler.stats.record = seen


async def wait_for(done: Any, stall: float, what: str) -> str | None:
    """Until `done()` says (n, target) with n >= target; a message when n stayed put for `stall` seconds."""
    last, moved = -1, time.monotonic()
    while True:
        n, target = done()
        if n >= target:
            return None
        if n != last:
            last, moved = n, time.monotonic()
        elif time.monotonic() - moved > stall:
            return f"no {what} for {stall:.0f} s: {n} of {target}"
        await asyncio.sleep(0.05)


async def add_items(sandbox: str, arrivals: dict[str, int]) -> None:
    async with httpx.AsyncClient(base_url=sandbox, timeout=60) as control:
        for token, count in arrivals.items():
            (await control.post(f"/_sandbox/users/{token}/add", json={"count": count})).raise_for_status()


def arrivals_for(tokens: list[str], share: float, rng: random.Random) -> dict[str, int]:
    """`share` of these users, 1-3 new items each."""
    return {t: rng.randint(1, 3) for t in rng.sample(tokens, max(1, round(len(tokens) * share)))}


async def steady(args: argparse.Namespace) -> dict[str, Any]:
    """The daemon's passes: `backlog` over the plan's networks (their new items arrived before, as for ceiling A'),
    then `paced` over --paced-seconds of due times at 0.8 of the backlog's runs/s."""
    plan = args.plan_data
    commands = CommandCounter()
    monitoring.register(commands)  # every client made after this (the daemon's) reports its commands
    mongo = AsyncMongoClient(args.uri, tz_aware=True)
    networks = mongo[args.db].networks
    token_of = {doc["_id"]: str(doc["accessToken"]) async for doc in networks.find({}, {"accessToken": 1})}
    by_text = {str(nid): nid for nid in token_of}
    rng = random.Random(args.seed)

    async def one_pass(scheduler: Any, name: str, ids: list[Any], arrived: dict[str, int], rate: float
                       ) -> dict[str, Any]:
        # quiet first: nothing due, nothing in flight (a run begun before the new items arrived would miss them)
        await networks.update_many({}, {"$set": {"scheduledTo": datetime.now(UTC) + FAR}})
        quiet = await wait_for(lambda: (0 if scheduler.inflight else 1, 1), args.stall, "quiet daemon")
        await add_items(args.sandbox, arrived)
        start = datetime.now(UTC) + timedelta(seconds=1.0 if rate else 0.0)
        if rate:  # due one after another at `rate` a second, from `start`
            due = {nid: start + timedelta(seconds=n / rate) for n, nid in enumerate(ids)}
            for lo in range(0, len(ids), 5000):
                await networks.bulk_write([UpdateOne({"_id": nid}, {"$set": {"scheduledTo": due[nid]}})
                                           for nid in ids[lo:lo + 5000]], ordered=False)
            late = (datetime.now(UTC) - start).total_seconds()
        else:  # due at once; the lag counts from when they all are (the write takes a while on a slow engine)
            await networks.update_many({"_id": {"$in": ids}}, {"$set": {"scheduledTo": start}})
            start, late = datetime.now(UTC), 0.0
            due = dict.fromkeys(ids, start)
        await asyncio.sleep(max(0.0, (start - datetime.now(UTC)).total_seconds()))
        base = (sum(scheduler.stats.runs.values()), scheduler.stats.items_new, Counter(scheduler.stats.runs),
                Counter(commands.counts))
        db0, sb0, cpu0, t0 = watched(args.db_pids), watched(args.sandbox_pid), cpu_s(), time.perf_counter()
        seen = Seen(scheduler, due)
        scheduler._wake.set()
        stalled = quiet or await wait_for(lambda: (seen.done, len(due)), args.stall, "network run")
        wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
        db_cpu, sandbox_cpu = watched(args.db_pids) - db0, watched(args.sandbox_pid) - sb0
        runs = sum(scheduler.stats.runs.values()) - base[0]
        lags = []
        async for doc in networks.find({"_id": {"$in": ids}}, {"lastExecution": 1}):
            at = doc.get("lastExecution")
            if at is not None and doc["_id"] in seen.ids:
                lags.append(max(0.0, (at - due[doc["_id"]]).total_seconds()))
        sent = Counter(commands.counts)
        sent.subtract(base[3])
        return {"pass": name, "networks": len(ids), "runs": runs, "networks_run": len(seen.ids & due.keys()),
                "others_run": len(seen.ids - due.keys()), "again": dict(seen.again),
                "wall": round(wall, 3), "cpu": round(cpu, 3), "db_cpu": round(db_cpu, 2),
                "sandbox_cpu": round(sandbox_cpu, 2), "rate": round(rate, 1), "late_start": round(max(late, 0.0), 2),
                "arrived": sum(arrived.values()), "new": scheduler.stats.items_new - base[1],
                "outcomes": dict(Counter(scheduler.stats.runs) - base[2]),
                "commands": {k: v for k, v in sorted(sent.items()) if v > 0},
                "lag_p50": round(quantile(lags, 0.5), 3), "lag_p99": round(quantile(lags, 0.99), 3),
                "lag_max": round(max(lags, default=0.0), 3), "rss": rss_mb(), "stalled": stalled}

    async def drive(scheduler: Any) -> dict[str, Any]:
        ids = [by_text[i] for i in plan["ids"]]
        backlog = await one_pass(scheduler, "backlog", ids, {}, 0.0)
        backlog["arrived"] = sum(plan["arrivals"].values())  # added by bench/steady.py, before ceiling A'
        if backlog["stalled"] or not args.paced_seconds:
            return {"passes": [backlog]}
        rate = args.paced_rate or 0.8 * backlog["runs"] / max(backlog["wall"], 1e-9)
        paced = rng.sample(list(token_of), min(len(token_of), max(1, round(rate * args.paced_seconds))))
        arrived = arrivals_for([token_of[nid] for nid in paced], args.share, rng)
        return {"passes": [backlog, await one_pass(scheduler, "paced", paced, arrived, rate)]}

    scheduler, out = await daemon(args, "normal", drive)
    out["crashes"] = scheduler.stats.crashes
    out["networks"] = len(token_of)
    await mongo.close()
    return out


async def ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """Ceiling A': the requests of the plan's networks (the daemon's backlog pass) through its pooled clients."""
    settings = settings_for(args, "normal")
    connectors = Connectors(settings)
    wanted = set(args.plan_data["ids"])
    mongo = AsyncMongoClient(args.uri, tz_aware=True)
    requests = []
    now = datetime.now(UTC)
    async for doc in mongo[args.db].networks.find({}):
        if str(doc["_id"]) not in wanted:
            continue
        connector = connectors(doc["service"])
        network = Network.from_doc(doc, required=connector.required)
        ctx = sdk.Context(network=network, mode="normal", cursor=network.cursor, now=now)
        requests.append((request_for(connector, ctx), settings.body_cap(network.service)))
    await mongo.close()
    statuses: Counter[int] = Counter()
    gate = asyncio.Semaphore(args.concurrency)
    pool = http.make_client(settings)

    async def one(request: sdk.Request, cap: int) -> None:
        async with gate:
            response = await http.fetch(pool, request, max_bytes=cap, total_timeout=settings.http.total_timeout)
            statuses[response.status_code] += 1

    sb0, cpu0, t0 = watched(args.sandbox_pid), cpu_s(), time.perf_counter()
    await asyncio.gather(*(one(r, cap) for r, cap in requests))
    wall, cpu = time.perf_counter() - t0, cpu_s() - cpu0
    sandbox_cpu = watched(args.sandbox_pid) - sb0
    await pool.aclose()
    return {"runs": len(requests), "wall": round(wall, 3), "cpu": round(cpu, 3), "sandbox_cpu": round(sandbox_cpu, 2),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}, "rss": rss_mb()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=("warm", "steady", "ceiling"))
    parser.add_argument("--uri", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--sandbox", required=True)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--transport", default="aiohttp", choices=http.TRANSPORTS)
    parser.add_argument("--plan", default="", help="steady, ceiling: a JSON file {ids, arrivals} (bench/steady.py)")
    parser.add_argument("--share", type=float, default=0.05, help="users with 1-3 new items before the paced pass")
    parser.add_argument("--paced-seconds", type=float, default=30.0, help="due times of the paced pass span this "
                        "long (0: the backlog pass only)")
    parser.add_argument("--paced-rate", type=float, default=0.0, help="runs/s offered by the paced pass (0: 0.8 of "
                        "the backlog's)")
    parser.add_argument("--stall", type=float, default=30.0, help="seconds without progress that make a stall")
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--db-pids", default="", help="the database's processes, comma-separated (engine CPU)")
    parser.add_argument("--sandbox-pid", default="")
    args = parser.parse_args(argv)
    args.plan_data = json.loads(Path(args.plan).read_text()) if args.plan else {}
    runner = {"warm": warm, "steady": steady, "ceiling": ceiling}[args.variant]
    figures = asyncio.run(runner(args))
    figures.update(variant=args.variant, transport=args.transport, concurrency=args.concurrency,
                   rss_peak=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
    print(json.dumps(figures, default=str), flush=True)


if __name__ == "__main__":
    main()
