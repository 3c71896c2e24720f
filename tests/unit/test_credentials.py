"""Credentials are never lost to a database blip, and a 401 storm disables nobody (collector/refresh.py,
collector/incidents.py, the unauthorized rows of collector/states.py)."""

from __future__ import annotations

import tracemalloc
from datetime import timedelta
from urllib.parse import parse_qs

import httpx
import pytest
from pymongo.errors import AutoReconnect, WriteError

from collector import incidents
from collector.config import Schedule
from collector.executor import Executor
from collector.incidents import AuthWatch
from collector.refresh import Refresher
from tests.conftest import make_settings
from tests.harness import claim_one, engine_for
from tests.unit.test_oauth_refresh import NEW, OLD, REFRESH, ROTATED, STARRED, TOKEN_URL, engine, starred

__all__ = ["engine"]  # the fixture, shared with test_oauth_refresh
pytestmark = pytest.mark.recorded  # the starred page is a recorded reply (tests/conftest.py)

GRANT = {"access_token": NEW, "token_type": "bearer", "expires_in": 3600, "refresh_token": ROTATED}


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch):
    monkeypatch.setattr(Refresher, "FIRST_RETRY", 0.001)
    monkeypatch.setattr(Refresher, "RETRY_CAP", 0.002)


def failing(store, monkeypatch, errors: list[Exception], apply_first: bool = False):
    """store.update_credentials raising each of `errors` in turn (after applying the write, when `apply_first`:
    an answer lost on the way), then working."""
    real = store.update_credentials
    calls = []

    async def update(*args, **kwargs):
        calls.append(args)
        if errors:
            if apply_first:
                await real(*args, **kwargs)
            raise errors.pop(0)
        return await real(*args, **kwargs)

    monkeypatch.setattr(store, "update_credentials", update)
    return calls


async def test_a_refresh_write_failing_is_retried_until_stored_and_the_network_keeps_working(engine, api, monkeypatch):
    starred(api, accept=NEW)
    api.post(TOKEN_URL).respond(200, json=GRANT)
    await engine.add(refreshToken=REFRESH)
    calls = failing(engine.store, monkeypatch, [AutoReconnect("primary stepped down"), AutoReconnect("again")])

    result = await engine.run()

    assert result.outcome.kind.value == "page" and len(calls) == 3
    doc = await engine.network()
    assert doc["accessToken"] == NEW and doc["refreshToken"] == ROTATED
    assert not doc.get("unauthorized") and "previousRefreshToken" not in doc  # served a run: the old one is dropped


async def test_a_write_applied_whose_answer_was_lost_counts_as_stored(engine, api, monkeypatch):
    starred(api, accept=NEW)
    api.post(TOKEN_URL).respond(200, json=GRANT)
    await engine.add(refreshToken=REFRESH)
    calls = failing(engine.store, monkeypatch, [AutoReconnect("connection closed")], apply_first=True)

    result = await engine.run()

    # the retry's compare-and-set matches nothing (the refresh token changed): the stamp read back says it was ours
    assert result.outcome.kind.value == "page" and len(calls) == 2
    assert (await engine.network())["refreshToken"] == ROTATED


async def test_a_write_the_database_refuses_is_a_transient_failure_not_a_crash(engine, api, monkeypatch):
    starred(api, accept=NEW)
    api.post(TOKEN_URL).respond(200, json=GRANT)
    await engine.add(refreshToken=REFRESH)
    failing(engine.store, monkeypatch, [WriteError("document failed validation", code=121)])

    result = await engine.run()

    assert result.outcome.kind.value == "transient" and result.outcome.error == "store_error"
    assert NEW not in result.outcome.message and ROTATED not in result.outcome.message


async def test_the_previous_refresh_token_is_tried_when_the_current_one_is_refused(engine, api):
    """A pair lost between the provider's answer and the write, with a provider that keeps the previous refresh
    token valid until the new access token is used (Doorkeeper's on_use rotation)."""
    starred(api, accept=NEW)

    def grant(request: httpx.Request) -> httpx.Response:
        used = parse_qs(request.content.decode())["refresh_token"][0]
        if used == "ghr_lost_in_a_crash":
            return httpx.Response(400, json={"error": "invalid_grant"})
        return httpx.Response(200, json={**GRANT, "refresh_token": "ghr_after_5555"})

    token = api.post(TOKEN_URL).mock(side_effect=grant)
    await engine.add(refreshToken="ghr_lost_in_a_crash", previousRefreshToken=REFRESH)

    result = await engine.run()

    assert result.outcome.kind.value == "page" and token.call_count == 2
    doc = await engine.network()
    assert doc["refreshToken"] == "ghr_after_5555" and doc["accessToken"] == NEW and "previousRefreshToken" not in doc


async def test_a_rotated_pair_keeps_the_previous_refresh_token_until_it_has_served_a_run(engine, api):
    starred(api, accept="nobody")  # the API refuses the new token too: the run fails after the refresh
    api.post(TOKEN_URL).respond(200, json=GRANT)
    await engine.add(refreshToken=REFRESH)

    await engine.run()

    doc = await engine.network()
    assert doc["refreshToken"] == ROTATED and doc["previousRefreshToken"] == REFRESH
    assert doc["unauthorized"] is True and not doc.get("disabled")


# -- 401 storms -----------------------------------------------------------------------------------------------


def test_the_window_needs_enough_networks_and_more_than_the_share():
    now = [0.0]
    watch = AuthWatch(clock=lambda: now[0])
    schedule = Schedule(incident_min_runs=10, incident_min_refused=3, incident_share=0.2, incident_window=900.0)
    for n in range(9):
        assert watch.record("github", n, True, schedule) is None  # nine refused networks: too few to judge
    verdict = watch.record("github", 9, True, schedule)
    assert verdict is not None and (verdict.refused, verdict.runs, verdict.fresh) == (10, 10, True)
    now[0] += 901  # all out of the window
    for n in range(8):
        assert watch.record("github", n, False, schedule) is None
    assert watch.record("github", 8, True, schedule) is None and watch.record("github", 9, True, schedule) is None
    verdict = watch.record("github", 10, True, schedule)  # 3 of 11 networks > 20 %
    assert verdict is not None and (verdict.refused, verdict.runs, verdict.fresh) == (3, 11, True)
    assert watch.record("github", 11, True, schedule).fresh is False  # the same incident, renewed
    assert watch.record("gitlab", 1, True, schedule) is None  # per service


def test_a_network_refused_again_and_again_counts_once():
    """A small service's few genuine revocations, refused run after run (their confirmations, retries), never add
    up to an incident that would hold them back and pause everyone else."""
    watch = AuthWatch(clock=lambda: 0.0)
    schedule = Schedule(incident_min_runs=10, incident_min_refused=3, incident_share=0.2, incident_window=900.0)
    for n in range(8):
        assert watch.record("reddit_saved", n, False, schedule) is None
    for _ in range(20):  # two revoked networks, refused twenty times each: 40 of 48 runs, 2 of 10 networks
        assert watch.record("reddit_saved", "revoked-1", True, schedule) is None
        assert watch.record("reddit_saved", "revoked-2", True, schedule) is None


def test_the_window_holds_networks_not_runs_and_at_most_max_networks(monkeypatch):
    """What the window remembers follows the networks answered in it, not their runs (a back-fill's page after
    page, retries), and stays under MAX_NETWORKS a service whatever the rate: the oldest networks go first, with
    their refusals."""
    monkeypatch.setattr(incidents, "MAX_NETWORKS", 50)
    watch = AuthWatch(clock=lambda: 0.0)
    schedule = Schedule(incident_min_runs=10, incident_min_refused=3, incident_share=0.2, incident_window=900.0)
    assert watch.record("github", "old", True, schedule) is None
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):  # 20,000 runs of 5 networks
            assert watch.record("github", f"busy-{i % 5}", False, schedule) is None
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 64 * 1024, f"{held:,} bytes held for 5 networks"  # a run's sample each would be ~3 MB
    verdicts = [watch.record("github", n, n >= 189, schedule) for n in range(200)]  # the last 11 refused
    assert verdicts[:-1] == [None] * 199  # "old" went with the first 50 (never 3 refused of 50 and more than 10)
    assert (verdicts[-1].refused, verdicts[-1].runs) == (11, 50)


def test_fewer_refused_networks_than_the_minimum_are_no_incident():
    watch = AuthWatch(clock=lambda: 0.0)
    schedule = Schedule(incident_min_runs=10, incident_min_refused=10, incident_share=0.2, incident_window=900.0)
    for n in range(11):
        assert watch.record("github", n, n < 9, schedule) is None  # 9 of 11 refused: too few networks to tell
    assert watch.record("github", 11, True, schedule) is not None  # the tenth


def test_an_incident_ends_after_incident_max():
    """Refusals that go on for incident_max are judged per network again: held back longer, genuine revocations
    among them would never be confirmed."""
    now = [0.0]
    watch = AuthWatch(clock=lambda: now[0])
    schedule = Schedule(incident_min_runs=2, incident_min_refused=2, incident_share=0.2, incident_window=900.0,
                        incident_max=3600.0)
    assert watch.record("github", "a", True, schedule) is None
    assert watch.record("github", "b", True, schedule) is not None
    for minute in range(1, 60):
        now[0] = minute * 60.0
        assert watch.record("github", "a", True, schedule) is not None, minute  # still the same incident
        assert watch.record("github", "b", True, schedule).fresh is False
        assert not watch.outlasted("github", schedule)
    now[0] = 3600.0
    assert watch.record("github", "a", True, schedule) is None and watch.outlasted("github", schedule)
    now[0] = 3600.0 + 901  # a lull of a whole window: the next storm is a new incident
    assert not watch.outlasted("github", schedule)
    watch.record("github", "a", True, schedule)
    verdict = watch.record("github", "b", True, schedule)
    assert verdict is not None and verdict.fresh


@pytest.fixture
async def fleet(mock_db, clock):
    settings = make_settings(services={"github": {"base_url": "https://api.github.test"}})
    async for eng in engine_for("github", OLD, mock_db, settings, clock):
        yield eng


async def storm(eng, clock, count: int):
    """`count` GitHub networks due now."""
    for i in range(count):
        await eng.store.insert_network({"user": f"u{i}", "service": "github", "accessToken": f"{OLD}{i}",
                                        "mode": "normal", "scheduledTo": clock.now, "errors": 0})
    return eng


async def run_due(store, executor: Executor, clock) -> list:
    results = []
    while (claimed := await claim_one(store, "normal", "test-owner", clock.now, 60)) is not None:
        results.append(await executor.run(*claimed))
    return results


async def test_a_401_storm_pauses_the_service_and_disables_nobody(fleet, clock, api):
    refused = api.get(url__startswith=STARRED).respond(401, json={"message": "Bad credentials"})
    eng = await storm(fleet, clock, 30)

    first = await run_due(eng.store, eng.executor, clock)

    assert len(first) == 30 and sum(r.incident for r in first) == 1
    assert refused.call_count == 10  # the tenth refusal declared it; the others waited without a request
    networks = await eng.store.networks.find().to_list(None)
    assert not any(n.get("disabled") for n in networks)
    assert sum(bool(n.get("unauthorized")) for n in networks) == 9  # refused before the storm was recognized
    pause = await eng.store.services.find_one({"_id": "github"})
    assert "auth incident: 10 of 10 networks refused" in pause["pauseReason"]
    assert "nobody is disabled" in pause["pauseReason"]

    # the pause ends, the storm goes on: the marked networks' second 401 is still the incident's, not theirs
    clock.advance(700)
    again = await run_due(eng.store, eng.executor, clock)
    assert again and all(r.outcome.kind.value == "deferred" for r in again)
    assert not any(n.get("disabled") for n in await eng.store.networks.find().to_list(None))

    # the API recovers: every network collects again, the marks are cleared
    api.get(url__startswith=STARRED).respond(200, json=[])
    for _ in range(3):
        clock.advance(1000)
        await run_due(eng.store, eng.executor, clock)
    networks = await eng.store.networks.find().to_list(None)
    assert all(n.get("lastSuccess") for n in networks)
    assert not any(n.get("unauthorized") or n.get("disabled") for n in networks)


async def test_one_revoked_network_among_working_ones_is_confirmed_and_disabled(fleet, clock, api):
    def reply(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] == f"Bearer {OLD}0":
            return httpx.Response(401, json={"message": "Bad credentials"})
        return httpx.Response(200, json=[])

    api.get(url__startswith=STARRED).mock(side_effect=reply)
    eng = await storm(fleet, clock, 20)
    await run_due(eng.store, eng.executor, clock)
    revoked = await eng.store.networks.find_one({"user": "u0"})
    assert revoked["unauthorized"] is True and not revoked.get("disabled")

    clock.now = revoked["scheduledTo"] + timedelta(seconds=1)
    await run_due(eng.store, eng.executor, clock)

    revoked = await eng.store.networks.find_one({"user": "u0"})
    assert revoked["disabled"] is True and revoked["unauthorized"] is True
    assert "second 401 in a row" in revoked["disabledReason"]
    assert await eng.store.networks.count_documents({"disabled": True}) == 1


async def test_a_few_revocations_in_a_small_service_are_confirmed_not_an_incident(fleet, clock, api):
    """Three revoked among ten networks: 30 % of them, refused again at their confirmation. Fewer than
    incident_min_refused networks refused is no incident: nobody else is paused, the three are disabled."""
    revoked = {f"Bearer {OLD}{i}" for i in range(3)}

    def reply(request: httpx.Request) -> httpx.Response:
        if request.headers["Authorization"] in revoked:
            return httpx.Response(401, json={"message": "Bad credentials"})
        return httpx.Response(200, json=[])

    api.get(url__startswith=STARRED).mock(side_effect=reply)
    eng = await storm(fleet, clock, 10)
    for _ in range(3):
        results = await run_due(eng.store, eng.executor, clock)
        assert not any(r.incident or r.outcome.kind.value == "deferred" for r in results)
        clock.advance(1000)
    assert await eng.store.services.find_one({"_id": "github"}) is None
    disabled = await eng.store.networks.find({"disabled": True}).to_list(None)
    assert sorted(n["user"] for n in disabled) == ["u0", "u1", "u2"]
    assert all("second 401 in a row" in n["disabledReason"] for n in disabled)


async def test_github_s_bad_refresh_token_answered_with_200_is_a_refusal_not_an_outage(engine, api):
    """GitHub's "Refreshing user access tokens" answers an expired or used refresh token with HTTP 200 and
    {"error": "bad_refresh_token"}: a refusal (unauthorized, confirmed later), never a retried transient."""
    starred(api, accept=NEW)
    api.post(TOKEN_URL).respond(200, json={"error": "bad_refresh_token", "error_description": "The refresh token "
                                           "passed is incorrect or expired."})
    await engine.add(refreshToken=REFRESH)

    result = await engine.run()

    assert result.outcome.kind.value == "unauthorized" and "bad_refresh_token" in result.outcome.message
