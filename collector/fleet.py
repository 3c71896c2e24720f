"""The fleet: each process's heartbeat (its registry document, the renewal of its leases). What
`collector status` reads from it is collector/status.py.

Every process keeps one document in the `collectors` collection (its `_id` is the scheduler's
owner id, the same string found in `lease.owner` and `lastOwner` on networks). Every
`heartbeat_interval` it rewrites that document and pushes the leases of its runs in flight
forward, so a long run never loses its network to another process while its owner lives.

    {_id, host, pid, mode, version, startedAt, concurrency,          set once, at registration
     state: running|stopping|stopped, heartbeatAt, deadAt, expireAt,  every heartbeat
     inflight, current: [{network, user, service, since}], totals, recent: {minute, hour}, database}

A process that stops heartbeating (kill -9, a frozen host, a partition) is shown dead once
`deadAt` (last heartbeat + `fleet.ttl`) has passed; its leases run out on their own `until` and
other processes claim those networks then. Documents are deleted by any live process once
`expireAt` (last heartbeat + `fleet.retention`) has passed: portable, where TTL indexes are not.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from importlib import metadata
from typing import Any

import structlog
from pymongo.errors import PyMongoError

from collector.clock import utcnow
from collector.config import Settings
from collector.observe import NoMetrics, Observer
from collector.scheduler import Scheduler
from collector.status import OVERDUE_AFTER, lag, process_view, uncovered
from collector.store import Store

log = structlog.get_logger("collector.fleet")

CURRENT_SHOWN = 100  # runs listed per process document (the count is always exact)


DISTRIBUTION = "collector-daemon"  # on PyPI (`collector` there is another project); the import package is `collector`


def version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown"


class Fleet:
    """This process's registry document, its heartbeat and lease renewal."""

    def __init__(self, store: Store, scheduler: Scheduler, settings: Settings, *,
                 clock: Callable[[], datetime] = utcnow, metrics: Observer | None = None):
        self.store = store
        self.scheduler = scheduler
        self.settings = settings
        self.clock = clock
        self.metrics: Observer = metrics if metrics is not None else NoMetrics()
        self.owner = scheduler.owner
        self.failures = 0
        self.beats = 0
        self._last_prune = 0.0
        self._last_backlog = 0.0
        self.started = clock()

    def _registration(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "mode": self.scheduler.mode,
                "version": version(), "startedAt": self.started, "concurrency": self.settings.daemon.concurrency,
                "selectors": self.scheduler.selectors.describe()}

    def document(self, now: datetime, state: str) -> dict[str, Any]:
        running = self.scheduler.running()
        stats = self.scheduler.stats
        wall = now.timestamp()
        return {
            "state": state,
            "heartbeatAt": now,
            "deadAt": now + timedelta(seconds=self.settings.fleet.ttl) if state != "stopped" else now,
            "expireAt": now + timedelta(seconds=self.settings.fleet.retention),
            "inflight": len(running),
            "current": [{"network": str(r.network_id), "user": str(r.user), "service": r.service,
                         "since": r.started} for r in sorted(running, key=lambda r: r.started)[:CURRENT_SHOWN]],
            "totals": {"runs": sum(stats.runs.values()), "items": stats.items_new, "crashes": stats.crashes,
                       "leasesLost": stats.leases_lost, "byOutcome": dict(stats.runs)},
            "recent": {"minute": stats.recent.window(wall, 60), "hour": stats.recent.window(wall, 3600)},
            "database": self.scheduler.database_ok,
        }

    async def beat(self, state: str | None = None) -> bool:
        """One heartbeat: renew the leases of runs in flight, then write the registry document."""
        now = self.clock()
        state = state or ("stopping" if self.scheduler.stopping else "running")
        try:
            held = [(r.network_id, r.lease) for r in self.scheduler.running()]
            if held:
                await self.store.renew_many(held, now, self.settings.daemon.lease_ttl)
            # sent every time: $setOnInsert only applies when the document is (re)created, e.g. after
            # an operator cleared the collection or the document was pruned during a long partition
            await self.store.heartbeat(self.owner, self.document(now, state), self._registration())
        except PyMongoError as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 12 == 0:  # not a flood during an outage
                log.warning("heartbeat failed", error=f"{type(exc).__name__}: {exc}", failures=self.failures)
            return False
        if self.failures:
            log.info("heartbeat restored", after_failures=self.failures)
        self.failures = 0
        self.beats += 1
        try:  # the heartbeat is written: a failure here must not escape (run_daemon's first beat is unguarded)
            await self._housekeeping(now)
        except PyMongoError as exc:
            log.warning("fleet housekeeping failed", error=f"{type(exc).__name__}: {exc}")
        return True

    async def _housekeeping(self, now: datetime) -> None:
        mono = time.monotonic()
        if mono - self._last_prune >= 60.0:
            self._last_prune = mono
            pruned = await self.store.prune_fleet(now)
            if pruned:
                log.info("forgot processes dead for longer than the retention", count=pruned)
        # the fleet-wide figures are a database aggregation: gathered only for an observer that reads them
        if self.metrics.enabled and mono - self._last_backlog >= self.settings.fleet.backlog_interval:
            self._last_backlog = mono
            figures = await self.store.shared_figures("metrics", now, self.settings.fleet.backlog_interval,
                                                      lambda: self._fleet_figures(now))
            if figures is not None:
                self.metrics.set_backlog([tuple(row) for row in figures.get("backlog", [])])
                self.metrics.set_uncovered([tuple(row) for row in figures.get("uncovered", [])])

    async def _fleet_figures(self, now: datetime) -> dict[str, Any]:
        """The fleet-wide gauges: the due backlog with its lag, and the due networks no live process covers."""
        rows = await self.store.backlog(now, OVERDUE_AFTER)
        fleet = [process_view(doc, now) for doc in await self.store.fleet()]
        gaps = uncovered(await self.store.due_by_slot(now), fleet)
        return {"backlog": [[r["mode"], r["service"], r["due"], lag(r, now)] for r in rows],
                "uncovered": [[g["mode"], g["service"], g["due"]] for g in gaps]}

    async def run(self) -> None:
        """Heartbeat until cancelled."""
        while True:
            began = time.monotonic()
            try:
                await self.beat()
            except PyMongoError:
                pass  # counted and logged by beat()
            except Exception:  # a bug must not end the heartbeat: the leases of runs in flight depend on it
                self.failures += 1
                log.exception("heartbeat failed", failures=self.failures)
            await asyncio.sleep(max(0.0, self.settings.fleet.heartbeat_interval - (time.monotonic() - began)))

    async def stopped(self) -> None:
        """The last word at a clean exit: `collector status` shows this process stopped, not dead."""
        await self.beat("stopped")
