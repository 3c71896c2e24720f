"""Removal detection ("reconciliation"): a network in normal mode lists its whole collection now and then, and what
two complete listings in a row both miss is marked removed (`removedAt`); what a listing finds again is restored.

Normal runs read newest-first and stop at the first known item, so they never see an un-star. A reconciliation runs
INSIDE a normal run, after its normal request succeeded (it always yields to the normal fetch), every
`reconcile_interval` seconds per network (per service; 0: never), the first one at a random moment within the first
interval (no herd). Its listing requests go through the executor's own path (`Executor._guarded` -> `_call`: the
base-URL check, the credentials, the body cap, the run's total timeout, the status ladder, the parse off the loop),
with the connector's own `request`/`parse` in initial mode from the reconciliation's own cursor: every built-in
connector's back-fill pages through the whole collection. A connector declares `listing_cap` (items) when its API
lists no more than that (Reddit: 1000): a listing that reaches it is incomplete and marks nothing.

One run sends at most `reconcile_pages` listing pages, each only while the API's last answer left at least
`reconcile_quota` of its limit (RateLimit.remaining / limit; no limit said: allowed) and named no wait, and the
service is not paused. A rate limit met on a listing page stops it and reaches the run's outcome (the engine waits
as for the normal request's); an error stops it for this run (abandoned after `max_errors` in a row). A listing
still under way brings its network back after `initial_pace` (not its normal interval), unless something held it.

The guarantees: a partial listing (a crash, a lost lease, a limit, an error, a page cap, a low quota, a listing cap)
never marks anything removed: it resumes from its own cursor saved with the run's state (the marks are idempotent).
An item is marked removed only when a complete listing missed it, a second complete listing started after the first
(phase 2, only when the first missed something: a removal upstream during a listing shifts the following pages)
missed it too, it was collected before the first began, and the run still holds its lease. State on the network:
`reconcile` {due | id, phase, cursor, started, pages, listed, requests, added, restored, failures, stopped} and
`lastReconcile` {at, listed, removed, restored, requests, complete, reason}. docs/removals.md has the costs.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import bson
import pendulum
import structlog
from bson.errors import InvalidDocument
from pymongo.errors import PyMongoError

from collector import logs
from collector.config import Schedule, Settings
from collector.documents import item_key
from collector.model import RunNetwork
from collector.pauses import KnownPauses
from collector.sdk import Connector, Context, Item, RateLimit
from collector.states import Kind, Outcome, Transition
from collector.store import Store

log = structlog.get_logger("collector.reconcile")
RECONCILE, LAST = "reconcile", "lastReconcile"
MAX_PAGES = 10_000  # pages of one listing (a million items at 100 a page): past it, the API is taken to loop
COUNTS = ("pages", "listed", "requests", "added", "restored", "failures")


def _when(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**62 else 0


def state_of(raw: Any) -> dict[str, Any]:
    """The network's `reconcile` sub-document, checked (another application writes these documents): {due} between
    reconciliations, the full state while one is under way; {} when absent or junk."""
    if not isinstance(raw, dict):
        return {}
    due = _when(raw.get("due"))
    started = _when(raw.get("started"))
    rec, phase, cursor = raw.get("id"), raw.get("phase"), raw.get("cursor")
    if isinstance(rec, str) and 0 < len(rec) <= 64 and phase in (1, 2) and isinstance(cursor, dict) and started:
        return {"due": due, "id": rec, "phase": phase, "cursor": cursor, "started": started,
                **{k: _count(raw.get(k)) for k in COUNTS}}
    return {"due": due} if due is not None else {}


def listing_cap(connector: Connector) -> int | None:
    """The most items the connector's API lists (its documented cap), None when it lists everything."""
    cap = getattr(connector, "listing_cap", None)
    return cap if isinstance(cap, int) and not isinstance(cap, bool) and cap > 0 else None


def held_by(limit: RateLimit | None, share: float, now: datetime, floor: int) -> str | None:
    """Why the API's last answer holds a listing page back (a wait named, less than `share` of the limit left)."""
    if limit is None:
        return None
    if limit.resume_at(now, floor) is not None:
        return "the API asked to wait"
    remaining, total = limit.remaining, limit.limit
    if isinstance(remaining, int) and isinstance(total, int) and total > 0 and remaining < share * total:
        return f"quota low: {remaining} of {total} left (reconcile_quota {share:g})"
    return None


def _storable(cursor: Any) -> bool:
    try:
        bson.encode({"cursor": cursor})
    except (OverflowError, InvalidDocument, TypeError, ValueError):
        return False
    return True


def _wait(limit: RateLimit | None, schedule: Schedule, now: datetime) -> RateLimit:
    """A listing page's rate limit as the engine must obey it: one that names no reset waits its documented minimum
    (else rate_limit_wait), as the state machine waits a normal request's."""
    limit = limit or RateLimit()
    if limit.resume_at(now, schedule.rate_limit_floor) is None:
        limit = limit.merge(RateLimit(retry_after=limit.minimum_wait or schedule.rate_limit_wait))
    return limit


class Runs(Protocol):
    """What a reconciliation uses of the executor (collector/executor.py), whose safe path sends its requests."""
    store: Store
    settings: Settings
    pauses: KnownPauses
    clock: Callable[[], datetime]
    rng: random.Random

    async def _guarded(self, connector: Connector, ctx: Context, now: datetime) -> tuple[Outcome, list[Item]]: ...


class Reconciler:
    def __init__(self, executor: Runs):
        self.executor = executor

    def hurry(self, step: Transition, outcome: Outcome, now: datetime) -> Transition:
        """The run's next due, no later than its reconciliation asks: after initial_pace while a listing is under way
        that nothing held back, at the next reconciliation's due otherwise (so that a removal is seen within one
        interval, even when the normal interval is longer). A rate limit's wait always wins."""
        back = outcome.reconcile.get("back") if outcome.reconcile else None
        if not (isinstance(back, datetime) and step.success and step.scheduled_to) or \
                step.rate_limited_until is not None:
            return step
        return replace(step, scheduled_to=max(back, now)) if back < step.scheduled_to else step

    async def step(self, connector: Connector, ctx: Context, net: RunNetwork, outcome: Outcome,
                   items: list[Item]) -> Outcome:
        """After a successful normal request: start, continue or finish the network's reconciliation. Returns the
        outcome with the listing's rate limits merged in and, in `reconcile`, the fields the state save sets. A
        failure here (the database away, a bug) never fails the normal run: its progress is not saved, that is all
        (the next one resumes from the cursor saved before)."""
        try:
            return await self._step(connector, ctx, net, outcome, items)
        except PyMongoError as exc:
            log.warning("reconciliation interrupted by the database", error=logs.describe(exc))
        except Exception:
            log.exception("reconciliation failed")
        return outcome

    async def _step(self, connector: Connector, ctx: Context, net: RunNetwork, outcome: Outcome,
                    items: list[Item]) -> Outcome:
        ex, network, now = self.executor, ctx.network, ctx.now
        schedule = ex.settings.service(network.service).schedule
        interval = schedule.reconcile_interval
        if not interval or interval <= 0 or schedule.reconcile_pages <= 0:
            return outcome
        state = state_of(net.reconcile)
        if "id" not in state:
            due = state.get("due")
            if due is None:  # the first: anywhere in the first interval, so that a fleet's networks spread out
                first = now + timedelta(seconds=ex.rng.uniform(0, interval))
                return replace(outcome, reconcile={"set": {RECONCILE: {"due": first}}, "back": first})
            if due > now:
                return replace(outcome, reconcile={"set": {}, "back": due})
            state = {"due": due, "id": uuid.uuid4().hex, "phase": 1, "cursor": {}, "started": now,
                     **dict.fromkeys(COUNTS, 0)}
            log.info("reconciliation started", reconciliation=state["id"])
        lease_id = net.lease_id
        rec, started = state["id"], state["started"]
        skip = {item_key(net.user, net.service, item.id, scope=item.scope) for item in items}
        limit, merged = outcome.rate_limit, outcome.rate_limit
        floor, sent = schedule.rate_limit_floor, 0
        done: dict[str, Any] | None = None  # the reconciliation's end: lastReconcile
        stopped, hurry = "", False
        cap = listing_cap(connector)
        while done is None:
            answered = max(now, ex.clock())
            held = held_by(limit, schedule.reconcile_quota, answered, floor) if limit else None
            paused = None if held else await ex.pauses.check(network.service, answered)
            if sent >= schedule.reconcile_pages or held or paused:
                stopped = held or (f"service paused ({paused[1]})" if paused else "")
                hurry = not stopped
                stopped = stopped or f"reconcile_pages ({schedule.reconcile_pages}) sent in this run"
                break
            listing = Context(network=network, mode="initial", cursor=state["cursor"], now=answered)
            page, found = await ex._guarded(connector, listing, answered)
            sent += 1
            state["requests"] += 1
            if page.rate_limit is not None:
                limit = page.rate_limit
                merged = merged.merge(page.rate_limit) if merged else page.rate_limit
            if page.kind is not Kind.PAGE:
                if page.kind is Kind.RATE_LIMITED:
                    waited = _wait(page.rate_limit, schedule, answered)
                    merged = merged.merge(waited) if merged else waited
                else:
                    state["failures"] += 1
                stopped = logs.clip(f"listing page {page.kind.value}: {page.error or ''} {page.message}", 300)
                if state["failures"] >= schedule.max_errors:
                    done = {"complete": False, "reason": f"abandoned after {state['failures']} failed listing "
                                                         f"pages in a row; last: {stopped}"}
                break
            cursor = page.cursor if isinstance(page.cursor, dict) else {}
            if not _storable(cursor):
                done = {"complete": False, "reason": "abandoned: the listing's cursor cannot be stored"}
                break
            state["failures"] = 0
            added, restored = await ex.store.mark_seen(net.key, found, f"{rec}.{state['phase']}", rec, lease_id, now,
                                                       skip)
            state["pages"] += 1
            state["listed"] += len(found)
            state["added"] += added
            state["restored"] += restored
            if cap is not None and state["listed"] >= cap:
                done = {"complete": False, "reason": f"listing cap reached: {state['listed']} items listed, the API "
                                                     f"lists at most {cap}: nothing marked removed"}
            elif page.more and state["pages"] >= MAX_PAGES:  # an API that never says it is done
                done = {"complete": False, "reason": f"abandoned: a listing of more than {MAX_PAGES} pages"}
            elif page.more:
                state["cursor"] = cursor
            elif state["phase"] == 1 and await ex.store.unseen(network.id, [f"{rec}.1"], started):
                # something seems removed: a second listing at once, to confirm it
                state.update(phase=2, cursor={}, pages=0, listed=0)
            elif state["phase"] == 1:
                done = {"complete": True, "reason": "nothing missing"}
            elif not await ex.store.holds(network.id, lease_id):
                stopped = "lease lost: nothing marked removed"
                break
            else:
                removed = await ex.store.mark_removed(net.key, [f"{rec}.1", f"{rec}.2"], started, rec, lease_id, now)
                done = {"complete": True, "removed": removed, "reason": "two listings agree"}
        if done is not None:
            last = {"at": now, "id": rec, "listed": state["listed"], "removed": done.get("removed", 0),
                    "restored": state["restored"], "added": state["added"], "requests": state["requests"],
                    "complete": done["complete"], "reason": done["reason"]}
            back: datetime | None = now + pendulum.duration(
                seconds=interval * (1 + ex.rng.uniform(-schedule.jitter, schedule.jitter)))
            fields: dict[str, Any] = {RECONCILE: {"due": back}, LAST: last}
            log.info("reconciliation done", reconciliation=rec, **{k: v for k, v in last.items() if k not in
                                                                   ("at", "id")})
        else:
            fields = {RECONCILE: {**state, "stopped": stopped}}
            back = max(now, ex.clock()) + pendulum.duration(seconds=schedule.initial_pace) if hurry else None
        return replace(outcome, rate_limit=merged, reconcile={"set": fields, "back": back})
