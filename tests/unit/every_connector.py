"""Every installed connector (collector.plugins.discover(): the built-in ones and any plugin, such as the example
Hacker News package), as the property tests test_every_field.py and test_hostile_bodies.py drive them: its test
host, a valid network document, the cursors it writes, the cursor keys and options it reads, a valid one-page
reply of its API (a template the hostile bodies mutate), where its items' ids come from, and an engine (a fresh
mongomock database, respx, the real executor) to run it in.

The valid replies are shaped like each API's documentation (the per-connector tests have the details): three
items, ids 9001-9003, no next page, so an initial run stores three items and switches to normal.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import random
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import respx
from mongomock_motor import AsyncMongoMockClient

from collector import logs, plugins
from collector.executor import Executor
from collector.states import PERMANENT_KINDS, TRANSIENT_KINDS, Kind
from collector.store import Store
from tests.conftest import Clock, make_settings

T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
TLS = ssl.create_default_context()  # loading the CA bundle takes 70 ms: once, not per example
IDS = ("9001", "9002", "9003")
EPOCH = 1_764_000_000
ISO = "2025-06-01T00:00:00Z"

# base URLs, as the per-connector tests set them (tests/unit/test_<connector>.py); a Mastodon network names its
# instance, a GitLab network may name its server
GITHUB, SO, MASTODON, GITLAB = ("https://api.github.test", "https://api.stackexchange.test/2.3",
                                "https://mastodon.test", "https://gitlab.test")
YOUTUBE, SPOTIFY, REDDIT, BLUESKY = ("https://youtube.googleapis.test", "https://api.spotify.test",
                                     "https://oauth.reddit.test", "https://pds.bsky.test")
HN = "https://hn.algolia.test/api/v1"
BASES = {"github": GITHUB, "stackoverflow": SO, "mastodon_favourites": MASTODON, "mastodon_bookmarks": MASTODON,
         "gitlab": GITLAB, "youtube": YOUTUBE, "spotify": SPOTIFY, "reddit_saved": REDDIT,
         "reddit_upvoted": REDDIT, "bluesky": BLUESKY, "hackernews": HN}
# disable_after=0: transient failures disable on their count alone (max_errors rounds, not a day of them)
SETTINGS = make_settings(services={name: {"base_url": url} for name, url in BASES.items()},
                         schedule={"disable_after": 0})
REGISTRY = plugins.discover()
# the connectors this file knows; an installed one it does not know fails test_every_installed_connector_is_known
SERVICES = tuple(sorted(name for name in BASES if name in REGISTRY and REGISTRY[name].cls is not None))
MAX_ERRORS = SETTINGS.schedule.max_errors
BACKOFF_CAP = SETTINGS.schedule.backoff_cap
# every error kind a network may record (states.py) and every outcome
ERROR_KINDS = {*TRANSIENT_KINDS, *PERMANENT_KINDS, "rate_limited", "unauthorized"}
OUTCOME_KINDS = {k.value for k in Kind}

# what each connector reads: the options of a network, the keys of its cursor (connectors/*.py, the example plugin)
OPTION_KEYS: dict[str, tuple[str, ...]] = {
    "github": (), "stackoverflow": ("site",), "mastodon_favourites": ("instance",),
    "mastodon_bookmarks": ("instance",), "gitlab": ("user_id", "base_url"), "youtube": (), "spotify": (),
    "reddit_saved": ("username",), "reddit_upvoted": ("username",), "bluesky": ("actor",),
    "hackernews": ("username",),
}
SWEEP = ("next", "stop", "top")
CURSOR_KEYS: dict[str, tuple[str, ...]] = {
    "github": (*SWEEP, "etag"), "stackoverflow": SWEEP, "mastodon_favourites": ("max_id", "min_id"),
    "mastodon_bookmarks": ("max_id", "min_id"),
    "gitlab": ("user_id", "next", "total", "head", "walked_at", "walk_total", "walk_head", "walk_at"),
    "youtube": SWEEP, "spotify": SWEEP, "reddit_saved": SWEEP, "reddit_upvoted": SWEEP, "bluesky": SWEEP,
    "hackernews": ("before", "stop", "edge_ids", "stop_ids", "top", "top_ids"),
}
# options a valid network carries
OPTIONS: dict[str, dict[str, Any]] = {
    "stackoverflow": {"site": "stackoverflow"}, "mastodon_favourites": {"instance": MASTODON},
    "mastodon_bookmarks": {"instance": MASTODON}, "gitlab": {"user_id": 42}, "reddit_saved": {"username": "someone"},
    "reddit_upvoted": {"username": "someone"}, "bluesky": {"actor": "someone.bsky.social"},
    "hackernews": {"username": "someone"},
}


def valid_cursors(service: str, mode: str) -> list[dict[str, Any]]:
    """The cursors the connector writes: none, a sweep in progress, a finished one (normal mode)."""
    if service.startswith("mastodon"):
        return [{}, {"max_id": "8000", "min_id": "8001"}] if mode == "initial" else [{}, {"min_id": "8001"}]
    if service == "gitlab":
        walk = {"user_id": 42, "next": f"{GITLAB}/api/v4/users/42/starred_projects?page=2", "walk_total": 3,
                "walk_head": "0123456789abcdef", "walk_at": EPOCH}
        done = {"user_id": 42, "total": 3, "head": "0123456789abcdef", "walked_at": EPOCH}
        return [{}, walk] if mode == "initial" else [{}, walk, done]
    if service == "hackernews":
        sweep = {"top": EPOCH, "top_ids": ["8001"], "before": EPOCH - 100, "edge_ids": ["8000"]}
        return [{}, sweep] if mode == "initial" else [{}, sweep, {"stop": EPOCH, "stop_ids": ["8001"]}]
    nxt = {"github": f"{GITHUB}/user/starred?per_page=100&page=2", "stackoverflow": 2, "youtube": "CAUQAA",
           "spotify": f"{SPOTIFY}/v1/me/tracks?offset=50&limit=50", "bluesky": "1764000000000::bafyreic1"}.get(
        service, "t3_8000")
    top = "at://did:plc:abc/app.bsky.feed.post/8001" if service == "bluesky" else "t3_8001" if \
        service.startswith("reddit") else "8001"
    done = {"stop": top, **({"etag": 'W/"0a1b2c"'} if service == "github" else {})}
    sweep = {"next": nxt, "stop": None, "top": top}
    return [{}, sweep] if mode == "initial" else [{}, done, sweep]


def valid_document(service: str, mode: str = "initial", cursor: dict[str, Any] | None = None,
                   user: Any = "u1", token: str = "tok_0123456789abcdef") -> dict[str, Any]:
    return {"user": user, "service": service, "accessToken": token, "mode": mode, "scheduledTo": T0,
            "cursor": {} if cursor is None else cursor, "errors": 0, "options": dict(OPTIONS.get(service, {}))}


# -- the valid replies: templates ----------------------------------------------------------------------------------


def template(service: str) -> Any:
    """A valid one-page reply body of the connector's API (three items, no next page)."""
    n = [int(i) for i in IDS]
    if service == "github":
        return [{"starred_at": ISO, "repo": {"id": i, "full_name": f"someone/repo{i}",
                                             "html_url": f"https://github.com/someone/repo{i}",
                                             "owner": {"login": "someone"}, "created_at": ISO}} for i in n]
    if service == "stackoverflow":
        return {"items": [{"question_id": i, "title": f"question {i} &amp; co", "owner": {"display_name": "someone"},
                           "creation_date": EPOCH, "link": f"https://stackoverflow.com/questions/{i}/q"} for i in n],
                "has_more": False, "quota_max": 10_000, "quota_remaining": 9_000}
    if service.startswith("mastodon"):
        return [{"id": str(i), "uri": f"{MASTODON}/users/a/statuses/{i}", "url": f"{MASTODON}/@a/{i}",
                 "content": f"<p>status {i}</p>", "spoiler_text": "", "created_at": ISO, "account": {"acct": "a"},
                 "reblog": None} for i in n]
    if service == "gitlab":
        return [{"id": i, "name": f"p{i}", "path_with_namespace": f"someone/p{i}", "web_url": f"{GITLAB}/someone/p{i}",
                 "namespace": {"full_path": "someone"}, "owner": {"username": "someone"}, "created_at": ISO}
                for i in n]
    if service == "youtube":
        return {"kind": "youtube#videoListResponse",
                "items": [{"id": f"v{i}", "snippet": {"title": f"video {i}", "channelTitle": "someone",
                                                      "publishedAt": ISO}} for i in n]}
    if service == "spotify":
        return {"href": f"{SPOTIFY}/v1/me/tracks?offset=0&limit=50", "limit": 50, "offset": 0, "total": 3,
                "previous": None, "next": None,
                "items": [{"added_at": ISO, "track": {"id": f"t{i}", "uri": f"spotify:track:t{i}", "name": f"song {i}",
                                                      "artists": [{"name": "someone"}],
                                                      "external_urls": {"spotify": f"https://open.spotify.com/t{i}"}}}
                          for i in n]}
    if service.startswith("reddit"):
        return {"kind": "Listing", "data": {"after": None, "before": None, "children": [
            {"kind": "t3", "data": {"name": f"t3_{i}", "title": f"post {i}", "author": "someone",
                                    "permalink": f"/r/x/comments/{i}/post/", "url": f"https://example.org/{i}",
                                    "created_utc": float(EPOCH)}} for i in n]}}
    if service == "bluesky":
        return {"feed": [{"post": {"uri": f"at://did:plc:abc/app.bsky.feed.post/{i}", "cid": f"bafy{i}",
                                   "author": {"did": "did:plc:abc", "handle": "poster.bsky.social"},
                                   "record": {"text": f"post {i}", "createdAt": ISO}}} for i in n]}
    if service == "hackernews":
        return {"hits": [{"objectID": str(i), "title": f"story {i}", "url": f"https://example.org/{i}",
                          "author": "someone", "created_at_i": EPOCH - i} for i in n],
                "nbHits": 3, "page": 0, "nbPages": 1, "hitsPerPage": 100}
    raise KeyError(service)


def template_headers(service: str) -> dict[str, str]:
    if service == "github":
        return {"ETag": 'W/"5f1e8c2b0a7d"'}
    if service.startswith("mastodon"):
        endpoint = "favourites" if service.endswith("favourites") else "bookmarks"
        return {"Link": f'<{MASTODON}/api/v1/{endpoint}?limit=40&min_id=9500>; rel="prev"'}
    if service == "gitlab":
        return {"x-total": "3"}
    return {}


GZIP = {"content-encoding": "gzip", "content-type": "application/json; charset=utf-8"}


def encoded(service: str, body: bytes) -> tuple[bytes, dict[str, str]]:
    """Stack Exchange gzips every reply."""
    return (gzip.compress(body), dict(GZIP)) if service == "stackoverflow" else (body, {})


def raw_reply(status: int, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """A reply whose body is the bytes given, unread (httpx decodes a `content` by its Content-Encoding at once)."""
    return httpx.Response(status, headers={**headers, "content-length": str(len(body))}, stream=httpx.ByteStream(body))


def valid_reply(service: str) -> Callable[[httpx.Request], httpx.Response]:
    def reply(request: httpx.Request) -> httpx.Response:
        if service == "gitlab" and request.url.path == "/api/v4/user":
            return raw_reply(200, b'{"id": 42, "username": "someone"}', {"content-type": "application/json"})
        body, headers = encoded(service, json.dumps(template(service)).encode())
        return raw_reply(200, body, {"content-type": "application/json", **headers, **template_headers(service)})

    return reply


# where each connector takes an item's id from, in the payload it stores as `raw`
def raw_id(service: str, raw: Any) -> Any:
    raw = raw if isinstance(raw, dict) else {}
    if service == "github":
        repo = raw.get("repo", raw)
        return repo.get("id") if isinstance(repo, dict) else None
    if service == "stackoverflow":
        return raw.get("question_id")
    if service == "spotify":
        track = raw.get("track") or {}
        return (track.get("id") or track.get("uri")) if isinstance(track, dict) else None
    if service.startswith("reddit"):
        return raw.get("name")
    if service == "bluesky":
        post = raw.get("post")
        return post.get("uri") if isinstance(post, dict) else None
    if service == "hackernews":
        return raw.get("objectID")
    return raw.get("id")  # mastodon, gitlab, youtube


def sane_id(value: Any) -> bool:
    """An item id an API can mean: an integer or a non-blank string (not the text of a null, a boolean, a float or a
    container, which `str()` turns into "None", "True", "1.5", "{...}")."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and bool(value.strip()))


# -- the engine ----------------------------------------------------------------------------------------------------


@dataclass
class Engine:
    store: Store
    executor: Executor
    clock: Clock
    log: io.StringIO
    api: respx.MockRouter | None
    db: Any


def dispatch(answer: dict[str, Callable[[httpx.Request], httpx.Response]] | None = None
             ) -> Callable[[httpx.Request], httpx.Response]:
    """One handler for every connector's test host, answered by `answer[service]` (a valid reply by default); any
    other host by a 599 (with `elsewhere: host` in its headers). Replies are unread streams of their bytes, as a
    transport hands them over (one built from `content` is decoded and read at once: see `raw_reply`)."""
    hosts: dict[str, list[str]] = {}
    for service in SERVICES:
        hosts.setdefault(httpx.URL(BASES[service]).host, []).append(service)

    def handle(request: httpx.Request) -> httpx.Response:
        services = hosts.get(request.url.host)
        if not services:
            return httpx.Response(599, headers={"elsewhere": request.url.host})
        service = services[0]
        if len(services) > 1:  # two connectors on one host (Mastodon's, Reddit's): told by the path
            service = next((s for s in services if s.rsplit("_", 1)[-1] in request.url.path), services[0])
        return (answer or {}).get(service, valid_reply(service))(request)

    return handle


def mock_apis(answer: dict[str, Callable[[httpx.Request], httpx.Response]] | None = None) -> respx.MockRouter:
    router = respx.mock(assert_all_called=False, assert_all_mocked=True)
    router.route(name="apis").mock(side_effect=dispatch(answer))
    return router


@contextlib.asynccontextmanager
async def engine(answer: dict[str, Callable[[httpx.Request], httpx.Response]] | None = None,
                 log_level: str = "warning", wire: bool = False) -> AsyncIterator[Engine]:
    """A fresh database (a unique name: fixtures are not reset between examples), log capture, the mocked APIs and
    an executor over every installed connector. The APIs are served by respx; with `wire`, by an httpx
    MockTransport instead, which hands the engine the body's bytes as they are (respx reads a response before the
    engine does, decoding it as its Content-Encoding says: it cannot serve a corrupt gzip stream)."""
    db = AsyncMongoMockClient(tz_aware=True)[f"every_{uuid.uuid4().hex}"]
    store = Store(db)
    await store.ensure_indexes()
    out = io.StringIO()
    logs.configure("json", log_level, stream=out)
    clock = Clock(T0)
    try:
        with contextlib.nullcontext(None) if wire else mock_apis(answer) as api:
            transport = httpx.MockTransport(dispatch(answer)) if wire else None
            async with httpx.AsyncClient(verify=TLS, transport=transport) as client:
                executor = Executor(store, client, SETTINGS, REGISTRY, clock=clock, rng=random.Random(0))
                yield Engine(store, executor, clock, out, api, db)
    finally:
        await db.client.drop_database(db.name)


def succeeded(net: dict[str, Any]) -> bool:
    outcome = net.get("lastOutcome")
    return isinstance(outcome, dict) and outcome.get("kind") in ("page", "not_modified") and net.get("errors") == 0


def reasons(net: dict[str, Any]) -> list[str]:
    """The reasons the last run recorded: its outcome's, and its error's and the disabled reason unless it succeeded
    (a success leaves the last error as it was, whatever wrote it)."""
    fields = [(net.get("lastOutcome") or {}).get("reason")]
    if not succeeded(net):
        fields.append((net.get("lastError") or {}).get("message"))
        if net.get("disabled") is True:
            fields.append(net.get("disabledReason"))
    for value in fields:
        assert isinstance(value, str), value
    return fields


def check_after_run(net: dict[str, Any], now: datetime) -> None:
    """A network just run by the engine: unleased, its outcome one of the kinds, and either due later or disabled
    with its reason; never due again at once."""
    assert "lease" not in net, "left leased"
    outcome = net.get("lastOutcome") or {}
    assert outcome.get("kind") in OUTCOME_KINDS, outcome
    texts = reasons(net)
    assert all(texts), "no reason recorded"
    assert all(len(text) <= 2048 for text in texts), "an unbounded reason"
    if not succeeded(net):
        assert net["lastError"]["kind"] in ERROR_KINDS, net["lastError"]
    if net.get("disabled") is True:
        assert net["scheduledTo"] is None
    else:
        assert isinstance(net.get("scheduledTo"), datetime) and net["scheduledTo"] > now, "due again at once"


def later(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)
