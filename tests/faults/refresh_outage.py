"""Scenario "refresh_outage": tokens refreshed all the time while the database goes down and daemons are killed -9.

Networks of services that refresh, one group per provider behaviour (collector/sandbox/tokens.py): GitHub through
the sandbox's RFC 6749 token endpoint with `strict` rotation (GitHub App user tokens) and with `none` (the refresh
token kept), GitLab with `on_use` (Doorkeeper), Bluesky's refreshSession with `grace` (the PDS) and `strict`.
Access tokens expire every TTL seconds, so most runs begin with a 401, a refresh, the new pair's durable write
(collector/refresh.py) and a retry; new items arrive upstream all along. Three daemons (one initial, two normal).

Faults: each database outage (scripts/devdb.py Server.pause()/resume()) begins the moment the provider has answered
a refresh of a network of the rotation it is armed for (the worst moment: the new pair exists only in that
daemon's memory), and during it the daemon that logs that its credential write is waiting is killed -9 (a random
one if none does); other kills land at random moments. Killed daemons are started again (after the outage: a
daemon that cannot reach the database at start exits 3, by design; one started just before an outage that exits
3 is restarted too, and not counted as a crash). The driver: tests/faults/refresh_faults.py.

Judged at the end, the daemons stopped:
- a network whose provider allows recovery (none, on_use, grace) ends clean: not unauthorized, not disabled, every
  item upstream stored; anything else is `stuck` (and listed as wrongly unauthorized when it is marked);
- a `strict` network may end unauthorized: that provider invalidates the refresh token with its answer, so a kill
  -9 before the database has the new pair loses it, and nothing can cover it. Counted apart
  (`lost_to_strict_rotation`, its items left out of `lost`), and only when the database lacks the pair the
  provider issued last and a kill explains it (its daemon was the one killed holding the write, or a kill landed
  between that answer and the end of the write's possible wait); a strict network lost otherwise is `stuck`;
- every item served stored exactly once (lost, duplicated), no daemon crashed (a traceback, an exit on its own).
"""

from __future__ import annotations

import contextlib
import random
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

from collector.refresh import Refresher
from collector.sandbox import Sandbox
from collector.sandbox import Server as SandboxServer
from tests.faults.refresh_faults import PENDING, Driver, Net, RefreshLog
from tests.faults.scenarios import FAST, Daemons, _crash_notes, row

GROUPS = (("github", "strict"), ("github", "none"), ("gitlab", "on_use"), ("bluesky", "grace"), ("bluesky", "strict"))
RECOVERABLE = ("none", "on_use", "grace")
SIZES = {  # armed: the rotation whose refresh answer starts each outage, in turn
    "small": {"per_group": 5, "pages": 3, "kills": 5, "armed": ("on_use", "grace", "strict"), "down": 3.5,
              "faulted": 24.0, "limit": 90.0},
    "full": {"per_group": 20, "pages": 5, "kills": 24, "armed": ("on_use", "grace", "none", "strict") * 2,
             "down": 8.0, "faulted": 150.0, "limit": 480.0},
}
TTL = 1.5  # seconds an access token lives
PAGE_CAP = 2
LATENCY = 0.1  # seconds the sandbox takes per request: runs stay in flight long enough to meet the faults
RECHECK = 2.0  # schedule.unauthorized_recheck: a network wrongly marked gets its second chance within the run
WRITE_WAIT = Refresher.RETRY_CAP + 2.0  # after an outage, how long a credential write may still wait to retry
PREVIOUS = "trying the one before it"  # collector/refresh.py: the previous refresh token used


def daemon_settings(url: str) -> list[str]:
    return [*FAST, "--concurrency", "4", "--set", "database.retry_cap=5", "--set", "database.timeout=2",
            "--set", f"services.github.token_url={url}/oauth/token", "--set", "services.github.client_id=faults",
            "--set", f"services.gitlab.base_url={url}", "--set", f"services.gitlab.token_url={url}/oauth/token",
            "--set", "services.gitlab.client_id=faults", "--set", "services.gitlab.initial_pace=0.05",
            "--set", f"services.bluesky.base_url={url}", "--set", "services.bluesky.initial_pace=0.05",
            "--set", "schedule.normal_interval=1", "--set", "schedule.jitter=0.2",
            "--set", "schedule.backoff_base=0.5", "--set", "schedule.backoff_cap=2",
            "--set", f"schedule.unauthorized_recheck={RECHECK:g}",
            # each refused refresh here is its network's own (a strict pair lost): with 5 networks a group, two of
            # them are over incident_share of a service's runs, an "auth incident" by the rule, and the service
            # would be paused for incident_pause (5 min), renewed while they are refused; the storm detection is
            # the revocation_storm scenario's subject
            "--set", "schedule.incident_min_runs=1000000"]


@dataclass
class Result:
    row: dict[str, Any]
    by_rotation: dict[str, dict[str, int]]  # rotation -> networks, clean, unauthorized, disabled, refreshes, reuse
    wrongly: list[str]  # recoverable networks (or strict ones no kill explains) ending unauthorized/disabled
    strict_lost: list[str]  # strict networks whose last pair a kill -9 lost
    stuck: list[str]  # every network not clean at the end (but the strict losses), with its state
    kills: list[dict[str, Any]]  # at (wall time), during (an outage), holder (the network whose write it held)
    outages: list[dict[str, Any]]  # down, up (wall times), armed rotation, trigger (the network refreshed)
    counts: dict[str, int] = field(default_factory=dict)  # refreshes, refresh_reuse, pending writes...
    crashes: list[str] = field(default_factory=list)


def execute(server: Any, size: str = "small", *, seed: int | None = None) -> Result:
    """`server`: a scripts/devdb.py Server of the scenario's own (it is paused and resumed)."""
    cfg = SIZES[size]
    seed = random.randrange(1 << 30) if seed is None else seed
    began = time.monotonic()
    client: MongoClient = MongoClient(server.uri, tz_aware=True, serverSelectionTimeoutMS=10_000)
    db = client[f"collector_faults_{uuid.uuid4().hex[:10]}"]
    api = SandboxServer(Sandbox(page_cap=PAGE_CAP, latency=LATENCY)).start()
    box = api.sandbox
    workdir = Path(tempfile.mkdtemp(prefix="collector-refresh-"))
    nets: list[Net] = []
    for service, rotation in GROUPS:
        for _ in range(cfg["per_group"]):
            n = len(nets)
            token = f"rfo-{n:03d}-{uuid.uuid4().hex[:12]}"
            nets.append(Net(f"rfo{n}user", service, rotation, token, f"{token}-refresh"))
            box.add_user(service, token, items=cfg["pages"] * PAGE_CAP, name=f"rfo{n}user",
                         refresh_token=f"{token}-refresh", access_ttl=TTL, rotation=rotation)
    now = datetime.now(UTC)
    ids = db.networks.insert_many([
        {"user": n.user, "service": n.service, "accessToken": n.token, "refreshToken": n.refresh, "mode": "initial",
         "scheduledTo": now, **({"options": {"actor": f"{n.user}.bsky.social"}} if n.service == "bluesky" else {})}
        for n in nets]).inserted_ids
    for net, oid in zip(nets, ids, strict=True):
        net.id = str(oid)
    daemons = Daemons(server.uri, db.name, api.url, workdir, *daemon_settings(api.url))
    timed_out = False
    with RefreshLog({n.token: n.rotation for n in nets}) as refreshes:
        driver = Driver(server, daemons, refreshes, nets, box, cfg, random.Random(seed))
        try:
            for mode in ("initial", "normal", "normal"):
                daemons.start(mode)
            driver.run()
            deadline = began + cfg["limit"]
            while not _settled(db, box, nets):
                daemons.revive()
                if time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(0.5)
        finally:
            refreshes.disarm()
            if server.paused:
                with contextlib.suppress(Exception):
                    server.resume()
            try:
                daemons.stop_all()
                crashes = daemons.crashes()
                outputs = [p.output() for p in daemons.procs]
                result = _judge(db, box, nets, refreshes, driver, crashes, outputs)
            finally:
                api.stop()
                with contextlib.suppress(Exception):
                    client.drop_database(db.name)
                client.close()
                shutil.rmtree(workdir, ignore_errors=True)
    result.row["seconds"] = round(time.monotonic() - began, 1)
    c, kills = result.counts, result.kills
    reuse = ", ".join(f"{r} {v['reuse']}" for r, v in result.by_rotation.items())
    notes = (f"{len(nets)} networks ({', '.join(f'{s} {r}' for s, r in GROUPS)}; {cfg['per_group']} each), access "
             f"tokens of {TTL:g}s; {len(result.outages)} database outages of {cfg['down']:g}s, each from a refresh "
             f"answer ({', '.join(cfg['armed'])}); {len(kills)} x kill -9 ({sum(k['during'] for k in kills)} during "
             f"outages, {sum(bool(k['holder']) for k in kills)} of a daemon holding a credential write), seed {seed}; "
             f"{c['refreshes']} refreshes, refresh_reuse {c['refresh_reuse']} ({reuse}); credential writes retried "
             f"{c['pending']}x, previous refresh token used {c['previous']}x; lost_to_strict_rotation "
             f"{len(result.strict_lost)} ({c['strict_lost_items']} items left out of lost); wrongly unauthorized or "
             f"disabled {len(result.wrongly)}")
    if driver.met_outage:
        notes += f"; {driver.met_outage} daemons started just before an outage exited 3 (restarted)"
    if result.wrongly:
        notes += f"; FAIL: {'; '.join(result.wrongly[:3])}"
    if timed_out:
        notes += f"; TIMED OUT after {cfg['limit']:g}s: {'; '.join(result.stuck[:3])}"
    result.row["notes"] = notes + _crash_notes(result.crashes)
    return result


def run(server: Any, size: str = "small", *, seed: int | None = None) -> dict[str, Any]:
    return execute(server, size, seed=seed).row


def _stored(db: Any) -> Counter[str]:
    """Distinct items stored per user (the connectors' item ids are theirs, not the sandbox's: counted)."""
    pairs = {(str(d.get("user")), str(d.get("itemId"))) for d in db.items.find({}, {"user": 1, "itemId": 1})}
    return Counter(user for user, _ in pairs)


def _settled(db: Any, box: Sandbox, nets: list[Net]) -> bool:
    """Every network caught up with its upstream items and clean, or disabled."""
    docs = {d["user"]: d for d in db.networks.find({}, {"user": 1, "mode": 1, "disabled": 1, "unauthorized": 1})}
    stored = _stored(db)
    with box.lock:
        upstream = {n.user: len(box.users[n.token].items) for n in nets}
    for net in nets:
        doc = docs.get(net.user) or {}
        clean = doc.get("mode") == "normal" and not doc.get("unauthorized") and stored[net.user] >= upstream[net.user]
        if not clean and not doc.get("disabled"):
            return False
    return True


def _judge(db: Any, box: Sandbox, nets: list[Net], refreshes: RefreshLog, driver: Driver, crashes: list[str],
           outputs: list[str]) -> Result:
    docs = {d["user"]: d for d in db.networks.find({})}
    stored = _stored(db)
    keys = Counter((str(d.get("user")), str(d.get("itemId"))) for d in db.items.find({}, {"user": 1, "itemId": 1}))
    stats = box.stats()
    with box.lock:
        served = {n.user: len(box.served_ids.get(n.token, ())) for n in nets}
        upstream = {n.user: len(box.users[n.token].items) for n in nets}
        current = {n.user: getattr(box.users[n.token].session, "refresh", None) for n in nets}
    with refreshes.lock:
        issued = {t: list(v) for t, v in refreshes.issued.items()}
    held_by_killed = {k["holder"] for k in driver.kills if k["holder"]}
    by_rotation: dict[str, dict[str, int]] = {}
    wrongly, strict_lost, stuck_states = [], [], []
    lost = stuck = strict_items = 0
    for net in nets:
        doc = docs.get(net.user) or {}
        marked, disabled = bool(doc.get("unauthorized")), bool(doc.get("disabled"))
        clean = doc.get("mode") == "normal" and not marked and not disabled and stored[net.user] >= upstream[net.user]
        tally = by_rotation.setdefault(net.rotation, dict.fromkeys(
            ("networks", "clean", "unauthorized", "disabled", "refreshes", "reuse"), 0))
        tokens = stats["tokens"].get(net.token, {})
        for key, value in (("networks", 1), ("clean", clean), ("unauthorized", marked), ("disabled", disabled),
                           ("refreshes", tokens.get("refreshes", 0)), ("reuse", tokens.get("refresh_reuse", 0))):
            tally[key] += int(value)
        missing = max(served[net.user] - stored[net.user], 0)
        state = (f"{net.user} ({net.service} {net.rotation}): mode={doc.get('mode')} unauthorized={marked} "
                 f"disabled={disabled} stored {stored[net.user]}/{upstream[net.user]}, last "
                 f"{(doc.get('lastOutcome') or {}).get('kind')}: {doc.get('disabledReason') or ''}"
                 f"{(doc.get('lastError') or {}).get('message') or ''}"[:400])
        if not clean and (marked or disabled) and net.rotation == "strict":
            if current[net.user] not in {doc.get("refreshToken"), doc.get("previousRefreshToken")}:
                last = next((at for at, new in reversed(issued.get(net.token, [])) if new == current[net.user]), None)
                if net.id in held_by_killed or (last is not None and _killed_while_pending(last, driver)):
                    strict_lost.append(state)
                    strict_items += missing
                    continue
                state += " (the pair was lost, and no kill -9 explains it)"
        lost += missing
        if not clean:
            stuck += 1
            stuck_states.append(state)
            if marked or disabled:
                wrongly.append(state)
    runs = sum(int((d.get("stats") or {}).get("runs") or 0) for d in docs.values())
    figures = {"runs": runs, "served": sum(served.values()), "stored": sum(keys.values()),
               "duplicated": sum(1 for n in keys.values() if n > 1), "lost": lost, "stuck": stuck}
    counts = {"refreshes": int(stats["refreshes"]), "refresh_reuse": int(stats["refresh_reuse"]),
              "refresh_invalid": int(stats["refresh_invalid"]), "stale_refused": int(stats["stale_refused"]),
              "pending": sum(o.count(PENDING) for o in outputs), "previous": sum(o.count(PREVIOUS) for o in outputs),
              "strict_lost_items": strict_items, "met_outage": driver.met_outage}
    outages = [{k: v for k, v in o.items() if k != "marks"} for o in driver.outages]
    return Result(row("refresh_outage", faults=len(driver.kills) + len(outages), crashes=len(crashes), **figures),
                  by_rotation, wrongly, strict_lost, stuck_states, driver.kills, outages, counts, crashes)


def _killed_while_pending(issued_at: float, driver: Driver) -> bool:
    """A kill -9 could have lost the pair issued at `issued_at`: one landed after the provider handled the refresh
    (with slack: a request whose client was killed is still answered) and before its write was done (a moment, or
    the outage the answer fell in, plus the write's longest retry wait after it)."""
    horizon = issued_at + 2.0
    for outage in driver.outages:
        if outage["down"] - 1.0 <= issued_at <= outage.get("up", issued_at):
            horizon = max(horizon, outage.get("up", issued_at) + WRITE_WAIT)
    return any(issued_at - 1.0 - LATENCY <= k["at"] <= horizon for k in driver.kills)
