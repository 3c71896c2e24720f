"""The Stack Overflow connector driven through the engine: claim -> Executor.run -> network, items, services.

Replies are served gzip'd with `content-encoding: gzip`, as the Stack Exchange API always sends them
(tests/conftest.py `stackexchange_page` wraps the recordings, read from ../shared/fixtures/likeastore beside the
clone, in the API 2.3 envelope; the tests that need them are marked `recorded`: without them they skip, saying why):
init.json.gz (34 favorites, newest first, top 9785903), new.json.gz (9785903 alone), normal.json.gz (none).
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import respx

from tests.conftest import stackexchange_page, stackexchange_recording
from tests.harness import engine_for

TOKEN = "se_token_secret123456"
API = "https://api.stackexchange.test/2.3"
FAVORITES = f"{API}/me/favorites"
GZIP = {"content-encoding": "gzip", "content-type": "application/json; charset=utf-8"}

TOP = "9785903"


def recorded_questions() -> list[dict[str, Any]]:
    """The 34 favorites of init.json.gz, newest first."""
    return stackexchange_recording("stackoverflow.connector.init.json.gz")["questions"]


def init_ids() -> set[str]:
    return {str(q["question_id"]) for q in recorded_questions()}


def gz(body: dict[str, Any]) -> bytes:
    return gzip.compress(json.dumps(body).encode("utf-8"))


def envelope(questions: list[dict[str, Any]], has_more: bool = False, **extra: Any) -> bytes:
    """A hand-made 2.3 reply (for cases the recordings do not cover), gzip'd."""
    return gz({"items": questions, "has_more": has_more, "quota_max": 10_000, "quota_remaining": 9_000, **extra})


def question(question_id: int, title: str, owner: str = "someone") -> dict[str, Any]:
    return {"question_id": question_id, "title": title, "owner": {"display_name": owner},
            "creation_date": 1764000000, "link": f"https://stackoverflow.com/questions/{question_id}/q"}


def reply(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(status, content=body, headers=GZIP)


@pytest.fixture
async def engine(mock_db, settings, clock):
    async for engine in engine_for("stackoverflow", TOKEN, mock_db, settings, clock):
        yield engine


def page(api: respx.MockRouter, number: int, **name: str) -> respx.Route:
    return api.get(FAVORITES, params={"page": str(number)}, **name)


def next_midnight(now: datetime) -> datetime:
    return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)


# -- initial mode: the back-fill ---------------------------------------------------------------


@pytest.mark.recorded
async def test_initial_first_page_stores_items_and_asks_for_page_two(engine, api):
    route = page(api, 1).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz",
                                                                     has_more=True)))
    await engine.add()

    result = await engine.run("initial")

    assert result.saved and result.new_items == 34
    assert await engine.item_ids() == init_ids()
    network = await engine.network()
    assert network["mode"] == "initial"
    assert network["cursor"] == {"next": 2, "stop": None, "top": TOP}
    assert network["errors"] == 0
    assert await engine.due_in() == pytest.approx(engine.schedule.initial_pace)

    request = route.calls.last.request
    assert request.headers["X-API-Access-Token"] == TOKEN
    params = request.url.params
    assert params["site"] == "stackoverflow"
    assert params["pagesize"] == "100"
    assert params["page"] == "1"
    assert params["sort"] == "added"
    assert params["order"] == "desc"
    assert "access_token" not in params
    assert TOKEN not in str(request.url)


@pytest.mark.recorded
async def test_items_carry_the_question_fields(engine, api):
    page(api, 1).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz")))
    await engine.add()
    await engine.run("initial")

    item = await engine.store.items.find_one({"itemId": TOP})
    assert item["title"] == "HTML5 / JS - check that application is offline"
    assert item["author"] == "alexanderb"
    assert item["created"] == datetime(2012, 3, 20, 11, 28, 40, tzinfo=UTC)
    assert item["url"] == "https://stackoverflow.com/q/9785903"  # the recording has no `link`
    assert item["raw"]["question_id"] == 9785903


@pytest.mark.recorded
async def test_a_single_page_history_switches_to_normal(engine, api):
    page(api, 1).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz", has_more=False)))
    await engine.add()

    result = await engine.run("initial")

    assert result.new_items == 34
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": TOP}
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)


@pytest.mark.recorded
async def test_backfill_then_normal_stops_at_the_known_question(engine, api):
    page(api, 1, name="backfill").mock(return_value=reply(stackexchange_page(
        "stackoverflow.connector.init.json.gz", has_more=True)))
    page_two = page(api, 2).mock(return_value=reply(stackexchange_page(
        "stackoverflow.connector.normal.json.gz", has_more=False)))
    await engine.add()
    await engine.run("initial")
    await engine.run_when_due("initial")
    assert api.routes.pop("backfill").call_count == 1
    assert page_two.call_count == 1
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": TOP}

    normal = page(api, 1).mock(return_value=reply(stackexchange_page("stackoverflow.connector.new.json.gz",
                                                                      has_more=True)))
    result = await engine.run_when_due("normal")

    assert result.saved and result.new_items == 0
    assert result.outcome.items == 0
    assert len(await engine.items()) == 34
    network = await engine.network()
    assert network["mode"] == "normal"
    assert network["cursor"] == {"stop": TOP}  # has_more was ignored: everything below the known id is known
    assert network["lastOutcome"]["reason"] == "nothing new"
    assert await engine.due_in() == pytest.approx(engine.schedule.normal_interval)
    assert normal.calls.last.request.headers["X-API-Access-Token"] == TOKEN


@pytest.mark.recorded
async def test_normal_stores_only_what_is_above_the_known_question(engine, api):
    await engine.add(mode="normal", cursor={"stop": TOP})
    fresh = question(79000001, "A brand new favorite")
    page(api, 1).mock(return_value=reply(envelope([fresh, *recorded_questions()], has_more=True)))

    result = await engine.run("normal")

    assert result.new_items == 1
    assert await engine.item_ids() == {"79000001"}
    assert (await engine.network())["cursor"] == {"stop": "79000001"}


async def test_html_entities_in_titles_and_names_are_unescaped(engine, api):
    page(api, 1).mock(return_value=reply(envelope([
        question(1, "Why doesn&#39;t &quot;this&quot; work &amp; what&#39;s &lt;div&gt;?", owner="J&#246;rg &amp; co"),
    ])))
    await engine.add()

    await engine.run("initial")

    item = await engine.store.items.find_one({"itemId": "1"})
    assert item["title"] == "Why doesn't \"this\" work & what's <div>?"
    assert item["author"] == "Jörg & co"


# -- limits --------------------------------------------------------------------------------------


@pytest.mark.recorded
async def test_an_exhausted_quota_waits_until_midnight_utc_for_this_user_only(engine, api, clock):
    """With an access_token the quota is the user/app pair's (api.stackexchange.com/docs/throttle): one user's
    spent quota must not stop the others; that user's other networks (another site) wait with it."""
    page(api, 1).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz",
                                                            has_more=True, quota_remaining=0)))
    await engine.add(scheduledTo=clock.now - timedelta(minutes=5))
    same_user = await engine.add(options={"site": "superuser"})
    other_user = await engine.add(user="someone-else")

    result = await engine.run("initial")

    assert result.new_items == 34  # the page that used the last request is kept
    resume = next_midnight(clock.now) + timedelta(seconds=engine.schedule.rate_limit_slack)
    assert resume == datetime(2026, 11, 26, 0, 0, 2, tzinfo=UTC)
    assert await engine.store.services.find_one({"_id": "stackoverflow"}) is None  # no app-wide pause
    assert await engine.store.paused_services(clock.now) == {}
    network = await engine.store.get_network(result.network_id)
    assert network["scheduledTo"] == resume and network["rateLimitedUntil"] == resume
    assert network["mode"] == "initial" and network["cursor"]["next"] == 2 and network["errors"] == 0
    assert (await engine.store.get_network(same_user))["scheduledTo"] == resume  # the same quota: it waits too
    assert (await engine.store.get_network(other_user))["scheduledTo"] == clock.now  # another user's: untouched


@pytest.mark.recorded
async def test_a_backoff_is_obeyed(engine, api):
    page(api, 1).mock(return_value=reply(stackexchange_page("stackoverflow.connector.init.json.gz",
                                                            has_more=True, backoff=30)))
    await engine.add()

    result = await engine.run("initial")

    assert result.new_items == 34
    assert await engine.due_in() >= 30
    assert (await engine.network())["cursor"]["next"] == 2


@pytest.mark.recorded
async def test_limits_sent_as_strings_still_end_in_a_saved_state(engine, api, clock):
    page(api, 1).mock(return_value=reply(gz({"items": recorded_questions()[:2], "has_more": True, "quota_max": "10000",
                                             "quota_remaining": "0", "backoff": "soon"})))
    await engine.add()

    result = await engine.run("initial")

    assert result.saved and result.new_items == 2
    network = await engine.network()
    assert network["cursor"]["next"] == 2
    assert network["scheduledTo"] == next_midnight(clock.now) + timedelta(seconds=engine.schedule.rate_limit_slack)
    assert "lease" not in network


async def test_a_throttle_violation_waits_the_time_it_names(engine, api, clock):
    route = page(api, 3).mock(return_value=reply(gz({
        "error_id": 502, "error_name": "throttle_violation",
        "error_message": "too many requests from this IP, more requests available in 3600 seconds"}), status=400))
    await engine.add(errors=1, cursor={"next": 3, "stop": None, "top": TOP})

    result = await engine.run("initial")

    assert route.called
    assert result.outcome.kind == "rate_limited"
    network = await engine.network()
    assert network["errors"] == 1  # not counted as a failure
    assert network["cursor"] == {"next": 3, "stop": None, "top": TOP}
    assert await engine.due_in() == pytest.approx(3600 + engine.schedule.rate_limit_slack)
    assert network["lastError"]["kind"] == "rate_limited"
    assert "throttle_violation" in network["lastError"]["message"]
    service = await engine.store.services.find_one({"_id": "stackoverflow"})  # the limit is per IP: everyone waits
    assert service["pausedUntil"] == network["scheduledTo"]
    assert not network.get("disabled")
    assert await engine.item_ids() == set()


# api.stackexchange.com/docs/error-handling: every error is HTTP 400 with an error_id (the engine's own 403 handling
# would see the same 403 as forbidden, so both statuses are tried)


@pytest.mark.parametrize("status", [400, 403])
async def test_access_denied_is_a_permission_the_token_lacks_disabled_at_once_as_forbidden(engine, api, status):
    """access_denied - 403: "A method which requires certain permissions was called with an access token that
    lacks those permissions." The token works: not a 401 to confirm, a refusal retrying cannot change."""
    page(api, 1).mock(return_value=reply(gz({
        "error_id": 403, "error_name": "access_denied",
        "error_message": f"`access_token` does not have sufficient scope ({TOKEN})"}), status=status))
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "permanent"
    network = await engine.network()
    assert network["disabled"] is True and network["scheduledTo"] is None
    assert network.get("unauthorized") is not True and "authFailures" not in network
    assert network["lastError"]["kind"] == "forbidden" and network["lastError"]["status"] == status
    assert "access_denied" in network["disabledReason"] and "sufficient scope" in network["disabledReason"]
    assert TOKEN not in network["disabledReason"] and TOKEN not in network["lastError"]["message"]


@pytest.mark.parametrize(("error_id", "error_name"), [(401, "access_token_required"), (402, "invalid_access_token"),
                                                     (406, "access_token_compromised")])
async def test_a_token_that_is_no_good_is_unauthorized_confirmed_by_a_second_run(engine, api, error_id, error_name):
    """The token is missing, invalid (expired, revoked) or "no longer believed to be secure": a 401 in all but name,
    confirmed before it disables, as every 401."""
    page(api, 1).mock(return_value=reply(gz({"error_id": error_id, "error_name": error_name,
                                             "error_message": "no"}), status=400))
    await engine.add()

    result = await engine.confirm_unauthorized("initial")

    assert result.outcome.kind == "unauthorized"
    network = await engine.network()
    assert network["disabled"] is True and network["unauthorized"] is True and network["scheduledTo"] is None
    assert network["lastError"]["kind"] == "unauthorized" and error_name in network["disabledReason"]


async def test_key_required_is_the_apps_setup_retried_with_backoff(engine, api):
    """key_required - 405: the app sends no key ([services.stackoverflow] key). No user's fault: retried like an
    outage (a transient `forbidden`), so that configuring the key heals every network without a bulk enable."""
    page(api, 1).mock(return_value=reply(gz({"error_id": 405, "error_name": "key_required",
                                             "error_message": "`key` is required when `access_token` is passed"}),
                                         status=400))
    await engine.add()

    result = await engine.run("initial")

    assert result.outcome.kind == "transient"
    network = await engine.network()
    assert not network.get("disabled") and network["errors"] == 1
    assert network["lastError"]["kind"] == "forbidden" and "[services.stackoverflow] key" in network["lastError"][
        "message"]
    assert await engine.due_in() == pytest.approx(engine.schedule.backoff_base)


@pytest.mark.parametrize("error_id", [None, "403", True, [403], {"id": 403}, 403.0])
async def test_an_error_id_that_is_no_integer_is_only_an_http_400(engine, api, error_id):
    page(api, 1).mock(return_value=reply(gz({"error_id": error_id, "error_name": "access_denied"}), status=400))
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["errors"] == 1 and network["lastError"]["kind"] == "client_error"
    assert not network.get("disabled") and not network.get("unauthorized")


async def test_another_api_error_is_a_transient_failure(engine, api):
    page(api, 1).mock(return_value=reply(gz({"error_id": 400, "error_name": "bad_parameter",
                                             "error_message": "site is required"}), status=400))
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["errors"] == 1
    assert network["lastError"]["kind"] == "client_error"
    assert "bad_parameter" in network["lastError"]["message"]
    assert not network.get("disabled")


async def test_throttles_that_name_no_seconds_pause_everyone_longer_each_time(engine, api, clock):
    """An IP throttle whose message names no wait: from a minute, doubling while it repeats, for the whole app,
    whichever network meets it (the streak is the service's, kept on its pause document)."""
    page(api, 1).mock(return_value=reply(gz({"error_id": 502, "error_name": "throttle_violation",
                                             "error_message": "too many requests from this IP"}), status=400))
    pauses = []
    for i in range(3):
        await engine.add(user=f"u{i}")
        result = await engine.run("initial")
        assert result.outcome.kind == "rate_limited" and result.network_id is not None
        service = await engine.store.services.find_one({"_id": "stackoverflow"})
        pauses.append(round((service["pausedUntil"] - clock.now).total_seconds() - engine.schedule.rate_limit_slack))
        assert service["limitStreak"] == i + 1
        clock.now = service["pausedUntil"]  # the next network meets the throttle when the pause is over
    assert pauses == [60, 120, 240]  # three different networks: the app's streak, not each network's


# -- junk: the state the connector reads, the questions it is sent -----------------------------------------------


@pytest.mark.parametrize("cursor", [{"next": "abc"}, {"next": 0}, {"next": -2}, {"next": 2**40}, {"next": 2.5},
                                    {"next": True}, {"next": [2]}, {"next": {"page": 2}}, {"next": "1e3"},
                                    {"next": "\u0663"}])
async def test_a_cursor_page_that_is_no_page_number_disables_the_network_naming_the_cursor(engine, api, cursor):
    await engine.add(cursor=cursor)

    await engine.run("initial")

    network = await engine.network()
    assert network["disabled"] is True and network["lastError"]["kind"] == "malformed"
    assert "field 'cursor'" in network["disabledReason"]


@pytest.mark.parametrize("cursor", [{"next": 3}, {"next": "3"}])
async def test_a_cursor_page_written_as_text_is_read(engine, api, cursor):
    route = page(api, 3).mock(return_value=reply(envelope([question(7, "seven")])))
    await engine.add(cursor={**cursor, "stop": None, "top": "9"})

    result = await engine.run("initial")

    assert route.called and result.new_items == 1


@pytest.mark.parametrize("site", ["stack overflow", "../users", "x" * 101, 42, ["superuser"], {"name": "x"}, True,
                                  "-", "so?x=1"])
async def test_a_site_that_is_no_site_name_disables_the_network_naming_the_options(engine, api, site):
    await engine.add(options={"site": site})

    await engine.run("initial")

    network = await engine.network()
    assert network["disabled"] is True and network["lastError"]["kind"] == "malformed"
    assert "field 'options'" in network["disabledReason"]


@pytest.mark.parametrize("site", ["superuser", "math.stackexchange.com", "pt.stackoverflow", "meta.stackoverflow"])
async def test_a_site_name_or_domain_is_sent(engine, api, site):
    route = api.get(FAVORITES, params={"site": site}).mock(return_value=reply(envelope([question(7, "seven")])))
    await engine.add(options={"site": site})

    result = await engine.run("initial")

    assert route.called and result.new_items == 1


@pytest.mark.parametrize("qid", [None, "7", 7.0, True, -7, 0, [7], {"id": 7}])
async def test_a_question_without_an_integer_id_is_a_bad_response_and_nothing_is_stored(engine, api, qid):
    page(api, 1).mock(return_value=reply(envelope([question(8, "fine"), {**question(7, "junk"), "question_id": qid}])))
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["errors"] == 1 and network["lastError"]["kind"] == "bad_response"
    assert await engine.item_ids() == set()


@pytest.mark.parametrize("items", [None, {}, "questions", 7, {"question_id": 7}])
async def test_items_that_are_no_list_are_a_bad_response(engine, api, items):
    page(api, 1).mock(return_value=reply(gz({"items": items, "has_more": False})))
    await engine.add()

    await engine.run("initial")

    network = await engine.network()
    assert network["errors"] == 1 and network["lastError"]["kind"] == "bad_response"


async def test_junk_beside_the_id_keeps_the_question(engine, api):
    junk = {"question_id": 7, "title": 12, "link": ["x"], "owner": "someone", "creation_date": "yesterday"}
    page(api, 1).mock(return_value=reply(gz({"items": [junk], "has_more": "yes", "quota_remaining": [1]})))
    await engine.add()

    result = await engine.run("initial")

    assert result.new_items == 1
    item = (await engine.items())[0]
    assert item["itemId"] == "7" and item["title"] == "" and item["url"] == "https://stackoverflow.com/q/7"
    assert item["author"] is None and item["created"] is None
    network = await engine.network()
    assert network["mode"] == "normal"  # has_more "yes" is no boolean: the sweep ended
