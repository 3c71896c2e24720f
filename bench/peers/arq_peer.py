"""The arq peer: normal-mode runs done the way a Python team would build them with a job queue (issue 29, item 4).

A BENCHMARK HARNESS, NOT PRODUCT CODE. It exists so that bench/ can run the daemon's steady-state workload a second
way, on the same machine, database and sandbox, and compare runs/s and CPU per run. It uses nothing of `collector`:
arq 0.28 workers over Redis (Debian's redis-server, started and stopped here), httpx and PyMongo's async client.

    from bench.peers.arq_peer import peer_missing, run_peer, sandbox_base_urls
    if (why := peer_missing()) is None:
        figures = run_peer(uri, "bench_peer", sandbox_base_urls(sandbox_url), target_runs=20_000, concurrency=256)
    .venv/bin/python bench/peers/try_peer.py        # standalone: test database, sandbox, 2,000 networks

What run_peer does: redis-server on a free port of 127.0.0.1 in a temporary directory, no persistence (no RDB, no
AOF), always stopped at the end; `workers` arq worker processes (this file, `worker CONFIG`), each with max_jobs =
concurrency; in them an arq cron job (every second: one worker runs each tick, arq's unique cron job id) that
finds every due network in MongoDB (`mode` "normal", `scheduledTo` <= now, not `disabled`), pushes their
`scheduledTo` `visibility` seconds forward and enqueues one job per network (`_job_id` net:<_id>: arq refuses a
second one while the first is queued or running): the whole backlog goes into Redis; each job does one GET of the
network's first page with httpx (GitHub: If-None-Match with the stored ETag, a 304 is a run with nothing new), keeps
the items newer than the cursor's `stop`, inserts them with one insert_many (`_id` [service, user, itemId], the
daemon's shape) and writes the new `cursor`, `scheduledTo` (now + `interval`) and `lastExecution` with one
update_one. It runs until `target_runs` jobs have completed (or `timeout`), then stops everything.

Seeding (the caller's): network documents as the daemon reads them (README "The network document"): `user`,
`service`, `accessToken`, `options` (reddit: username; gitlab: user_id or base_url; mastodon: instance; bluesky:
actor), `mode: "normal"`, `scheduledTo` <= now, and a `cursor` if one is known ({"etag", "stop"} for GitHub: without
an ETag the first run is a 200, after it the 304s). Services: SERVICES below; base URLs by service (the daemon's
`services.<name>.base_url`: Stack Exchange's ends in /2.3), sandbox_base_urls() gives the sandbox's.

Figures returned (a dict): runs, runs_per_s (from the first enqueuer tick to the target-th completion), cpu_s and
cpu_per_run_us of the worker processes (the enqueuer runs in them: arq's cron), read from /proc between the start
signal and the target; redis_cpu_s apart (infrastructure the daemon does not have); db_commands (PyMongo command
monitoring in the workers: every command, the enqueuer's included) and db_commands_per_run; HTTP requests, new
items, failed jobs, duplicate_runs (runs beyond one per network in this call: duplicates when `interval` is longer
than the call; with interval 0 a network is due again at the next tick, arq's cron: once a second), lag behind
scheduledTo (p50/p99), peak RSS, the versions and settings, and `not_guaranteed`: NOT_GUARANTEED below, what this
peer does not guarantee that the daemon does, each point read off this file's code.

Settings chosen, with arq's defaults where the brief says nothing: poll_delay 0.05 s (arq's default is 0.5 s: a
worker takes new jobs once per poll, so at 0.5 s a slot runs about two 100 ms jobs a second), keep_result 0 (a
kept result would make arq refuse the network's next job id for an hour), one httpx.AsyncClient per worker with
`concurrency` connections (http_transport "aiohttp": the same client API over aiohttp, the httpx-aiohttp package,
for a side-by-side with a daemon on that transport), PyMongo's default pool. `job_logs` (default True) logs as the
`arq` command does (INFO: two lines a job) into the worker's log file; False leaves arq's logging unconfigured
(warnings only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import httpx
from pymongo import AsyncMongoClient, monitoring
from pymongo.errors import BulkWriteError

# What this peer does not guarantee that the daemon does (README, docs/): each point is read off the code below.
NOT_GUARANTEED = [
    "no lease: nothing in the database marks a network as taken. The enqueuer's find and its scheduledTo push are "
    "two commands, and it enqueues all it found: two ticks that overlap (a tick longer than a second: arq starts the "
    "next tick's job beside it) can both enqueue a network; arq's _job_id refuses the second only while the first is "
    "queued or running, so one enqueued after the first job finished runs the network again. And a network that "
    "becomes due between the find and the push (a new one, an operator's change) is pushed without a job: it waits "
    "`visibility`",
    "no once-per-page guarantee: a job stopped after its GET (a SIGTERM: arq cancels running jobs and leaves them "
    "queued; a worker killed: its job runs again once arq's in-progress key expires, job_timeout + 10 s = 310 s) runs "
    "again, even when it had saved its state; the items are not duplicated (their _id), the requests and runs are",
    "last writer wins: the state update is unconditional (update_one by _id), so a duplicate or stale job can write "
    "back an older cursor/ETag and scheduledTo",
    "no per-API rate-limit handling: x-ratelimit-*, Retry-After, Stack Exchange quota/backoff, secondary limits are "
    "not read; a 403/429 is a failed job like any other error, retried when `visibility` runs out",
    "no backoff/disable state machine: every failure (401 revoked token, 5xx, timeout, a malformed body, a database "
    "error) fails the job and the network is tried again `visibility` seconds later, forever; no errors counter, "
    "no disabled or unauthorized state, no confirmation of a 401, no token refresh",
    "tokens in plaintext in Redis: each job's arguments (the network's accessToken included) are pickled into "
    "arq:job:<id> while it is queued or running; with job_logs arq logs each job's arguments cut at 80 characters "
    "(the token is last in them, so usually cut, depending on what precedes it)",
    "no bounds on what an API sends: no body cap, no JSON depth limit, no egress policy (any URL a base names is "
    "fetched), httpx's decoding as is",
    "one page a run: a normal run reads the first page only, so more new items than a page between two runs are "
    "never stored; no initial (back-fill) mode",
    "no per-service concurrency limit: one queue, first in first out by scheduledTo; a slow service's jobs can take "
    "every slot (max_jobs) of a worker",
    "a Redis restart loses the queue (no persistence here): those networks wait until `visibility` runs out",
]

PROGRESS = "peer:progress:"  # + worker index: a hash {complete, failed, last_end}


class PeerUnavailable(RuntimeError):
    """The peer cannot run here (redis-server or arq missing): the message says how to install it."""


def redis_server() -> str | None:
    """The redis-server binary (PATH, then Debian's /usr/bin), or None."""
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None


def peer_missing() -> str | None:
    """Why the peer cannot run here, with how to install what is missing; None when it can."""
    missing = []
    try:
        import arq  # noqa: F401
    except ImportError:
        missing.append('arq: .venv/bin/pip install -e ".[bench]"')
    if redis_server() is None:
        missing.append("redis-server: apt-get update && apt-get install -y redis-server (Debian's package)")
    return "the arq peer needs " + "; ".join(missing) if missing else None


def sandbox_base_urls(sandbox: str) -> dict[str, str]:
    """Each supported service's base URL on the project's sandbox API (as the daemon's services.<name>.base_url)."""
    base = sandbox.rstrip("/")
    return {name: base + ("/2.3" if name == "stackoverflow" else "") for name in SERVICES}


# -- the services: one GET of the first page each, then the items newest first ------------------------------------


def _time(value: Any) -> datetime | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value)
    return None


def _item(item_id: Any, title: Any, url: Any, author: Any, created: Any, raw: Any) -> dict[str, Any]:
    return {"id": str(item_id), "title": title, "url": url, "author": author, "created": _time(created), "raw": raw}


def _bearer(net: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {net['accessToken']}"}


def _options(net: dict[str, Any]) -> dict[str, Any]:
    return net.get("options") if isinstance(net.get("options"), dict) else {}


class Api(NamedTuple):
    """request(net, base) -> (url, params, headers); items(response) -> newest first; scoped: ids are per server."""

    request: Callable[[dict[str, Any], str], tuple[str, dict[str, Any], dict[str, str]]]
    items: Callable[[httpx.Response], list[dict[str, Any]]]
    scoped: bool = False


def _github(net: dict[str, Any], base: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    headers = {"Accept": "application/vnd.github.star+json", "X-GitHub-Api-Version": "2022-11-28", **_bearer(net)}
    etag = (net.get("cursor") or {}).get("etag")
    if etag:
        headers["If-None-Match"] = etag
    return f"{base}/user/starred", {"per_page": 100, "sort": "created", "direction": "desc"}, headers


def _github_items(response: httpx.Response) -> list[dict[str, Any]]:
    return [_item(e["repo"]["id"], e["repo"].get("full_name"), e["repo"].get("html_url"),
                  (e["repo"].get("owner") or {}).get("login"), e.get("starred_at"), e) for e in response.json()]


def _stackoverflow(net: dict[str, Any], base: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    params = {"site": _options(net).get("site") or "stackoverflow", "pagesize": 100, "page": 1, "sort": "added",
              "order": "desc"}
    return f"{base}/me/favorites", params, {"X-API-Access-Token": str(net["accessToken"])}


def _stackoverflow_items(response: httpx.Response) -> list[dict[str, Any]]:
    return [_item(q["question_id"], q.get("title"), q.get("link"), (q.get("owner") or {}).get("display_name"),
                  q.get("creation_date"), q) for q in response.json()["items"]]


def _spotify(net: dict[str, Any], base: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    return f"{base}/v1/me/tracks", {"limit": 50, "offset": 0}, {"Accept": "application/json", **_bearer(net)}


def _spotify_items(response: httpx.Response) -> list[dict[str, Any]]:
    return [_item(s["track"]["id"], s["track"].get("name"), (s["track"].get("external_urls") or {}).get("spotify"),
                  ((s["track"].get("artists") or [{}])[0]).get("name"), s.get("added_at"), s)
            for s in response.json()["items"] if s.get("track")]


def _youtube(net: dict[str, Any], base: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    return (f"{base}/youtube/v3/videos", {"myRating": "like", "part": "snippet", "maxResults": 50},
            {"Accept": "application/json", **_bearer(net)})


def _youtube_items(response: httpx.Response) -> list[dict[str, Any]]:
    return [_item(v["id"], (v.get("snippet") or {}).get("title"), f"https://www.youtube.com/watch?v={v['id']}",
                  (v.get("snippet") or {}).get("channelTitle"), (v.get("snippet") or {}).get("publishedAt"), v)
            for v in response.json()["items"]]


def _reddit(listing: str) -> Callable[[dict[str, Any], str], tuple[str, dict[str, Any], dict[str, str]]]:
    def request(net: dict[str, Any], base: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        return (f"{base}/user/{_options(net)['username']}/{listing}", {"limit": 100, "raw_json": 1},
                {"User-Agent": "bench-arq-peer/0.1", **_bearer(net)})

    return request


def _reddit_items(response: httpx.Response) -> list[dict[str, Any]]:
    return [_item(c["data"]["name"], c["data"].get("title") or c["data"].get("link_title"),
                  "https://www.reddit.com" + str(c["data"].get("permalink") or ""), c["data"].get("author"),
                  c["data"].get("created_utc"), c["data"]) for c in response.json()["data"]["children"]]


def _bluesky(net: dict[str, Any], base: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    return f"{base}/xrpc/app.bsky.feed.getActorLikes", {"actor": _options(net)["actor"], "limit": 100}, _bearer(net)


def _bluesky_items(response: httpx.Response) -> list[dict[str, Any]]:
    return [_item(f["post"]["uri"], (f["post"].get("record") or {}).get("text"), None,
                  (f["post"].get("author") or {}).get("handle"), (f["post"].get("record") or {}).get("createdAt"), f)
            for f in response.json()["feed"]]


def _gitlab_base(net: dict[str, Any], base: str) -> str:
    return str(_options(net).get("base_url") or base).rstrip("/").removesuffix("/api/v4")


def _gitlab_headers(net: dict[str, Any]) -> dict[str, str]:
    token = str(net["accessToken"])
    return {"PRIVATE-TOKEN": token} if token.startswith("glpat-") else _bearer(net)


def _gitlab(net: dict[str, Any], base: str) -> tuple[str, dict[str, Any], dict[str, str]]:
    user = _options(net).get("user_id") or (net.get("cursor") or {}).get("user_id")
    params = {"per_page": 100, "order_by": "id", "sort": "desc", "simple": "true"}
    return f"{_gitlab_base(net, base)}/api/v4/users/{user}/starred_projects", params, _gitlab_headers(net)


def _gitlab_items(response: httpx.Response) -> list[dict[str, Any]]:
    return [_item(p["id"], p.get("name_with_namespace"), p.get("web_url"), (p.get("namespace") or {}).get("full_path"),
                  p.get("created_at"), p) for p in response.json()]


def _mastodon(endpoint: str) -> Callable[[dict[str, Any], str], tuple[str, dict[str, Any], dict[str, str]]]:
    def request(net: dict[str, Any], base: str) -> tuple[str, dict[str, Any], dict[str, str]]:
        instance = str(_options(net).get("instance") or base).rstrip("/")
        params = {"limit": 40, "min_id": (net.get("cursor") or {}).get("min_id") or "0"}
        return f"{instance}/api/v1/{endpoint}", params, _bearer(net)

    return request


def _mastodon_items(response: httpx.Response) -> list[dict[str, Any]]:
    return [_item(s["id"], s.get("spoiler_text") or str(s.get("content") or "")[:120], s.get("url"),
                  (s.get("account") or {}).get("acct"), s.get("created_at"), s) for s in response.json()]


SERVICES: dict[str, Api] = {
    "github": Api(_github, _github_items),
    "stackoverflow": Api(_stackoverflow, _stackoverflow_items),
    "spotify": Api(_spotify, _spotify_items),
    "youtube": Api(_youtube, _youtube_items),
    "reddit_saved": Api(_reddit("saved"), _reddit_items),
    "reddit_upvoted": Api(_reddit("upvoted"), _reddit_items),
    "bluesky": Api(_bluesky, _bluesky_items),
    "gitlab": Api(_gitlab, _gitlab_items, scoped=True),
    "mastodon_favourites": Api(_mastodon("favourites"), _mastodon_items, scoped=True),
    "mastodon_bookmarks": Api(_mastodon("bookmarks"), _mastodon_items, scoped=True),
}


def new_state(net: dict[str, Any], response: httpx.Response,
              items: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The items not seen before and the cursor to store. Mastodon asks for entries above `min_id` (all new);
    the others answer newest first: new is what comes before the cursor's `stop` (the newest id seen)."""
    cursor = dict(net.get("cursor") or {})
    if net["service"].startswith("mastodon_"):
        prev = response.links.get("prev", {}).get("url")
        found = parse_qs(urlsplit(prev).query).get("min_id") if prev else None
        if found:
            cursor["min_id"] = found[-1]
        return items, cursor
    ids = [item["id"] for item in items]
    stop = cursor.get("stop")
    new = items[: ids.index(stop)] if stop in ids else items
    if ids:
        cursor["stop"] = ids[0]
    if net["service"] == "github" and response.headers.get("etag"):
        cursor["etag"] = response.headers["etag"]
    return new, cursor


# -- the worker process: arq's WorkerSettings, the job and the cron enqueuer ----------------------------------------


class Stats:
    """What one worker process did (its own counters: no extra Redis or database command per job)."""

    def __init__(self) -> None:
        self.complete = 0
        self.failed = 0
        self.requests = 0
        self.new_items = 0
        self.last_end = 0.0
        self.lags: list[float] = []
        self.ran: Counter[str] = Counter()
        self.statuses: Counter[str] = Counter()
        self.enqueued = 0
        self.ticks = 0


async def poll_network(ctx: dict[str, Any], net: dict[str, Any]) -> int:
    """The job: one normal run of one network. Returns how many new items it stored."""
    stats: Stats = ctx["stats"]
    cfg: dict[str, Any] = ctx["cfg"]
    started = time.time()
    try:
        stats.lags.append(started - net["scheduledTo"].timestamp())
        stats.ran[str(net["_id"])] += 1
        api = SERVICES[net["service"]]
        base = cfg["bases"].get(net["service"], "")
        client: httpx.AsyncClient = ctx["http"]
        known = _options(net).get("user_id") or (net.get("cursor") or {}).get("user_id")
        if net["service"] == "gitlab" and not known:
            stats.requests += 1  # who the token belongs to, once: GET /user
            me = await client.get(f"{_gitlab_base(net, base)}/api/v4/user", headers=_gitlab_headers(net))
            me.raise_for_status()
            net["cursor"] = {**(net.get("cursor") or {}), "user_id": me.json()["id"]}
        url, params, headers = api.request(net, base)
        stats.requests += 1
        response = await client.get(url, params=params, headers=headers)
        stats.statuses[str(response.status_code)] += 1
        if response.status_code == 304:
            new, cursor = [], dict(net.get("cursor") or {})
        else:
            response.raise_for_status()
            new, cursor = new_state(net, response, api.items(response))
        now = datetime.now(UTC)
        db = ctx["db"]
        if new:
            stored = await insert_items(db, net, new, now, base if api.scoped else None)
            stats.new_items += stored  # not `+= await ...`: the other jobs' additions during the await would be lost
        await db.networks.update_one({"_id": net["_id"]}, {"$set": {
            "cursor": cursor, "scheduledTo": now + timedelta(seconds=cfg["interval"]), "lastExecution": now}})
    except Exception:
        stats.failed += 1
        raise
    stats.complete += 1
    stats.last_end = time.time()
    return len(new)


async def insert_items(db: Any, net: dict[str, Any], new: list[dict[str, Any]], now: datetime,
                       scope_base: str | None) -> int:
    """One insert_many of the new items, keyed as the daemon keys them; an item already stored is left as it is."""
    user, service = net["user"], net["service"]
    scope = None
    if scope_base is not None:  # ids per server: the network's server is part of the key
        scope = (_gitlab_base(net, scope_base) if service == "gitlab"
                 else str(_options(net).get("instance") or scope_base).rstrip("/"))
    docs = []
    for item in new:
        key = [service, user if isinstance(user, str | int) else str(user), *([scope] if scope else []), item["id"]]
        doc = {"_id": json.dumps(key, separators=(",", ":")), "user": user, "service": service, "itemId": item["id"],
               "network": net["_id"], "title": item["title"], "url": item["url"], "author": item["author"],
               "created": item["created"], "collectedAt": now, "updatedAt": now, "raw": item["raw"]}
        if scope:
            doc["server"] = scope
        docs.append(doc)
    try:
        return len((await db.items.insert_many(docs, ordered=False)).inserted_ids)
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if any(e.get("code") != 11000 for e in errors):
            raise
        return len(docs) - len(errors)


async def enqueue_due(ctx: dict[str, Any]) -> int:
    """The cron job (every second, on one worker): every due network -> scheduledTo pushed `visibility` forward ->
    one job each. Returns how many it enqueued.

    The push uses the find's own filter (the same `now`), not the found ids: `_id: {$in: [...]}` scans the collection
    once per id on an engine without indexes (mongo-java-server: 7.4 s for 4,096 ids among 20,000 networks, the
    collection locked all along), which stalled the database in a first version of this peer."""
    redis = ctx["redis"]
    cfg: dict[str, Any] = ctx["cfg"]
    stats: Stats = ctx["stats"]
    if not await redis.exists("peer:go"):
        return 0
    await redis.set("peer:first_tick", repr(time.time()), nx=True)
    stats.ticks += 1
    now = datetime.now(UTC)
    networks = ctx["db"].networks
    due = {"mode": "normal", "scheduledTo": {"$lte": now}, "disabled": {"$ne": True}}
    fields = {"user": 1, "service": 1, "options": 1, "cursor": 1, "scheduledTo": 1, "accessToken": 1}
    found = await networks.find(due, fields).sort("scheduledTo", 1).to_list(None)
    if not found:
        return 0
    await networks.update_many(due, {"$set": {"scheduledTo": now + timedelta(seconds=cfg["visibility"])}})
    # the job's argument; the token last (arq's INFO line shows a job's arguments cut at 80 characters)
    docs = [{k: doc[k] for k in ("_id", "user", "service", "options", "cursor", "scheduledTo", "accessToken")
             if k in doc} for doc in found]
    enqueued = 0
    for start in range(0, len(docs), 200):  # 200 enqueue_job calls at a time (each one WATCH + MULTI/EXEC)
        jobs = await asyncio.gather(*(redis.enqueue_job("poll_network", doc, _job_id=f"net:{doc['_id']}")
                                      for doc in docs[start:start + 200]))
        enqueued += sum(job is not None for job in jobs)
    stats.enqueued += enqueued
    return enqueued


class CommandCounter(monitoring.CommandListener):
    """PyMongo command monitoring: every command this process sends, by name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.counts[event.command_name] += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def startup(ctx: dict[str, Any]) -> None:
    cfg = ctx["cfg"]
    ctx["commands"] = CommandCounter()
    ctx["mongo"] = AsyncMongoClient(cfg["mongodb_uri"], tz_aware=True, event_listeners=[ctx["commands"]])
    ctx["db"] = ctx["mongo"][cfg["db_name"]]
    await ctx["db"].command("ping")
    limits = httpx.Limits(max_connections=cfg["concurrency"], max_keepalive_connections=cfg["concurrency"])
    if cfg["http_transport"] == "aiohttp":  # httpx's API over aiohttp (the httpx-aiohttp package)
        from httpx_aiohttp import HttpxAiohttpClient

        ctx["http"] = HttpxAiohttpClient(limits=limits, timeout=cfg["http_timeout"])
    else:
        ctx["http"] = httpx.AsyncClient(limits=limits, timeout=cfg["http_timeout"])
    ctx["stats"] = Stats()
    ctx["publisher"] = asyncio.create_task(publish(ctx))
    await ctx["redis"].set(f"peer:ready:{cfg['index']}", os.getpid())


async def publish(ctx: dict[str, Any]) -> None:
    """Progress for the benchmark's driver, every 50 ms (one pipeline: not one command per job); when the driver
    asks (peer:report), the worker's report once, written to its file before the driver stops the worker (arq's
    on_shutdown is not reached when a SIGTERM cancels a job at some of its awaits)."""
    cfg, stats, redis = ctx["cfg"], ctx["stats"], ctx["redis"]
    key = f"{PROGRESS}{cfg['index']}"
    while True:
        async with redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, mapping={"complete": stats.complete, "failed": stats.failed,
                                    "last_end": repr(stats.last_end)})
            pipe.exists("peer:report")
            _, asked = await pipe.execute()
        if asked:
            report = {"complete": stats.complete, "failed": stats.failed, "requests": stats.requests,
                      "new_items": stats.new_items, "lags": [round(x, 4) for x in stats.lags], "ran": dict(stats.ran),
                      "statuses": dict(stats.statuses), "enqueued": stats.enqueued, "ticks": stats.ticks,
                      "commands": dict(ctx["commands"].counts)}
            await asyncio.to_thread(Path(cfg["report"]).write_text, json.dumps(report))
            await redis.set(f"peer:reported:{cfg['index']}", 1)
            return
        await asyncio.sleep(0.05)


async def shutdown(ctx: dict[str, Any]) -> None:
    ctx["publisher"].cancel()
    await ctx["http"].aclose()
    await ctx["mongo"].close()


def worker_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """arq WorkerSettings (as a dict): the job, the cron enqueuer, max_jobs = concurrency."""
    from arq import cron, func
    from arq.connections import RedisSettings

    return {
        "functions": [func(poll_network, name="poll_network", keep_result=0)],
        "cron_jobs": [cron(enqueue_due, name="enqueue_due", second=set(range(60)), unique=True, keep_result=0)],
        "redis_settings": RedisSettings(host="127.0.0.1", port=cfg["redis_port"]),
        "max_jobs": cfg["concurrency"],
        "keep_result": 0,
        "poll_delay": cfg["poll_delay"],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"cfg": cfg},
    }


def worker_main(config: Path) -> None:
    import logging.config

    from arq.logs import default_log_config
    from arq.worker import run_worker

    cfg = json.loads(config.read_text())
    if cfg["job_logs"]:  # what `arq module.WorkerSettings` does: INFO, a line as a job starts and one as it ends
        logging.config.dictConfig(default_log_config(verbose=False))
    run_worker(worker_settings(cfg))  # type: ignore[arg-type]


# -- the driver: Redis, the workers, the clock ---------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """redis-server on a free port of 127.0.0.1, a temporary directory, no RDB snapshots, no AOF."""

    def __init__(self, folder: Path) -> None:
        binary = redis_server()
        if binary is None:
            raise PeerUnavailable(peer_missing() or "redis-server not found")
        self.port = free_port()
        self.version = subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.split()[2]
        self.log = folder / "redis.log"
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(folder),
                                      "--save", "", "--appendonly", "no", "--daemonize", "no", "--protected-mode",
                                      "yes", "--logfile", str(self.log), "--databases", "1"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start: {self._tail()}")
            time.sleep(0.02)

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text()[-500:]
        return ""

    def ping(self) -> bool:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: redis-server exits (nothing to save: no persistence configured)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def _tail(path: Path, size: int = 1500) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-size:]
    return ""


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)


def run_peer(mongodb_uri: str, db_name: str, sandbox_base_urls: dict[str, str], target_runs: int,
             concurrency: int = 256, timeout: float = 600.0, *, workers: int = 1, poll_delay: float = 0.05,
             interval: float = 3600.0, visibility: float = 300.0,
             job_logs: bool = True, http_timeout: float = 30.0, http_transport: str = "httpx") -> dict[str, Any]:
    """Run the peer over the normal-mode networks of `db_name` until `target_runs` jobs have completed (or
    `timeout` seconds after the start); returns the figures (module docstring). Raises PeerUnavailable when
    redis-server or arq is missing (peer_missing() says which, and how to install it)."""
    why = peer_missing()
    if not why and http_transport == "aiohttp":
        try:
            import httpx_aiohttp  # noqa: F401
        except ImportError:
            why = "http_transport='aiohttp' needs the httpx-aiohttp package (pip install httpx-aiohttp)"
    elif http_transport not in ("httpx", "aiohttp"):
        raise ValueError(f"http_transport: 'httpx' or 'aiohttp', not {http_transport!r}")
    if why:
        raise PeerUnavailable(why)
    import arq.version
    import redis as redis_py

    folder = Path(tempfile.mkdtemp(prefix="bench-arq-peer-"))
    procs: list[subprocess.Popen[bytes]] = []
    logs: list[Any] = []
    server: RedisServer | None = None
    try:
        server = RedisServer(folder)
        client = redis_py.Redis(host="127.0.0.1", port=server.port)
        for index in range(workers):
            cfg = {"index": index, "redis_port": server.port, "mongodb_uri": mongodb_uri, "db_name": db_name,
                   "bases": dict(sandbox_base_urls), "concurrency": concurrency, "poll_delay": poll_delay,
                   "interval": interval, "visibility": visibility, "job_logs": job_logs,
                   "http_timeout": http_timeout, "http_transport": http_transport,
                   "report": str(folder / f"worker-{index}.json")}
            path = folder / f"worker-{index}.config.json"
            path.touch(mode=0o600)
            path.write_text(json.dumps(cfg))
            log = (folder / f"worker-{index}.log").open("wb")
            logs.append(log)
            procs.append(subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "worker", str(path)],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          cwd=folder))
        deadline = time.monotonic() + 60
        while sum(bool(client.exists(f"peer:ready:{i}")) for i in range(workers)) < workers:
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                which = dead[0] if dead else 0
                raise RuntimeError(f"arq worker {which} did not start: {_tail(folder / f'worker-{which}.log')}")
            time.sleep(0.05)

        # the clock: CPU from the start signal to the target-th completion, wall from the first enqueuer tick
        cpu0 = {p.pid: proc_cpu(p.pid) for p in procs}
        redis_cpu0 = proc_cpu(server.proc.pid)
        client.set("peer:go", repr(time.time()))
        began = time.monotonic()
        timed_out = False
        while True:
            pipe = client.pipeline(transaction=False)
            for i in range(workers):
                pipe.hget(f"{PROGRESS}{i}", "complete")
            if sum(int(x or 0) for x in pipe.execute()) >= target_runs:
                break
            dead = [i for i, p in enumerate(procs) if p.poll() is not None]
            if dead:
                raise RuntimeError(f"arq worker {dead[0]} exited: {_tail(folder / f'worker-{dead[0]}.log')}")
            if time.monotonic() - began > timeout:
                timed_out = True
                break
            time.sleep(0.02)
        cpu = sum(proc_cpu(p.pid) - cpu0[p.pid] for p in procs)
        redis_cpu = proc_cpu(server.proc.pid) - redis_cpu0
        rss = [peak_rss_mib(p.pid) for p in procs]
        pipe = client.pipeline(transaction=False)
        for i in range(workers):
            pipe.hgetall(f"{PROGRESS}{i}")
        progress = [{k.decode(): float(v) for k, v in h.items()} for h in pipe.execute()]
        done = int(sum(h.get("complete", 0) for h in progress))
        first = float(client.get("peer:first_tick") or 0) or None
        end = max((h.get("last_end", 0.0) for h in progress), default=0.0)
        wall = end - first if first and end > first else 0.0

        client.set("peer:report", 1)  # each worker writes its report (publish), then the SIGTERM
        deadline = time.monotonic() + 30
        while sum(bool(client.exists(f"peer:reported:{i}")) for i in range(workers)) < workers:
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.02)
        for p in procs:  # arq stops on SIGTERM: running jobs cancelled (re-queued), connections closed
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        reports = [json.loads(Path(folder / f"worker-{i}.json").read_text())
                   for i in range(workers) if (folder / f"worker-{i}.json").exists()]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        for log in logs:
            log.close()
        if server is not None:
            server.stop()
        shutil.rmtree(folder, ignore_errors=True)

    ran: Counter[str] = Counter()
    commands: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    for r in reports:
        ran.update(r["ran"])
        commands.update(r["commands"])
        statuses.update(r["statuses"])
    total_jobs = sum(r["complete"] + r["failed"] for r in reports) or 1
    lags = [x for r in reports for x in r["lags"]]
    return {
        "peer": "arq", "workers": workers, "concurrency": concurrency, "target_runs": target_runs,
        "runs": done, "failed": int(sum(h.get("failed", 0) for h in progress)), "timed_out": timed_out,
        "wall": round(wall, 3), "runs_per_s": round(done / wall, 1) if wall else 0.0,
        "cpu_s": round(cpu, 3), "cpu_per_run_us": round(cpu / done * 1e6) if done else None,
        "redis_cpu_s": round(redis_cpu, 3), "redis_cpu_per_run_us": round(redis_cpu / done * 1e6) if done else None,
        "db_commands": dict(sorted(commands.items())),
        "db_commands_per_run": round(sum(commands.values()) / total_jobs, 3),
        "requests": sum(r["requests"] for r in reports), "statuses": dict(statuses),
        "new_items": sum(r["new_items"] for r in reports), "enqueued": sum(r["enqueued"] for r in reports),
        "enqueuer_ticks": sum(r["ticks"] for r in reports),
        "jobs_at_stop": total_jobs, "networks_run": len(ran), "duplicate_runs": sum(c - 1 for c in ran.values()),
        "lag_p50_s": _percentile(lags, 0.5), "lag_p99_s": _percentile(lags, 0.99), "rss_peak_mib": rss,
        "versions": {"arq": arq.version.VERSION, "redis-py": redis_py.__version__, "redis-server": server.version,
                     "httpx": httpx.__version__, "python": sys.version.split()[0]},
        "settings": {"poll_delay": poll_delay, "interval": interval, "visibility": visibility,
                     "job_logs": job_logs, "max_jobs": concurrency, "keep_result": 0,
                     "http_connections_per_worker": concurrency, "http_transport": http_transport},
        "not_guaranteed": list(NOT_GUARANTEED),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("check", help="say whether the peer can run here, and how to install what is missing")
    worker = sub.add_parser("worker", help="one arq worker (run_peer starts these)")
    worker.add_argument("config", type=Path)
    args = parser.parse_args(argv)
    if args.command == "check":
        why = peer_missing()
        print(why or f"the arq peer can run here ({redis_server()})")
        return 1 if why else 0
    worker_main(args.config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
