"""The fleet's storage calls on both mongomock-motor and the real wire server: lease renewal, the registry
document, the backlog and disabled aggregations, service pauses."""

from __future__ import annotations

from datetime import timedelta

import pytest

from collector.store import Store
from tests.harness import claim_one

TTL = 60


@pytest.fixture
async def store(any_db):
    store = Store(any_db)
    await store.ensure_indexes()
    return store


async def add(store, clock, user, service="github", mode="initial", due=0.0, **extra):
    return await store.insert_network({"user": user, "service": service, "accessToken": "t0ken", "mode": mode,
                                       "scheduledTo": clock.now - timedelta(seconds=due), **extra})


# -- lease renewal -----------------------------------------------------------------------------


async def test_renew_many_moves_only_our_leases(store, clock):
    a = await add(store, clock, "a", due=20)
    b = await add(store, clock, "b", due=10)
    theirs_lease = {"id": "theirs", "owner": "other", "until": clock.now + timedelta(seconds=5)}
    c = await add(store, clock, "c", due=30, lease=theirs_lease)
    _doc, lease_a = await claim_one(store, "initial", "me", clock.now, TTL)
    _doc, lease_b = await claim_one(store, "initial", "me", clock.now, TTL)
    assert await claim_one(store, "initial", "me", clock.now, TTL) is None  # c is leased by someone else

    later = clock.now + timedelta(seconds=40)
    assert await store.renew_many([(a, lease_a), (b, lease_b)], later, TTL) == 2
    for nid in (a, b):
        assert (await store.get_network(nid))["lease"]["until"] == later + timedelta(seconds=TTL)
    assert (await store.get_network(c))["lease"] == theirs_lease
    assert await store.renew_many([], later, TTL) == 0


async def test_renew_many_counts_only_the_leases_still_held(store, clock):
    a = await add(store, clock, "a")
    b = await add(store, clock, "b", due=5)
    _doc, lease_b = await claim_one(store, "initial", "me", clock.now, TTL)
    _doc, lease_a = await claim_one(store, "initial", "me", clock.now, TTL)
    # both leases ran out (a frozen process) and another process took the most overdue network, b
    later = clock.now + timedelta(seconds=TTL + 1)
    doc, stolen = await claim_one(store, "initial", "them", later, TTL)
    assert doc["_id"] == b
    assert await store.renew_many([(a, lease_a), (b, lease_b)], later, TTL) == 1
    network = await store.get_network(b)
    assert network["lease"]["id"] == stolen.id and network["lease"]["until"] == stolen.until
    network = await store.get_network(a)
    assert network["lease"]["id"] == lease_a.id and network["lease"]["until"] == later + timedelta(seconds=TTL)


async def test_a_renewed_lease_keeps_the_network_from_a_successor(store, clock):
    """The point of renewing: past the first lease's end, another claimant must still find it held."""
    nid = await add(store, clock, "long-run")
    _doc, mine = await claim_one(store, "initial", "me", clock.now, TTL)
    later = clock.now + timedelta(seconds=TTL - 5)
    assert await store.renew_many([(nid, mine)], later, TTL) == 1
    after_first_ttl = clock.now + timedelta(seconds=TTL + 5)
    assert await claim_one(store, "initial", "them", after_first_ttl, TTL) is None
    assert (await store.get_network(nid))["lease"]["id"] == mine.id
    # once the renewed lease runs out too (the owner died), the network is claimable again
    doc, theirs = await claim_one(store, "initial", "them", later + timedelta(seconds=TTL + 1), TTL)
    assert doc["_id"] == nid and theirs.owner == "them"


# -- the registry ------------------------------------------------------------------------------


async def test_heartbeat_upserts_and_sets_the_registration_once(store, clock):
    t0 = clock.now
    first = {"host": "h1", "pid": 11, "mode": "initial", "version": "1.0", "startedAt": t0}
    await store.heartbeat("p1", {"state": "running", "heartbeatAt": t0, "inflight": 2}, first)
    doc = await store.collectors.find_one({"_id": "p1"})
    assert {k: doc[k] for k in ("host", "pid", "mode", "startedAt", "state", "heartbeatAt", "inflight")} == {
        "host": "h1", "pid": 11, "mode": "initial", "startedAt": t0, "state": "running", "heartbeatAt": t0,
        "inflight": 2}

    t1 = clock.advance(5)
    await store.heartbeat("p1", {"state": "stopping", "heartbeatAt": t1, "inflight": 0},
                          {**first, "pid": 99, "startedAt": t1})
    doc = await store.collectors.find_one({"_id": "p1"})
    assert (doc["pid"], doc["startedAt"]) == (11, t0)  # $setOnInsert: not on an update
    assert (doc["state"], doc["heartbeatAt"], doc["inflight"]) == ("stopping", t1, 0)
    assert await store.collectors.count_documents({}) == 1

    await store.heartbeat("p2", {"state": "running", "heartbeatAt": t1})
    doc = await store.collectors.find_one({"_id": "p2"})
    assert doc["state"] == "running" and "host" not in doc


async def test_fleet_lists_processes_by_host_and_mode(store, clock):
    for owner, host, mode in (("c", "h2", "initial"), ("b", "h1", "normal"), ("a", "h1", "initial")):
        await store.heartbeat(owner, {"heartbeatAt": clock.now}, {"host": host, "mode": mode, "startedAt": clock.now})
    assert [d["_id"] for d in await store.fleet()] == ["a", "b", "c"]


async def test_prune_fleet_deletes_only_what_is_past_expire_at(store, clock):
    for owner, expire in (("old", -3600), ("just-gone", -1), ("edge", 0), ("live", 30)):
        await store.heartbeat(owner, {"expireAt": clock.now + timedelta(seconds=expire)})
    assert await store.prune_fleet(clock.now) == 2
    assert sorted(d["_id"] for d in await store.fleet()) == ["edge", "live"]


# -- status aggregations ----------------------------------------------------------------------


async def test_backlog_counts_per_mode_and_service(store, clock):
    now = clock.now
    held = {"owner": "p", "until": now + timedelta(seconds=30)}
    await add(store, clock, "a", due=10)
    await add(store, clock, "b", due=120)
    await add(store, clock, "c", due=3600)
    await add(store, clock, "d", due=30, lease={"id": "x", "owner": "dead", "until": now - timedelta(seconds=1)})
    await add(store, clock, "e", due=5000, lease={"id": "l1", **held})
    await add(store, clock, "f", due=9999, disabled=True)
    await add(store, clock, "g", due=-60)
    await add(store, clock, "h", service="stackoverflow", due=400)
    await add(store, clock, "i", service="stackoverflow", mode="normal", due=5)
    await add(store, clock, "j", service="stackoverflow", mode="normal", due=90)
    await add(store, clock, "k", mode="normal", due=-600, lease={"id": "l2", **held})
    await add(store, clock, "l", mode="normal", scheduledTo=None)

    rows = await store.backlog(now, 60)
    got = {(r["mode"], r["service"]): (r["due"], r["overdue"], r["running"]) for r in rows}
    assert got == {("initial", "github"): (4, 2, 1), ("initial", "stackoverflow"): (1, 1, 0),
                   ("normal", "github"): (0, 0, 1), ("normal", "stackoverflow"): (2, 1, 0)}
    assert [(r["mode"], r["service"]) for r in rows] == sorted(got)
    oldest = {(r["mode"], r["service"]): r["oldestDue"] for r in rows}
    assert oldest == {("initial", "github"): now - timedelta(seconds=3600),
                      ("initial", "stackoverflow"): now - timedelta(seconds=400),
                      ("normal", "github"): None, ("normal", "stackoverflow"): now - timedelta(seconds=90)}
    assert {(r["mode"], r["service"]): r["overdue"] for r in await store.backlog(now, 20)} == {
        ("initial", "github"): 3, ("initial", "stackoverflow"): 1, ("normal", "github"): 0,
        ("normal", "stackoverflow"): 1}
    # a day earlier nothing was due yet (the leases taken since count as running then)
    assert [r["due"] for r in await store.backlog(now - timedelta(days=1), 60)] == [0, 0]


async def test_disabled_summary_counts_and_ranks_reasons(store, clock):
    for i, reason in enumerate(["malformed: x"] * 3 + ["operator: left"] + ["missing_credentials: y"] * 2):
        await add(store, clock, f"d{i}", disabled=True, disabledReason=reason, scheduledTo=None)
    for i, reason in enumerate(["unauthorized: Bad credentials"] * 2 + ["unauthorized: revoked"]):
        await add(store, clock, f"u{i}", disabled=True, unauthorized=True, disabledReason=reason, scheduledTo=None)
    await add(store, clock, "active", unauthorized=False)
    await add(store, clock, "re-enabled", disabled=False, unauthorized=False, disabledReason="stale")
    await add(store, clock, "parked", parkedAt=clock.now, parkedReason="parked after 6 rate limits in a row")
    await add(store, clock, "refused-once", unauthorized=True, authFailures=1,
              lastError={"kind": "unauthorized", "message": "HTTP 401: Bad credentials"})

    summary = await store.disabled_summary()
    assert summary == {
        "disabled": {"count": 6, "reasons": [{"reason": "malformed: x", "count": 3},
                                             {"reason": "missing_credentials: y", "count": 2},
                                             {"reason": "operator: left", "count": 1}]},
        "unauthorized": {"count": 3, "reasons": [{"reason": "unauthorized: Bad credentials", "count": 2},
                                                 {"reason": "unauthorized: revoked", "count": 1}]},
        "parked": {"count": 1, "reasons": [{"reason": "github: rate limited too many times in a row", "count": 1}]},
        "confirming": {"count": 1, "reasons": [{"reason": "HTTP 401: Bad credentials", "count": 1}]},
    }
    top = await store.disabled_summary(top=1)
    assert top["disabled"] == {"count": 6, "reasons": [{"reason": "malformed: x", "count": 3}]}


# -- service pauses ----------------------------------------------------------------------------


async def test_pauses_and_service_pause_ignore_pauses_that_ended(store, clock):
    now = clock.now
    await store.pause_service("stackoverflow", now + timedelta(hours=1), "quota exhausted", now)
    await store.pause_service("github", now - timedelta(seconds=1), "secondary limit", now - timedelta(minutes=5))
    await store.pause_service("bitbucket", now + timedelta(minutes=2), "backoff", now)

    pauses = await store.pauses(now)
    assert [(p["_id"], p["pausedUntil"], p["pauseReason"], p["pausedAt"]) for p in pauses] == [
        ("bitbucket", now + timedelta(minutes=2), "backoff", now),
        ("stackoverflow", now + timedelta(hours=1), "quota exhausted", now)]

    on = await store.service_pause("stackoverflow", now)
    assert on["pausedUntil"] == now + timedelta(hours=1) and on["pauseReason"] == "quota exhausted"
    assert await store.service_pause("github", now) is None  # in the past
    assert await store.service_pause("nosuch", now) is None
    assert await store.service_pause("stackoverflow", now + timedelta(hours=1)) is None  # ends exactly then
    assert [p["_id"] for p in await store.pauses(now + timedelta(minutes=5))] == ["stackoverflow"]
