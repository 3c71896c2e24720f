"""Scrub first, then cut: no part of a secret reaches a stored error, a service's pause reason or the logs.

An API may echo a token in its error reply, raw, JSON-escaped (`\\/` for `/`) or URL-encoded; a connector or the
engine then shortens that text for a message. Cut before the scrub, the cut splits the token and the fragment
survives (20 of 45 characters once reached `lastError`, 41 of 45 through a JSON echo). Here every such echo,
placed where a cut would split it, is driven through the engine, and no 8-character piece of the token may be
found in `lastError`, the last outcome's reason, a disabled network's reason, the `services` collection or the
log output. Then the secrets beside the access token: the document's other credential fields and the
service's configured client secret (also inside a Basic authorization header).
"""

from __future__ import annotations

import base64
import io
import json
import random
import re
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.parse import quote, quote_plus, unquote

import httpx
import pytest
from collector.connectors.bluesky import BlueskyLikes
from collector.connectors.spotify import SpotifySavedTracks
from collector.connectors.youtube import YouTubeLiked

from collector import logs, sdk
from collector.executor import MAX_MESSAGE, Executor
from collector.plugins import Registered
from collector.sdk import Connector
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import Engine

TOKEN = "BQD/ya29+a0AfH6SMB=secret-access-token/x7Kq9Z"  # 45 characters, with what each spelling changes
SPELLINGS: dict[str, Callable[[str], str]] = {
    "raw": lambda s: s,
    "json-escaped": lambda s: json.dumps(s)[1:-1].replace("/", "\\/"),
    "url-encoded": lambda s: quote(s, safe=""),
}
API = "https://api.scrub.test"


def assert_no_fragment(text: str, secret: str, n: int = 8) -> None:
    """No `n`-character piece of `secret` in `text`, as it is or with JSON's `\\/` and URL encoding undone."""
    for seen in {text, text.replace("\\/", "/"), unquote(text)}:
        pieces = [secret[i:i + n] for i in range(len(secret) - n + 1) if secret[i:i + n] in seen]
        assert not pieces, f"{pieces[0]!r} of the secret in {text!r}"


def test_assert_no_fragment_finds_every_spelling_of_a_piece():
    for spell in SPELLINGS.values():
        with pytest.raises(AssertionError):
            assert_no_fragment("... " + spell(TOKEN)[:12], TOKEN)
    assert_no_fragment(f"... {TOKEN[:7]} {TOKEN[-7:]}", TOKEN)


# -- the engine, with a connector and its API ----------------------------------------------------


@pytest.fixture
def output() -> io.StringIO:
    out = io.StringIO()
    logs.configure("json", "debug", stream=out)
    return out


async def engine(mock_db, clock, connector: type[Connector], **service: Any) -> AsyncIterator[Engine]:
    name = connector.service
    settings = make_settings(services={name: {"base_url": API, **service}})
    store = Store(mock_db)
    await store.ensure_indexes()
    async with httpx.AsyncClient() as client:
        executor = Executor(store, client, settings, {name: Registered(name, connector, "collector", "test")},
                            clock=clock)
        yield Engine(store, executor, clock, settings, name, TOKEN)


async def recorded(engine: Engine, mock_db, output: io.StringIO) -> list[str]:
    """Everything the run left that people read: the network's errors and reasons, the services collection
    (pause reasons), the log lines."""
    network = await engine.network()
    texts = [network["lastOutcome"]["reason"], network["lastError"]["message"], output.getvalue(),
             json.dumps(await mock_db["services"].find({}, {"_id": 0}).to_list(None), default=str)]
    return texts + [network[k] for k in ("disabledReason", "parkedReason") if k in network]


def at(position: int, echo: str, filler: str = "x") -> str:
    """Text with `echo` starting at `position`."""
    return filler * position + echo + " and more"


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_spotify_a_429_body_echoing_the_token_across_its_cut(mock_db, clock, api, output, spelling):
    # the connector keeps 300 characters of the body: the token begins 20 before
    async for eng in engine(mock_db, clock, SpotifySavedTracks):
        head = '{"error": {"status": 429, "message": "'
        body = head + at(280 - len(head), SPELLINGS[spelling](TOKEN)) + '"}}'
        api.get(url__startswith=API).respond(429, content=body.encode(), headers={"Retry-After": "30"})
        await eng.add()

        result = await eng.run()

        assert result.outcome.kind.value == "rate_limited" and result.transition.service_paused_until
        assert (await mock_db["services"].find_one({"_id": "spotify"}))["pauseReason"]
        for text in await recorded(eng, mock_db, output):
            assert_no_fragment(text, TOKEN)


@pytest.mark.parametrize("status", [401, 400, 500])
@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_an_error_body_echoing_the_token_across_the_engines_cut(mock_db, clock, api, output, spelling,
                                                                      status):
    # the engine keeps 200 characters of an error body (spotify leaves every status but 429 to it)
    async for eng in engine(mock_db, clock, SpotifySavedTracks):
        api.get(url__startswith=API).respond(status, text=at(180, SPELLINGS[spelling](TOKEN)))
        await eng.add()

        await eng.run()

        for text in await recorded(eng, mock_db, output):
            assert_no_fragment(text, TOKEN)


def google_error(status: int, reason: str, message: str) -> bytes:
    """A Google API error body whose message is `message` as it stands in the JSON text (escapes kept)."""
    errors = json.dumps([{"domain": "global", "reason": reason}])
    return (f'{{"error": {{"code": {status}, "message": "{message}", "errors": {errors}}}}}').encode()


@pytest.mark.parametrize(("status", "reason", "kind"), [
    (403, "quotaExceeded", "rate_limited"),  # the app's quota: the whole service pauses
    (401, "authError", "unauthorized"),  # the network is disabled
])
@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_youtube_an_error_message_echoing_the_token_across_its_cut(mock_db, clock, api, output, spelling,
                                                                         status, reason, kind):
    # the connector keeps 200 characters of the error's message: the token begins 20 before
    async for eng in engine(mock_db, clock, YouTubeLiked):
        api.get(url__startswith=API).respond(status, content=google_error(status, reason, at(
            180, SPELLINGS[spelling](TOKEN))), headers={"content-type": "application/json"})
        await eng.add()

        result = await eng.run()

        assert result.outcome.kind.value == kind
        for text in await recorded(eng, mock_db, output):
            assert_no_fragment(text, TOKEN)


@pytest.mark.parametrize("status", [400, 401])
@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_bluesky_a_token_error_echoing_the_token_across_its_cut(mock_db, clock, api, output, spelling,
                                                                      status):
    # the connector keeps 200 characters of the error's message: the token begins 20 before
    async for eng in engine(mock_db, clock, BlueskyLikes):
        message = at(180, SPELLINGS[spelling](TOKEN))
        api.get(url__startswith=API).respond(status, headers={"content-type": "application/json"},
                                             content=f'{{"error": "ExpiredToken", "message": "{message}"}}'.encode())
        await eng.add(options={"actor": "alice.bsky.social"})

        result = await eng.confirm_unauthorized()

        assert result.outcome.kind.value == "unauthorized"
        network = await eng.network()
        assert network["disabled"] and "ExpiredToken" in network["disabledReason"]
        for text in await recorded(eng, mock_db, output):
            assert_no_fragment(text, TOKEN)


class Echo(Connector):
    """A connector that puts an API's whole reply in its message, as the SDK allows."""

    service = "echo"
    default_base_url = API

    def request(self, ctx: sdk.Context) -> sdk.Request:
        return sdk.Request(f"{API}/items")

    def parse(self, ctx: sdk.Context, response: httpx.Response) -> sdk.Page:
        raise sdk.BadResponse(f"not a page: {response.text}")


async def test_a_connector_message_is_bounded_by_the_engine_after_its_scrub(mock_db, clock, api, output):
    async for eng in engine(mock_db, clock, Echo):
        api.get(url__startswith=API).respond(200, text=at(MAX_MESSAGE - 30, TOKEN) * 30)
        await eng.add()

        result = await eng.run()

        assert result.outcome.kind.value == "transient" and len(result.outcome.message) == MAX_MESSAGE
        for text in await recorded(eng, mock_db, output):
            assert_no_fragment(text, TOKEN)


# -- the other secrets ------------------------------------------------------------------------------

PASSWORD, CLIENT_SECRET, REFRESH = "hunter2-app-password/1", "cs_live+Secret/of=the-app", "rt-refresh-token-0042"


@pytest.mark.parametrize("spelling", SPELLINGS)
async def test_every_credential_field_of_the_network_is_scrubbed(mock_db, clock, api, output, spelling):
    async for eng in engine(mock_db, clock, SpotifySavedTracks):
        echoed = " ".join(SPELLINGS[spelling](s) for s in (CLIENT_SECRET, PASSWORD, "oauth1-token-secret"))
        api.get(url__startswith=API).respond(500, text=at(170, echoed))
        await eng.add(clientSecret=CLIENT_SECRET, password=PASSWORD, accessTokenSecret="oauth1-token-secret")

        await eng.run()

        for text in await recorded(eng, mock_db, output):
            for secret in (CLIENT_SECRET, PASSWORD, "oauth1-token-secret"):
                assert_no_fragment(text, secret)


@pytest.mark.parametrize("echo", [
    CLIENT_SECRET,
    json.dumps(CLIENT_SECRET)[1:-1].replace("/", "\\/"),
    quote_plus(CLIENT_SECRET),
    "Basic " + base64.b64encode(f"app-id:{quote(CLIENT_SECRET, safe='')}".encode()).decode(),  # sdk's header
    "Basic " + base64.b64encode(f"app-id:{CLIENT_SECRET}".encode()).decode(),
])
async def test_the_configured_client_secret_is_scrubbed_from_a_token_endpoints_refusal(mock_db, clock, api,
                                                                                       output, echo):
    async for eng in engine(mock_db, clock, SpotifySavedTracks, token_url=f"{API}/token", client_id="app-id",
                            client_secret=CLIENT_SECRET):
        api.get(url__startswith=f"{API}/v1/").respond(401, json={"error": {"status": 401}})
        api.post(f"{API}/token").respond(400, json={"error": f"invalid_client: {echo} was not accepted"})
        await eng.add(refreshToken=REFRESH)

        result = await eng.run()

        assert result.outcome.kind.value == "unauthorized" and "invalid_client" in result.outcome.message
        for text in await recorded(eng, mock_db, output):
            assert_no_fragment(text, CLIENT_SECRET)
            assert_no_fragment(text, REFRESH)
            if echo.startswith("Basic"):
                assert_no_fragment(text, echo.removeprefix("Basic "), n=12)


async def test_a_refreshed_token_joins_the_run_secrets(mock_db, clock, api, output):
    new = "BQD-the-new-access-token-from-the-refresh-00"
    async for eng in engine(mock_db, clock, SpotifySavedTracks, token_url=f"{API}/token", client_id="app-id"):
        api.get(url__startswith=f"{API}/v1/").mock(side_effect=[
            httpx.Response(401, json={"error": {"status": 401}}),
            httpx.Response(503, text=at(190, f"{new} and {TOKEN}"))])
        api.post(f"{API}/token").respond(200, json={"access_token": new, "expires_in": 3600})
        await eng.add(refreshToken=REFRESH)

        await eng.run()

        for text in await recorded(eng, mock_db, output):
            assert_no_fragment(text, new)
            assert_no_fragment(text, TOKEN)


# -- logs.scrub and logs.clip ------------------------------------------------------------------------


@pytest.fixture
def secrets() -> Any:
    token = logs.set_run_secrets([TOKEN, CLIENT_SECRET])
    yield
    logs.reset_run_secrets(token)


@pytest.mark.usefixtures("secrets")
@pytest.mark.parametrize("secret", [TOKEN, CLIENT_SECRET])
def test_every_spelling_is_scrubbed(secret):
    spelled = [secret, quote(secret), quote(secret, safe=""), quote_plus(secret),
               re.sub("%..", lambda m: m.group().lower(), quote(secret, safe="")),
               json.dumps(secret)[1:-1], json.dumps(secret)[1:-1].replace("/", "\\/"),
               base64.b64encode(f"id:{secret}".encode()).decode(),
               base64.b64encode(f"client-id:{quote(secret, safe='')}".encode()).decode(),
               base64.urlsafe_b64encode(f"xy{secret}".encode()).decode()]
    for text in spelled:
        assert_no_fragment(logs.scrub(f"said: {text}!"), secret, n=6)
    assert logs.scrub(f"a{secret}b") == f"a{logs.REDACTED}b"


def test_a_secret_shorter_than_four_characters_is_not_one():
    token = logs.set_run_secrets(["abc", ""])
    try:
        assert logs.scrub("abc abc") == "abc abc"
    finally:
        logs.reset_run_secrets(token)


@pytest.mark.usefixtures("secrets")
def test_clip_scrubs_before_it_cuts():
    text = "x" * 180 + TOKEN + "y" * 100
    assert logs.clip(text, 200) == "x" * 180 + logs.REDACTED + "y" * 10
    assert logs.clip(text.encode(), 200) == logs.clip(text, 200)
    assert sdk.excerpt(text, 200) == logs.clip(text, 200)


def test_clip_reads_a_window_and_never_keeps_a_secret_split_by_it():
    # the window (200 + 4096 characters) ends inside the second copy: the scrub of the first shortens the text,
    # which must not bring a piece of the second into the 200 characters kept
    for size in (2500, 4001, 4200):
        secret = ("L" + "0123456789abcdef" * 300)[:size]
        token = logs.set_run_secrets([secret])
        try:
            text = secret + secret + "z" * 10_000
            assert logs.clip(text, 200) == logs.clip(text.encode(), 200) == (logs.REDACTED * 2 + "z" * 200)[:200]
        finally:
            logs.reset_run_secrets(token)


@pytest.mark.usefixtures("secrets")
def test_clip_is_the_scrub_of_the_whole_text_then_the_cut():
    rng = random.Random(24)
    words = ["a", "bc ", "\\/", "%2F", "é", TOKEN, CLIENT_SECRET, json.dumps(TOKEN)[1:-1].replace("/", "\\/"),
             quote(CLIENT_SECRET, safe=""), TOKEN[:30], "x" * 500]
    for _ in range(300):
        text = "".join(rng.choice(words) for _ in range(rng.randrange(1, 200)))
        limit = rng.choice([1, 50, 200, 300, 1000, 5000])
        assert logs.clip(text, limit) == logs.scrub(text)[:limit]
        assert logs.clip(text.encode(), limit) == logs.scrub(text)[:limit]


def test_without_secrets_scrub_only_removes_the_inline_forms():
    assert logs.scrub("GET /x?client_secret=abc&y=1") == "GET /x?client_secret=[redacted]&y=1"
    assert logs.clip("nothing secret " * 100, 20) == "nothing secret nothi"
