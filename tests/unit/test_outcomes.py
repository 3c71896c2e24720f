"""The outcome rules as data (collector/outcomes.py), a network's state label and the query of each (collector/
states.py), the failure state an operator clears, and 410 Gone end to end: disabled with the reason `gone`,
labelled "disabled", reported by the change feed, enabled again by `collector networks enable`."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import respx

from collector import changes, cli, http, outcomes
from collector.changes import Publisher
from collector.executor import Executor
from collector.operations import FAILURE_UNSET, STATES
from collector.sdk import BadResponse, Forbidden, PermanentError, RateLimit, RateLimited, Unauthorized
from collector.sdk._errors import ForeignHost
from collector.states import FILTERS, PERMANENT_KINDS, TRANSIENT_KINDS, WHERE, Kind, Transition, label, label_after
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one
from tests.unit.test_executor import BASE, REGISTRY, TOKEN

NOW = datetime(2026, 6, 1, tzinfo=UTC)
FLOOR = 5
RESUMES = RateLimit(retry_after=30)  # names when to come back
ROOM = RateLimit(remaining=4000, limit=5000)  # plenty left: names no resume


@pytest.mark.parametrize("status, limit, kind, error, carried", [
    (304, ROOM, Kind.NOT_MODIFIED, None, ROOM),
    (401, RESUMES, Kind.UNAUTHORIZED, "unauthorized", None),
    (403, None, Kind.PERMANENT, "forbidden", None),
    (403, ROOM, Kind.PERMANENT, "forbidden", None),  # a limit with room left is no throttle
    (403, RESUMES, Kind.RATE_LIMITED, "rate_limited", RESUMES),
    (403, RateLimit(remaining=0, limit=60), Kind.RATE_LIMITED, "rate_limited", RateLimit(remaining=0, limit=60)),
    (404, RESUMES, Kind.TRANSIENT, "client_error", None),
    (302, None, Kind.TRANSIENT, "client_error", None),
    (408, RESUMES, Kind.TRANSIENT, "http_5xx", RESUMES),
    (410, RESUMES, Kind.PERMANENT, "gone", None),
    (429, None, Kind.RATE_LIMITED, "rate_limited", RateLimit()),
    (429, ROOM, Kind.RATE_LIMITED, "rate_limited", ROOM),
    (500, None, Kind.TRANSIENT, "http_5xx", None),
    (503, RESUMES, Kind.TRANSIENT, "http_5xx", RESUMES),
    (599, None, Kind.TRANSIENT, "http_5xx", None),
])
def test_each_status_ends_in_its_rule(status, limit, kind, error, carried):
    outcome = outcomes.from_status(status, lambda: f"HTTP {status}: body", limit, NOW, FLOOR)
    assert (outcome.kind, outcome.error, outcome.status, outcome.rate_limit) == (kind, error, status, carried)
    assert outcome.message == (f"HTTP {status}: body" if error else "")


@pytest.mark.parametrize("exc, kind, error, message", [
    (RateLimited("slow down", RESUMES), Kind.RATE_LIMITED, "rate_limited", "slow down"),
    (Unauthorized(), Kind.UNAUTHORIZED, "unauthorized", "token refused"),
    (Unauthorized("revoked"), Kind.UNAUTHORIZED, "unauthorized", "revoked"),
    (Forbidden("no scope"), Kind.PERMANENT, "forbidden", "no scope"),
    (Forbidden("API not enabled", transient=True), Kind.TRANSIENT, "forbidden", "API not enabled"),
    (PermanentError("no option x"), Kind.PERMANENT, "malformed", "no option x"),
    (ForeignHost("elsewhere"), Kind.TRANSIENT, "bad_response", "elsewhere"),  # a BadResponse
    (BadResponse("odd"), Kind.TRANSIENT, "bad_response", "odd"),
    (httpx.ReadTimeout(""), Kind.TRANSIENT, "timeout", "ReadTimeout"),  # a TransportError too: timeout first
    (http.TotalTimeout("took 30s"), Kind.TRANSIENT, "timeout", "took 30s"),
    (http.TooLarge("over 10 MB"), Kind.TRANSIENT, "too_large", "over 10 MB"),
    (http.EgressRefused("private address"), Kind.PERMANENT, "egress_refused", "private address"),
    (httpx.ConnectError("refused"), Kind.TRANSIENT, "connection", "ConnectError: refused"),
    (KeyError("x"), Kind.TRANSIENT, "connector_error", "KeyError: 'x'"),
])
def test_each_exception_ends_in_its_rule(exc, kind, error, message):
    outcome = outcomes.from_exception(exc)
    assert (outcome.kind, outcome.error, outcome.message) == (kind, error, message)
    assert outcome.rate_limit == (RESUMES if isinstance(exc, RateLimited) else None)
    assert outcome.status == (403 if isinstance(exc, Forbidden) else None)
    assert outcomes.from_exception(exc, "token refresh").message == f"token refresh: {message}"


def test_every_error_of_the_tables_is_a_documented_kind_of_its_permanence():
    """A row's error is listed in states.py with its kind: what `networks enable --reason-kind` accepts, what the
    documented-state tests check a disabled network's lastError against."""
    rules = [*outcomes.STATUS.values(), outcomes.SERVER_ERROR, outcomes.OTHER, outcomes.THROTTLED, *outcomes.RAISED,
             outcomes.BUG]
    for rule in rules:
        if rule.kind is Kind.PERMANENT:
            assert rule.error in PERMANENT_KINDS and rule.error in cli.REASON_KINDS, rule
        elif rule.kind is Kind.TRANSIENT:
            assert rule.error in TRANSIENT_KINDS and rule.error in cli.REASON_KINDS, rule
        else:
            assert rule.error in (None, "rate_limited", "unauthorized"), rule


# -- the state label and the query of each --------------------------------------------------------------------------

DOCS = [
    ({"mode": "normal"}, "normal", "normal"),
    ({"mode": "initial", "disabled": False, "unauthorized": False}, "initial", "initial"),
    ({"mode": "normal", "disabled": True}, "disabled", "disabled"),
    ({"mode": "normal", "disabled": True, "lastError": {"kind": "gone"}}, "disabled", "disabled"),
    ({"mode": "normal", "disabled": True, "unauthorized": True}, "unauthorized", "unauthorized"),
    ({"mode": "normal", "unauthorized": True, "authFailures": 1}, "normal", "unauthorized?"),
    ({"mode": "normal", "parkedAt": NOW}, "parked", "parked"),
    ({"mode": "normal", "disabled": True, "parkedAt": NOW}, "disabled", "disabled"),
    ({"mode": "normal", "disabled": "yes"}, "normal", "normal"),  # claimed as enabled: labelled so
]


@pytest.mark.parametrize("doc, fed, listed", DOCS)
def test_the_label_of_a_document(doc, fed, listed):
    """The change feed's label leaves a first 401 out; `networks list` shows it as "unauthorized?"."""
    assert label(doc) == fed and label(doc, confirming=True) == listed


@pytest.mark.parametrize("step, saved", [
    (Transition("normal", NOW, 0, "ok", True), {"mode": "normal"}),
    (Transition("initial", None, 1, "401 again", False, disabled=True, unauthorized=True),
     {"mode": "initial", "disabled": True, "unauthorized": True}),
    (Transition("normal", NOW, 0, "first 401", False, unauthorized=True), {"mode": "normal", "unauthorized": True}),
    (Transition("normal", None, 0, "gone", False, disabled=True), {"mode": "normal", "disabled": True}),
    (Transition("normal", NOW, 0, "limited", False, parked=True), {"mode": "normal", "parkedAt": NOW}),
])
def test_a_run_reports_the_label_of_the_document_it_saves(step, saved):
    assert label_after(step) == label(saved)


async def test_each_label_query_finds_exactly_the_documents_of_that_label(mock_db):
    await mock_db.networks.insert_many([{"_id": i, **doc} for i, (doc, _, _) in enumerate(DOCS)])
    for name, query in WHERE.items():
        found = {d["_id"] async for d in mock_db.networks.find(query)}
        assert found == {i for i, (_, _, listed) in enumerate(DOCS) if listed == name}, name
    assert set(STATES) == set(FILTERS) == {"active", "disabled", "unauthorized", "parked"}
    unauthorized = {d["_id"] async for d in mock_db.networks.find(FILTERS["unauthorized"])}
    assert unauthorized == {i for i, (_, _, listed) in enumerate(DOCS) if listed.startswith("unauthorized")}


# -- the failure state an operator clears -----------------------------------------------------------------------------

FAILED = {"user": "u1", "service": "fake", "mode": "normal", "cursor": {"page": 3}, "errors": 4, "disabled": True,
          "unauthorized": True, "disabledReason": "gone: HTTP 410", "disabledAt": NOW, "failingSince": NOW,
          "rateLimitedUntil": NOW, "rateLimitStreak": 3, "parkedAt": NOW, "parkedReason": "parked after 3",
          "authFailures": 2}


@pytest.mark.parametrize("action", ["enable", "reset"])
async def test_enable_and_reset_clear_the_same_failure_state(mock_db, clock, action):
    store = Store(mock_db)
    await store.networks.insert_one({"_id": "n", **FAILED})
    assert await getattr(store, action)("n", clock.now)
    doc = await store.networks.find_one({"_id": "n"})
    assert [f for f in FAILURE_UNSET if f in doc] == []
    assert not set(FAILED) - set(doc) - set(FAILURE_UNSET)  # every failure field above is one FAILURE_UNSET clears
    assert "authFailures" not in doc  # the user's new token has its first 401 confirmed again
    assert doc["disabled"] is False and doc["unauthorized"] is False and doc["errors"] == 0
    assert doc["scheduledTo"] == clock.now
    assert (doc["mode"], doc["cursor"]) == (("initial", {}) if action == "reset" else ("normal", {"page": 3}))


# -- 410 Gone through the executor ----------------------------------------------------------------------------------

@pytest.fixture
async def feed(mock_db, clock, rng):
    store = Store(mock_db, feed=True)
    await store.ensure_indexes()
    await changes.ensure_indexes(mock_db)
    settings = make_settings(http={"max_body_bytes": 1000, "total_timeout": 1.0})
    async with httpx.AsyncClient() as client:
        yield store, Executor(store, client, settings, REGISTRY, clock=clock, rng=rng), Publisher(mock_db, settings,
                                                                                                 clock)


@respx.mock
async def test_a_410_disables_the_network_as_gone_and_the_feed_says_so(feed, mock_db, clock):
    store, executor, publisher = feed
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(410, json={"error": "account deleted"}))
    await store.networks.insert_one({"user": "u1", "service": "fake", "accessToken": TOKEN, "mode": "normal",
                                     "scheduledTo": clock.now, "errors": 0})
    doc, lease = await claim_one(store, "normal", "me", clock.now, 60)

    result = await executor.run(doc, lease)

    assert result.outcome.kind is Kind.PERMANENT and result.outcome.error == "gone" and result.outcome.status == 410
    assert respx.calls.call_count == 1  # no retry
    net = await store.networks.find_one({"_id": doc["_id"]})
    assert net["disabled"] is True and not net["unauthorized"] and net["scheduledTo"] is None and net["errors"] == 0
    assert net["disabledReason"].startswith("gone: HTTP 410") and "account deleted" in net["disabledReason"]
    assert net["lastError"]["kind"] == "gone" and net["lastError"]["status"] == 410
    assert label(net) == "disabled" and label(net, confirming=True) == "disabled"
    clock.advance(1)
    await publisher.publish()
    [event] = await changes.read(mock_db, "u1")
    assert event["kind"] == "network.disabled" and event["reason"].startswith("gone: HTTP 410")

    assert (await store.enable_many(clock.now, reason_kind="gone", dry_run=True))[0] == 1
    assert await store.enable(doc["_id"], clock.now)
    assert label(await store.networks.find_one({"_id": doc["_id"]})) == "normal"
