#!/usr/bin/env python3
"""The arq peer alone (bench/peers/arq_peer.py), a benchmark harness: the test database, the sandbox API at 100 ms,
~2,000 normal-mode networks over several services, a first pass (GitHub's ETags and every cursor stored), then the
measured pass: GitHub answers 304 to If-None-Match, the other services an empty page, 5 % of the users have 1-3 new
items. Prints the figures (JSON with --json FILE).

    .venv/bin/python bench/peers/try_peer.py [--networks 2000] [--concurrency 256] [--workers 1]
    .venv/bin/python scripts/devdb.py run -- .venv/bin/python bench/peers/try_peer.py   # the same, MONGODB_URI given

$MONGODB_URI when set, else a fresh mongo-java-server (scripts/devdb.py); the sandbox in its own process, as
bench/run.py starts it. Exits 2 (skipped, saying why) when redis-server or arq is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from pymongo import MongoClient  # noqa: E402

from bench.peers.arq_peer import PeerUnavailable, peer_missing, proc_cpu, run_peer, sandbox_base_urls  # noqa: E402
from tests.harness import load_devdb  # noqa: E402  (scripts/devdb.py, imported by path)

# share of the networks by service, the sandbox user's items at the start, the network's options
MIX: dict[str, float] = {"github": 0.4, "stackoverflow": 0.15, "spotify": 0.1, "youtube": 0.1, "reddit_saved": 0.1,
                         "mastodon_favourites": 0.05, "gitlab": 0.05, "bluesky": 0.05}
START_ITEMS = {"github": 3}  # GitHub users have a few stars (their first page has an ETag either way); others none
PREFIX = {"github": "gh", "stackoverflow": "so", "spotify": "sp", "youtube": "yt", "reddit_saved": "rs",
          "mastodon_favourites": "mf", "gitlab": "gl", "bluesky": "bs"}


def options(service: str, name: str, sandbox: str) -> dict[str, Any]:
    """What the daemon's connector needs of such a network too (the sandbox names each user after its token)."""
    return {"reddit_saved": {"username": name}, "gitlab": {"user_id": name},
            "bluesky": {"actor": f"{name}.bsky.social"}, "mastodon_favourites": {"instance": sandbox}}.get(service, {})


def control(sandbox: str, path: str, body: dict[str, Any]) -> Any:
    response = httpx.post(f"{sandbox}/_sandbox/{path}", json=body, timeout=120)
    response.raise_for_status()
    return response.json()


def seed(uri: str, db: str, sandbox: str, total: int) -> list[str]:
    """Sandbox users and their normal-mode networks, due now; returns every token."""
    counts = {service: max(1, round(total * share)) for service, share in MIX.items()}
    docs, tokens = [], []
    now = datetime.now(UTC)
    for service, count in counts.items():
        prefix = PREFIX[service]
        control(sandbox, "bulk", {"service": service, "prefix": prefix, "count": count,
                                  "items": START_ITEMS.get(service, 0)})
        for i in range(count):
            token = f"{prefix}{i}"
            tokens.append(token)
            docs.append({"user": token, "service": service, "accessToken": token,
                         "options": options(service, token, sandbox), "mode": "normal", "scheduledTo": now})
    with MongoClient(uri, tz_aware=True) as client:
        client.drop_database(db)
        client[db].networks.insert_many(docs, ordered=False)
        client[db].networks.create_index([("mode", 1), ("scheduledTo", 1)], name="due")
    return tokens


def due_again(uri: str, db: str, tokens: list[str] | None = None) -> None:
    """Every network due now, or only those of `tokens` (the others tomorrow)."""
    now = datetime.now(UTC)
    with MongoClient(uri, tz_aware=True) as client:
        if tokens is None:
            client[db].networks.update_many({}, {"$set": {"scheduledTo": now}})
            return
        client[db].networks.update_many({}, {"$set": {"scheduledTo": now + timedelta(days=1)}})
        client[db].networks.update_many({"accessToken": {"$in": tokens}}, {"$set": {"scheduledTo": now}})


def show(label: str, fig: dict[str, Any], extra: dict[str, float]) -> None:
    runs = max(fig["runs"], 1)
    print(f"\n{label}: {fig['runs']} runs in {fig['wall']:.2f} s = {fig['runs_per_s']} runs/s "
          f"({fig['workers']} worker(s), max_jobs {fig['concurrency']}, poll_delay {fig['settings']['poll_delay']} s, "
          f"transport {fig['settings']['http_transport']})")
    print(f"  peer CPU {fig['cpu_s']:.2f} s = {fig['cpu_per_run_us']} us a run (workers, the cron enqueuer in them); "
          f"redis-server {fig['redis_cpu_s']:.2f} s = {fig['redis_cpu_per_run_us']} us a run")
    print(f"  database: {fig['db_commands_per_run']} commands a run {fig['db_commands']}; engine CPU "
          f"{extra['db']:.2f} s = {extra['db'] / runs * 1e6:.0f} us a run; sandbox CPU {extra['sandbox']:.2f} s")
    print(f"  HTTP {fig['requests']} requests {fig['statuses']}, new items {fig['new_items']}, failed {fig['failed']}, "
          f"duplicate runs {fig['duplicate_runs']}, networks run {fig['networks_run']}, "
          f"lag behind scheduledTo p50 {fig['lag_p50_s']} s / p99 {fig['lag_p99_s']} s, "
          f"peak RSS {fig['rss_peak_mib']} MiB")


def measure(uri: str, db_pids: list[int], sandbox: str, sandbox_pid: int, db: str, networks: int, concurrency: int,
            verbose: bool = False, due: int | None = None, **kwargs: Any) -> dict[str, Any]:
    """Seed `networks`, run the peer's first pass over all of them (cursors and ETags stored), give 5 % of the `due`
    users 1-3 new items, make `due` of the networks due (all by default; the rest tomorrow: the collection the
    engine searches is as large as the daemon's) and measure the steady pass: {first, steady, added, problems}
    (what must hold: every new item stored, no failed or duplicate run, every due network run). bench/run.py's
    `peer` scenario calls this."""
    tokens = seed(uri, db, sandbox, networks)
    n = len(tokens)

    def measured(label: str) -> dict[str, Any]:
        before = {"db": sum(proc_cpu(p) for p in db_pids), "sandbox": proc_cpu(sandbox_pid)}
        fig = run_peer(uri, db, sandbox_base_urls(sandbox), n, concurrency, 600.0, **kwargs)
        extra = {"db": sum(proc_cpu(p) for p in db_pids) - before["db"],
                 "sandbox": proc_cpu(sandbox_pid) - before["sandbox"]}
        if verbose:
            show(label, fig, extra)
        return {**fig, "db_cpu_s": round(extra["db"], 3), "sandbox_cpu_s": round(extra["sandbox"], 3)}

    first = measured(f"first pass ({n} networks: every GitHub page a 200, cursors and ETags stored)")
    rng = random.Random(29)
    chosen = tokens if due is None or due >= n else rng.sample(tokens, due)
    fresh = rng.sample(chosen, max(1, round(len(chosen) * 0.05)))
    added = 0
    for token in fresh:
        count = rng.randint(1, 3)
        control(sandbox, f"users/{token}/add", {"count": count})
        added += count
    due_again(uri, db, None if chosen is tokens else chosen)
    time.sleep(0.1)
    n = len(chosen)
    steady = measured(f"steady pass ({n} due of {len(tokens)} networks: GitHub 304, others empty pages, {len(fresh)} "
                      f"users with {added} new items)")
    problems = []
    if steady["new_items"] != added:
        problems.append(f"new items stored {steady['new_items']}, added upstream {added}")
    if steady["failed"] or steady["duplicate_runs"] or steady["runs"] < n:
        problems.append(f"{steady['failed']} failed, {steady['duplicate_runs']} duplicate, {steady['runs']}/{n} runs")
    return {"networks": len(tokens), "due": n, "first": first, "steady": steady, "added": added, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--poll-delay", type=float, default=0.05)
    parser.add_argument("--no-job-logs", action="store_true", help="arq's INFO lines off (default: on, as `arq` runs)")
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--transport", choices=("httpx", "aiohttp"), default="httpx",
                        help="the workers' HTTP transport under httpx's API (aiohttp: the httpx-aiohttp package)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    why = peer_missing()
    if why:
        print(f"try_peer: skipped: {why}", file=sys.stderr)
        return 2
    server = load_devdb().start_server()  # $MONGODB_URI when set
    sandbox_proc = subprocess.Popen([sys.executable, "-m", "collector.sandbox", "--port", "0", "--latency",
                                     str(args.latency)], cwd=ROOT, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, text=True)
    db = "bench_arq_peer"
    try:
        sandbox = sandbox_proc.stdout.readline().strip() if sandbox_proc.stdout else ""
        if not sandbox.startswith("http://"):
            raise RuntimeError("the sandbox API did not start")
        print(f"try_peer: database {server.uri.split('@')[-1]} ({server.engine}), sandbox {sandbox}", flush=True)
        result = measure(server.uri, [server.pid] if server.pid else [], sandbox, sandbox_proc.pid, db,
                         args.networks, args.concurrency, workers=args.workers, poll_delay=args.poll_delay,
                         job_logs=not args.no_job_logs, http_transport=args.transport, verbose=True)
        first, steady, added, problems = result["first"], result["steady"], result["added"], result["problems"]
        print("\nnot guaranteed by the peer (the daemon does):")
        for line in steady["not_guaranteed"]:
            print(f"  - {line}")
        if args.json:
            args.json.write_text(json.dumps({"first": first, "steady": steady, "added": added}, indent=1))
        for line in problems:
            print(f"try_peer: PROBLEM {line}", file=sys.stderr)
        return 1 if problems else 0
    except PeerUnavailable as exc:
        print(f"try_peer: skipped: {exc}", file=sys.stderr)
        return 2
    finally:
        sandbox_proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            sandbox_proc.wait(10)
        with contextlib.suppress(Exception):
            with MongoClient(server.uri) as client:
                client.drop_database(db)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
