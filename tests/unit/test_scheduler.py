"""The loop: concurrency limits, the run loop, graceful stop, database outages (mongomock-motor)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
import pytest
import respx
from pymongo.errors import ServerSelectionTimeoutError

from collector import plugins
from collector.executor import Executor
from collector.scheduler import Scheduler
from collector.store import Store
from tests.conftest import make_settings
from tests.unit.test_executor import BASE, Fake


class Fake2(Fake):
    service = "fake2"


REGISTRY = {"fake": plugins.Registered("fake", Fake, "tests", "0"),
            "fake2": plugins.Registered("fake2", Fake2, "tests", "0")}


async def seed(store, clock, n, service="fake", mode="initial"):
    await store.networks.insert_many([
        {"user": f"u{i}", "service": service, "accessToken": f"token-{i}", "mode": mode, "scheduledTo": clock.now}
        for i in range(n)
    ])


def build(mock_db, clock, **over):
    settings = make_settings(**over)
    store = Store(mock_db)
    client = httpx.AsyncClient()
    return store, Scheduler(store, Executor(store, client, settings, REGISTRY, clock=clock), settings,
                            "initial", owner="test", clock=clock)


@respx.mock
async def test_global_and_per_service_limits(mock_db, clock):
    gate = asyncio.Event()

    async def blocked(request):
        await gate.wait()
        return httpx.Response(200, json={"items": [], "next": None})

    respx.get(f"{BASE}/items").mock(side_effect=blocked)
    store, sched = build(mock_db, clock, daemon={"concurrency": 5}, services={"fake": {"concurrency": 2}})
    await seed(store, clock, 10, "fake")
    await seed(store, clock, 10, "fake2")
    started = await sched.fill(clock.now)
    assert started == 5 and len(sched.inflight) == 5
    assert sched.per_service["fake"] == 2 and sched.per_service["fake2"] == 3
    assert await store.networks.count_documents({"lease.owner": "test"}) == 5
    gate.set()
    await asyncio.gather(*list(sched.inflight))
    assert not sched.inflight and sum(sched.stats.runs.values()) == 5
    assert await store.networks.count_documents({"lease": {"$exists": True}}) == 0


@respx.mock
async def test_run_loop_collects_every_due_network_once_then_stop_returns(mock_db, clock):
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [{"id": 1}], "next": None}))
    store, sched = build(mock_db, clock, daemon={"concurrency": 4})
    await seed(store, clock, 12)
    done = asyncio.Event()
    original = sched.executor.run

    async def counting(doc, lease):
        result = await original(doc, lease)
        if sum(sched.stats.runs.values()) + 1 >= 12:
            done.set()
        return result

    sched.executor.run = counting
    task = asyncio.create_task(sched.run())
    await asyncio.wait_for(done.wait(), 10)
    sched.stop()
    await asyncio.wait_for(task, 10)
    assert sum(sched.stats.runs.values()) == 12 and sched.stats.items_new == 12
    assert await store.networks.count_documents({"mode": "normal"}) == 12
    assert len(respx.calls) == 12


@respx.mock
async def test_stop_cancels_runs_past_the_grace_and_releases_their_leases(mock_db, clock):
    async def hang(request):
        await asyncio.Event().wait()

    respx.get(f"{BASE}/items").mock(side_effect=hang)
    store, sched = build(mock_db, clock, daemon={"shutdown_grace": 0.05})
    await seed(store, clock, 3)
    await sched.fill(clock.now)
    assert await store.networks.count_documents({"lease": {"$ne": None}}) == 3
    sched.stop()
    await sched.drain()
    assert await store.networks.count_documents({"lease": {"$ne": None}}) == 0
    assert await store.networks.count_documents({"scheduledTo": clock.now, "mode": "initial"}) == 3


async def test_a_database_outage_backs_off_and_never_raises(mock_db, clock):
    store, sched = build(mock_db, clock)

    async def down(*args, **kwargs):
        raise ServerSelectionTimeoutError("no servers")

    store.paused_services = down
    delays = [await sched._tick() for _ in range(4)]
    assert delays == sorted(delays) and delays[0] < delays[-1]
    assert sched._db_failures == 4


async def test_paused_services_are_not_claimed(mock_db, clock):
    store, sched = build(mock_db, clock)
    await seed(store, clock, 2, "fake")
    await store.pause_service("fake", clock.now.replace(year=2030), "quota", clock.now)
    assert await sched._tick() > 0
    assert not sched.inflight


async def test_repair_gives_defaults_and_disables_junk_modes(mock_db, clock):
    store, sched = build(mock_db, clock)
    await store.networks.insert_many([
        {"user": "a", "service": "fake", "accessToken": "t1234"},
        {"user": "b", "service": "fake", "accessToken": "t1234", "mode": "sideways", "scheduledTo": clock.now},
    ])
    await sched._maybe_repair(clock.now)
    a = await store.networks.find_one({"user": "a"})
    b = await store.networks.find_one({"user": "b"})
    assert a["mode"] == "initial" and a["scheduledTo"] == clock.now and not a.get("disabled")
    assert b["disabled"] and "mode" in b["disabledReason"] and b["lastError"]["kind"] == "malformed"


def test_unknown_mode_is_refused(mock_db, clock):
    with pytest.raises(ValueError):
        build(mock_db, clock)[1].__class__(None, None, make_settings(), "sideways")


@pytest.mark.slow
@respx.mock
async def test_a_fill_through_a_big_backlog_keeps_the_watchdog_fed_and_gives_the_loop_back(mock_db, clock):
    """Claims that keep succeeding (runs end while the next batch is being claimed) used to keep one fill
    going until the backlog was gone: the loop's promise to the watchdog ran out and systemd killed a
    daemon that was working, and pauses were not read again meanwhile."""
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [], "next": None}))
    store, sched = build(mock_db, clock, daemon={"concurrency": 4})
    sched.STALL_GRACE = 0.3
    sched.FILL_BUDGET = 0.1
    await seed(store, clock, 300)
    claim_many = store.claim_many

    async def slow_claims(*args, **kwargs):  # a loaded server: every batch takes 10 ms
        await asyncio.sleep(0.01)
        return await claim_many(*args, **kwargs)

    store.claim_many = slow_claims
    ticks, pause_reads, dead = 0, 0, []
    tick, paused_services = sched._tick, store.paused_services

    async def counted_tick():
        nonlocal ticks
        ticks += 1
        return await tick()

    async def counted_pauses(now):
        nonlocal pause_reads
        pause_reads += 1
        return await paused_services(now)

    sched._tick, store.paused_services = counted_tick, counted_pauses

    async def watch():
        while True:
            if not sched.alive():
                dead.append(sum(sched.stats.runs.values()))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    loop = asyncio.create_task(sched.run())
    for _ in range(1000):
        if sum(sched.stats.runs.values()) >= 300:
            break
        await asyncio.sleep(0.01)
    sched.stop()
    await asyncio.wait_for(loop, 10)
    watcher.cancel()
    assert sum(sched.stats.runs.values()) == 300  # about 1 s of claiming in 10 ms batches of 4
    assert dead == []  # never looked hung to the watchdog
    assert ticks >= 5 and pause_reads >= 5  # the fill gave the loop back every FILL_BUDGET


async def test_a_crashed_run_is_retried_after_a_pause_not_after_the_whole_lease(mock_db, clock):
    store, sched = build(mock_db, clock, daemon={"lease_ttl": 3600})
    await seed(store, clock, 1)

    async def crash(doc, lease):
        raise ServerSelectionTimeoutError("the state save found no server")

    sched.executor.run = crash
    await sched.fill(clock.now)
    await asyncio.gather(*list(sched.inflight))
    net = await store.networks.find_one({})
    assert sched.stats.crashes == 1
    assert net["lease"]["until"] == clock.now + timedelta(seconds=sched.CRASH_RETRY)  # not now + 3600 s
    clock.advance(sched.CRASH_RETRY + 1)
    assert len(await store.claim_many("initial", "other", clock.now, 60, 5)) == 1  # claimable again


@pytest.mark.parametrize("interval", [0.0, 0.5])
@respx.mock
async def test_networks_coming_due_one_by_one_are_claimed_in_batches_of_claim_interval(mock_db, interval):
    """At scale a network comes due every millisecond: a look at the due queue for each one is a claim batch each,
    most of the database's work. With the queue drained, the loop looks again only claim_interval later."""
    from collector.clock import utcnow

    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [], "next": None}))
    settings = make_settings(daemon={"concurrency": 16, "claim_interval": interval})
    store = Store(mock_db)
    sched = Scheduler(store, Executor(store, httpx.AsyncClient(), settings, REGISTRY, clock=utcnow), settings,
                      "initial", owner="test", clock=utcnow)
    start = utcnow()
    await store.networks.insert_many([
        {"user": f"u{i}", "service": "fake", "accessToken": f"token-{i}", "mode": "initial",
         "scheduledTo": start + timedelta(milliseconds=100 * i)} for i in range(12)])
    batches = []
    claim = store.claim_many

    async def counted(*args, **kwargs):
        got = await claim(*args, **kwargs)
        batches.append(len(got))
        return got

    store.claim_many = counted
    task = asyncio.create_task(sched.run())
    deadline = asyncio.get_running_loop().time() + 10
    while sum(sched.stats.runs.values()) < 12 and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    sched.stop()
    await asyncio.wait_for(task, 10)
    assert sum(sched.stats.runs.values()) == 12 and sum(batches) == 12
    claiming = [n for n in batches if n]
    if interval == 0:
        assert len(claiming) >= 9  # one batch for (nearly) every network, as each comes due
    else:
        assert len(claiming) <= 5 and max(claiming) >= 3  # 1.1 s of arrivals in looks 0.5 s apart
