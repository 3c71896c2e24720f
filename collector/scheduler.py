"""The loop: claim due networks, run them under concurrency limits, sleep until the next is due.

One Scheduler per process and mode. It claims networks one atomic call at a time while it has
free slots (a global limit and a per-service limit), runs each claim as a task, and sleeps until
a slot frees, the next network is due, or the poll interval passes, whichever comes first.
A database outage never ends the loop: it stops claiming, backs off (capped) and resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import PyMongoError

from collector.clock import aware, utcnow
from collector.config import MODES, Settings
from collector.executor import Executor, RunResult
from collector.model import service_of
from collector.observe import NoMetrics, Observer
from collector.store import Lease, Store

log = structlog.get_logger("collector.scheduler")


def make_owner_id(mode: str) -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{mode}:{uuid.uuid4().hex[:6]}"


class Recent:
    """Runs and items over the last minute and hour, in 10-second buckets (bounded memory)."""

    BUCKET = 10.0

    def __init__(self, horizon: float = 3600.0):
        self.horizon = horizon
        self.buckets: deque[list[float]] = deque()  # [bucket start, runs, items, failures]

    def add(self, at: float, items: int, failed: bool) -> None:
        start = at - at % self.BUCKET
        if not self.buckets or self.buckets[-1][0] < start:
            self.buckets.append([start, 0, 0, 0])
        bucket = self.buckets[-1]  # a clock step backwards lands in the newest bucket
        bucket[1] += 1
        bucket[2] += items
        bucket[3] += 1 if failed else 0
        self._trim(at)

    def _trim(self, now: float) -> None:
        while self.buckets and self.buckets[0][0] <= now - self.horizon - self.BUCKET:
            self.buckets.popleft()

    def window(self, now: float, seconds: float) -> dict[str, int]:
        """Totals of the buckets that started within the last `seconds` (so up to 10 s more)."""
        self._trim(now)
        cut = now - seconds
        picked = [b for b in self.buckets if b[0] + self.BUCKET > cut]
        return {"runs": int(sum(b[1] for b in picked)), "items": int(sum(b[2] for b in picked)),
                "failures": int(sum(b[3] for b in picked))}


@dataclass
class Stats:
    """What this process has done since it started (read by the demo, status and metrics)."""

    runs: Counter[str] = field(default_factory=Counter)  # by outcome kind
    by_service: Counter[str] = field(default_factory=Counter)
    items_new: int = 0
    leases_lost: int = 0
    crashes: int = 0
    recent: Recent = field(default_factory=Recent)

    def record(self, result: RunResult, at: float | None = None) -> None:
        self.runs[result.outcome.kind.value] += 1
        self.by_service[result.service] += 1
        self.items_new += result.new_items
        self.leases_lost += 0 if result.saved else 1
        self.recent.add(time.time() if at is None else at, result.new_items, not result.transition.success)


@dataclass
class Running:
    """A run in flight: what `collector status` shows and what the heartbeat renews."""

    service: str
    network_id: Any
    user: Any
    lease: Lease
    started: datetime


class Scheduler:
    # how late the loop may be past the moment it said it would be back before it counts as hung
    # (settings: daemon.stall_grace)
    STALL_GRACE = 60.0
    # the longest one fill claims before the loop reads pauses again, repairs and re-checks the schedule
    # (a big backlog keeps claims succeeding for minutes; the tick after it runs at once)
    FILL_BUDGET = 5.0
    # a run that crashed (a database error while saving) is claimable again this long after
    CRASH_RETRY = 60.0

    def __init__(self, store: Store, executor: Executor, settings: Settings, mode: str,
                 owner: str | None = None, clock: Callable[[], datetime] = utcnow, metrics: Observer | None = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.store = store
        self.executor = executor
        self.settings = settings
        self.mode = mode
        self.owner = owner or make_owner_id(mode)
        self.clock = clock
        self.stats = Stats()
        self.metrics: Observer = metrics if metrics is not None else NoMetrics()
        self.selectors = settings.selectors  # which networks this process claims (collector/selectors.py)
        self.inflight: dict[asyncio.Task[Any], Running] = {}
        self.per_service: Counter[str] = Counter()
        self.database_ok = True
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._last_repair: datetime | None = None
        self._db_failures = 0
        self._more = False  # the last fill stopped at its budget with claims still succeeding
        self._drained = False  # the last fill found fewer due networks than it had room for
        # the loop promises its next sign of life before this monotonic moment (read by the watchdog)
        self.STALL_GRACE = settings.daemon.stall_grace
        self._alive_until = time.monotonic() + self.STALL_GRACE

    # -- control --------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; `run` returns once in-flight runs are finished (or the grace is over)."""
        self._stop.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def alive(self) -> bool:
        """False when the loop is stuck (a tick that never returns): the systemd watchdog stops pinging."""
        return time.monotonic() < self._alive_until

    def _promise(self, seconds: float) -> None:
        self._alive_until = time.monotonic() + seconds + self.STALL_GRACE

    def running(self) -> list[Running]:
        return list(self.inflight.values())

    async def run(self) -> None:
        log.info("scheduler started", owner=self.owner, mode=self.mode, concurrency=self.settings.daemon.concurrency,
                 selects=str(self.selectors))
        try:
            while not self.stopping:
                self._promise(0)
                began = time.monotonic()
                delay = await self._tick()
                self._promise(delay + self.settings.daemon.claim_interval)
                await self._sleep(delay)
                # the due queue was drained: the next look waits until claim_interval after this one, so that the
                # networks that come due and the runs that finish meanwhile are claimed in one batch (at scale a
                # network comes due every millisecond: one claim batch for each would be most of the database's
                # work). A backlog (a fill that stopped full or at its budget) is claimed from at once.
                rest = self.settings.daemon.claim_interval - (time.monotonic() - began)
                if self._drained and rest > 0 and not self.stopping:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(rest):
                            await self._stop.wait()
        finally:
            await self.drain()
            log.info("scheduler stopped", owner=self.owner, runs=sum(self.stats.runs.values()),
                     items=self.stats.items_new)

    async def _tick(self) -> float:
        """One pass: repair, claim what is due; returns how long to sleep."""
        try:
            now = self.clock()
            await self._maybe_repair(now)
            if self.selectors.partition is not None:  # networks an application wrote without a slot get theirs
                stamped = await self.store.stamp_slots(self.mode)
                if stamped:
                    log.info("partition slots given to new networks", networks=stamped)
            self.executor.pauses.replace(await self.store.paused_services(now))
            self.metrics.set_paused(self.paused)
            await self.fill(now)
            delay = await self._delay(now)
            if self._db_failures:
                log.info("database reachable again", after_failures=self._db_failures)
                self._db_failures = 0
            self._database(True)
            return delay
        except PyMongoError as exc:
            self._db_failures += 1
            self._database(False)
            delay = min(self.settings.database.retry_cap,
                        self.settings.daemon.poll_interval * 2.0 ** min(self._db_failures - 1, 10))
            log.error("database unavailable: not claiming", error=f"{type(exc).__name__}: {exc}",
                      failures=self._db_failures, retry_in=round(delay, 1))
            return delay

    def _database(self, ok: bool) -> None:
        self.database_ok = ok
        self.metrics.database_up(ok)

    async def _maybe_repair(self, now: datetime) -> None:
        if self._last_repair and (now - self._last_repair).total_seconds() < self.settings.daemon.validate_interval:
            return
        self._last_repair = now
        for network_id, what in await self.store.repair(now, MODES):
            log.warning("network document repaired", network=str(network_id), fields=what)

    def _full_services(self) -> set[str]:
        return {s for s, n in self.per_service.items() if n >= self.settings.service(s).concurrency}

    @property
    def paused(self) -> dict[str, datetime]:
        """Services paused for the whole app, as this process knows them (the executor's KnownPauses)."""
        return self.executor.pauses.active(self.clock())

    async def fill(self, now: datetime) -> int:
        """Claim and start runs while slots are free, for at most FILL_BUDGET seconds; returns how many
        were started. The free slots are claimed in batches (`Store.claim_many`: one query plus one
        update), within each service's concurrency. Every batch claimed is a sign of life for the
        watchdog: a fill through a big backlog is the loop working, not a loop stuck."""
        started = 0
        self._more = False
        self._drained = False
        budget_end = time.monotonic() + self.FILL_BUDGET
        while not self.stopping and len(self.inflight) < self.settings.daemon.concurrency:
            if time.monotonic() >= budget_end:
                self._more = True  # the tick after this one runs at once
                break
            self._promise(0)
            # the clock read per batch, not the tick's `now`: a lease runs `lease_ttl` from when it is
            # taken (claims are slow on a loaded server: a whole fill would otherwise hand out leases
            # that are already expired, and another process takes the same network at once)
            at = max(now, self.clock())
            # the pauses on at this batch: one a run noted during the fill excludes its service at once, and one
            # that ended during it no longer does
            exclude = self._full_services() | set(self.executor.pauses.active(at))
            want = self.settings.daemon.concurrency - len(self.inflight)
            claims = await self.store.claim_many(self.mode, self.owner, at, self.settings.daemon.lease_ttl, want,
                                                 exclude, room=self._room, selectors=self.selectors)
            for doc, lease in claims:
                service = service_of(doc)
                task = asyncio.create_task(self._run_one(doc, lease, service), name=f"run-{doc.get('_id')}")
                self.inflight[task] = Running(service, doc.get("_id"), doc.get("user"), lease, at)
                self.per_service[service] += 1
                task.add_done_callback(self._done)
            started += len(claims)
            if len(claims) < want:
                # nothing else is due (or every service with due networks is at its limit): the next look waits for
                # claim_interval (run)
                self._drained = True
                break
        if started:
            self.metrics.set_in_flight(self.per_service)
        return started

    def _room(self, service: str) -> int:
        """Free slots of one service in this process (its `concurrency` minus its runs in flight)."""
        return self.settings.service(service).concurrency - self.per_service[service]

    async def _run_one(self, doc: dict[str, Any], lease: Lease, service: str) -> None:
        began = time.monotonic()
        try:
            result = await self.executor.run(doc, lease)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a database error while saving: the page re-runs (items are idempotent)
            self.stats.crashes += 1
            log.error("run aborted: the network is run again after a pause", network=str(doc.get("_id")),
                      retry_in=self.CRASH_RETRY, error=f"{type(exc).__name__}: {exc}")
            # the lease is cut short (not left for lease_ttl of silence), not removed: a run that crashes every
            # time must not be retried in a tight loop against the API; if this write fails too, it expires
            with contextlib.suppress(PyMongoError):
                await self.store.release(doc.get("_id"), lease,
                                         until=self.clock() + timedelta(seconds=self.CRASH_RETRY))
            return
        self.stats.record(result)
        self._observe(service, result, time.monotonic() - began)

    def _observe(self, service: str, result: RunResult, seconds: float) -> None:
        """Report one finished run to the observer, with the pause or incident it caused."""
        self.metrics.run_finished(service, result.outcome.kind.value, result.new_items, seconds, result.saved)
        if result.incident:
            self.metrics.auth_incident(service)
        elif result.transition.service_paused_until is not None:
            self.metrics.rate_limit_pause(service, "service")
        elif result.transition.rate_limited_until is not None and result.outcome.kind.value != "deferred":
            self.metrics.rate_limit_pause(service, "network")

    def _done(self, task: asyncio.Task[Any]) -> None:
        running = self.inflight.pop(task, None)
        service = running.service if running else "?"
        self.per_service[service] -= 1
        if self.per_service[service] <= 0:
            del self.per_service[service]
        self.metrics.set_in_flight(self.per_service)
        self._wake.set()

    async def _delay(self, now: datetime) -> float:
        poll = self.settings.daemon.poll_interval
        if self._more:
            return 0.0
        if len(self.inflight) >= self.settings.daemon.concurrency:
            return poll  # woken early by the next completion
        nxt = await self.store.next_due(self.mode)
        if nxt is None:
            return poll
        ahead = (aware(nxt) - now).total_seconds()
        return min(poll, ahead) if ahead > 0 else poll

    async def _sleep(self, delay: float) -> None:
        if self.stopping or delay <= 0:
            return
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()

    async def drain(self) -> None:
        """Let in-flight runs finish within the grace period; cancel the rest, release their leases."""
        if not self.inflight:
            return
        tasks = list(self.inflight)
        log.info("waiting for in-flight runs", count=len(tasks), grace=self.settings.daemon.shutdown_grace)
        _done, pending = await asyncio.wait(tasks, timeout=self.settings.daemon.shutdown_grace)
        for task in pending:
            running = self.inflight.get(task)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            if running is not None:
                with contextlib.suppress(PyMongoError):
                    await self.store.release(running.network_id, running.lease)
        if pending:
            log.warning("cancelled runs at shutdown, leases released", count=len(pending))
