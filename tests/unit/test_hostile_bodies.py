"""Hostile API replies for every installed connector (hypothesis), served by respx, run by the real engine.

For each connector of collector.plugins.discover() (the example plugin included when it is installed), at its base URL
from the test settings (tests/unit/every_connector.py), a valid network is run once against a generated reply:

- bodies: the connector's valid reply with junk at one to three of the places it reads (wrong types, null, huge
  numbers such as 2**70 or 1e400, NaN, long strings, empty or nested containers, keys removed), random JSON of
  any shape, JSON nested up to and past the engine's depth cap, non-JSON bytes, truncated JSON, HTML, an empty body,
  a UTF-8 BOM; gzip'd or not, with or without (or with a lying) Content-Encoding;
- statuses: 200 half the time, else any of 2xx-5xx (304, 401, 403, 429...);
- headers: Link (next links inside and outside the base URL, junk, floods), the rate-limit families
  (x-ratelimit-*, ratelimit-*, RateLimit, Retry-After) with junk values, ETag, x-total / x-next-page, Content-Type.

Properties: nothing escapes Executor.run; the run ends in one of the outcome kinds with an error kind of
collector/states.py; the network is unleased and due later or disabled with its reason; every stored item's id is a
non-empty string that came from an integer or a non-blank string of the reply (not `str()` of a null, a boolean, a
float or a container), and its title, url and author are text or null; and the reply leaves nothing behind that
stops the network: served valid replies afterwards, it runs successfully again (a cursor or a limit read from junk
must not poison it). The bugs they found (junk ids, junk titles, a nextPageToken that is no string, an infinite
number) are pinned by the tests at the end.
"""

from __future__ import annotations

import asyncio
import copy
import gzip
import json
import os
import string
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from collector.config import MODES
from tests.harness import claim_one
from tests.unit import every_connector as ec
from tests.unit.every_connector import SERVICES

SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1
PROFILE = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.function_scoped_fixture])

# -- bodies --------------------------------------------------------------------------------------------------------

READ_KEYS = st.sampled_from([
    "items", "has_more", "quota_remaining", "quota_max", "backoff", "error_id", "error_name", "error_message",
    "question_id", "title", "link", "owner", "display_name", "creation_date", "id", "full_name", "html_url", "login",
    "created_at", "starred_at", "repo", "url", "uri", "content", "spoiler_text", "account", "acct", "reblog",
    "path_with_namespace", "name", "web_url", "namespace", "full_path", "username", "snippet", "channelTitle",
    "publishedAt", "nextPageToken", "error", "errors", "reason", "message", "code", "track", "artists",
    "external_urls", "added_at", "next", "kind", "data", "children", "after", "permalink", "author",
    "created_utc", "body", "feed", "post", "record", "text", "createdAt", "handle", "cursor", "hits", "objectID",
    "created_at_i", "nbHits", "story_title"])
NUMBERS = (st.integers(-(2**70), 2**70) | st.sampled_from([0, -1, 2**63, -(2**63) - 1, 10**30])
           | st.floats(allow_nan=True, allow_infinity=True))
TEXT = (st.text(max_size=20) | st.sampled_from(["", " ", "null", "None", "0", "-1", "1e400", "\u0000", "at://",
                                                 "t3_", "https://evil.test/x", "<script>", "&amp;" * 50])
        | st.builds(lambda n: "x" * n, st.integers(1_000, 20_000)))
LEAVES = st.none() | st.booleans() | NUMBERS | TEXT
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(READ_KEYS | st.text(max_size=6),
                                                                                        inner, max_size=3),
                    max_leaves=10)


def deep(depth: int, leaf: Any) -> Any:
    for n in range(depth):
        leaf = [leaf] if n % 2 else {"items": leaf}
    return leaf


DEEP = st.builds(deep, st.integers(20, 80), LEAVES)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a JSON value (keys of objects, indexes of arrays), the value itself first."""
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            out += paths(child, (*prefix, index))
    return out


@st.composite
def mutated(draw: st.DrawFn, service: str) -> Any:
    """The connector's valid reply with junk at one to three of its places (or a key removed)."""
    body = copy.deepcopy(ec.template(service))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(body)))
        if not where:
            body = draw(JSON | DEEP)
            continue
        parent = body
        for step in where[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.integers(0, 3)) == 0:
            del parent[where[-1]]
        else:
            parent[where[-1]] = draw(JSON | DEEP | st.just([]) | st.just({}))
    return body


def dumps(value: Any) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


RAW = st.sampled_from([b"", b" ", b"null", b"[]", b"{}", b"\xef\xbb\xbf{}", b"\xff\xfe{\x00}\x00", b"1e400",
                       b"9" * 5000, b"NaN", b"<html><body>Service Unavailable</body></html>", b'{"items": [1, 2,, oops',
                       b"[" * 100_000, b'"' + b"\\" * 1000, b"\x1f\x8b\x08\x00junk"]) | st.binary(max_size=64)


@st.composite
def bodies(draw: st.DrawFn, service: str) -> bytes:
    kind = draw(st.sampled_from(["mutated"] * 5 + ["json", "deep", "raw", "truncated"]))
    event(f"body: {kind}")
    if kind == "mutated":
        return dumps(draw(mutated(service)))
    if kind == "json":
        return dumps(draw(JSON))
    if kind == "deep":
        return dumps(draw(DEEP))
    if kind == "truncated":
        whole = dumps(ec.template(service))
        return whole[:draw(st.integers(0, len(whole) - 1))]
    return draw(RAW)


# -- statuses and headers ------------------------------------------------------------------------------------------

STATUSES = st.sampled_from([200] * 12 + [201, 202, 204, 206, 300, 301, 302, 304, 400, 401, 403, 404, 405, 408, 409,
                                         410, 418, 422, 429, 451, 500, 502, 503, 504, 599])
ASCII = st.text(alphabet=string.printable.strip() + " ", max_size=40)
HEADER_NUMBERS = st.sampled_from(["0", "1", "-1", "1.5", "599.0", "inf", "-inf", "nan", "1e999", "", "abc", "9" * 70,
                                  "1764000000", "17640000000000", "2026-11-25T12:05:00Z", "Wed, 25 Nov 2026 12:05 GMT",
                                  " 60 ", "0x10"]) | ASCII


@st.composite
def link_values(draw: st.DrawFn, service: str) -> str:
    base = ec.BASES[service]
    target = draw(st.sampled_from([f"{base}/page2", f"{base}/api/v1/favourites?max_id=123&limit=40",
                                   f"{base}/api/v1/bookmarks?min_id=abc", f"{base}/x?page=3",
                                   f"{base}/x?max_id=" + "9" * 100, "https://evil.test/steal", "http://127.0.0.1/",
                                   "", "relative/path", f"{base}@evil.test/", "javascript:x"]) | ASCII)
    rel = draw(st.sampled_from(['rel="next"', 'rel="prev"', 'rel="last"', "rel=next", 'rel="next prev"', "", "rel"]))
    one = f"<{target}>; {rel}"
    return draw(st.sampled_from([one, f"{one}, {one}", ", ".join([one] * 500), "<" * 5000, "garbage", "<>", ""]))


@st.composite
def headers(draw: st.DrawFn, service: str) -> dict[str, str]:
    names = draw(st.lists(st.sampled_from(
        ["link", "x-ratelimit-remaining", "x-ratelimit-limit", "x-ratelimit-reset", "x-ratelimit-used",
         "ratelimit-remaining", "ratelimit-limit", "ratelimit-reset", "ratelimit", "retry-after", "etag", "x-total",
         "x-next-page", "content-type"]), max_size=5, unique=True))
    out = {}
    for name in names:
        if name == "link":
            out[name] = draw(link_values(service))
        elif name == "ratelimit":
            out[name] = draw(st.sampled_from(["limit=100, remaining=0, reset=30", "remaining=0", "r=0;t=" + "9" * 40,
                                              "limit=x"]) | ASCII)
        elif name in ("etag", "content-type"):
            out[name] = draw(ASCII | st.sampled_from(['W/"x"', "text/html", "application/json; charset=latin-1"]))
        else:
            out[name] = draw(HEADER_NUMBERS)
    return out


@st.composite
def replies(draw: st.DrawFn, service: str) -> tuple[int, bytes, dict[str, str]]:
    status, body, extra = draw(STATUSES), draw(bodies(service)), draw(headers(service))
    coding = draw(st.sampled_from(["plain", "gzip", "gzip"] if service == "stackoverflow" else
                                  ["plain"] * 4 + ["gzip", "lying", "unknown"]))
    if coding == "gzip":
        body, extra = gzip.compress(body), {**extra, "content-encoding": "gzip"}
    elif coding == "lying":
        extra = {**extra, "content-encoding": "gzip"}
    elif coding == "unknown":
        extra = {**extra, "content-encoding": draw(st.sampled_from(["br", "gzip, gzip", "x-junk", "identity"]))}
    event(f"status: {status // 100}xx")
    return status, body, extra


# -- driving -------------------------------------------------------------------------------------------------------


def responder(state: dict[str, Any], service: str) -> Callable[[httpx.Request], httpx.Response]:
    valid = ec.valid_reply(service)

    def answer(request: httpx.Request) -> httpx.Response:
        if state["hostile"] is None:
            return valid(request)
        return ec.raw_reply(*state["hostile"])

    return answer


async def drive(service: str, mode: str, cursor: dict[str, Any], reply: tuple[int, bytes, dict[str, str]]) -> None:
    state: dict[str, Any] = {"hostile": reply}
    async with ec.engine({service: responder(state, service)}, wire=True) as e:
        network_id = await e.store.insert_network(ec.valid_document(service, mode, copy.deepcopy(cursor)))
        claimed = await claim_one(e.store, mode, "prop", e.clock.now, 60)
        assert claimed is not None
        result = await e.executor.run(*claimed)  # nothing escapes
        assert result.saved
        net = await e.store.networks.find_one({"_id": network_id})
        note(f"outcome {net.get('lastOutcome')} error {net.get('lastError')}")
        event(f"outcome: {result.outcome.kind.value} ({result.outcome.error})")
        ec.check_after_run(net, e.clock.now)
        async for item in e.store.items.find({"network": network_id}):
            assert isinstance(item["itemId"], str) and item["itemId"], item["itemId"]
            assert ec.sane_id(ec.raw_id(service, item.get("raw"))), f"an item stored under a junk id: {item!r:.300}"
            assert all(isinstance(item[k], str | None) for k in ("title", "url", "author")), f"{item!r:.300}"
        if net.get("disabled") is True:
            return
        # valid replies from now on: the network runs successfully again (deferred first while its service waits)
        state["hostile"] = None
        for _ in range(4):
            e.clock.now = max(e.clock.now, net["scheduledTo"])
            mode_now = net["mode"] if net.get("mode") in MODES else mode
            claimed = await claim_one(e.store, mode_now, "prop", e.clock.now, 60)
            assert claimed is not None, net
            await e.executor.run(*claimed)
            net = await e.store.networks.find_one({"_id": network_id})
            ec.check_after_run(net, e.clock.now)
            if ec.succeeded(net):
                break
        assert ec.succeeded(net), f"a hostile reply left the network unable to run: {net!r:.800}"


# -- properties ----------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("service", SERVICES)
@settings(**PROFILE, max_examples=40 * SCALE)
@given(data=st.data())
def test_any_reply_ends_in_a_documented_outcome_and_leaves_the_network_able_to_run(service, data):
    mode = data.draw(st.sampled_from(MODES))
    cursor = data.draw(st.sampled_from(ec.valid_cursors(service, mode)))
    reply = data.draw(replies(service))
    asyncio.run(drive(service, mode, cursor, reply))


# -- what these properties found, pinned (fixed in collector/sdk and the connectors) ------------------------------

JUNK_IDS = [None, True, 1.5, {"id": 1}, [1], "", " "]


def with_junk_id(service: str, junk: Any) -> bytes:
    """The valid reply with the first item's id replaced by `junk`."""
    body = ec.template(service)
    listing = lambda b: b["data"]["children"][0]["data"]  # noqa: E731
    first = {"github": lambda b: b[0]["repo"], "stackoverflow": lambda b: b["items"][0],
             "spotify": lambda b: b["items"][0]["track"], "reddit_saved": listing, "reddit_upvoted": listing,
             "bluesky": lambda b: b["feed"][0]["post"], "hackernews": lambda b: b["hits"][0],
             "youtube": lambda b: b["items"][0]}.get(service, lambda b: b[0])(body)
    key = {"stackoverflow": "question_id", "reddit_saved": "name", "reddit_upvoted": "name", "bluesky": "uri",
           "hackernews": "objectID"}.get(service, "id")
    first[key] = junk
    if service == "spotify":
        first.pop("uri")
    return dumps(body)


@pytest.mark.parametrize("service", SERVICES)
async def test_no_item_is_stored_under_a_junk_id(service):
    stored = []
    for junk in JUNK_IDS:
        body = with_junk_id(service, junk)
        content, coding = ec.encoded(service, body)
        reply = (200, content, {**coding, **ec.template_headers(service)})
        state: dict[str, Any] = {"hostile": reply}
        async with ec.engine({service: responder(state, service)}, wire=True) as e:
            network_id = await e.store.insert_network(ec.valid_document(service))
            await e.executor.run(*await claim_one(e.store, "initial", "prop", e.clock.now, 60))
            net = await e.store.networks.find_one({"_id": network_id})
            ec.check_after_run(net, e.clock.now)
            stored += [item["itemId"] async for item in e.store.items.find({"network": network_id})
                       if not ec.sane_id(ec.raw_id(service, item.get("raw")))]
    assert not stored, f"items stored under junk ids: {stored}"



# where each connector reads an item's title, url and author (the normalized fields of an item document)
SHOWN: dict[str, list[tuple[Any, ...]]] = {
    "github": [(0, "repo", "full_name"), (0, "repo", "html_url"), (0, "repo", "owner", "login")],
    "stackoverflow": [("items", 0, "title"), ("items", 0, "link"), ("items", 0, "owner", "display_name")],
    "mastodon_favourites": [(0, "url"), (0, "account", "acct")],
    "mastodon_bookmarks": [(0, "url"), (0, "account", "acct")],
    "gitlab": [(0, "path_with_namespace"), (0, "web_url"), (0, "namespace", "full_path")],
    "youtube": [("items", 0, "snippet", "title"), ("items", 0, "snippet", "channelTitle")],
    "spotify": [("items", 0, "track", "name"), ("items", 0, "track", "external_urls", "spotify"),
                ("items", 0, "track", "artists", 0, "name")],
    "reddit_saved": [("data", "children", 0, "data", "title"), ("data", "children", 0, "data", "author")],
    "reddit_upvoted": [("data", "children", 0, "data", "title"), ("data", "children", 0, "data", "author")],
    "bluesky": [("feed", 0, "post", "record", "text"), ("feed", 0, "post", "author", "handle")],
    "hackernews": [("hits", 0, "title"), ("hits", 0, "url"), ("hits", 0, "author")],
}


@pytest.mark.parametrize("service", SERVICES)
async def test_normalized_item_fields_are_text_or_null(service):
    junk_kept = []
    for place in SHOWN[service]:
        for junk in ({"a": 1}, 5, [1], True):
            body = ec.template(service)
            parent = body
            for step in place[:-1]:
                parent = parent[step]
            parent[place[-1]] = junk
            content, coding = ec.encoded(service, dumps(body))
            state: dict[str, Any] = {"hostile": (200, content, {**coding, **ec.template_headers(service)})}
            async with ec.engine({service: responder(state, service)}, wire=True) as e:
                network_id = await e.store.insert_network(ec.valid_document(service))
                await e.executor.run(*await claim_one(e.store, "initial", "prop", e.clock.now, 60))
                async for item in e.store.items.find({"network": network_id}):
                    junk_kept += [(place, item[k]) for k in ("title", "url", "author")
                                  if item[k] is not None and not isinstance(item[k], str)]
    assert not junk_kept, f"normalized fields holding junk: {junk_kept[:6]}"


# VideoListResponse.nextPageToken is a string: anything else is a bad response, never a cursor sent back forever
@pytest.mark.parametrize("token", [{"a": 1}, 12345, ["x"], True])
async def test_a_next_page_token_that_is_no_string_is_not_stored(token):
    body = {**ec.template("youtube"), "nextPageToken": token}
    state: dict[str, Any] = {"hostile": (200, dumps(body), {})}
    async with ec.engine({"youtube": responder(state, "youtube")}, wire=True) as e:
        network_id = await e.store.insert_network(ec.valid_document("youtube"))
        await e.executor.run(*await claim_one(e.store, "initial", "prop", e.clock.now, 60))
        net = await e.store.networks.find_one({"_id": network_id})
        assert isinstance(net["cursor"].get("next"), str | None), net["cursor"]


# int() of a number JSON reads as infinity (1e400) raises OverflowError: a bad response, not a connector bug
@pytest.mark.skipif("hackernews" not in SERVICES, reason="the example plugin (examples/collector-hackernews) is not "
                    "installed: scripts/test.sh installs it")
async def test_an_infinite_number_in_a_reply_is_a_bad_response():
    body = ec.template("hackernews")
    body["hits"][0]["created_at_i"] = float("inf")
    state: dict[str, Any] = {"hostile": (200, dumps(body), {})}
    async with ec.engine({"hackernews": responder(state, "hackernews")}, wire=True) as e:
        await e.store.insert_network(ec.valid_document("hackernews"))
        result = await e.executor.run(*await claim_one(e.store, "initial", "prop", e.clock.now, 60))
        assert result.outcome.error == "bad_response", result.outcome
