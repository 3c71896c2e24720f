"""`collector status`: the fleet, the due backlog, paused services, disabled and parked networks, read from the
database (the `collectors` documents the heartbeat keeps: collector/fleet.py) and rendered for a terminal."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import Any

from collector.clock import aware, utcnow
from collector.selectors import Selectors, assignment, slot_number
from collector.store import Store
from collector.webhooks import summary as webhook_summary

OVERDUE_AFTER = 60.0  # a network due for longer than this, still unclaimed, is overdue
LEASE_TTL = 300.0  # [daemon] lease_ttl's default
# a lease running out later than this many lease_ttl from now was not written by a process (a claim or a renewal
# writes one lease_ttl ahead; the margin covers processes configured with a longer one): nobody holds it, but no
# claim takes it before it runs out (a claim never takes a live lease), so the network waits unseen
HELD_BEYOND_TTLS = 4.0


def lag(row: dict[str, Any], now: datetime) -> float:
    oldest = row.get("oldestDue")
    return max(0.0, (now - aware(oldest)).total_seconds()) if isinstance(oldest, datetime) else 0.0


def process_view(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
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
        "selectors": Selectors.from_doc(doc.get("selectors")).describe(),
        "selects": str(Selectors.from_doc(doc.get("selectors"))),
    }


def uncovered(due: list[dict[str, Any]], processes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Due networks that no live process's selectors cover, per (mode, service), with why: no live process of
    the mode, none that runs the service, none of the user's partition (under each partition count in use),
    or no slot yet. `due`: Store.due_by_slot; `processes`: the views of the fleet's documents."""
    live: dict[str, list[Selectors]] = {}
    for doc in processes:
        if doc["alive"]:
            live.setdefault(str(doc["mode"]), []).append(Selectors.from_doc(doc.get("selectors")))
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for group in due:
        mode, service, slot, n = str(group.get("mode")), group.get("service"), group.get("slot"), group["n"]
        mine = live.get(mode, [])
        if any(s.covers(service, slot) for s in mine):
            continue
        runs_service = [s for s in mine if Selectors(s.services, s.exclude).covers(service, None)]
        if not mine:
            why = f"no live {mode} process"
        elif not runs_service:
            why = f"no live {mode} process runs {service}"
        elif not slot_number(slot):
            why = "no partition slot yet (a partitioned process stamps new networks within a tick)"
        else:
            number = int(slot or 0)  # slot_number: an int
            counts = sorted({s.partition.count for s in runs_service if s.partition is not None})
            why = "no live process of partition " + " or ".join(f"{assignment(c)[number]}/{c}" for c in counts)
        row = rows.setdefault((mode, str(service)), {"mode": mode, "service": str(service), "due": 0, "why": Counter()})
        row["due"] += n
        row["why"][why] += n
    return [{**row, "why": [{"reason": r, "count": c} for r, c in row["why"].most_common()]}
            for _key, row in sorted(rows.items())]


async def status(store: Store, now: datetime | None = None, overdue_after: float = OVERDUE_AFTER,
                 lease_ttl: float = LEASE_TTL) -> dict[str, Any]:
    """Everything `collector status` shows, as one JSON-able document.

    Networks no claim can take are shown, never hidden: a junk `lease` (of a shape no process writes) is no lease
    to a claim, so those networks are in the backlog (due) and claimed; what remains is a well-formed lease
    running out far beyond any a process writes (`stuck`), which is kept until it runs out (to take a lease that
    looks held would break "one process at a time")."""
    now = now or utcnow()
    processes = [process_view(doc, now) for doc in await store.fleet()]
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
        row["lagSeconds"] = round(lag(row, now), 1)
    gaps = uncovered(await store.due_by_slot(now), processes)
    pauses = [{"service": d["_id"], "until": d.get("pausedUntil"), "since": d.get("pausedAt"),
               "reason": d.get("pauseReason")} for d in await store.pauses(now)]
    horizon = HELD_BEYOND_TTLS * lease_ttl
    stuck = await store.held_beyond(now, horizon)
    return {"at": now, "processes": processes, "hosts": sorted(hosts.values(), key=lambda h: h["host"]),
            "backlog": backlog, "uncovered": gaps, "stuck": stuck, "stuckAfter": horizon, "paused": pauses,
            "networks": await store.disabled_summary(), "overdueAfter": overdue_after,
            "webhooks": await webhook_summary(store.db, now)}


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
                         _ago(p["heartbeatAge"]), p["selects"], p["inflight"], (p["totals"] or {}).get("runs", 0),
                         (p["totals"] or {}).get("items", 0), shown])
        out += _table(["PROCESS", "MODE", "STATE", "BEAT", "SELECTS", "IN FLIGHT", "RUNS", "ITEMS", "WORKING ON"],
                      rows)
    out += ["", f"BACKLOG  (overdue: due for more than {report['overdueAfter']:g}s and not claimed)"]
    if report["backlog"]:
        out += _table(["MODE", "SERVICE", "DUE", "OVERDUE", "RUNNING", "OLDEST LAG"],
                      [[r["mode"], r["service"], r["due"], r["overdue"], r["running"],
                        _ago(r["lagSeconds"]) if r["due"] else "-"] for r in report["backlog"]])
    else:
        out.append("nothing due")
    gaps = report.get("uncovered") or []
    out += ["", f"UNCOVERED  {sum(g['due'] for g in gaps)} due network(s) no live process's selectors cover"]
    if gaps:
        out += _table(["MODE", "SERVICE", "DUE", "WHY"],
                      [[g["mode"], g["service"], g["due"], "; ".join(f"{w['reason']} ({w['count']})" for w in g["why"])]
                       for g in gaps])
    stuck = report.get("stuck") or []
    out += ["", f"STUCK  {sum(r['count'] for r in stuck)} network(s) leased for more than "
                f"{_ago(report.get('stuckAfter'))} ahead: no process writes such a lease, and none is claimed before "
                "it runs out (unset its `lease` once you know no process runs it)"]
    if stuck:
        out += _table(["MODE", "SERVICE", "COUNT", "LATEST UNTIL"],
                      [[r["mode"], r["service"], r["count"],
                        aware(r["until"]).isoformat(timespec="seconds") if isinstance(r["until"], datetime) else "?"]
                       for r in stuck])
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
    confirming = nets.get("confirming", {"count": 0, "reasons": []})
    out += ["", f"DISABLED  {nets['disabled']['count']} disabled, {nets['unauthorized']['count']} unauthorized, "
                f"{parked['count']} parked (`collector networks enable ID` clears either); "
                f"{confirming['count']} refused once, confirming"]
    reasons = [["disabled", r["count"], r["reason"][:100]] for r in nets["disabled"]["reasons"]]
    reasons += [["unauthorized", r["count"], r["reason"][:100]] for r in nets["unauthorized"]["reasons"]]
    reasons += [["parked", r["count"], r["reason"][:100]] for r in parked["reasons"]]
    reasons += [["confirming", r["count"], r["reason"][:100]] for r in confirming["reasons"]]
    if reasons:
        out += _table(["STATE", "COUNT", "TOP REASONS"], reasons)
    hooks = report.get("webhooks") or {}
    out += ["", f"WEBHOOKS  {hooks.get('pending', 0)} user(s) with events to deliver (oldest due "
                f"{_ago(hooks.get('oldestDueSeconds'))}), {hooks.get('failing', 0)} failing, {hooks.get('dead', 0)} "
                "dead-lettered (`collector webhooks retry [--user U]` clears them)"]
    if letter := hooks.get("newestDead"):
        since = letter.get("since")
        since = aware(since).isoformat(timespec="seconds") if isinstance(since, datetime) else "?"
        out.append(f"newest dead letter: user {letter.get('user')}, failing since {since}: {letter.get('error')}"[:200])
    return "\n".join(out)
