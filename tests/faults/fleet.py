"""Fleet faults (issue "fleet correctness under real load"): real daemon processes, the sandbox API, the wire
server; one row each, in the columns of tests/faults/scenarios.py.

    backlog(uri, size)     a backlog far larger than one fill, with runs that end while the next batch is
                           claimed: the systemd watchdog (NOTIFY_SOCKET, WATCHDOG_USEC) must keep getting pings
                           (a gap longer than the watchdog period is a kill: counted in `crashes`)
    poison(uri, size)      every GitHub item carries integers past 64 bits (JSON allows them): every page must
                           be stored (the values as text) and every network finish, none re-run forever
    api_outage(uri, size)  every request fails with a 503 several times in a row (an API outage): with the
                           default policy (a day AND max_errors) nothing is disabled, everything is collected
                           once the API is back (a disabled network is `stuck`)
    clock_skew(uri, size)  two daemons, one on a host whose clock is 10 minutes fast (tests/faults/skewed.py):
                           no page fetched twice (a stolen lease), no network run before it is due
"""

from __future__ import annotations

import contextlib
import socket
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

from tests.faults.scenarios import FAST, ROOT, World, _crash_notes, _wait, row

BIG = 2**64 + 7


def _wind_down(daemons: Any, world: World, read: Any = lambda: None) -> tuple[list[str], dict[str, int], Any]:
    """Stop the daemons; their crashes, the world's tally and `read()` of what else is wanted; the world closed."""
    daemons.stop_all()
    try:
        return daemons.crashes(), world.tally(), read()
    finally:
        world.close()

# `bad`: documents without a token, each run ends at once without a request (a mass import gone wrong): while
# they last, every batch claimed is finished before the next is read, and one fill used to go on through all
# `limit` bounds the whole scenario on the slowest engine it runs on: the suite's mongo-java-server reads no
# secondary index, so each claim and each lease-guarded save scans all 20,400 documents (about 10 ms each at the
# full size, one collection lock): its full size took 505 s there, 104 s on FerretDB v2 + DocumentDB
# the small size: 1,500 (3,000 took 33 s here, each claim scanning them all; 1,500 still outlast a fill, FILL_BUDGET)
BACKLOG = {"small": {"users": 100, "bad": 1500, "concurrency": 8, "limit": 120.0},
           "full": {"users": 400, "bad": 20000, "concurrency": 16, "limit": 1200.0}}
WATCHDOG_USEC = 1_000_000  # the watchdog period the daemons are given (1 s: a ping every 0.5 s)
STALL_GRACE = 1.5  # daemon.stall_grace: the loop counts as hung this long past its promise (60 s in production)


def backlog(uri: str, size: str = "small") -> dict[str, Any]:
    cfg = BACKLOG[size]
    began = time.monotonic()
    world = World(uri, cfg["users"], 2, github_only=True)
    now = datetime.now(UTC)
    world.db.networks.insert_many([{"user": f"bad{i}", "service": "github", "mode": "initial", "scheduledTo": now}
                                   for i in range(cfg["bad"])])
    daemons = world.daemons(*FAST, "--concurrency", str(cfg["concurrency"]),
                            "--set", f"daemon.stall_grace={STALL_GRACE}")
    path = Path(tempfile.mkdtemp(prefix="collector-notify-")) / "notify.sock"
    pings: list[float] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(0.05)
        try:
            proc = daemons.start("initial", {"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": str(WATCHDOG_USEC)})
            deadline = began + cfg["limit"]
            while time.monotonic() < deadline and (world.finished() < world.users or world.db.networks.count_documents(
                    {"user": {"$regex": "^bad"}, "disabled": True}) < cfg["bad"]):
                end = time.monotonic() + 0.5
                while time.monotonic() < end:
                    with contextlib.suppress(TimeoutError):
                        if b"WATCHDOG=1" in sock.recv(4096):
                            pings.append(time.monotonic())
                if proc.popen.poll() is not None:
                    break
        finally:
            def bad_ones() -> int:  # disabled as they should be (missing_credentials), then out of the tally
                count = world.db.networks.count_documents({"user": {"$regex": "^bad"}, "disabled": True,
                                                           "lastError.kind": "missing_credentials"})
                world.db.networks.delete_many({"user": {"$regex": "^bad"}})
                return count

            daemons.stop_all()
            disabled = bad_ones()
            crashes, figures, _ = _wind_down(daemons, world)
            with contextlib.suppress(OSError):
                path.unlink()
                path.parent.rmdir()
    period = WATCHDOG_USEC / 1e6
    gaps = [b - a for a, b in pairwise(pings) if b - a > period]
    longest = max((b - a for a, b in pairwise(pings)), default=0.0)
    notes = (f"{world.users} networks and {cfg['bad']} without a token, 1 daemon (concurrency {cfg['concurrency']}), "
             f"stall grace {STALL_GRACE:g}s, watchdog {period:g}s: {len(pings)} pings, longest gap {longest:.2f}s; "
             f"{disabled} disabled as missing_credentials")
    if disabled != cfg["bad"]:
        notes += f"; FAIL: {cfg['bad'] - disabled} documents without a token not disabled"
    if not pings:
        notes += "; FAIL: no watchdog ping at all"
    if gaps:
        notes += f"; FAIL: {len(gaps)} gaps longer than the watchdog period (systemd would have killed it)"
    return row("backlog", faults=len(gaps), crashes=len(crashes) + len(gaps),
               seconds=round(time.monotonic() - began, 1), notes=notes + _crash_notes(crashes), **figures)


POISON = {"small": {"users": 30, "pages": 3, "limit": 60.0}, "full": {"users": 200, "pages": 5, "limit": 240.0}}


def poison(uri: str, size: str = "small") -> dict[str, Any]:
    cfg = POISON[size]
    began = time.monotonic()
    world = World(uri, cfg["users"], cfg["pages"])
    # every GitHub repository served carries these fields (the sandbox's recorded-payload mechanism)
    world.box.repos = [{"stargazers_count": BIG, "nested": {"big": -(2**70), "list": [1, BIG]}}]
    daemons = world.daemons(*FAST, "--concurrency", "8")
    try:
        daemons.start("initial")
        finished = _wait(lambda: world.finished() == world.users, cfg["limit"], 0.3)
        sample = world.db.items.find_one({"service": "github"}) or {}
    finally:
        def github_served() -> int:
            with world.box.lock:
                return sum(len(ids) for t, ids in world.box.served_ids.items()
                           if world.networks.get(t, ("", ""))[1] == "github")

        crashes, figures, poisoned = _wind_down(daemons, world, github_served)
    stored_as = ((sample.get("raw") or {}).get("repo") or {}).get("stargazers_count")
    notes = f"{world.users} users x {cfg['pages']} pages, every GitHub item with 2**64 + 7 and -2**70 in it"
    notes += f"; stored as {stored_as!r}"
    if stored_as != str(BIG):
        notes += f"; FAIL: expected {str(BIG)!r}"
    if not finished:
        notes += f"; FAIL: not every network finished within {cfg['limit']:g}s"
    return row("poison", faults=poisoned, crashes=len(crashes),
               seconds=round(time.monotonic() - began, 1), notes=notes + _crash_notes(crashes), **figures)


API_OUTAGE = {"small": {"users": 30, "pages": 2, "fails": 8, "limit": 90.0},
              "full": {"users": 150, "pages": 3, "fails": 12, "limit": 300.0}}


def api_outage(uri: str, size: str = "small") -> dict[str, Any]:
    cfg = API_OUTAGE[size]
    began = time.monotonic()
    world = World(uri, cfg["users"], cfg["pages"])
    for token in world.networks:
        world.box.inject(token, kind="status", status=503, count=cfg["fails"])
    # the production policy (disable_after a day, max_errors 5) with short backoffs: the streak outlasts
    # max_errors many times over
    daemons = world.daemons(*FAST, "--concurrency", "8", "--set", "schedule.backoff_base=0.05",
                            "--set", "schedule.backoff_cap=0.3", "--set", "schedule.max_errors=3")
    try:
        daemons.start("initial")
        finished = _wait(lambda: world.finished() == world.users
                         or world.db.networks.count_documents({"disabled": True}) > 0, cfg["limit"], 0.3)
        disabled = world.db.networks.count_documents({"disabled": True})
    finally:
        crashes, figures, failed = _wind_down(daemons, world, lambda: sum(world.box.faults_served.values()))
    notes = (f"{world.users} users x {cfg['pages']} pages, {cfg['fails']} x HTTP 503 in a row for every network "
             f"(max_errors 3, disable_after a day): {disabled} disabled")
    if not finished:
        notes += f"; FAIL: not finished within {cfg['limit']:g}s"
    if disabled:
        notes += "; FAIL: the outage disabled networks"
    return row("api_outage", faults=failed, crashes=len(crashes), seconds=round(time.monotonic() - began, 1),
               notes=notes + _crash_notes(crashes), **figures)


SKEW = {"small": {"users": 40, "pages": 3, "limit": 90.0}, "full": {"users": 160, "pages": 4, "limit": 300.0}}
AHEAD = 600.0  # seconds the skewed host's clock runs fast


def clock_skew(uri: str, size: str = "small") -> dict[str, Any]:
    cfg = SKEW[size]
    began = time.monotonic()
    world = World(uri, cfg["users"], cfg["pages"], latency=0.2, github_only=True)
    # networks due in 5 minutes: a host 10 minutes fast would run them now
    later = datetime.now(UTC) + timedelta(minutes=5)
    early_tokens = [f"later-{i}" for i in range(5)]
    for token in early_tokens:
        world.box.add_user("github", token, items=2)
    world.db.networks.insert_many([{"user": token, "service": "github", "accessToken": token, "mode": "initial",
                                    "scheduledTo": later} for token in early_tokens])
    daemons = world.daemons(*FAST, "--concurrency", "4")
    try:
        daemons.start("initial")
        daemons.start("initial", launcher=[sys.executable, str(ROOT / "tests" / "faults" / "skewed.py"), str(AHEAD)])
        finished = _wait(lambda: world.finished() == world.users, cfg["limit"], 0.3)
        time.sleep(1.0)  # room for a wrong early run
        requests = world.box.stats()["by_token"]
        owners = world.db.networks.distinct("lastOwner")
        world.db.networks.delete_many({"user": {"$in": early_tokens}})  # not due yet: not "stuck"
    finally:
        crashes, figures, _ = _wind_down(daemons, world)
    twice = sum(max(0, requests.get(t, 0) - cfg["pages"]) for t in world.networks)
    early = sum(requests.get(t, 0) for t in early_tokens)
    notes = (f"{world.users} users x {cfg['pages']} pages, 2 daemons, one of them on a clock {AHEAD / 60:g} minutes "
             f"fast; {len(owners)} daemons did runs; pages fetched twice: {twice}; networks due in 5 minutes "
             f"run early: {early}")
    if not finished:
        notes += f"; FAIL: not finished within {cfg['limit']:g}s"
    if twice or early:
        notes += "; FAIL: the skewed clock stole leases or ran networks early"
    figures["duplicated"] += twice
    return row("clock_skew", faults=int(AHEAD), crashes=len(crashes), seconds=round(time.monotonic() - began, 1),
               notes=notes + _crash_notes(crashes), **figures)


def run_all(uri: str, size: str) -> list[dict[str, Any]]:
    return [scenario(uri, size) for scenario in (backlog, poison, api_outage, clock_skew)]

