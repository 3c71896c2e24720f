"""Webhooks: the change feed (`changes`, one document per event, per-user `seq`) POSTed to one endpoint, signed, at
least once and in sequence per user. docs/webhooks.md is the receiver's side (body, headers, verification).

Every daemon process runs a `Deliverer` when `[webhooks] url` is set: a background task with its own HTTP client
(the egress policy of the API calls under it, collector/http.py) and its own bound on deliveries in flight, so a
slow or failing endpoint never slows a run: nothing of collection awaits it.

State, per user, in that user's `feeds` document (the publisher, collector/changes.py, owns `seq`, `lock` and sets
`hookDue` when it reserves sequence numbers):
- `hookDue`: events may wait beyond `delivered` (or a retry is due at that time); unset once all are delivered.
- `hookLock: {id, until}`: the deliverer working on the user (one at a time, fleet-wide); every write of a
  delivery is guarded by its id, so a delivery whose lock ran out writes nothing (its batch is sent again).
- `delivered`: the highest sequence number delivered (0 when absent).
- `hookFailures`, `hookError`, `hookFailingSince`: the current streak of failed attempts; `hookDead: {since,
  error, at}`: the streak lasted `dead_after` seconds: no more attempts until `collector webhooks retry`.

A delivery: claim due users (one query, one update_many stamping a lock id, one find by it: collector/store.py's
claim), read up to `batch` events past `delivered` in seq order, POST them as one body. On a 2xx, `delivered`
moves to the last seq sent. With no event left past it and no live publisher lock, `delivered` jumps to `seq`
(numbers reserved but never used: a crash between reserve and insert) and `hookDue` is unset, guarded by `seq`
unchanged and the publisher's lock not held, so an event being published is never skipped. Any other answer, a
timeout, a refused connection: the next attempt after min(backoff_base * 2**(failures-1), backoff_cap), jittered.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import json
import random
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog
from bson import ObjectId
from pymongo import ASCENDING
from pymongo.errors import PyMongoError

from collector import http, logs
from collector.clock import aware, utcnow
from collector.config import Settings
from collector.egress import EgressRefused
from collector.observe import NoMetrics, Observer

log = structlog.get_logger("collector.webhooks")

FEEDS, CHANGES = "feeds", "changes"
DUE_INDEX = "hook_due"
RESPONSE_CAP = 4096  # bytes of a receiver's answer read (and dropped): its status is what counts
RECHECK = 1.0  # seconds before a user whose publisher is writing events (its lock held) is looked at again
JITTER = (0.75, 1.0)  # a retry waits this share of its backoff: each wait of a streak still longer than the last
SIGNATURE_PREFIX = "sha256="


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Collector-Signature value: HMAC-SHA256 with the secret over `<timestamp>.<body>`, hex."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """A receiver's check (docs/webhooks.md has it standalone): the signature is the one `sign` makes."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return aware(value).astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def encode(user: Any, events: list[dict[str, Any]]) -> bytes:
    """The body of one delivery: `{"user": ..., "events": [...]}`, UTF-8 JSON, datetimes ISO 8601 UTC."""
    return json.dumps({"user": user, "events": events}, default=_json, ensure_ascii=False,
                      separators=(",", ":")).encode()


def backoff(failures: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds before the next attempt after `failures` failures in a row: doubling from `base` up to `cap`,
    jittered below that (JITTER), so a fleet of failing users does not retry in step."""
    delay = min(base * 2.0 ** min(max(failures, 1) - 1, 62), cap)
    return delay * (rng or random).uniform(*JITTER)


def publisher_holds(now: datetime) -> dict[str, Any]:
    """The publisher's `lock` on a feed is held at `now` (well-formed and live)."""
    return {"lock.id": {"$exists": True}, "lock.until": {"$type": "date", "$gte": now}}


def claimable(now: datetime) -> dict[str, Any]:
    """Due for a delivery, not dead-lettered, and no deliverer holds it (no lock, an expired one, or junk)."""
    return {"hookDue": {"$lte": now}, "hookDead": None,
            "$nor": [{"hookLock.id": {"$type": "string"}, "hookLock.until": {"$type": "date", "$gte": now}}]}


@dataclasses.dataclass(frozen=True)
class Attempt:
    ok: bool
    error: str = ""  # why it failed: "HTTP 500", "timeout", "connection refused...", "egress refused: ..."


STREAK = {"hookFailures": "", "hookError": "", "hookFailingSince": ""}


class Deliverer:
    """One process's webhook deliveries. `run()` is the daemon's background task; `tick()` one round (tests)."""

    def __init__(self, db: Any, settings: Settings, clock: Callable[[], datetime] = utcnow, *,
                 transport: httpx.AsyncBaseTransport | None = None, rng: random.Random | None = None,
                 poll: float = 1.0, metrics: Observer | None = None):
        hooks = settings.webhooks
        self.url, self.secret, self.batch = hooks.url, hooks.secret, max(1, hooks.batch)
        self.timeout, self.concurrency = hooks.timeout, max(1, hooks.concurrency)
        self.base, self.cap, self.dead_after = hooks.backoff_base, hooks.backoff_cap, hooks.dead_after
        self.endpoint = urlsplit(hooks.url).hostname or "?"  # logged instead of the URL (it may carry credentials)
        self.feeds, self.changes = db[FEEDS], db[CHANGES]
        self.clock, self.rng, self.poll = clock, rng or random.Random(), poll
        self.metrics: Observer = metrics if metrics is not None else NoMetrics()
        # a lock outlives an attempt (bounded by `timeout`) and the database calls around it
        self.ttl = timedelta(seconds=2 * hooks.timeout + 30)
        # the daemon's client, built the same way (egress policy in the transport), with `concurrency` connections
        own = dataclasses.replace(settings, http=dataclasses.replace(settings.http, max_connections=self.concurrency))
        self.client = http.make_client(own, transport, per_client=self.concurrency)
        self.inflight: set[asyncio.Task[None]] = set()
        self.sent = self.failed = self.dead = 0

    async def ensure_indexes(self) -> None:
        await self.feeds.create_index([("hookDue", ASCENDING)], name=DUE_INDEX, sparse=True)

    async def claim(self, now: datetime, want: int) -> list[tuple[dict[str, Any], str]]:
        """Up to `want` due feeds, the longest due first, each locked for this process: (document, lock id)."""
        query = claimable(now)
        picked = [d["_id"] async for d in self.feeds.find(query, {"_id": 1}).sort("hookDue", ASCENDING).limit(want)]
        if not picked:
            return []
        token = uuid.uuid4().hex
        await self.feeds.update_many({"_id": {"$in": picked}, **query},
                                     {"$set": {"hookLock": {"id": token, "until": now + self.ttl}}})
        return [(doc, token) async for doc in self.feeds.find({"hookLock.id": token})]

    async def tick(self) -> int:
        """Claim what is due (up to `concurrency`) and deliver it; the number of users attempted."""
        claimed = await self.claim(self.clock(), self.concurrency)
        await asyncio.gather(*(self.deliver(doc, token) for doc, token in claimed))
        return len(claimed)

    async def deliver(self, doc: dict[str, Any], token: str) -> None:
        """One attempt for one claimed user: the next batch of its events, or settling a feed with none left."""
        user = doc["_id"]
        delivered = doc.get("delivered")
        delivered = delivered if isinstance(delivered, int) and not isinstance(delivered, bool) else 0
        events = await self.changes.find({"user": user, "seq": {"$gt": delivered}}).sort(
            "seq", ASCENDING).limit(self.batch).to_list(None)
        mine = {"_id": user, "hookLock.id": token}
        if not events:
            await self._settle(doc, mine, delivered)
            return
        attempt = await self.post(encode(user, events))
        now = self.clock()
        if attempt.ok:
            await self._delivered(doc, mine, events, now)
        else:
            await self._failed(doc, mine, attempt.error, now)

    async def _settle(self, doc: dict[str, Any], mine: dict[str, Any], delivered: int) -> None:
        """No event past `delivered`: done (`delivered` = `seq`, `hookDue` unset) unless the publisher is writing
        (its lock held) or `seq` moved since the claim read it; then looked at again soon."""
        now, seq = self.clock(), doc.get("seq")
        done: dict[str, Any] = {"$unset": {"hookDue": "", "hookLock": ""}}
        if isinstance(seq, int) and not isinstance(seq, bool) and seq > delivered:
            done["$set"] = {"delivered": seq}
        if (await self.feeds.update_one({**mine, "seq": seq, "$nor": [publisher_holds(now)]}, done)).matched_count:
            return
        await self.feeds.update_one(mine, {"$set": {"hookDue": now + timedelta(seconds=RECHECK)},
                                           "$unset": {"hookLock": ""}})

    async def _delivered(self, doc: dict[str, Any], mine: dict[str, Any], events: list[dict[str, Any]],
                         now: datetime) -> None:
        last = events[-1]["seq"]
        self.sent += 1
        self.metrics.webhook_delivery("ok")
        if doc.get("hookFailures"):
            log.info("webhook deliveries recovered", user=doc["_id"], endpoint=self.endpoint,
                     failures=doc.get("hookFailures"))
        cleared = {**STREAK, "hookLock": ""}
        if len(events) < self.batch:  # maybe the last: finished in the same write when `seq` says so
            final = {**mine, "seq": last, "$nor": [publisher_holds(now)]}
            if (await self.feeds.update_one(final, {"$set": {"delivered": last},
                                                    "$unset": {**cleared, "hookDue": ""}})).matched_count:
                return
        saved = await self.feeds.update_one(mine, {"$set": {"delivered": last, "hookDue": now}, "$unset": cleared})
        if not saved.matched_count:
            log.warning("webhook delivery outlived its lock: its events will be delivered again", user=doc["_id"])

    async def _failed(self, doc: dict[str, Any], mine: dict[str, Any], error: str, now: datetime) -> None:
        failures = doc.get("hookFailures")
        failures = (failures if isinstance(failures, int) and not isinstance(failures, bool) else 0) + 1
        since = doc.get("hookFailingSince")
        since = aware(since) if isinstance(since, datetime) else now
        fields: dict[str, Any] = {"hookFailures": failures, "hookError": error, "hookFailingSince": since}
        self.failed += 1
        if (now - since).total_seconds() >= self.dead_after:
            fields["hookDead"] = {"since": since, "error": error, "at": now}
            self.dead += 1
            log.error("webhook deliveries dead-lettered: no more attempts until `collector webhooks retry`",
                      user=doc["_id"], endpoint=self.endpoint, error=error, failures=failures)
        else:
            fields["hookDue"] = now + timedelta(seconds=backoff(failures, self.base, self.cap, self.rng))
            log.warning("webhook delivery failed", user=doc["_id"], endpoint=self.endpoint, error=error,
                        failures=failures, retry_at=fields["hookDue"].isoformat(timespec="seconds"))
        self.metrics.webhook_delivery("dead" if "hookDead" in fields else "failed")
        await self.feeds.update_one(mine, {"$set": fields, "$unset": {"hookLock": ""}})

    async def post(self, body: bytes) -> Attempt:
        """POST one signed body; the whole attempt within `timeout`, at most RESPONSE_CAP bytes of the answer read."""
        timestamp = str(int(self.clock().timestamp()))
        headers = {"Content-Type": "application/json", "X-Collector-Timestamp": timestamp,
                   "X-Collector-Signature": sign(self.secret, timestamp, body),
                   "X-Collector-Delivery": uuid.uuid4().hex}
        try:
            async with asyncio.timeout(self.timeout):
                with self.client.pick() as client:
                    request = client.build_request("POST", self.url, content=body, headers=headers,
                                                   timeout=self.timeout)
                    response = await client.send(request, stream=True)
                    try:
                        read = 0
                        async for chunk in response.aiter_raw():
                            read += len(chunk)
                            if read >= RESPONSE_CAP:
                                break
                    finally:
                        await response.aclose()
        except (TimeoutError, httpx.TimeoutException):
            return Attempt(False, f"timeout (no complete answer within {self.timeout:g}s)")
        except EgressRefused as exc:
            return Attempt(False, self._scrub(f"egress refused: {exc}"))
        except httpx.HTTPError as exc:
            return Attempt(False, self._scrub(f"connection error: {type(exc).__name__}: {exc}"))
        if 200 <= response.status_code < 300:
            return Attempt(True)
        return Attempt(False, f"HTTP {response.status_code}")

    def _scrub(self, text: str) -> str:
        """An error as stored: never the secret nor the URL (it may carry credentials), whatever a library says."""
        for secret in (self.url, str(httpx.URL(self.url)), self.secret):  # the URL as given and as httpx spells it
            if secret:
                text = text.replace(secret, "<the endpoint>" if secret != self.secret else logs.REDACTED)
        return logs.clip(text, 300)

    async def run(self) -> None:
        """Deliver until cancelled: claim while deliveries are below `concurrency`, wake when one ends or every
        `poll` seconds. Cancelled, it stops its deliveries (their locks run out) and closes its client."""
        secrets = logs.set_run_secrets([self.secret])  # scrubbed from every line this task and its deliveries log
        wake = asyncio.Event()

        def done(task: asyncio.Task[None]) -> None:
            self.inflight.discard(task)
            wake.set()
            if not task.cancelled() and task.exception() is not None:
                log.error("webhook delivery crashed", error=logs.describe(task.exception() or Exception()))

        try:
            try:
                await self.ensure_indexes()
            except PyMongoError as exc:  # the claims work without it (slower): no reason not to deliver
                log.warning("webhook index not created", index=DUE_INDEX, error=logs.describe(exc))
            while True:
                wake.clear()
                free = self.concurrency - len(self.inflight)
                if free > 0:
                    try:
                        claimed = await self.claim(self.clock(), free)
                    except PyMongoError as exc:
                        log.warning("webhook claim failed: retrying", error=logs.describe(exc))
                        claimed = []
                    for doc, token in claimed:
                        task = asyncio.create_task(self.deliver(doc, token), name=f"webhook {doc['_id']}")
                        self.inflight.add(task)
                        task.add_done_callback(done)
                    if claimed and len(claimed) == free:
                        await wake.wait()  # every slot busy: the next claim when one is free
                        continue
                # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that lands as `wake` is set
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll):
                        await wake.wait()
        finally:
            for task in list(self.inflight):
                task.cancel()
            await asyncio.gather(*self.inflight, return_exceptions=True)
            await self.client.aclose()
            logs.reset_run_secrets(secrets)


async def retry(db: Any, now: datetime, user: str | None = None) -> int:
    """`collector webhooks retry`: dead-lettered feeds (or `user`'s, dead or failing) due again now, their streak
    forgotten. The number of feeds changed."""
    query: dict[str, Any] = {"_id": user} if user is not None else {"hookDead": {"$ne": None}}
    done = await db[FEEDS].update_many(query, {"$set": {"hookDue": now}, "$unset": {**STREAK, "hookDead": ""}})
    return int(done.matched_count)


async def summary(db: Any, now: datetime) -> dict[str, Any]:
    """What `collector status` shows: users with events to deliver, failing, dead-lettered (the newest error)."""
    feeds = db[FEEDS]
    pending = await feeds.count_documents({"hookDue": {"$type": "date"}, "hookDead": None})
    overdue = await feeds.find({"hookDue": {"$lte": now}, "hookDead": None}).sort("hookDue", ASCENDING).limit(
        1).to_list(None)
    failing = await feeds.count_documents({"hookFailures": {"$gt": 0}, "hookDead": None})
    dead = await feeds.count_documents({"hookDead": {"$ne": None}})
    newest = await feeds.find({"hookDead": {"$ne": None}}).sort("hookDead.at", -1).limit(1).to_list(None)
    oldest = overdue[0]["hookDue"] if overdue and isinstance(overdue[0].get("hookDue"), datetime) else None
    return {"pending": pending, "failing": failing, "dead": dead,
            "oldestDueSeconds": round((now - aware(oldest)).total_seconds(), 1) if oldest else None,
            "newestDead": {"user": newest[0]["_id"], **(newest[0].get("hookDead") or {})} if newest else None}
