"""The fleet: recent counters, the heartbeat (registry document, lease renewal), `collector status`
(mongomock-motor)."""

from __future__ import annotations

import asyncio
import os
import socket
from datetime import timedelta

import httpx
import pytest
import respx
from pymongo.errors import AutoReconnect

from collector import fleet, status
from collector.executor import Executor
from collector.fleet import Fleet
from collector.scheduler import Recent, Scheduler
from collector.store import Store
from tests.conftest import make_settings
from tests.unit.test_executor import BASE
from tests.unit.test_scheduler import REGISTRY, seed

OWNER = "host-a:101:initial:abc123"
TOKEN = "ghp_fleetsecret_TOKEN_4242"


# -- Recent ------------------------------------------------------------------------------------

T0 = 1_800_000_000.0  # a bucket boundary


def test_recent_counts_the_last_minute_and_the_last_hour_apart():
    recent = Recent()
    recent.add(T0, items=5, failed=False)
    recent.add(T0 + 30, items=2, failed=True)
    recent.add(T0 + 600, items=1, failed=False)
    recent.add(T0 + 605, items=3, failed=True)
    now = T0 + 609
    assert recent.window(now, 60) == {"runs": 2, "items": 4, "failures": 1}
    assert recent.window(now, 3600) == {"runs": 4, "items": 11, "failures": 2}
    # the bucket of T0 + 30 is inside the last 10 minutes, the bucket of T0 is not
    assert recent.window(T0 + 630, 600) == {"runs": 3, "items": 6, "failures": 2}


def test_recent_forgets_buckets_older_than_the_horizon():
    recent = Recent()
    recent.add(T0, items=5, failed=True)
    recent.add(T0 + 1800, items=1, failed=False)
    assert recent.window(T0 + 3605, 3600) == {"runs": 2, "items": 6, "failures": 1}  # up to 10 s more
    assert recent.window(T0 + 3615, 3600) == {"runs": 1, "items": 1, "failures": 0}
    assert [b[0] for b in recent.buckets] == [T0 + 1800]  # trimmed, not merely skipped
    assert recent.window(T0 + 1800 + 3615, 3600) == {"runs": 0, "items": 0, "failures": 0}
    assert not recent.buckets


def test_recent_memory_is_bounded_over_hours_of_runs():
    recent = Recent()
    bound = recent.horizon / Recent.BUCKET + 2
    most = 0
    for second in range(5 * 3600):  # one run a second for five hours
        recent.add(T0 + second, items=2, failed=second % 10 == 0)
        most = max(most, len(recent.buckets))
    assert most <= bound
    assert most >= recent.horizon / Recent.BUCKET  # it did keep an hour's worth
    now = T0 + 5 * 3600 - 1
    # the 361 buckets starting within the last 3610 s, 10 runs each
    assert recent.window(now, 3600) == {"runs": 3610, "items": 7220, "failures": 361}
    assert recent.window(now, 60) == {"runs": 70, "items": 140, "failures": 7}


# -- the heartbeat -----------------------------------------------------------------------------


@pytest.fixture
async def env(mock_db, clock):
    settings = make_settings(daemon={"concurrency": 8})
    store = Store(mock_db)
    async with httpx.AsyncClient() as client:
        executor = Executor(store, client, settings, REGISTRY, clock=clock)
        scheduler = Scheduler(store, executor, settings, "initial", owner=OWNER, clock=clock)
        yield store, scheduler, Fleet(store, scheduler, settings, clock=clock), settings


async def registry_doc(store, owner=OWNER):
    return await store.collectors.find_one({"_id": owner})


async def test_a_beat_registers_the_process(env, clock):
    store, _scheduler, fl, settings = env
    started = clock.now
    clock.advance(3)
    assert await fl.beat() is True
    doc = await registry_doc(store)
    assert (doc["host"], doc["pid"], doc["mode"]) == (socket.gethostname(), os.getpid(), "initial")
    assert doc["version"] == fleet.version() and doc["concurrency"] == 8
    assert doc["startedAt"] == started
    assert doc["state"] == "running" and doc["heartbeatAt"] == clock.now
    assert doc["deadAt"] == clock.now + timedelta(seconds=settings.fleet.ttl)
    assert doc["expireAt"] == clock.now + timedelta(seconds=settings.fleet.retention)
    assert doc["inflight"] == 0 and doc["current"] == []
    assert doc["totals"] == {"runs": 0, "items": 0, "crashes": 0, "leasesLost": 0, "byOutcome": {}}
    assert doc["database"] is True
    assert fl.beats == 1


async def test_later_beats_never_rewrite_the_registration(env, clock):
    store, _scheduler, fl, _settings = env
    started = clock.now
    await fl.beat()
    fl.started = clock.now + timedelta(days=1)  # a later beat that sent startedAt again would show this
    clock.advance(5)
    assert await fl.beat()
    doc = await registry_doc(store)
    assert doc["startedAt"] == started
    assert doc["heartbeatAt"] == clock.now
    assert await store.collectors.count_documents({}) == 1


async def test_a_deleted_registry_document_is_registered_again(env, clock):
    """An operator clearing `collectors`, or a process pruned after a long partition: its next
    beat must recreate the document with the host/pid/mode, not a nameless one."""
    store, _scheduler, fl, _settings = env
    await fl.beat()
    await store.collectors.delete_many({})
    clock.advance(5)
    assert await fl.beat()
    doc = await registry_doc(store)
    assert (doc["host"], doc["pid"], doc["mode"]) == (socket.gethostname(), os.getpid(), "initial")
    assert doc["heartbeatAt"] == clock.now


@respx.mock
async def test_a_beat_lists_the_runs_in_flight_and_renews_their_leases(env, clock, mock_db):
    store, scheduler, fl, settings = env
    gate = asyncio.Event()

    async def slow(request):
        await gate.wait()
        return httpx.Response(200, json={"items": [{"id": 1}], "next": None})

    respx.get(f"{BASE}/items").mock(side_effect=slow)
    claimed_at = clock.now
    await seed(store, clock, 3)
    theirs_until = clock.now + timedelta(seconds=7)
    theirs = await store.insert_network({"user": "other", "service": "fake", "accessToken": TOKEN, "mode": "initial",
                                         "scheduledTo": clock.now,
                                         "lease": {"id": "their-lease", "owner": "host-b:2:initial:x",
                                                   "until": theirs_until}})
    assert await scheduler.fill(clock.now) == 3
    mine = [r.network_id for r in scheduler.running()]
    assert theirs not in mine
    first_until = claimed_at + timedelta(seconds=settings.daemon.lease_ttl)
    for network_id in mine:
        assert (await store.get_network(network_id))["lease"]["until"] == first_until

    clock.advance(20)  # a long run: without the heartbeat its lease would end 10 s from now
    assert await fl.beat()

    for network_id in mine:
        lease = (await store.get_network(network_id))["lease"]
        assert lease["owner"] == OWNER
        assert lease["until"] == clock.now + timedelta(seconds=settings.daemon.lease_ttl)
    assert (await store.get_network(theirs))["lease"] == {"id": "their-lease", "owner": "host-b:2:initial:x",
                                                          "until": theirs_until}
    doc = await registry_doc(store)
    assert doc["inflight"] == 3
    assert {c["network"] for c in doc["current"]} == {str(n) for n in mine}
    assert {c["user"] for c in doc["current"]} == {"u0", "u1", "u2"}
    assert all(c["service"] == "fake" and c["since"] == claimed_at for c in doc["current"])

    gate.set()
    await asyncio.gather(*list(scheduler.inflight))
    clock.advance(1)
    assert await fl.beat()
    doc = await registry_doc(store)
    assert doc["inflight"] == 0 and doc["current"] == []
    assert doc["totals"]["runs"] == 3 and doc["totals"]["items"] == 3
    assert doc["totals"]["byOutcome"] == {"page": 3}


async def test_recent_counts_are_written_from_the_fleet_clock(env, clock):
    store, scheduler, fl, _settings = env
    wall = clock.now.timestamp()
    scheduler.stats.recent.add(wall - 1200, items=6, failed=True)
    scheduler.stats.recent.add(wall - 30, items=4, failed=False)
    await fl.beat()
    recent = (await registry_doc(store))["recent"]
    assert recent["minute"] == {"runs": 1, "items": 4, "failures": 0}
    assert recent["hour"] == {"runs": 2, "items": 10, "failures": 1}


async def test_stopping_then_stopped(env, clock):
    store, scheduler, fl, settings = env
    await fl.beat()
    scheduler.stop()
    clock.advance(1)
    await fl.beat()
    doc = await registry_doc(store)
    assert doc["state"] == "stopping"
    assert doc["deadAt"] == clock.now + timedelta(seconds=settings.fleet.ttl)
    clock.advance(1)
    await fl.stopped()
    doc = await registry_doc(store)
    assert doc["state"] == "stopped"
    assert doc["heartbeatAt"] == clock.now and doc["deadAt"] == doc["heartbeatAt"]
    report = await status.status(store, clock.now + timedelta(hours=1))
    assert [(p["id"], p["state"], p["alive"]) for p in report["processes"]] == [(OWNER, "stopped", False)]


async def test_a_failed_heartbeat_returns_false_and_the_next_success_resets_the_count(env, clock):
    store, _scheduler, fl, _settings = env
    real = store.heartbeat

    async def down(*args, **kwargs):
        raise AutoReconnect("connection reset")

    store.heartbeat = down
    assert await fl.beat() is False
    clock.advance(1)
    assert await fl.beat() is False
    assert fl.failures == 2 and fl.beats == 0
    assert await store.collectors.count_documents({}) == 0

    store.heartbeat = real
    clock.advance(1)
    assert await fl.beat() is True
    assert fl.failures == 0 and fl.beats == 1
    doc = await registry_doc(store)
    assert doc["heartbeatAt"] == clock.now and doc["host"] == socket.gethostname()  # registered on the retry


async def test_a_failed_lease_renewal_is_a_failed_heartbeat(env, clock):
    store, scheduler, fl, _settings = env
    await seed(store, clock, 1)
    gate = asyncio.Event()
    with respx.mock:
        async def slow(request):
            await gate.wait()
            return httpx.Response(200, json={"items": [], "next": None})

        respx.get(f"{BASE}/items").mock(side_effect=slow)
        await scheduler.fill(clock.now)

        async def down(*args, **kwargs):
            raise AutoReconnect("primary stepped down")

        store.renew_many = down
        assert await fl.beat() is False
        assert fl.failures == 1
        gate.set()
        await asyncio.gather(*list(scheduler.inflight))


async def test_a_failure_in_housekeeping_does_not_escape_the_beat(env, clock):
    """`run_daemon` calls `beat()` unguarded at start: a prune that fails must not raise out of it."""
    store, _scheduler, fl, _settings = env

    async def down(*args, **kwargs):
        raise AutoReconnect("connection reset")

    store.prune_fleet = down
    fl._last_prune = float("-inf")
    assert await fl.beat() is True  # the heartbeat itself was written
    assert (await registry_doc(store))["heartbeatAt"] == clock.now


async def test_the_beat_prunes_expired_registry_documents(env, clock):
    store, _scheduler, fl, _settings = env
    await store.collectors.insert_one({"_id": "gone", "host": "h", "expireAt": clock.now - timedelta(seconds=1)})
    fl._last_prune = float("-inf")
    await fl.beat()
    assert sorted([d["_id"] async for d in store.collectors.find({})]) == [OWNER]


async def test_prune_fleet_deletes_only_documents_past_expire_at(mock_db, clock):
    store = Store(mock_db)
    await store.collectors.insert_many([
        {"_id": "expired", "expireAt": clock.now - timedelta(seconds=1)},
        {"_id": "long-expired", "expireAt": clock.now - timedelta(days=3)},
        {"_id": "on-the-edge", "expireAt": clock.now},
        {"_id": "fresh", "expireAt": clock.now + timedelta(seconds=1)},
    ])
    assert await store.prune_fleet(clock.now) == 2
    assert sorted([d["_id"] async for d in store.collectors.find({})]) == ["fresh", "on-the-edge"]
    assert await store.prune_fleet(clock.now) == 0


async def test_a_process_that_stops_beating_is_shown_dead(env, clock):
    store, _scheduler, fl, settings = env
    await fl.beat()
    assert (await status.status(store, clock.now))["processes"][0]["state"] == "running"
    later = clock.now + timedelta(seconds=settings.fleet.ttl + 1)
    view = (await status.status(store, later))["processes"][0]
    assert (view["state"], view["alive"], view["heartbeatAge"]) == ("dead", False, settings.fleet.ttl + 1)


# -- status ------------------------------------------------------------------------------------


def proc(now, _id, host, mode, *, state="running", dead_in=15.0, inflight=0, current=(), minute=None, hour=None):
    beat = now - timedelta(seconds=5)
    return {"_id": _id, "host": host, "pid": 1, "mode": mode, "version": "1.0", "startedAt": now - timedelta(hours=1),
            "state": state, "heartbeatAt": beat, "deadAt": now + timedelta(seconds=dead_in),
            "expireAt": now + timedelta(days=1), "inflight": inflight, "current": list(current),
            "totals": {"runs": 10, "items": 20}, "recent": {"minute": minute or {}, "hour": hour or {}},
            "database": True}


def net(clock, user, service="github", mode="initial", due=0.0, **extra):
    return {"user": user, "service": service, "accessToken": TOKEN, "mode": mode,
            "scheduledTo": clock.now - timedelta(seconds=due), **extra}


async def seed_status(store, clock):
    now = clock.now
    work = [{"network": "n1", "user": "alice", "service": "github", "since": now - timedelta(seconds=3)},
            {"network": "n2", "user": "bob", "service": "stackoverflow", "since": now - timedelta(seconds=2)}]
    await store.collectors.insert_many([
        proc(now, "h1:1:initial:a", "h1", "initial", inflight=2, current=work,
             minute={"runs": 3, "items": 10, "failures": 1}, hour={"runs": 30, "items": 100, "failures": 2}),
        proc(now, "h1:2:normal:b", "h1", "normal", minute={"runs": 1, "items": 2, "failures": 0},
             hour={"runs": 5, "items": 7, "failures": 0}),
        proc(now, "h1:3:initial:c", "h1", "initial", dead_in=-1, inflight=4,
             current=[{"network": "n9", "user": "carol", "service": "github", "since": now}],
             minute={"runs": 100, "items": 100, "failures": 100}, hour={"runs": 900, "items": 900, "failures": 9}),
        proc(now, "h2:4:normal:d", "h2", "normal", state="stopped", dead_in=-5,
             minute={"runs": 50, "items": 50, "failures": 0}, hour={"runs": 50, "items": 50, "failures": 0}),
        proc(now, "h2:5:initial:e", "h2", "initial", state="stopping", minute={"runs": 2, "items": 0, "failures": 2},
             hour={"runs": 2, "items": 0, "failures": 2}),
    ])
    lease = {"id": "l1", "owner": "h1:1:initial:a", "until": now + timedelta(seconds=30)}
    await store.networks.insert_many([
        net(clock, "a", due=10),
        net(clock, "b", due=120),
        net(clock, "c", due=3600),
        net(clock, "d", due=30, lease={"id": "old", "owner": "dead", "until": now - timedelta(seconds=1)}),
        net(clock, "e", due=5000, lease=lease),
        net(clock, "f", due=9999, disabled=True, disabledReason="malformed: bad input"),
        net(clock, "g", due=-60),
        net(clock, "h", service="stackoverflow", mode="normal", due=5),
        net(clock, "i", mode="normal", due=-600, lease={**lease, "id": "l2"}),
        net(clock, "j", disabled=True, disabledReason="malformed: bad input", scheduledTo=None),
        net(clock, "k", disabled=True, disabledReason="malformed: bad input", scheduledTo=None),
        net(clock, "l", disabled=True, disabledReason="operator: customer left", scheduledTo=None),
        net(clock, "m", disabled=True, unauthorized=True, disabledReason="unauthorized: Bad credentials",
            scheduledTo=None),
        net(clock, "n", disabled=True, unauthorized=True, disabledReason="unauthorized: Bad credentials",
            scheduledTo=None),
        net(clock, "o", disabled=True, unauthorized=True, disabledReason="unauthorized: token revoked",
            scheduledTo=None),
    ])
    await store.pause_service("stackoverflow", now + timedelta(hours=2), "quota exhausted (quota_remaining 0)",
                              now - timedelta(minutes=1))
    await store.pause_service("github", now - timedelta(seconds=1), "an old pause", now - timedelta(hours=1))


@pytest.fixture
async def report(mock_db, clock):
    store = Store(mock_db)
    await seed_status(store, clock)
    return await status.status(store, clock.now)


async def test_status_tells_dead_stopped_and_alive_processes_apart(report):
    views = {p["id"]: p for p in report["processes"]}
    assert {i: (p["state"], p["alive"]) for i, p in views.items()} == {
        "h1:1:initial:a": ("running", True), "h1:2:normal:b": ("running", True), "h1:3:initial:c": ("dead", False),
        "h2:4:normal:d": ("stopped", False), "h2:5:initial:e": ("stopping", True)}
    dead = views["h1:3:initial:c"]
    assert dead["inflight"] == 0 and dead["current"] == []
    assert dead["lastCurrent"] == [{"network": "n9", "user": "carol", "service": "github",
                                    "since": report["at"]}]
    alive = views["h1:1:initial:a"]
    assert alive["inflight"] == 2 and [c["user"] for c in alive["current"]] == ["alice", "bob"]
    assert alive["lastCurrent"] == [] and alive["heartbeatAge"] == 5.0


async def test_status_counts_alive_processes_per_host_and_mode(report):
    hosts = {h["host"]: h for h in report["hosts"]}
    assert [h["host"] for h in report["hosts"]] == ["h1", "h2"]
    h1, h2 = hosts["h1"], hosts["h2"]
    assert h1["modes"] == {"initial": {"alive": 1, "dead": 1, "stopped": 0},
                           "normal": {"alive": 1, "dead": 0, "stopped": 0}}
    assert (h1["alive"], h1["dead"], h1["inflight"]) == (2, 1, 2)
    assert h2["modes"] == {"normal": {"alive": 0, "dead": 0, "stopped": 1},
                           "initial": {"alive": 1, "dead": 0, "stopped": 0}}
    assert (h2["alive"], h2["dead"], h2["inflight"]) == (1, 0, 0)


async def test_status_sums_recent_work_of_alive_processes_only(report):
    hosts = {h["host"]: h for h in report["hosts"]}
    assert hosts["h1"]["minute"] == {"runs": 4, "items": 12, "failures": 1}
    assert hosts["h1"]["hour"] == {"runs": 35, "items": 107, "failures": 2}
    assert hosts["h2"]["minute"] == {"runs": 2, "items": 0, "failures": 2}
    assert hosts["h2"]["hour"] == {"runs": 2, "items": 0, "failures": 2}


async def test_status_backlog_per_mode_and_service(report, clock):
    rows = {(r["mode"], r["service"]): r for r in report["backlog"]}
    assert list(rows) == [("initial", "github"), ("normal", "github"), ("normal", "stackoverflow")]
    # a, b, c and d (its lease expired) are due; b and c for longer than a minute; e is leased
    assert {k: rows[("initial", "github")][k] for k in ("due", "overdue", "running")} == {
        "due": 4, "overdue": 2, "running": 1}
    assert rows[("initial", "github")]["oldestDue"] == clock.now - timedelta(seconds=3600)
    assert rows[("initial", "github")]["lagSeconds"] == 3600.0
    assert {k: rows[("normal", "github")][k] for k in ("due", "overdue", "running", "oldestDue", "lagSeconds")} == {
        "due": 0, "overdue": 0, "running": 1, "oldestDue": None, "lagSeconds": 0.0}
    assert {k: rows[("normal", "stackoverflow")][k] for k in ("due", "overdue", "running", "lagSeconds")} == {
        "due": 1, "overdue": 0, "running": 0, "lagSeconds": 5.0}
    assert report["overdueAfter"] == 60


async def test_status_overdue_follows_the_threshold(mock_db, clock):
    store = Store(mock_db)
    await seed_status(store, clock)
    report = await status.status(store, clock.now, overdue_after=20)
    row = next(r for r in report["backlog"] if (r["mode"], r["service"]) == ("initial", "github"))
    assert (row["due"], row["overdue"]) == (4, 3)  # d (due 30 s ago) is overdue now, a (10 s) is not
    assert report["overdueAfter"] == 20


async def test_status_lists_the_pauses_still_on(report, clock):
    assert report["paused"] == [{"service": "stackoverflow", "until": clock.now + timedelta(hours=2),
                                 "since": clock.now - timedelta(minutes=1),
                                 "reason": "quota exhausted (quota_remaining 0)"}]


async def test_status_counts_disabled_and_unauthorized_with_top_reasons(report):
    assert report["networks"] == {
        "disabled": {"count": 4, "reasons": [{"reason": "malformed: bad input", "count": 3},
                                             {"reason": "operator: customer left", "count": 1}]},
        "unauthorized": {"count": 3, "reasons": [{"reason": "unauthorized: Bad credentials", "count": 2},
                                                 {"reason": "unauthorized: token revoked", "count": 1}]},
        "parked": {"count": 0, "reasons": []},
        "confirming": {"count": 0, "reasons": []},
    }


async def test_status_counts_the_networks_refused_once_apart(mock_db, clock):
    store = Store(mock_db)
    await store.networks.insert_many([
        {"user": "u1", "service": "github", "unauthorized": True, "authFailures": 1,
         "lastError": {"kind": "unauthorized", "message": "HTTP 401: Bad credentials"}},
        {"user": "u2", "service": "github", "unauthorized": True, "disabled": True,
         "disabledReason": "unauthorized: x"}])
    summary = (await status.status(store, clock.now))["networks"]
    assert summary["confirming"] == {"count": 1, "reasons": [{"reason": "HTTP 401: Bad credentials", "count": 1}]}
    assert summary["unauthorized"]["count"] == 1
    lines = status.render(await status.status(store, clock.now)).splitlines()
    assert any(line.endswith("1 refused once, confirming") for line in lines)
    assert any(line.split()[:2] == ["confirming", "1"] for line in lines)


async def test_parked_networks_are_counted_by_service_and_shown(mock_db, clock):
    store = Store(mock_db)
    await store.networks.insert_many(
        [net(clock, f"g{i}", parkedAt=clock.now, parkedReason=f"parked after 6 rate limits in a row, due at {i}")
         for i in range(3)] + [net(clock, "y0", service="youtube", parkedAt=clock.now, parkedReason="parked")])
    summary = await store.disabled_summary()
    assert summary["parked"] == {"count": 4, "reasons": [
        {"reason": "github: rate limited too many times in a row", "count": 3},
        {"reason": "youtube: rate limited too many times in a row", "count": 1}]}
    lines = status.render(await status.status(store, clock.now)).splitlines()
    assert any(line.startswith("DISABLED  0 disabled, 0 unauthorized, 4 parked") for line in lines)
    assert any(line.split()[:2] == ["parked", "3"] for line in lines)


async def test_disabled_summary_keeps_the_top_reasons_but_counts_all(mock_db, clock):
    store = Store(mock_db)
    await store.networks.insert_many(
        [net(clock, f"u{i}-{j}", disabled=True, disabledReason=f"reason {i}") for i in range(4) for j in range(i + 1)])
    summary = await store.disabled_summary(top=2)
    assert summary["disabled"] == {"count": 10, "reasons": [{"reason": "reason 3", "count": 4},
                                                            {"reason": "reason 2", "count": 3}]}
    assert summary["unauthorized"] == {"count": 0, "reasons": []}


# -- render ------------------------------------------------------------------------------------


async def test_render_shows_every_section_and_no_token(report):
    text = status.render(report)
    lines = text.splitlines()
    for heading in ("FLEET  3 alive, 1 dead, 2 host(s)", "PAUSED SERVICES",
                    "DISABLED  4 disabled, 3 unauthorized, 0 parked (`collector networks enable ID` clears either); "
                    "0 refused once, confirming"):
        assert heading in lines
    assert any(line.startswith("BACKLOG") for line in lines)
    for process in ("h1:1:initial:a", "h1:2:normal:b", "h1:3:initial:c", "h2:4:normal:d", "h2:5:initial:e"):
        assert process in text
    dead = next(line for line in lines if line.startswith("h1:3:initial:c"))
    assert "DEAD" in dead and "github/carol" in dead  # what it was doing when it died
    assert "DEAD" not in next(line for line in lines if line.startswith("h2:4:normal:d"))
    assert "stopped" in next(line for line in lines if line.startswith("h2:4:normal:d"))
    assert "github/alice, stackoverflow/bob" in next(line for line in lines if line.startswith("h1:1:initial:a"))
    paused = next(line for line in lines if line.startswith("stackoverflow "))
    assert "quota exhausted" in paused and "2.0h" in paused
    assert "malformed: bad input" in text and "unauthorized: Bad credentials" in text
    assert "github" not in text.split("PAUSED SERVICES")[1].split("DISABLED")[0]  # the old pause is over
    assert "nothing due" not in text
    assert TOKEN not in text


async def test_render_of_an_empty_database(mock_db, clock):
    text = status.render(await status.status(Store(mock_db), clock.now))
    lines = text.splitlines()
    assert "FLEET  0 alive, 0 dead, 0 host(s)" in lines
    assert lines[lines.index("PAUSED SERVICES") + 1] == "none"
    assert "nothing due" in lines
    assert ("DISABLED  0 disabled, 0 unauthorized, 0 parked (`collector networks enable ID` clears either); "
            "0 refused once, confirming") in lines


async def test_the_heartbeat_survives_an_error_that_is_not_the_database_s(env, clock):
    """The loop used to survive PyMongoError only: any other error ended the heartbeat task for good, and with
    it the renewal of the leases of every run in flight."""
    store, _scheduler, fl, _settings = env
    document, calls = fl.document, []

    def buggy(now, state):
        calls.append(state)
        if len(calls) == 1:
            raise OverflowError("a counter past 64 bits")
        return document(now, state)

    fl.document = buggy
    fl.settings = make_settings(fleet={"heartbeat_interval": 0.01, "ttl": 1.0})
    task = asyncio.create_task(fl.run())
    for _ in range(200):
        if fl.beats:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(calls) >= 2 and fl.beats >= 1 and await registry_doc(store)


async def test_a_partitioned_process_reports_the_networks_no_live_process_covers(mock_db, clock):
    """collector_uncovered_due: the alert an operator sets on a fleet split by selectors."""
    from prometheus_client.parser import text_string_to_metric_families

    from collector.metrics import Metrics
    from collector.selectors import Partition, user_slot

    settings = make_settings(daemon={"partition": "0/2"}, fleet={"backlog_interval": 0.0})
    store = Store(mock_db)
    users = [f"u{i}" for i in range(40)]
    for user in users:
        await store.insert_network({"user": user, "service": "github", "mode": "initial", "scheduledTo": clock.now})
    metrics = Metrics("initial", OWNER, "1")
    async with httpx.AsyncClient() as client:
        scheduler = Scheduler(store, Executor(store, client, settings, REGISTRY, clock=clock), settings, "initial",
                              owner=OWNER, clock=clock)
        assert await Fleet(store, scheduler, settings, clock=clock, metrics=metrics).beat()
    families = {f.name: f for f in text_string_to_metric_families(metrics.render().decode())}
    got = {s.labels["service"]: s.value for s in families["collector_uncovered_due"].samples}
    assert got == {"github": sum(1 for u in users if Partition(1, 2).owns(user_slot(u)))} and got["github"] > 0
