"""Every failure ends in a documented state with its reason; nothing escapes the executor."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
import pytest
import respx

from collector import plugins, sdk
from collector.executor import Executor
from collector.states import Kind
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one

BASE = "https://fake.test"
TOKEN = "tok_verysecret_123456"


class Fake(sdk.Connector):
    service = "fake"
    api = "a fake API for engine tests"
    default_base_url = BASE

    def request(self, ctx):
        if ctx.cursor.get("explode"):
            raise RuntimeError(f"connector bug with {ctx.network.token}")
        if ctx.cursor.get("url"):  # a stored link, as a connector that follows Link headers keeps one
            return sdk.Request(ctx.cursor["url"], headers=ctx.cursor.get("headers", {}))
        # no Authorization here: the engine adds the connector's auth_headers (a bearer token by default)
        return sdk.Request(f"{self.base_url}/items", params={"page": ctx.cursor.get("next", 1)})

    def parse(self, ctx, response):
        data = response.json()
        items = [sdk.Item(id=str(x["id"]), title=x.get("t")) for x in data["items"]]
        return sdk.Page(items=items, cursor={"next": data["next"]} if data["next"] else {}, more=bool(data["next"]))


REGISTRY = {"fake": plugins.Registered("fake", Fake, "tests", "0"),
            "broken": plugins.Registered("broken", None, "brokenpkg", "1.0", "ImportError: no module named x")}


@pytest.fixture
def settings():
    return make_settings(http={"max_body_bytes": 1000, "total_timeout": 1.0})


@pytest.fixture
async def env(mock_db, settings, clock, rng):
    store = Store(mock_db)
    await store.ensure_indexes()
    async with httpx.AsyncClient() as client:
        yield store, Executor(store, client, settings, REGISTRY, clock=clock, rng=rng)


async def run(env, clock, **doc):
    store, executor = env
    base = {"user": "u1", "service": "fake", "accessToken": TOKEN, "mode": "initial",
            "scheduledTo": clock.now, "errors": 0}
    base.update(doc)
    await store.networks.insert_one(base)
    doc, lease = await claim_one(store, base["mode"], "me", clock.now, 60)
    result = await executor.run(doc, lease)
    return result, await store.networks.find_one({"_id": doc["_id"]})


def page(n_items=2, nxt=None):
    return httpx.Response(200, json={"items": [{"id": i, "t": f"item {i}"} for i in range(n_items)], "next": nxt})


@respx.mock
async def test_page_then_state(env, clock, mock_db):
    respx.get(f"{BASE}/items").mock(return_value=page(3, nxt=2))
    result, net = await run(env, clock)
    assert result.outcome.kind is Kind.PAGE and result.new_items == 3 and result.saved
    assert net["cursor"] == {"next": 2} and net["mode"] == "initial" and "lease" not in net
    assert net["lastOutcome"]["kind"] == "page" and net["stats"] == {"runs": 1, "page": 1, "items": 3}
    assert await mock_db.items.count_documents({"user": "u1", "service": "fake"}) == 3
    item = await mock_db.items.find_one({"itemId": "0"})
    assert item["network"] == net["_id"] and item["title"] == "item 0" and item["collectedAt"] == clock.now


@pytest.mark.parametrize("response, kind, error", [
    (httpx.Response(500, text="oops"), Kind.TRANSIENT, "http_5xx"),
    (httpx.Response(502), Kind.TRANSIENT, "http_5xx"),
    (httpx.Response(200, text="{not json"), Kind.TRANSIENT, "bad_json"),
    (httpx.Response(200, json={"unexpected": True}), Kind.TRANSIENT, "bad_response"),
    (httpx.Response(200, json=[1, 2]), Kind.TRANSIENT, "bad_response"),
    (httpx.Response(404, text="gone"), Kind.TRANSIENT, "client_error"),
    (httpx.Response(403, text="forbidden"), Kind.PERMANENT, "forbidden"),
    (httpx.Response(401, json={"message": "Bad credentials"}), Kind.UNAUTHORIZED, "unauthorized"),
    (httpx.Response(429), Kind.RATE_LIMITED, "rate_limited"),
    (httpx.Response(200, content=b"x" * 5000), Kind.TRANSIENT, "too_large"),
])
@respx.mock
async def test_http_outcomes(env, clock, response, kind, error):
    respx.get(f"{BASE}/items").mock(return_value=response)
    result, net = await run(env, clock)
    assert result.outcome.kind is kind
    assert net["lastError"]["kind"] == error and net["lastError"]["message"]
    assert "lease" not in net
    if kind is Kind.TRANSIENT:
        assert net["errors"] == 1 and net["scheduledTo"] > clock.now and not net.get("disabled")
    if kind is Kind.UNAUTHORIZED:  # marked, not disabled: a second 401 after the recheck confirms it
        assert net["unauthorized"] and not net.get("disabled") and net["authFailures"] == 1
        assert (net["scheduledTo"] - clock.now).total_seconds() == pytest.approx(600, rel=0.11)
        assert "Bad credentials" in net["lastError"]["message"]


@pytest.mark.parametrize("exc, error", [
    (httpx.ConnectError("refused"), "connection"),
    (httpx.ReadTimeout("slow"), "timeout"),
    (httpx.RemoteProtocolError("reset"), "connection"),
])
@respx.mock
async def test_transport_failures(env, clock, exc, error):
    respx.get(f"{BASE}/items").mock(side_effect=exc)
    result, net = await run(env, clock)
    assert result.outcome.kind is Kind.TRANSIENT and net["lastError"]["kind"] == error and net["errors"] == 1


@respx.mock
async def test_total_timeout_bounds_a_slow_response(env, clock):
    import asyncio

    async def slow(request):
        await asyncio.sleep(5)
        return page()

    respx.get(f"{BASE}/items").mock(side_effect=slow)
    _result, net = await run(env, clock)
    assert net["lastError"]["kind"] == "timeout" and "1s" in net["lastError"]["message"]


@respx.mock
async def test_gzip_body_over_the_cap_is_cut_off(env, clock):
    import gzip

    bomb = gzip.compress(b" " * 100_000)  # 100 kB of spaces, ~100 bytes compressed
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, content=bomb,
                                                                headers={"content-encoding": "gzip"}))
    _result, net = await run(env, clock)
    assert net["lastError"]["kind"] == "too_large"


async def test_fifth_failure_in_a_row_disables_once_the_streak_spans_a_day(env, clock):
    with respx.mock:
        respx.get(f"{BASE}/items").mock(return_value=httpx.Response(503))
        _result, net = await run(env, clock, errors=4, failingSince=clock.now - timedelta(days=1))
    assert net["disabled"] and net["errors"] == 5 and net["scheduledTo"] is None
    assert "5 consecutive failures over 24.0 h" in net["disabledReason"]
    assert net["failingSince"] == clock.now - timedelta(days=1)  # the streak's start is kept


async def test_a_fifth_failure_within_the_day_retries_and_the_streak_starts_at_the_first(env, clock):
    with respx.mock:
        respx.get(f"{BASE}/items").mock(return_value=httpx.Response(503))
        _result, net = await run(env, clock, errors=4, failingSince=clock.now - timedelta(hours=2))
        assert not net.get("disabled") and net["errors"] == 5 and net["scheduledTo"] > clock.now
        assert net["failingSince"] == clock.now - timedelta(hours=2)
        _result, fresh = await run(env, clock, user="u2")  # a first failure starts a streak
    assert fresh["failingSince"] == clock.now and fresh["errors"] == 1


async def test_a_success_ends_the_streak(env, clock):
    with respx.mock:
        respx.get(f"{BASE}/items").mock(return_value=page(1))
        _result, net = await run(env, clock, errors=3, failingSince=clock.now - timedelta(hours=2))
    assert net["errors"] == 0 and "failingSince" not in net


@pytest.mark.parametrize("doc, error, words", [
    ({"service": "nope"}, "unknown_service", "no connector for service 'nope'"),
    ({"service": "broken"}, "bad_connector", "ImportError"),
    ({"accessToken": None}, "missing_credentials", "missing field 'accessToken'"),
    ({"accessToken": ""}, "missing_credentials", "missing field 'accessToken'"),
    ({"accessToken": 12345}, "malformed", "accessToken"),
    ({"user": None}, "malformed", "user"),
    ({"user": {"$junk": [1]}}, "malformed", "user"),
    ({"service": 42}, "malformed", "service"),
    ({"cursor": "page-3"}, "malformed", "cursor"),
    ({"options": [1]}, "malformed", "options"),
    ({"accessToken": "x" * 10_000}, "malformed", "longer than"),
])
async def test_bad_documents_are_disabled_with_the_reason(env, clock, doc, error, words):
    result, net = await run(env, clock, **doc)
    assert result.outcome.kind is Kind.PERMANENT
    assert net["disabled"] and net["scheduledTo"] is None and "lease" not in net
    assert net["lastError"]["kind"] == error and words in net["disabledReason"]


async def test_connector_bug_is_a_transient_failure_and_the_token_is_scrubbed(env, clock):
    result, net = await run(env, clock, cursor={"explode": True})
    assert result.outcome.kind is Kind.TRANSIENT and net["lastError"]["kind"] == "connector_error"
    assert "RuntimeError" in net["lastError"]["message"]
    assert TOKEN not in json.dumps(net["lastError"], default=str) and TOKEN not in net["lastOutcome"]["reason"]


@respx.mock
async def test_error_body_echoing_the_token_is_scrubbed(env, clock):
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(500, text=f"bad token {TOKEN}"))
    _result, net = await run(env, clock)
    assert TOKEN not in net["lastError"]["message"] and "[redacted]" in net["lastError"]["message"]


@respx.mock
async def test_lost_lease_drops_the_state_but_keeps_the_items(env, clock, mock_db):
    store, executor = env
    respx.get(f"{BASE}/items").mock(return_value=page(2, nxt=2))
    await store.networks.insert_one({"user": "u1", "service": "fake", "accessToken": TOKEN, "mode": "initial",
                                     "scheduledTo": clock.now})
    doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
    # the lease expires and another process claims the network meanwhile
    clock.advance(61)
    other = await claim_one(store, "initial", "other", clock.now, 60)
    assert other is not None
    result = await executor.run(doc, lease)
    assert not result.saved
    net = await store.networks.find_one({"_id": doc["_id"]})
    assert net["lease"]["owner"] == "other" and "cursor" not in net
    assert await mock_db.items.count_documents({}) == 2


async def test_items_the_database_refuses_end_in_a_recorded_transient_state(env, clock, api):
    """A write error that is not an outage (the server refuses the documents) must not leave the
    network looping through lease expiries without a reason: the run records store_error."""
    from pymongo.errors import BulkWriteError

    store, executor = env
    api.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [{"id": 1}], "next": 2}))

    async def refuse(*_args, **_kw):
        raise BulkWriteError({"writeErrors": [{"index": 0, "code": 2, "errmsg": "invalid key"}]})

    store.save_items = refuse
    network_id = await store.insert_network({"user": "u", "service": "fake", "accessToken": TOKEN,
                                             "mode": "initial", "scheduledTo": clock.now})
    doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
    result = await executor.run(doc, lease)
    assert result.outcome.kind.value == "transient" and result.saved
    saved = await store.get_network(network_id)
    assert saved["errors"] == 1 and saved["lastError"]["kind"] == "store_error"
    assert "refused the items" in saved["lastError"]["message"] and "lease" not in saved
    assert saved.get("cursor") in (None, {})  # the cursor did not move past items that were not stored


@respx.mock
async def test_the_engine_sends_the_token_as_a_bearer_header_by_default(env, clock):
    route = respx.get(f"{BASE}/items").mock(return_value=page())
    result, _ = await run(env, clock)
    assert result.outcome.kind is Kind.PAGE
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"


@respx.mock
async def test_a_header_the_request_sets_itself_wins_over_the_default(env, clock):
    route = respx.get(f"{BASE}/items/2").mock(return_value=page())
    result, _ = await run(env, clock, cursor={"url": f"{BASE}/items/2", "headers": {"Authorization": "Token x"}})
    assert result.outcome.kind is Kind.PAGE
    assert route.calls.last.request.headers["Authorization"] == "Token x"


@pytest.mark.parametrize("url", [
    "https://evil.test/items",
    "https://fake.test.evil.test/items",   # the base's host as a prefix of another host
    "https://fake.test@evil.test/items",   # the base's host as user info
    "http://fake.test/items",              # the same host without TLS
    "https://fake.test:8443/items",        # another port
])
async def test_the_engine_refuses_to_send_credentials_outside_the_base_url(env, clock, url):
    """One check for every connector: a stored cursor (or any URL a connector builds) that leaves the base URL
    is never called, whatever the connector forgot to check; the failure is recorded without the token."""
    with respx.mock(assert_all_called=False) as api:
        anywhere = api.route().respond(200, json={"items": [], "next": None})
        result, net = await run(env, clock, cursor={"url": url})
    assert not anywhere.called
    assert result.outcome.kind is Kind.TRANSIENT
    assert net["lastError"]["kind"] == "bad_response" and net["errors"] == 1 and not net.get("disabled")
    assert "refused to send the network's credentials" in net["lastError"]["message"]
    assert TOKEN not in json.dumps([net["lastError"], net["lastOutcome"]], default=str)
    assert "/items" not in net["lastError"]["message"]


class ServiceWide(Fake):
    service = "fake"
    limit_scope = "service"


@respx.mock
async def test_limit_scope_gives_a_429_without_headers_to_the_whole_service(mock_db, settings, clock, rng):
    store = Store(mock_db)
    await store.ensure_indexes()
    registry = {"fake": plugins.Registered("fake", ServiceWide, "tests", "0")}
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(429, text="slow down"))
    async with httpx.AsyncClient() as client:
        result, _ = await run((store, Executor(store, client, settings, registry, clock=clock, rng=rng)), clock)
    assert result.outcome.kind is Kind.RATE_LIMITED and result.outcome.rate_limit.scope == "service"
    assert result.transition.service_paused_until is not None
    assert await store.service_pause("fake", clock.now) is not None
