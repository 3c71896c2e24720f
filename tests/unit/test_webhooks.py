"""Webhook delivery of the change feed (collector/webhooks.py) on mongomock-motor, the endpoint an httpx.MockTransport
(what the deliverer sends, byte for byte) or, for the egress policy, the real clients of collector/http.py. The same
against a real receiver and the wire server: tests/integration/test_webhooks_wire.py."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import random
from datetime import timedelta

import httpx
import pytest
from bson import ObjectId
from structlog.testing import capture_logs

from collector import status as fleet_status
from collector import webhooks
from collector.config import ConfigError
from collector.store import Store
from collector.webhooks import Deliverer
from tests.conftest import Clock, make_settings

SECRET = "whsec-test-0123456789abcdef"
URL = "http://127.0.0.1:9/hooks"


def hooks(**over):
    return make_settings(webhooks={"url": URL, "secret": SECRET, "batch": 2, "timeout": 2.0, "backoff_base": 10.0,
                                   "backoff_cap": 80.0, "dead_after": 1000.0, **over})


class Endpoint:
    """A MockTransport endpoint: answers each request with the next status of `script` (the last one repeats),
    keeping every request."""

    def __init__(self, *script: int):
        self.script = list(script) or [200]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return httpx.Response(status, content=streamed(b"ok"))  # streamed, as a real transport answers

    @property
    def bodies(self) -> list[dict]:
        return [json.loads(r.content) for r in self.requests]

    def seqs(self) -> list[list[int]]:
        return [[e["seq"] for e in body["events"]] for body in self.bodies]


async def streamed(data: bytes):
    yield data


def event(user: str, seq: int, clock: Clock) -> dict:
    return {"_id": f"items-{user}-{seq}:added:run1", "user": user, "seq": seq, "kind": "item.added",
            "service": "github", "network": ObjectId("65a000000000000000000001"), "at": clock.now,
            "published": clock.now, "item": {"id": str(seq), "key": f"k{seq}", "title": f"t{seq}", "url": None}}


async def feed(db, clock: Clock, user: str = "u1", seqs=range(1, 6), seq: int | None = None, **fields) -> None:
    """A user's feed as the publisher leaves it: events `seqs`, `seq` reserved, due now."""
    seqs = list(seqs)
    if seqs:
        await db.changes.insert_many([event(user, n, clock) for n in seqs])
    await db.feeds.insert_one({"_id": user, "seq": seq if seq is not None else max(seqs, default=0),
                               "hookDue": clock.now, **fields})


def deliverer(db, clock, endpoint, settings=None, **kw) -> Deliverer:
    return Deliverer(db, settings or hooks(), clock, transport=httpx.MockTransport(endpoint), rng=random.Random(3),
                     **kw)


async def doc(db, user="u1") -> dict:
    return await db.feeds.find_one({"_id": user})


# -- the receiver's side: body, headers, signature --------------------------------------------------------------


async def test_batches_in_sequence_signed_as_documented(mock_db, clock):
    await feed(mock_db, clock)
    endpoint = Endpoint()
    d = deliverer(mock_db, clock, endpoint)
    while await d.tick():
        pass
    assert endpoint.seqs() == [[1, 2], [3, 4], [5]]  # batch = 2, in order
    done = await doc(mock_db)
    assert done["delivered"] == 5 and "hookDue" not in done and "hookLock" not in done
    request = endpoint.requests[0]
    timestamp, signature = request.headers["X-Collector-Timestamp"], request.headers["X-Collector-Signature"]
    assert timestamp == str(int(clock.now.timestamp())) and request.headers["Content-Type"] == "application/json"
    # docs/webhooks.md's recipe, written out independently of collector.webhooks
    expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + request.content, hashlib.sha256).hexdigest()
    assert signature == f"sha256={expected}"
    assert webhooks.verify(SECRET, timestamp, request.content, signature)
    assert not webhooks.verify(SECRET, timestamp, request.content + b" ", signature)
    assert len({r.headers["X-Collector-Delivery"] for r in endpoint.requests}) == 3
    body = endpoint.bodies[0]
    assert body["user"] == "u1"
    first = body["events"][0]
    assert first["_id"] == "items-u1-1:added:run1" and first["kind"] == "item.added"
    assert first["network"] == "65a000000000000000000001"  # ObjectId as a string
    assert first["at"] == "2026-11-25T12:00:00.000Z"  # ISO 8601, UTC
    assert SECRET not in request.content.decode()


async def test_numbers_reserved_but_never_used_are_skipped(mock_db, clock):
    await feed(mock_db, clock, seqs=[1, 2, 4], seq=9)  # 3 and 5..9 reserved, never written (crashed publishers)
    endpoint = Endpoint()
    d = deliverer(mock_db, clock, endpoint)
    while await d.tick():
        pass
    assert endpoint.seqs() == [[1, 2], [4]]
    done = await doc(mock_db)
    assert done["delivered"] == 9 and "hookDue" not in done


async def test_a_publisher_writing_keeps_the_feed_due(mock_db, clock):
    """Numbers reserved under a live publisher lock may still become events: the feed stays due, nothing skipped."""
    lock = {"id": "pub", "until": clock.now + timedelta(seconds=60)}
    await feed(mock_db, clock, seqs=[1], seq=3, lock=lock)
    endpoint = Endpoint()
    d = deliverer(mock_db, clock, endpoint)
    assert await d.tick() == 1  # delivers 1
    clock.advance(webhooks.RECHECK)
    assert await d.tick() == 1  # nothing past 1, but the publisher is writing 2 and 3
    held = await doc(mock_db)
    assert held["delivered"] == 1 and held["hookDue"] == clock.now + timedelta(seconds=webhooks.RECHECK)
    await mock_db.changes.insert_many([event("u1", 2, clock), event("u1", 3, clock)])
    await mock_db.feeds.update_one({"_id": "u1"}, {"$unset": {"lock": ""}})
    clock.advance(webhooks.RECHECK)
    while await d.tick():
        pass
    assert endpoint.seqs() == [[1], [2, 3]]
    assert (await doc(mock_db))["delivered"] == 3 and "hookDue" not in await doc(mock_db)


async def test_a_reservation_after_the_claim_keeps_the_feed_due(mock_db, clock):
    await feed(mock_db, clock, seqs=[], seq=0)
    d = deliverer(mock_db, clock, Endpoint())
    [(claimed, token)] = await d.claim(clock.now, 4)
    await mock_db.feeds.update_one({"_id": "u1"}, {"$inc": {"seq": 1}, "$min": {"hookDue": clock.now}})  # publisher
    await d.deliver(claimed, token)
    after = await doc(mock_db)
    assert after.get("delivered", 0) == 0 and "hookDue" in after and "hookLock" not in after


async def test_users_are_claimed_by_one_deliverer_at_a_time(mock_db, clock):
    for user in ("u1", "u2", "u3"):
        await feed(mock_db, clock, user=user)
    one, two = deliverer(mock_db, clock, Endpoint()), deliverer(mock_db, clock, Endpoint())
    first = await one.claim(clock.now, 2)
    second = await two.claim(clock.now, 5)
    assert len(first) == 2 and len(second) == 1
    assert {d["_id"] for d, _ in first} | {d["_id"] for d, _ in second} == {"u1", "u2", "u3"}
    assert await one.claim(clock.now, 5) == []  # every lock held
    clock.advance(one.ttl.total_seconds() + 1)
    assert len(await two.claim(clock.now, 5)) == 3  # expired locks (their holder died) are taken over


async def test_a_delivery_whose_lock_was_taken_over_writes_nothing(mock_db, clock):
    await feed(mock_db, clock)
    endpoint = Endpoint()
    d = deliverer(mock_db, clock, endpoint)
    [(claimed, token)] = await d.claim(clock.now, 1)
    await mock_db.feeds.update_one({"_id": "u1"}, {"$set": {"hookLock.id": "someone-else"}})
    with capture_logs() as logged:
        await d.deliver(claimed, token)
    assert endpoint.seqs() == [[1, 2]]  # sent (at least once), but not recorded: sent again by the lock's holder
    assert "delivered" not in await doc(mock_db)
    assert any("outlived its lock" in e["event"] for e in logged)


# -- failures, backoff, dead letter, retry -----------------------------------------------------------------------


def test_backoff_doubles_to_the_cap_jittered_below():
    rng = random.Random(1)
    waits = [webhooks.backoff(n, 10.0, 80.0, rng) for n in range(1, 7)]
    for n, wait in enumerate(waits, 1):
        assert 0.75 * min(10.0 * 2 ** (n - 1), 80.0) <= wait <= min(10.0 * 2 ** (n - 1), 80.0)
    assert waits[0] < waits[1] < waits[2] < waits[3]  # each wait of a streak is longer, up to the cap
    assert max(waits) <= 80.0 and webhooks.backoff(10_000, 10.0, 80.0, rng) <= 80.0


async def test_failures_back_off_then_dead_letter_and_retry_clears(mock_db, clock):
    await feed(mock_db, clock)
    endpoint = Endpoint(500)
    d = deliverer(mock_db, clock, endpoint, settings=hooks(dead_after=200.0))
    started = clock.now
    waits = []
    while True:
        assert await d.tick() == 1
        state = await doc(mock_db)
        if "hookDead" in state:
            break
        assert state["hookError"] == "HTTP 500" and state.get("delivered", 0) == 0
        assert state["hookFailingSince"] == started
        waits.append((state["hookDue"] - clock.now).total_seconds())
        assert await d.tick() == 0  # not due before its backoff
        clock.now = state["hookDue"]
    assert waits == sorted(waits) and waits[0] <= 10.0 < waits[-1] <= 80.0  # grows, capped
    assert state["hookDead"]["error"] == "HTTP 500" and state["hookDead"]["since"] == started
    assert (clock.now - started).total_seconds() >= 200.0 and state["hookFailures"] == len(waits) + 1
    clock.advance(10_000)
    assert await d.tick() == 0  # dead-lettered: no more attempts
    assert {e["seq"] for body in endpoint.bodies for e in body["events"]} == {1, 2}  # never past the first batch

    report = await fleet_status.status(Store(mock_db), clock.now)
    assert report["webhooks"]["dead"] == 1 and report["webhooks"]["newestDead"]["error"] == "HTTP 500"
    shown = fleet_status.render(report)
    assert "1 dead-lettered" in shown and "newest dead letter: user u1" in shown and SECRET not in shown

    assert await webhooks.retry(mock_db, clock.now) == 1
    endpoint.script = [200]
    while await d.tick():
        pass
    done = await doc(mock_db)
    assert done["delivered"] == 5 and not {"hookDead", "hookFailures", "hookError", "hookFailingSince"} & set(done)
    assert endpoint.seqs()[-3:] == [[1, 2], [3, 4], [5]]  # from the first event not delivered, in order


async def test_a_success_ends_a_failure_streak(mock_db, clock):
    await feed(mock_db, clock, seqs=[1, 2, 3])
    d = deliverer(mock_db, clock, Endpoint(503, 200))
    await d.tick()
    assert (await doc(mock_db))["hookFailures"] == 1
    clock.now = (await doc(mock_db))["hookDue"]
    await d.tick()
    state = await doc(mock_db)
    assert state["delivered"] == 2 and "hookFailures" not in state and "hookError" not in state
    assert state["hookDue"] == clock.now  # more to send: due at once
    report = await webhooks.summary(mock_db, clock.now)
    assert (report["pending"], report["failing"], report["dead"]) == (1, 0, 0)


async def test_retry_of_one_user(mock_db, clock):
    await feed(mock_db, clock, user="u1", hookDead={"since": clock.now, "error": "HTTP 500", "at": clock.now})
    await feed(mock_db, clock, user="u2", hookDead={"since": clock.now, "error": "HTTP 500", "at": clock.now})
    assert await webhooks.retry(mock_db, clock.now, "u2") == 1
    assert "hookDead" in await doc(mock_db, "u1") and "hookDead" not in await doc(mock_db, "u2")
    assert await webhooks.retry(mock_db, clock.now, "nobody") == 0


async def test_a_stalled_endpoint_is_a_timeout(mock_db, clock):
    await feed(mock_db, clock, seqs=[1])
    released = asyncio.Event()

    async def stall(request: httpx.Request) -> httpx.Response:
        await released.wait()  # never set: the attempt's bound ends it
        return httpx.Response(200, content=streamed(b""))

    d = Deliverer(mock_db, hooks(timeout=0.2), clock, transport=httpx.MockTransport(stall))
    await d.tick()
    state = await doc(mock_db)
    assert state["hookError"].startswith("timeout") and state.get("delivered", 0) == 0


async def test_an_endless_answer_is_read_only_up_to_the_cap(mock_db, clock):
    await feed(mock_db, clock, seqs=[1])
    served = []

    async def endless():
        while True:
            served.append(1024)
            yield b"x" * 1024

    answer = httpx.MockTransport(lambda request: httpx.Response(200, content=endless()))
    d = Deliverer(mock_db, hooks(), clock, transport=answer)
    await d.tick()
    assert (await doc(mock_db))["delivered"] == 1
    assert sum(served) <= webhooks.RESPONSE_CAP + 1024


# -- the egress policy, secrets -----------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_the_egress_policy_refuses_a_loopback_endpoint(mock_db, clock, transport):
    """No [http] allow entry: 127.0.0.1 is refused where the connection is made, as for any API call."""
    await feed(mock_db, clock, seqs=[1])
    settings = make_settings(http={"allow": [], "transport": transport},
                             webhooks={"url": f"http://127.0.0.1:9/hooks?token={SECRET}", "secret": SECRET})
    d = Deliverer(mock_db, settings, clock)
    try:
        await d.tick()
    finally:
        await d.client.aclose()
    state = await doc(mock_db)
    assert state["hookError"].startswith("egress refused: refused by the egress policy: 127.0.0.1 is loopback")
    assert SECRET not in repr(state)


async def test_no_secret_in_stored_errors_or_logs(mock_db, clock):
    """A connection error naming the URL (whose query carries the secret) is stored and logged scrubbed."""
    await feed(mock_db, clock, seqs=[1])
    url = f"http://127.0.0.1:9/hooks?token={SECRET}"

    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"cannot connect to {request.url} (secret {SECRET})")

    settings = make_settings(webhooks={"url": url, "secret": SECRET})
    with capture_logs() as logged:
        await Deliverer(mock_db, settings, clock, transport=httpx.MockTransport(broken)).tick()
    state = await doc(mock_db)
    assert state["hookError"].startswith("connection error: ConnectError")
    assert SECRET not in repr(state) and SECRET not in repr(logged) and "hooks?token" not in repr(state)


@pytest.mark.parametrize(("url", "secret", "problem"), [
    ("https://app.example.com/hooks", "", "needs a secret"),
    ("http://app.example.com/hooks", SECRET, "must be https"),
    ("ftp://127.0.0.1/hooks", SECRET, "must be https"),
    ("https:///hooks", SECRET, "must name a host"),
])
def test_config_refuses_an_unsafe_endpoint(url, secret, problem):
    with pytest.raises(ConfigError, match=problem) as refused:
        make_settings(webhooks={"url": url, "secret": secret})
    assert SECRET not in str(refused.value) and "[webhooks]" in str(refused.value)


@pytest.mark.parametrize("url", ["https://app.example.com/hooks", "http://127.0.0.1:8080/h", "http://[::1]/h",
                                 "http://localhost/h", ""])
def test_config_accepts_https_and_loopback_http(url):
    assert make_settings(webhooks={"url": url, "secret": SECRET}).webhooks.url == url


# -- the background task ------------------------------------------------------------------------------------------


async def test_run_delivers_until_cancelled_then_closes_its_client(mock_db, clock):
    await feed(mock_db, clock, user="u1", seqs=[1, 2, 3])
    await feed(mock_db, clock, user="u2", seqs=[1])
    seen = asyncio.Event()
    endpoint = Endpoint()

    def answer(request: httpx.Request) -> httpx.Response:
        response = endpoint(request)
        if sum(len(b["events"]) for b in endpoint.bodies) == 4:
            seen.set()
        return response

    d = Deliverer(mock_db, hooks(concurrency=1), clock, transport=httpx.MockTransport(answer), poll=0.01)
    task = asyncio.create_task(d.run())
    await asyncio.wait_for(seen.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert all(client.is_closed for client in d.client.clients)
    per_user: dict[str, list[int]] = {}
    for body in endpoint.bodies:
        per_user.setdefault(body["user"], []).extend(e["seq"] for e in body["events"])
    assert per_user == {"u1": [1, 2, 3], "u2": [1]}


async def test_the_daemon_runs_a_deliverer_when_a_url_is_set(mock_db):
    """run_daemon starts the deliverer beside the scheduler (a real POST to 127.0.0.1) and stops it with the rest."""
    import threading
    from datetime import UTC, datetime
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from collector.app import run_daemon

    bodies: list[dict] = []
    arrived = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.send_header("Content-Length", "0")
            self.end_headers()
            arrived.set()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        await feed(mock_db, Clock(datetime.now(UTC) - timedelta(seconds=1)), seqs=[1, 2])
        settings = make_settings(database={"timeout": 60.0},
                                 webhooks={"url": f"http://127.0.0.1:{server.server_address[1]}/h", "secret": SECRET})
        ready: list = []
        started = asyncio.Event()
        daemon = asyncio.create_task(run_daemon(settings, "normal", db=mock_db,
                                                on_ready=lambda sched: (ready.append(sched), started.set())))
        assert await asyncio.to_thread(arrived.wait, 20)
        await asyncio.wait_for(started.wait(), 20)
        ready[0].stop()
        # a deliverer that ignored its cancellation would hold the stop for the whole bound (database.timeout, 60 s)
        await asyncio.wait_for(daemon, 20)
    finally:
        server.shutdown()
        server.server_close()
    assert [[e["seq"] for e in b["events"]] for b in bodies] == [[1, 2]]
