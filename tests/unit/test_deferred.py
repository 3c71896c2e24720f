"""A network claimed while its service is paused is handed back without a request (Kind.DEFERRED).

Driven through the engine (claim -> Executor.run -> network) with the Stack Overflow connector and
respx: no request may leave, so every route that must stay silent is asserted with call_count == 0.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
import respx

from collector.states import Kind
from tests.conftest import stackexchange_page
from tests.harness import engine_for
from tests.unit.test_stackoverflow import FAVORITES, TOKEN, page, reply

CURSOR = {"next": 3, "stop": None, "top": "9785903"}


@pytest.fixture
async def engine(mock_db, settings, clock):
    async for engine in engine_for("stackoverflow", TOKEN, mock_db, settings, clock):
        yield engine


@pytest.fixture
def router():
    with respx.mock(assert_all_called=False) as mock:  # routes here are asserted by call_count
        yield mock


@pytest.mark.recorded
async def test_a_paused_service_is_not_called_and_the_network_waits_for_the_pause(engine, router, clock):
    route = router.get(FAVORITES).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz",
                                                                              has_more=True)))
    until = clock.now + timedelta(hours=1)
    # paused by another process: this executor learns of it from the `services` collection
    await engine.store.pause_service("stackoverflow", until, "quota exhausted", clock.now - timedelta(minutes=1))
    await engine.add(errors=2, cursor=CURSOR)

    result = await engine.run("initial")

    assert route.call_count == 0 and len(router.calls) == 0
    assert result.outcome.kind is Kind.DEFERRED and result.outcome.kind == "deferred"
    assert result.saved and result.new_items == 0 and not result.transition.success
    network = await engine.network()
    assert network["scheduledTo"] >= until
    assert network["scheduledTo"] == until + timedelta(seconds=engine.schedule.rate_limit_slack)
    assert network["errors"] == 2
    assert "lastError" not in network
    assert "lease" not in network
    assert "rateLimitedUntil" not in network and not network.get("disabled")
    assert network["mode"] == "initial" and network["cursor"] == CURSOR
    assert network["lastOutcome"]["kind"] == "deferred"
    assert "paused until" in network["lastOutcome"]["reason"] and "quota exhausted" in network["lastOutcome"]["reason"]
    assert network["stats"] == {"runs": 1, "deferred": 1}
    assert await engine.item_ids() == set()


@pytest.mark.recorded
async def test_once_the_pause_is_over_the_next_run_calls_the_api(engine, router, clock):
    route = router.get(FAVORITES).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz",
                                                                              has_more=True)))
    until = clock.now + timedelta(minutes=10)
    await engine.store.pause_service("stackoverflow", until, "backoff", clock.now)
    await engine.add(errors=2)
    assert (await engine.run("initial")).outcome.kind is Kind.DEFERRED
    assert route.call_count == 0

    # the executor remembers the pause it read; past its end that memory must not hold the network back
    assert engine.executor.pauses.until("stackoverflow", clock.now) == until
    result = await engine.run_when_due("initial")

    assert clock.now > until
    assert route.call_count == 1
    assert route.calls.last.request.headers["X-API-Access-Token"] == TOKEN
    assert result.outcome.kind is Kind.PAGE and result.new_items == 34
    network = await engine.network()
    assert network["errors"] == 0 and network["cursor"]["next"] == 2
    assert network["lastOutcome"]["kind"] == "page"


@pytest.mark.recorded
async def test_a_run_that_pauses_its_service_defers_the_next_network_without_a_request(engine, api, clock):
    # `backoff`: the method, for the whole app (a user's spent quota is that user's alone: test_stackoverflow)
    route = page(api, 1).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz",
                                                                    has_more=True, backoff=7200)))
    first = await engine.add(user="u1", scheduledTo=clock.now - timedelta(minutes=1))
    second = await engine.add(user="u2", errors=1, cursor=CURSOR)
    resume = clock.now + timedelta(seconds=7200 + engine.schedule.rate_limit_slack)

    result = await engine.run("initial")
    assert result.network_id == first and result.new_items == 34
    assert route.call_count == 1
    assert engine.executor.pauses.active(clock.now) == {"stackoverflow": resume}
    assert (await engine.store.services.find_one({"_id": "stackoverflow"}))["pausedUntil"] == resume
    # no scheduler tick in between; and the executor must not need the database to know: take the
    # `services` document away, only its own memory is left
    await engine.store.services.delete_many({})

    clock.advance(1)
    result = await engine.run("initial")

    assert result.network_id == second
    assert route.call_count == 1  # still only the first network's request
    assert result.outcome.kind is Kind.DEFERRED
    network = await engine.store.get_network(second)
    assert network["scheduledTo"] >= resume
    assert network["errors"] == 1 and "lastError" not in network and "lease" not in network
    assert network["cursor"] == CURSOR and network["lastOutcome"]["kind"] == "deferred"
    assert await engine.store.items.count_documents({"user": "u2"}) == 0


def spy_on_pause_reads(engine, monkeypatch, first: Exception | None = None) -> list[str]:
    """Every read of a service's pause the executor makes, in order; `first`: the first read raises it."""
    reads: list[str] = []
    read = engine.store.service_pause

    async def spied(service, now):
        reads.append(service)
        if first is not None and len(reads) == 1:
            raise first
        return await read(service, now)

    monkeypatch.setattr(engine.store, "service_pause", spied)
    return reads


@pytest.mark.recorded
async def test_runs_that_start_together_share_one_read_of_the_pause(engine, router, clock, monkeypatch):
    router.get(FAVORITES).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz",
                                                                      has_more=True)))
    for i in range(5):
        await engine.add(user=f"u{i}")
    reads = spy_on_pause_reads(engine, monkeypatch)
    claims = await engine.store.claim_many("initial", "me", clock.now, 60, 10)
    results = await asyncio.gather(*(engine.executor.run(doc, lease) for doc, lease in claims))

    assert len(claims) == 5 and all(r.outcome.kind is Kind.PAGE for r in results)
    assert reads == ["stackoverflow"]  # one read for the five runs

    # a read older than `shared` (KnownPauses) serves nobody: the pause another process wrote since is seen
    monkeypatch.setattr(engine.executor.pauses, "shared", -1.0)
    await engine.store.pause_service("stackoverflow", clock.now + timedelta(hours=1), "quota", clock.now)
    await engine.add(user="late")
    assert (await engine.run("initial")).outcome.kind is Kind.DEFERRED
    assert reads == ["stackoverflow"] * 2 and len(router.calls) == 5


@pytest.mark.recorded
async def test_a_failed_read_of_the_pause_is_not_a_crash_and_is_not_shared(engine, router, clock, monkeypatch):
    """The read is shared by the runs that start within KnownPauses.shared: a failed one used to reach every
    one of them as an exception (a run crash each), and the next runs too while it was cached."""
    from pymongo.errors import AutoReconnect

    router.get(FAVORITES).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz",
                                                                      has_more=True)))
    for i in range(3):
        await engine.add(user=f"u{i}")
    reads = spy_on_pause_reads(engine, monkeypatch, first=AutoReconnect("connection reset"))
    claims = await engine.store.claim_many("initial", "me", clock.now, 60, 10)
    results = await asyncio.gather(*(engine.executor.run(doc, lease) for doc, lease in claims))
    assert [r.outcome.kind for r in results] == [Kind.PAGE] * 3  # the runs went on, none crashed
    await engine.store.pause_service("stackoverflow", clock.now + timedelta(hours=1), "quota", clock.now)
    await engine.add(user="next")
    assert (await engine.run("initial")).outcome.kind is Kind.DEFERRED  # a fresh read, not the failed one
    assert len(reads) == 2


async def test_a_shorter_pause_leaves_a_later_one_and_its_reason(engine, clock):
    store = engine.store
    await store.pause_service("stackoverflow", clock.now + timedelta(hours=5), "quota exhausted", clock.now)
    await store.pause_service("stackoverflow", clock.now + timedelta(minutes=1), "backoff 60", clock.now)
    doc = await store.services.find_one({"_id": "stackoverflow"})
    assert doc["pausedUntil"] == clock.now + timedelta(hours=5) and doc["pauseReason"] == "quota exhausted"
    await store.pause_service("stackoverflow", clock.now + timedelta(hours=6), "throttle 3600", clock.now)
    doc = await store.services.find_one({"_id": "stackoverflow"})
    assert doc["pausedUntil"] == clock.now + timedelta(hours=6) and doc["pauseReason"] == "throttle 3600"
    await store.pause_service("github", clock.now + timedelta(minutes=2), "secondary", clock.now)  # a new one
    assert (await store.services.find_one({"_id": "github"}))["pauseReason"] == "secondary"
