"""Webhook delivery (collector/webhooks.py) on the wire server, to a real receiver on 127.0.0.1 over the daemon's own
HTTP clients (both transports): it fails, stalls past the attempt's timeout, recovers. Events arrive at least once,
in sequence per user, signed as docs/webhooks.md says; the backoff grows; a streak past dead_after is dead-lettered,
`collector status` shows it and `collector webhooks retry` clears it."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from collector.cli import main
from collector.webhooks import Deliverer
from tests.conftest import Clock, make_settings

SECRET = "whsec-wire-9f8e7d6c5b4a"
STALL = 3.0  # seconds a stalled answer would take (the attempt gives up at `timeout`, 0.5 s)


class Receiver:
    """An HTTP endpoint on 127.0.0.1 answering each POST by the next step of `script` ("fail": 500, "stall": no
    answer for STALL seconds, "ok": 204; the last step repeats). It verifies each signature with the documented
    recipe and keeps what it accepted."""

    def __init__(self, *script: str):
        self.script = list(script) or ["ok"]
        self.accepted: list[dict] = []  # bodies answered with a 2xx
        self.attempts: list[str] = []
        self.bad_signatures = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                timestamp = self.headers["X-Collector-Timestamp"]
                # the recipe of docs/webhooks.md
                expected = "sha256=" + hmac.new(SECRET.encode(), timestamp.encode() + b"." + body,
                                                hashlib.sha256).hexdigest()
                if not hmac.compare_digest(expected, self.headers["X-Collector-Signature"]):
                    receiver.bad_signatures += 1
                step = receiver.script.pop(0) if len(receiver.script) > 1 else receiver.script[0]
                receiver.attempts.append(step)
                if step == "stall":
                    receiver.release.wait(STALL)
                status = 500 if step == "fail" else 204
                if step == "ok":
                    receiver.accepted.append(json.loads(body))
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:
                    pass  # the client gave up (a stall)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/collector/events"

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> dict[str, list[int]]:
        per_user: dict[str, list[int]] = {}
        for body in self.accepted:
            per_user.setdefault(body["user"], []).extend(e["seq"] for e in body["events"])
        return per_user


@pytest.fixture
def receiver_factory():
    made: list[Receiver] = []

    def make(*script: str) -> Receiver:
        made.append(Receiver(*script))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


def settings_for(url: str, transport: str = "aiohttp", **over):
    return make_settings(http={"transport": transport}, webhooks={
        "url": url, "secret": SECRET, "batch": 3, "timeout": 0.5, "backoff_base": 10.0, "backoff_cap": 40.0,
        "dead_after": 3600.0, **over})


async def seed(db, clock: Clock, users: dict[str, int]) -> None:
    for user, count in users.items():
        await db.changes.insert_many([
            {"_id": f"items-{user}-{n}:added:r1", "user": user, "seq": n, "kind": "item.added", "service": "github",
             "network": f"net-{user}", "at": clock.now, "published": clock.now,
             "item": {"id": str(n), "key": f"{user}-{n}", "title": f"item {n}", "url": None}}
            for n in range(1, count + 1)])
        await db.feeds.insert_one({"_id": user, "seq": count + 2, "hookDue": clock.now})  # 2 numbers never used


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
async def test_fails_stalls_recovers_in_order_at_least_once(wire_db, receiver_factory, transport):
    clock = Clock(datetime.now(UTC))
    receiver = receiver_factory("fail", "stall", "fail", "ok")
    await seed(wire_db, clock, {"alice": 7, "bob": 2})
    deliverer = Deliverer(wire_db, settings_for(receiver.url, transport), clock)
    waits: dict[str, list[float]] = {"alice": [], "bob": []}
    errors: set[str] = set()
    try:
        for _round in range(20):
            if not await deliverer.tick():
                if not await wire_db.feeds.count_documents({"hookDue": {"$exists": True}}):
                    break
                clock.advance(41)  # past any backoff (cap 40 s)
                continue
            async for feed in wire_db.feeds.find({"hookFailures": {"$exists": True}, "hookDue": {"$gt": clock.now}}):
                waits[feed["_id"]].append((feed["hookDue"] - clock.now).total_seconds())
                errors.add(feed["hookError"])
    finally:
        await deliverer.client.aclose()
    assert receiver.attempts[:3] == ["fail", "stall", "fail"] and receiver.bad_signatures == 0
    assert {"HTTP 500"} < errors and any(e.startswith("timeout") for e in errors)
    # each user's backoff grows while its streak lasts
    streaks = [w for w in waits.values() if len(w) >= 2]
    assert streaks and all(w == sorted(w) and w[0] < w[-1] for w in streaks)
    assert receiver.received() == {"alice": [1, 2, 3, 4, 5, 6, 7], "bob": [1, 2]}  # in order, each once when all 2xx
    for feed in await wire_db.feeds.find().to_list(None):
        assert feed["delivered"] == feed["seq"] and "hookDue" not in feed and "hookFailures" not in feed


async def test_an_unanswered_2xx_is_sent_again(wire_db, receiver_factory):
    """At least once: an answer lost after the receiver took the body means the batch comes again; receivers dedupe
    by event `_id`."""
    clock = Clock(datetime.now(UTC))
    receiver = receiver_factory("ok")
    await seed(wire_db, clock, {"carol": 2})
    deliverer = Deliverer(wire_db, settings_for(receiver.url), clock)
    try:
        [(doc, token)] = await deliverer.claim(clock.now, 1)
        await wire_db.feeds.update_one({"_id": "carol"}, {"$set": {"hookLock.id": "lost"}})  # e.g. a crash
        await deliverer.deliver(doc, token)
        clock.advance(deliverer.ttl.total_seconds() + 1)
        while await deliverer.tick():
            pass
    finally:
        await deliverer.client.aclose()
    ids = [e["_id"] for body in receiver.accepted for e in body["events"]]
    assert ids == ["items-carol-1:added:r1", "items-carol-2:added:r1"] * 2


async def test_dead_letter_status_and_retry(wire_db, wire_uri, receiver_factory):
    clock = Clock(datetime.now(UTC) - timedelta(hours=1))
    receiver = receiver_factory("fail")
    await seed(wire_db, clock, {"dave": 4})
    deliverer = Deliverer(wire_db, settings_for(receiver.url, dead_after=100.0), clock)
    cli = ["--env", "test", "--mongodb-uri", wire_uri, "--set", f"database.name={wire_db.name}"]
    try:
        for _attempt in range(10):
            await deliverer.tick()
            clock.advance(41)
        feed = await wire_db.feeds.find_one({"_id": "dave"})
        assert feed["hookDead"]["error"] == "HTTP 500" and 4 <= len(receiver.attempts) <= 5  # then no more
        shown = await asyncio.to_thread(CliRunner().invoke, main, [*cli, "status"])
        assert shown.exit_code == 0, shown.output
        assert "0 user(s) with events to deliver" in shown.output and "1 dead-lettered" in shown.output
        assert "newest dead letter: user dave" in shown.output and "HTTP 500" in shown.output
        assert SECRET not in shown.output

        receiver.script = ["ok"]
        retried = await asyncio.to_thread(CliRunner().invoke, main, [*cli, "webhooks", "retry"])
        assert retried.exit_code == 0 and "1 feed(s) due for delivery again now" in retried.output, retried.output
        clock.now = datetime.now(UTC) + timedelta(seconds=5)  # retry made it due on the server's clock
        while await deliverer.tick():
            pass
        missing = await asyncio.to_thread(CliRunner().invoke, main, [*cli, "webhooks", "retry", "--user", "nobody"])
        assert missing.exit_code != 0 and "no change feed for user 'nobody'" in missing.output
    finally:
        await deliverer.client.aclose()
    assert receiver.received() == {"dave": [1, 2, 3, 4]}
    feed = await wire_db.feeds.find_one({"_id": "dave"})
    assert feed["delivered"] == 6 and "hookDead" not in feed and "hookDue" not in feed


async def test_the_publishers_events_reach_the_endpoint(wire_db, receiver_factory):
    """The real chain: items stored with the feed on, the publisher's events (it marks the users due for delivery),
    the deliverer's POSTs: every event once, in sequence, nothing left due."""
    from collector import changes
    from collector.changes import Publisher
    from collector.model import NetworkKey
    from collector.sdk import Item
    from collector.store import Store

    clock = Clock(datetime.now(UTC))
    receiver = receiver_factory("ok")
    settings = settings_for(receiver.url)
    store = Store(wire_db, feed=True)
    await store.ensure_indexes()
    await changes.ensure_indexes(wire_db)
    for user in ("alice", "bob"):
        net = NetworkKey(f"net-{user}", user, "github")
        await store.save_items(net, [Item(id=str(n), title=f"t{n}") for n in range(4)], clock.now, run=f"r-{user}")
    await Publisher(wire_db, settings, clock).publish()
    assert await wire_db.feeds.count_documents({"hookDue": {"$exists": True}}) == 2
    deliverer = Deliverer(wire_db, settings, clock)
    try:
        for _round in range(10):
            if not await deliverer.tick():
                break
    finally:
        await deliverer.client.aclose()
    assert receiver.received() == {"alice": [1], "bob": [1]}  # one event each: its run's additions
    assert {i["id"] for body in receiver.accepted for e in body["events"] for i in e["items"]} == {"0", "1", "2", "3"}
    assert await wire_db.feeds.count_documents({"hookDue": {"$exists": True}}) == 0
