"""The fleet, with real processes: four daemons on one database, `collector status` showing them
and their work, a `kill -9` seen as dead within the ttl and its networks taken over after the
lease expires; and a service paused by an app-wide limit that no process calls until the reset."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from collector.sandbox import Sandbox, Server
from tests.conftest import ROOT
from tests.integration.test_daemons import daemon, stop, wait_for

pytestmark = pytest.mark.slow  # real daemon processes: seconds each (the quick loop: -m "not slow")

HEARTBEAT, TTL, LEASE = 0.5, 2.0, 4.0
FLEET = ["--set", f"fleet.heartbeat_interval={HEARTBEAT}", "--set", f"fleet.ttl={TTL}",
         "--set", f"daemon.lease_ttl={LEASE}", "--set", "http.total_timeout=2.0",
         "--set", "schedule.normal_interval=1.0", "--set", "schedule.jitter=0.0", "--concurrency", "4"]


def status(uri: str, dbname: str, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "collector", "--env", "test", "--mongodb-uri", uri,
           "--set", f"database.name={dbname}", "status", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def status_json(uri: str, dbname: str) -> dict:
    done = status(uri, dbname, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_four_daemons_status_and_a_kill_9_taken_over(wire_uri, sync_db):
    db = sync_db
    server = Server(Sandbox(page_cap=2, latency=0.5)).start()
    box = server.sandbox
    now = datetime.now(UTC)
    docs, tokens = [], []
    for i in range(48):
        token = f"fleet-{i:02d}-{uuid.uuid4().hex[:8]}"
        tokens.append(token)
        mode = "initial" if i < 32 else "normal"
        box.add_user("github", token, items=8 if mode == "initial" else 2)  # 4 pages to back-fill
        docs.append({"user": f"user{i}", "service": "github", "accessToken": token, "mode": mode,
                     "scheduledTo": now, "cursor": {}})
    db.networks.insert_many(docs)
    procs = {}
    for mode in ("initial", "initial", "normal", "normal"):
        p = daemon(mode, wire_uri, db.name, server.url, *FLEET)
        procs[p.pid] = p
    victim = None
    try:
        # four live instances, two per mode, every one of them with work in hand at some point
        seen_working: set[str] = set()

        def four_alive_and_working() -> bool:
            report = status_json(wire_uri, db.name)
            alive = [p for p in report["processes"] if p["alive"]]
            seen_working.update(p["id"] for p in alive if p["current"])
            return len(alive) == 4 and len(seen_working) == 4

        wait_for(four_alive_and_working, 60, "four live processes, each seen with runs in flight")
        report = status_json(wire_uri, db.name)
        assert sorted(p["mode"] for p in report["processes"]) == ["initial", "initial", "normal", "normal"]
        assert {p["pid"] for p in report["processes"]} == set(procs)
        assert all(p["heartbeatAge"] < TTL for p in report["processes"])
        hosts = report["hosts"]
        assert len(hosts) == 1
        assert hosts[0]["modes"]["initial"]["alive"] == 2 and hosts[0]["modes"]["normal"]["alive"] == 2
        for p in report["processes"]:
            for run in p["current"]:
                assert set(run) == {"network", "user", "service", "since"} and run["service"] == "github"
        text = status(wire_uri, db.name)
        assert text.returncode == 0 and "FLEET  4 alive, 0 dead" in text.stdout, text.stdout

        # kill -9 an initial process while it holds leases
        victim_doc, held = None, []

        def victim_holds_leases() -> bool:
            nonlocal victim_doc, held
            for doc in db.collectors.find({"mode": "initial"}):
                held = [n["_id"] for n in db.networks.find({"lease.owner": doc["_id"],
                                                             "lease.until": {"$gt": datetime.now(UTC)}})]
                if held:
                    victim_doc = doc
                    return True
            return False

        wait_for(victim_holds_leases, 30, "an initial process holding leases")
        victim = procs.pop(victim_doc["pid"])
        os.kill(victim.pid, signal.SIGKILL)
        killed_at = datetime.now(UTC)
        victim.wait(timeout=10)

        def shown_dead() -> bool:
            row = next(p for p in status_json(wire_uri, db.name)["processes"] if p["id"] == victim_doc["_id"])
            return row["state"] == "dead" and not row["alive"]

        wait_for(shown_dead, TTL + 6, "the killed process to be shown dead")
        dead_seen = (datetime.now(UTC) - killed_at).total_seconds()
        assert dead_seen <= TTL + 6  # the ttl plus the status subprocess's own start-up time
        text = status(wire_uri, db.name).stdout
        assert "DEAD" in text and "3 alive, 1 dead" in text, text

        # the networks it held are run by the others once their leases expire
        def taken_over() -> bool:
            docs = list(db.networks.find({"_id": {"$in": held}}))
            return all(d.get("lastExecution") and d["lastExecution"] > killed_at
                       and d.get("lastOwner") != victim_doc["_id"] for d in docs)

        wait_for(taken_over, LEASE + 20, "the killed process's networks to be taken over")
        # and the back-fill completes with every item served stored exactly once
        wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == 48, 90, "the back-fill to complete")

        def stored_equals_served() -> bool:
            return db.items.count_documents({}) == sum(box.stats()["unique_served"].values())

        wait_for(stored_equals_served, 30, "items stored == items served")
        assert db.items.count_documents({}) == 32 * 8 + 16 * 2
    finally:
        results = [stop(p) for p in procs.values()]
        if victim is not None and victim.poll() is None:
            victim.kill()
        server.stop()
    for code, out in results:
        assert code == 0, out[-3000:]
    final = status_json(wire_uri, db.name)
    states = sorted(p["state"] for p in final["processes"])
    assert states == ["dead", "stopped", "stopped", "stopped"]
    for token in tokens:
        for _code, out in results:
            assert token not in out
        assert token not in json.dumps(final)


def test_a_paused_service_is_called_by_no_process_until_its_reset(wire_uri, sync_db):
    """Stack Exchange's `backoff` is app-wide: the connector pauses the whole service. Two processes
    run 24 networks; from the moment the pause is written until it ends, the sandbox receives no
    Stack Exchange request at all, while GitHub keeps being served; afterwards the back-fill completes."""
    db = sync_db
    server = Server(Sandbox(page_cap=2, latency=0.2)).start()
    box = server.sandbox
    now = datetime.now(UTC)
    so_tokens, gh_tokens = [], []
    for i in range(24):
        service = "stackoverflow" if i % 3 else "github"
        token = f"budget-{i:02d}-{uuid.uuid4().hex[:8]}"
        (so_tokens if service == "stackoverflow" else gh_tokens).append(token)
        box.add_user(service, token, items=8)  # 4 pages
        db.networks.insert_one({"user": f"u{i}", "service": service, "accessToken": token, "mode": "initial",
                                "scheduledTo": now})
    trigger = so_tokens[5]
    box.inject(trigger, "backoff", seconds=5)  # the first reply to this user says: everybody, wait 5 s
    # short leases (renewed by the heartbeat), so that a lease left by a stopped run is not what holds the test
    fast = ["--set", f"daemon.lease_ttl={LEASE}", "--set", "http.total_timeout=2.0",
            "--set", "schedule.rate_limit_slack=0.2", "--set", "schedule.jitter=0.0", "--concurrency", "6",
            "--set", "services.stackoverflow.concurrency=3"]
    procs = [daemon("initial", wire_uri, db.name, server.url, *fast) for _ in range(2)]
    try:
        wait_for(lambda: db.services.find_one({"_id": "stackoverflow"}) is not None, 60, "the service pause")
        pause = db.services.find_one({"_id": "stackoverflow"})
        paused_at, until = pause["pausedAt"], pause["pausedUntil"]
        assert timedelta(seconds=4) < until - paused_at < timedelta(seconds=7)
        wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == 24, 120, "the back-fill to complete")
    finally:
        results = [stop(p) for p in procs]
        server.stop()
    for code, out in results:
        assert code == 0, out[-3000:]
    hits = box.hits
    so_hits = sorted(t for token in so_tokens for t in hits.get(token, []))
    start, end = paused_at.timestamp(), until.timestamp()
    # every run reads the pause right before its request: a run that read it a moment before another
    # process wrote it is already on its way and may land just after (measured: up to ~130 ms here,
    # under the load of two daemons and the database on two cores). After that: silence until the end.
    in_flight = 0.5
    during = [t for t in so_hits if start + in_flight < t < end]
    assert during == [], f"{len(during)} Stack Exchange requests while it was paused ({start}..{end})"
    assert any(t >= end for t in so_hits), "Stack Exchange was never called again after the pause"
    assert sum(1 for t in so_hits if t > start) >= 10  # there was work waiting: the pause held it back
    assert len(db.collectors.distinct("_id")) == 2
    assert db.items.count_documents({}) == 24 * 8 == sum(box.stats()["unique_served"].values())
