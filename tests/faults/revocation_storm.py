"""Scenario "revocation_storm": an API answers 401 to everyone for a while, and nobody is disabled.

Networks of three services (GitHub, GitLab, Stack Overflow) collect normally under three daemons (one initial, two
normal); then the sandbox answers every GitHub request as with a revoked token (POST /_sandbox/storm: the tokens
were never revoked) for STORM seconds, longer than unauthorized_recheck, so that the networks refused first are
rechecked inside it; then GitHub recovers. New items arrive upstream before, at the start of and after the storm.

The engine must take the storm for an incident of the service (collector/incidents.py): GitHub paused fleet-wide
with an "auth incident" reason, no network disabled at any moment, the networks marked by the first 401s cleared by
their first success after it; the other services untouched (never paused, their items of the storm's start
collected during it); afterwards every network has everything (lost 0, duplicated 0; a network not caught up, or
ending marked or disabled, is `stuck`), and every daemon ran throughout (crashes 0).

The timing settings (small and full alike): once every run is refused, a process declares the incident when
incident_min_refused (10) distinct networks of its window were refused (and more than incident_share of those
answered): with about 20 GitHub networks per normal daemon, each run every 5 s, about half an interval into the
storm (measured: 1.6-2.9 s at the small size). unauthorized_recheck (5 s) must be longer than that, or the networks
refused first get their second 401, and are disabled, before the declaration. The defaults keep that order: ten
networks' first refusals come well within unauthorized_recheck (600 s) for any service that runs ten networks in
that time. The daemons run a window and an interval before the storm, so that their windows are full, as in a
fleet that has been running for a while.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from collector.sandbox import Sandbox
from collector.sandbox import Server as SandboxServer
from tests.faults.scenarios import FAST, Daemons, _crash_notes, _wait, row

SIZES = {
    "small": {"networks": {"github": 40, "gitlab": 10, "stackoverflow": 10}, "normal": 2, "storm": 12.0,
              "limit": 120.0},
    "full": {"networks": {"github": 240, "gitlab": 40, "stackoverflow": 40}, "normal": 3, "storm": 30.0,
             "limit": 400.0},
}
STORMED = "github"
PAGES = 2
PAGE_CAP = 2
INTERVAL = 5.0  # schedule.normal_interval
RECHECK = 5.0  # schedule.unauthorized_recheck
WINDOW = 10.0  # schedule.incident_window
PAUSE = 3.0  # schedule.incident_pause
DECLARED = "auth incident: service paused"  # collector/incidents.py's log line


def daemon_settings(url: str) -> list[str]:
    return [*FAST, "--concurrency", "8", "--set", f"services.gitlab.base_url={url}",
            "--set", "services.gitlab.initial_pace=0.05", "--set", f"schedule.normal_interval={INTERVAL:g}",
            "--set", "schedule.jitter=0.3", "--set", "schedule.rate_limit_slack=0.5",
            "--set", f"schedule.unauthorized_recheck={RECHECK:g}", "--set", f"schedule.incident_window={WINDOW:g}",
            "--set", f"schedule.incident_pause={PAUSE:g}"]


@dataclass
class Result:
    row: dict[str, Any]
    declared_after: float | None  # seconds into the storm when the auth-incident pause was first seen
    pauses_seen: list[str]  # distinct pause reasons seen on the stormed service during the storm
    declarations: int  # the daemons' "auth incident: service paused" log lines
    disabled_peak: int  # most networks disabled at one look, from the storm's start to the end
    marked_peak: int  # most networks marked unauthorized at one look
    others_paused: list[str]  # pause reasons seen on the other services
    others_collected_in_storm: bool  # the other services' items of the storm's start stored before it ended
    refused: int  # requests the storm refused
    incident_at: Any = None  # the stormed service's authIncidentAt at the end
    crashes: list[str] = field(default_factory=list)


class World:
    def __init__(self, uri: str, cfg: dict[str, Any]):
        self.client: MongoClient = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=10_000)
        self.db = self.client[f"collector_faults_{uuid.uuid4().hex[:10]}"]
        self.api = SandboxServer(Sandbox(page_cap=PAGE_CAP)).start()
        self.box = self.api.sandbox
        self.workdir = Path(tempfile.mkdtemp(prefix="collector-storm-"))
        self.users: dict[str, tuple[str, str]] = {}  # token -> (user, service)
        now, docs = datetime.now(UTC), []
        for service, count in cfg["networks"].items():
            for _ in range(count):
                n = len(self.users)
                token, user = f"storm-{n:04d}-{uuid.uuid4().hex[:10]}", f"storm{n}user"
                self.box.add_user(service, token, items=PAGES * PAGE_CAP, name=user)
                self.users[token] = (user, service)
                docs.append({"user": user, "service": service, "accessToken": token, "mode": "initial",
                             "scheduledTo": now})
        self.db.networks.insert_many(docs)

    def add_items(self, services: set[str] | None = None) -> None:
        for token, (_user, service) in self.users.items():
            if services is None or service in services:
                self.box.add_items(token, 1)

    def caught_up(self, services: set[str] | None = None) -> bool:
        """Every network (of `services`) has all its upstream items, and is neither marked nor disabled."""
        stored = self.stored()
        flagged = {d["user"] for d in self.db.networks.find({"$or": [{"unauthorized": True}, {"disabled": True}]},
                                                            {"user": 1})}
        with self.box.lock:
            upstream = {t: len(u.items) for t, u in self.box.users.items()}
        return all(stored[user] >= upstream[t] and user not in flagged for t, (user, service) in self.users.items()
                   if services is None or service in services)

    def stored(self) -> Counter[str]:
        pairs = {(str(d.get("user")), str(d.get("itemId"))) for d in self.db.items.find({}, {"user": 1, "itemId": 1})}
        return Counter(user for user, _ in pairs)

    def tally(self) -> dict[str, int]:
        stored = self.stored()
        keys = Counter((str(d.get("user")), str(d.get("itemId"))) for d in self.db.items.find({}, {"user": 1,
                                                                                                  "itemId": 1}))
        docs = {d["user"]: d for d in self.db.networks.find({}, {"user": 1, "mode": 1, "disabled": 1,
                                                                 "unauthorized": 1, "stats": 1})}
        with self.box.lock:
            served = {t: len(ids) for t, ids in self.box.served_ids.items()}
            upstream = {t: len(u.items) for t, u in self.box.users.items()}
        lost = stuck = 0
        for token, (user, _service) in self.users.items():
            doc = docs.get(user) or {}
            lost += max(served.get(token, 0) - stored[user], 0)
            stuck += (doc.get("mode") != "normal" or bool(doc.get("disabled")) or bool(doc.get("unauthorized"))
                      or stored[user] < upstream[token])
        return {"runs": sum(int((d.get("stats") or {}).get("runs") or 0) for d in docs.values()),
                "served": sum(served.values()), "stored": sum(keys.values()),
                "duplicated": sum(1 for n in keys.values() if n > 1), "lost": lost, "stuck": stuck}

    def close(self) -> None:
        self.api.stop()
        with contextlib.suppress(Exception):
            self.client.drop_database(self.db.name)
        self.client.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def execute(uri: str, size: str = "small") -> Result:
    cfg = SIZES[size]
    began = time.monotonic()
    world = World(uri, cfg)
    db, box = world.db, world.box
    daemons = Daemons(uri, db.name, world.api.url, world.workdir, *daemon_settings(world.api.url))
    others = set(cfg["networks"]) - {STORMED}
    fails: list[str] = []
    declared_after: float | None = None
    pauses: dict[str, list[str]] = {s: [] for s in cfg["networks"]}
    disabled_peak = marked_peak = 0
    others_in_storm = False
    timings: dict[str, float] = {}
    try:
        for mode in ("initial", *["normal"] * cfg["normal"]):
            daemons.start(mode)
        if not _wait(lambda: daemons.revive() >= 0 and world.caught_up(), 60.0, 0.5):
            fails.append("the back-fill did not finish within 60s")
        timings["backfill"] = time.monotonic() - began
        # warm-up: the normal daemons' windows fill (a window holding fewer runs than incident_window's worth
        # would declare sooner than a fleet that has been running for a while); new items once an interval
        warm = time.monotonic()
        while time.monotonic() - warm < WINDOW + INTERVAL:
            world.add_items()
            time.sleep(INTERVAL)
            daemons.revive()
        timings["warm-up"] = time.monotonic() - warm
        storm_at = time.monotonic()
        box.storm(STORMED, cfg["storm"])
        world.add_items()
        while time.monotonic() - storm_at < cfg["storm"]:
            daemons.revive()
            for doc in db.services.find({}):
                reason = str(doc.get("pauseReason") or "")
                paused = isinstance(doc.get("pausedUntil"), datetime) and doc["pausedUntil"] > datetime.now(UTC)
                if paused and doc["_id"] in pauses and reason not in pauses[doc["_id"]]:
                    pauses[doc["_id"]].append(reason)
                if (paused and doc["_id"] == STORMED and reason.startswith("auth incident")
                        and declared_after is None):
                    declared_after = time.monotonic() - storm_at
            disabled_peak = max(disabled_peak, db.networks.count_documents({"disabled": True}))
            marked_peak = max(marked_peak, db.networks.count_documents({"unauthorized": True}))
            others_in_storm = others_in_storm or world.caught_up(others)
            time.sleep(0.25)
        timings["storm"] = time.monotonic() - storm_at
        world.add_items()
        mark = time.monotonic()
        deadline = began + cfg["limit"]
        while not world.caught_up():
            daemons.revive()
            disabled_peak = max(disabled_peak, db.networks.count_documents({"disabled": True}))
            if time.monotonic() > deadline:
                fails.append(f"not every network caught up within {cfg['limit']:g}s")
                break
            time.sleep(0.5)
        timings["recovery"] = time.monotonic() - mark
        died = [p.crashed for p in daemons.procs if p.crashed]
        if died:
            fails.append(f"{len(died)} daemons died during the scenario")
    finally:
        daemons.stop_all()
        try:
            crashes = daemons.crashes()
            figures = world.tally()
            declarations = sum(p.output().count(DECLARED) for p in daemons.procs)
            refused = int(box.stats()["storm_refused"].get(STORMED, 0))
            incident_at = (db.services.find_one({"_id": STORMED}) or {}).get("authIncidentAt")
        finally:
            world.close()
    seen = pauses[STORMED]
    others_paused = [r for s in others for r in pauses[s]]
    if declared_after is None:
        fails.append(f"{STORMED} never seen paused for an auth incident")
    if disabled_peak:
        fails.append(f"{disabled_peak} networks disabled")
    if others_paused:
        fails.append(f"other services paused: {others_paused[:2]}")
    if not others_in_storm:
        fails.append("the other services' items were not collected during the storm")
    stormed = cfg["networks"][STORMED]
    notes = (f"{sum(cfg['networks'].values())} networks ({', '.join(f'{n} {s}' for s, n in cfg['networks'].items())}),"
             f" {cfg['normal']} normal daemons + 1 initial; every {STORMED} request refused for {cfg['storm']:g}s "
             f"(recheck {RECHECK:g}s, incident window {WINDOW:g}s, pause {PAUSE:g}s): {refused} refused "
             f"({refused / stormed:.1f} per network); auth incident seen {declared_after or 0:.1f}s into the storm, "
             f"declared {declarations}x; networks marked at most {marked_peak}, disabled at most {disabled_peak}; "
             f"other services paused {len(others_paused)}x, collected during the storm: {others_in_storm}; "
             f"timings " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    if fails:
        notes += "; FAIL: " + "; ".join(fails)
    result = Result(row("revocation_storm", faults=refused, crashes=len(crashes),
                        seconds=round(time.monotonic() - began, 1), notes=notes + _crash_notes(crashes), **figures),
                    declared_after, seen, declarations, disabled_peak, marked_peak, others_paused, others_in_storm,
                    refused, incident_at, crashes)
    return result


def run(uri: str, size: str = "small") -> dict[str, Any]:
    return execute(uri, size).row
