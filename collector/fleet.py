"""The fleet: who is running, what each process is doing, and `collector status`.

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
from collections import Counter
from collections.abc import Callable
from datetime import datetime, timedelta
from importlib import metadata
from typing import Any

import structlog
from pymongo.errors import PyMongoError

from collector.config import Settings
from collector.model import aware, utcnow
from collector.scheduler import Scheduler
from collector.store import Store

log = structlog.get_logger("collector.fleet")

CURRENT_SHOWN = 100  # runs listed per process document (the count is always exact)
OVERDUE_AFTER = 60.0  # a network due for longer than this, still unclaimed, is overdue


def version() -> str:
    try:
        return metadata.version("collector")
    except metadata.PackageNotFoundError:
        return "unknown"


class Fleet:
    """This process's registry document, its heartbeat and lease renewal."""

    def __init__(self, store: Store, scheduler: Scheduler, settings: Settings, *,
                 clock: Callable[[], datetime] = utcnow, metrics: Any = None):
        self.store = store
        self.scheduler = scheduler
        self.settings = settings
        self.clock = clock
        self.metrics = metrics
        self.owner = scheduler.owner
        self.failures = 0
        self.beats = 0
        self._last_prune = 0.0
        self._last_backlog = 0.0
        self.started = clock()

    def _registration(self) -> dict[str, Any]:
        return {"host": socket.gethostname(), "pid": os.getpid(), "mode": self.scheduler.mode,
                "version": version(), "startedAt": self.started, "concurrency": self.settings.concurrency}

    def document(self, now: datetime, state: str) -> dict[str, Any]:
        running = self.scheduler.running()
        stats = self.scheduler.stats
        wall = now.timestamp()
        return {
            "state": state,
            "heartbeatAt": now,
            "deadAt": now + timedelta(seconds=self.settings.fleet_ttl) if state != "stopped" else now,
            "expireAt": now + timedelta(seconds=self.settings.fleet_retention),
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
                await self.store.renew_many(held, now, self.settings.lease_ttl)
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
        if self.metrics and mono - self._last_backlog >= self.settings.backlog_interval:
            self._last_backlog = mono
            rows = await self.store.backlog(now, OVERDUE_AFTER)
            self.metrics.set_backlog([(r["mode"], r["service"], r["due"], _lag(r, now)) for r in rows])

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
            await asyncio.sleep(max(0.0, self.settings.heartbeat_interval - (time.monotonic() - began)))

    async def stopped(self) -> None:
        """The last word at a clean exit: `collector status` shows this process stopped, not dead."""
        await self.beat("stopped")


def _lag(row: dict[str, Any], now: datetime) -> float:
    oldest = row.get("oldestDue")
    return max(0.0, (now - aware(oldest)).total_seconds()) if isinstance(oldest, datetime) else 0.0


def _process_view(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    beat = doc.get("heartbeatAt")
    dead_at = doc.get("deadAt")
    state = str(doc.get("state") or "running")
    if state != "stopped" and isinstance(dead_at, datetime) and aware(dead_at) <= now:
        state = "dead"
    return {
        "id": doc["_id"], "host": doc.get("host"), "pid": doc.get("pid"), "mode": doc.get("mode"),
        "version": doc.get("version"), "state": state, "alive": state in ("running", "stopping"),
        "startedAt": doc.get("startedAt"), "heartbeatAt": beat,
        "heartbeatAge": round((now - aware(beat)).total_seconds(), 1) if isinstance(beat, datetime) else None,
        "inflight": doc.get("inflight", 0) if state != "dead" else 0,
        "current": doc.get("current", []) if state != "dead" else [],
        "lastCurrent": doc.get("current", []) if state == "dead" else [],
        "totals": doc.get("totals", {}), "recent": doc.get("recent", {}), "database": doc.get("database"),
    }


async def status(store: Store, now: datetime | None = None, overdue_after: float = OVERDUE_AFTER) -> dict[str, Any]:
    """Everything `collector status` shows, as one JSON-able document."""
    now = now or utcnow()
    processes = [_process_view(doc, now) for doc in await store.fleet()]
    hosts: dict[str, dict[str, Any]] = {}
    for p in processes:
        h = hosts.setdefault(str(p["host"]), {"host": str(p["host"]), "modes": {}, "alive": 0, "dead": 0,
                                              "inflight": 0, "minute": Counter(), "hour": Counter()})
        per_mode = h["modes"].setdefault(str(p["mode"]), {"alive": 0, "dead": 0, "stopped": 0})
        per_mode["alive" if p["alive"] else p["state"]] = per_mode.get("alive" if p["alive"] else p["state"], 0) + 1
        if p["alive"]:
            h["alive"] += 1
            h["inflight"] += p["inflight"]
            h["minute"].update(p["recent"].get("minute", {}))
            h["hour"].update(p["recent"].get("hour", {}))
        elif p["state"] == "dead":
            h["dead"] += 1
    for h in hosts.values():
        h["minute"], h["hour"] = dict(h["minute"]), dict(h["hour"])
    backlog = await store.backlog(now, overdue_after)
    for row in backlog:
        row["lagSeconds"] = round(_lag(row, now), 1)
    pauses = [{"service": d["_id"], "until": d.get("pausedUntil"), "since": d.get("pausedAt"),
               "reason": d.get("pauseReason")} for d in await store.pauses(now)]
    return {"at": now, "processes": processes, "hosts": sorted(hosts.values(), key=lambda h: h["host"]),
            "backlog": backlog, "paused": pauses, "networks": await store.disabled_summary(),
            "overdueAfter": overdue_after}


# -- rendering ----------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def render(report: dict[str, Any]) -> str:
    """The terminal view: one table per question an operator asks."""
    now = report["at"]
    out = [f"collector status at {now.isoformat(timespec='seconds')}", ""]
    alive = sum(1 for p in report["processes"] if p["alive"])
    dead = sum(1 for p in report["processes"] if p["state"] == "dead")
    out.append(f"FLEET  {alive} alive, {dead} dead, {len(report['hosts'])} host(s)")
    if report["hosts"]:
        out += _table(["HOST", "INITIAL", "NORMAL", "DEAD", "IN FLIGHT", "RUNS 1m", "ITEMS 1m", "RUNS 1h", "ITEMS 1h"],
                      [[h["host"], h["modes"].get("initial", {}).get("alive", 0),
                        h["modes"].get("normal", {}).get("alive", 0), h["dead"], h["inflight"],
                        h["minute"].get("runs", 0), h["minute"].get("items", 0),
                        h["hour"].get("runs", 0), h["hour"].get("items", 0)] for h in report["hosts"]])
        out.append("")
        rows = []
        for p in report["processes"]:
            work = p["current"] or p["lastCurrent"]
            shown = ", ".join(f"{c.get('service')}/{c.get('user')}" for c in work[:3])
            if len(work) > 3:
                shown += f" +{len(work) - 3}"
            rows.append([p["id"], p["mode"], p["state"].upper() if p["state"] == "dead" else p["state"],
                         _ago(p["heartbeatAge"]), p["inflight"], (p["totals"] or {}).get("runs", 0),
                         (p["totals"] or {}).get("items", 0), shown])
        out += _table(["PROCESS", "MODE", "STATE", "BEAT", "IN FLIGHT", "RUNS", "ITEMS", "WORKING ON"], rows)
    out += ["", f"BACKLOG  (overdue: due for more than {report['overdueAfter']:g}s and not claimed)"]
    if report["backlog"]:
        out += _table(["MODE", "SERVICE", "DUE", "OVERDUE", "RUNNING", "OLDEST LAG"],
                      [[r["mode"], r["service"], r["due"], r["overdue"], r["running"],
                        _ago(r["lagSeconds"]) if r["due"] else "-"] for r in report["backlog"]])
    else:
        out.append("nothing due")
    out += ["", "PAUSED SERVICES"]
    if report["paused"]:
        out += _table(["SERVICE", "UNTIL", "FOR", "REASON"],
                      [[p["service"], aware(p["until"]).isoformat(timespec="seconds"),
                        _ago((aware(p["until"]) - now).total_seconds()), (p["reason"] or "")[:100]]
                       for p in report["paused"]])
    else:
        out.append("none")
    nets = report["networks"]
    parked = nets.get("parked", {"count": 0, "reasons": []})
    out += ["", f"DISABLED  {nets['disabled']['count']} disabled, {nets['unauthorized']['count']} unauthorized, "
                f"{parked['count']} parked (`collector networks enable ID` clears either)"]
    reasons = [["disabled", r["count"], r["reason"][:100]] for r in nets["disabled"]["reasons"]]
    reasons += [["unauthorized", r["count"], r["reason"][:100]] for r in nets["unauthorized"]["reasons"]]
    reasons += [["parked", r["count"], r["reason"][:100]] for r in parked["reasons"]]
    if reasons:
        out += _table(["STATE", "COUNT", "TOP REASONS"], reasons)
    return "\n".join(out)
