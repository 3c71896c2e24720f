"""Adaptive polling (collector/states.py): a network's normal interval follows its user's activity within the
service's bounds, and is kept on the network document (`pollInterval`)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx

from collector.config import ConfigError, Schedule
from collector.executor import Executor
from collector.model import new_items_at, poll_interval
from collector.states import ACTIVE_FOR, STRETCH, Kind, Outcome, State, adapt, interval_bounds, transition
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one
from tests.unit.test_executor import BASE, REGISTRY, TOKEN

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
S = Schedule(normal_interval=900.0, normal_interval_min=300.0, normal_interval_max=3600.0, jitter=0.0)


def after(state: State, outcome: Outcome, schedule: Schedule = S) -> tuple[float, float | None]:
    t = transition(state, outcome, NOW, schedule, random.Random(1))
    assert t.scheduled_to is not None
    return (t.scheduled_to - NOW).total_seconds(), t.interval


def test_new_items_bring_the_interval_down_to_the_minimum():
    assert after(State("normal", interval=3600.0), Outcome(Kind.PAGE, items=2)) == (300.0, 300.0)


@pytest.mark.parametrize("outcome", [Outcome(Kind.PAGE, items=0), Outcome(Kind.NOT_MODIFIED)], ids=["empty", "304"])
def test_nothing_new_stretches_it_up_to_the_maximum(outcome):
    assert after(State("normal", interval=300.0), outcome) == (300.0 * STRETCH, 300.0 * STRETCH)
    assert after(State("normal", interval=3000.0), outcome) == (3600.0, 3600.0)
    assert after(State("normal", interval=3600.0), outcome) == (3600.0, 3600.0)


def test_an_active_user_is_polled_at_least_every_normal_interval():
    """Found new items within ACTIVE_FOR (a day): stretched up to normal_interval only, so the first item of the
    user's next session is as fresh as with a fixed interval; idle for longer: up to the maximum."""
    recent = NOW - timedelta(seconds=ACTIVE_FOR - 60)
    assert after(State("normal", interval=800.0, new_at=recent), Outcome(Kind.NOT_MODIFIED)) == (900.0, 900.0)
    assert after(State("normal", interval=900.0, new_at=recent), Outcome(Kind.NOT_MODIFIED)) == (900.0, 900.0)
    long_ago = NOW - timedelta(seconds=ACTIVE_FOR + 60)
    assert after(State("normal", interval=900.0, new_at=long_ago), Outcome(Kind.NOT_MODIFIED)) == (1350.0, 1350.0)
    t = transition(State("normal", interval=3600.0, new_at=long_ago), Outcome(Kind.PAGE, items=1), NOW, S)
    assert t.new_at == NOW and t.interval == 300.0
    assert transition(State("normal", new_at=long_ago), Outcome(Kind.NOT_MODIFIED), NOW, S).new_at is None


def test_a_network_without_one_starts_at_normal_interval():
    assert after(State("normal"), Outcome(Kind.NOT_MODIFIED)) == (900.0, 900.0)
    # the back-fill done: normal_interval, whatever the last page held
    assert after(State("initial", interval=300.0), Outcome(Kind.PAGE, items=100)) == (900.0, 900.0)


def test_pages_failures_and_limits_leave_it_as_it_was():
    more = Outcome(Kind.PAGE, items=100, more=True)
    assert transition(State("normal", interval=1200.0), more, NOW, S).interval is None
    for outcome in (Outcome(Kind.TRANSIENT, error="timeout"), Outcome(Kind.RATE_LIMITED),
                    Outcome(Kind.UNAUTHORIZED), Outcome(Kind.DEFERRED)):
        assert transition(State("normal", interval=1200.0), outcome, NOW, S).interval is None, outcome


def test_a_rate_limit_low_still_wins_over_the_interval():
    from collector.sdk import RateLimit
    limit = RateLimit(remaining=0, reset_at=NOW.replace(hour=14))
    due, interval = after(State("normal", interval=300.0), Outcome(Kind.NOT_MODIFIED, rate_limit=limit))
    assert interval == 450.0 and due >= 7200.0


def test_bounds_always_take_normal_interval_in_and_zero_means_fixed():
    fixed = Schedule(normal_interval=60.0, normal_interval_min=0.0, normal_interval_max=0.0)
    assert interval_bounds(fixed) == (60.0, 60.0)
    assert adapt(60.0, True, None, fixed) == adapt(60.0, False, None, fixed) == 60.0
    # an operator's normal_interval below the floor lowers it (no surprise start at the floor)
    assert interval_bounds(Schedule(normal_interval=60.0, normal_interval_min=300.0, normal_interval_max=3600.0)) == (
        60.0, 3600.0)
    # a stored interval outside the bounds (the bounds changed) is brought back inside
    assert adapt(10.0, False, None, S) == 300.0 and adapt(99_999.0, False, None, S) == 3600.0


def test_the_bounds_are_checked():
    with pytest.raises(ConfigError, match="normal_interval_min must be at most normal_interval_max"):
        make_settings(schedule={"normal_interval_min": 600.0, "normal_interval_max": 300.0})
    with pytest.raises(ConfigError, match="normal_interval_max"):
        make_settings(services={"github": {"normal_interval_max": "soon"}})


@pytest.mark.parametrize("value", [None, "600", True, -5, 0, float("nan"), float("inf"), [600], 10**9])
def test_a_junk_stored_interval_is_no_interval(value):
    assert poll_interval({"pollInterval": value}) is None
    assert poll_interval({}) is None and poll_interval({"pollInterval": 600}) == 600.0


@pytest.fixture
async def engine(mock_db, clock, rng):
    settings = make_settings(schedule={"normal_interval_min": 300.0, "normal_interval_max": 3600.0})
    store = Store(mock_db)
    await store.ensure_indexes()
    async with httpx.AsyncClient() as client:
        yield store, Executor(store, client, settings, REGISTRY, clock=clock, rng=rng)


@respx.mock
async def test_the_executor_keeps_the_interval_on_the_network(engine, clock):
    store, executor = engine
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [], "next": None}))
    await store.networks.insert_one({"user": "u1", "service": "fake", "accessToken": TOKEN, "mode": "normal",
                                     "scheduledTo": clock.now, "errors": 0, "pollInterval": 400.0})
    seen = []
    for _ in range(3):
        doc, lease = await claim_one(store, "normal", "me", clock.now, 60)
        await executor.run(doc, lease)
        net = await store.networks.find_one({"_id": doc["_id"]})
        seen.append(net["pollInterval"])
        clock.now = net["scheduledTo"]
    assert seen == [600.0, 900.0, 1350.0]
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [{"id": 1}], "next": None}))
    doc, lease = await claim_one(store, "normal", "me", clock.now, 60)
    await executor.run(doc, lease)
    net = await store.networks.find_one({"_id": doc["_id"]})
    assert net["pollInterval"] == 300.0 and new_items_at(net) == clock.now
    # found new items a moment ago: stretched no further than normal_interval (900 s) for a day; the item served
    # again is no new item (the store knew it)
    seen = []
    for _ in range(5):
        clock.now = net["scheduledTo"]
        doc, lease = await claim_one(store, "normal", "me", clock.now, 60)
        await executor.run(doc, lease)
        net = await store.networks.find_one({"_id": doc["_id"]})
        seen.append(net["pollInterval"])
    assert seen == [450.0, 675.0, 900.0, 900.0, 900.0]


def test_items_the_store_already_knew_are_nothing_new():
    assert after(State("normal", interval=600.0), Outcome(Kind.PAGE, items=3, new=0)) == (900.0, 900.0)
    assert after(State("normal", interval=600.0), Outcome(Kind.PAGE, items=3, new=1)) == (300.0, 300.0)
