"""Fault scenarios: real `python -m collector --mode ...` processes against the sandbox API (in this
process, over real HTTP) and a MongoDB wire server, with faults injected from outside. Each scenario
returns one row of figures (ROW_KEYS), judged by the sandbox's counters and the database's contents:

    kill9(uri, size)      two initial-mode daemons back-fill while a driver kills one of them with
                          SIGKILL at random moments and restarts it; their leases expire and the work
                          is taken over. Every item served must be stored exactly once.
    outage(server, size)  the wire server stops in the middle of a back-fill and comes back on the same
                          port with the same data (scripts/devdb.py Server.pause()/resume()); the
                          daemons stay up, log the outage once per backoff step, and resume.
    unreachable_at_start  a daemon started against a closed port exits with code 3 and a clear message.

`size` is "small" (the test suite: tests/faults/test_faults_small.py) or "full" (scripts/faults.py).
Daemon output goes to files (a pipe nobody reads would block a chatty daemon), read at the end.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from collector.sandbox import Sandbox
from collector.sandbox import Server as SandboxServer
from tests.harness import until_catches

ROOT = Path(__file__).resolve().parents[2]
ROW_KEYS = ("scenario", "runs", "faults", "served", "stored", "duplicated", "lost", "crashes", "stuck", "seconds",
            "notes")
FAILURE_KEYS = ("lost", "duplicated", "crashes", "stuck")
SIZES = ("small", "full")

LEASE_TTL = 4.0
POLL = 0.2  # daemon.poll_interval of collector/defaults.test.toml: the first step of the outage backoff
# short leases, heartbeats and timeouts: work taken over from a killed process resumes within seconds
FAST = ["--set", f"daemon.lease_ttl={LEASE_TTL:g}", "--set", "http.total_timeout=2",
        "--set", "fleet.heartbeat_interval=0.5", "--set", "fleet.ttl=2"]
TRACEBACK = "Traceback (most recent call last)"
UNAVAILABLE = "database unavailable"
KEPT_LOGS = Path(tempfile.gettempdir()) / "collector-faults-logs"  # the logs of daemons that crashed


def row(scenario: str, **figures: Any) -> dict[str, Any]:
    """A row with exactly ROW_KEYS (missing figures are 0, notes empty)."""
    out = {k: figures.pop(k, 0) for k in ROW_KEYS if k != "scenario"}
    if figures:
        raise TypeError(f"unknown row keys: {sorted(figures)}")
    out["notes"] = out["notes"] or ""
    return {"scenario": scenario, **out}


# -- daemon processes ----------------------------------------------------------------------------


@dataclass
class Proc:
    mode: str
    popen: subprocess.Popen
    log: Path
    started: float = field(default_factory=time.monotonic)
    killed: bool = False  # by the driver (SIGKILL): not a crash
    stopping: bool = False  # SIGTERM sent by us
    crashed: str = ""  # why it counts as a crash

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


class Daemons:
    """The daemon processes of one scenario: start, kill -9, notice the ones that died on their own
    (crashes, restarted so the scenario can finish), stop them all with SIGTERM at the end."""

    def __init__(self, uri: str, dbname: str, sandbox_url: str, workdir: Path, *extra: str):
        self.uri, self.dbname, self.sandbox_url, self.workdir = uri, dbname, sandbox_url, workdir
        self.extra = list(extra)
        self.procs: list[Proc] = []

    def command(self, mode: str) -> list[str]:
        return [sys.executable, "-m", "collector", "--mode", mode, "--env", "test", "--mongodb-uri", self.uri,
                "--set", f"database.name={self.dbname}",
                "--set", f"services.github.base_url={self.sandbox_url}",
                "--set", f"services.stackoverflow.base_url={self.sandbox_url}/2.3",
                "--set", "services.github.initial_pace=0.05", "--set", "services.stackoverflow.initial_pace=0.05",
                "--set", "log.level=info", *self.extra]

    def start(self, mode: str, env_extra: dict[str, str] | None = None, launcher: list[str] | None = None) -> Proc:
        """`env_extra`: more environment (e.g. NOTIFY_SOCKET); `launcher`: run the daemon through this instead
        of `python -m collector` (the same arguments follow it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_") and k != "NOTIFY_SOCKET"}
        env["PYTHONFAULTHANDLER"] = "1"  # a daemon hung at shutdown is sent SIGABRT: its stacks land in the log
        env.update(env_extra or {})
        log = self.workdir / f"{mode}-{len(self.procs):03d}.log"
        cmd = self.command(mode)
        if launcher:
            cmd = [*launcher, *cmd[3:]]  # [python, -m, collector] replaced
        with log.open("wb") as out:
            popen = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)
        proc = Proc(mode, popen, log)
        self.procs.append(proc)
        return proc

    def alive(self) -> list[Proc]:
        return [p for p in self.procs if p.popen.poll() is None and not p.killed and not p.stopping]

    def kill(self, proc: Proc) -> None:
        proc.killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.popen.wait(timeout=10)

    def revive(self) -> int:
        """A daemon that exited on its own is a crash: recorded, and a new one started in its place."""
        died = 0
        for proc in list(self.procs):
            code = proc.popen.poll()
            if code is not None and not proc.killed and not proc.stopping and not proc.crashed:
                proc.crashed = f"{proc.mode} pid {proc.pid} exited on its own with code {code}"
                died += 1
                self.start(proc.mode)
        return died

    def stop_all(self, timeout: float = 30.0) -> None:
        live = [p for p in self.procs if p.popen.poll() is None]
        for proc in live:
            self.stop(proc)
        deadline = time.monotonic() + timeout
        for proc in live:
            try:
                code = proc.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.send_signal(signal.SIGABRT)  # faulthandler: where it hangs, in its log
                try:
                    proc.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.popen.kill()
                    proc.popen.wait()
                proc.crashed = proc.crashed or f"{proc.mode} pid {proc.pid} did not stop within {timeout:g}s of SIGTERM"
                continue
            if code != 0 and not proc.crashed:
                proc.crashed = f"{proc.mode} pid {proc.pid} exited with code {code} after SIGTERM"

    def stop(self, proc: Proc) -> None:
        """SIGTERM one daemon (without waiting for it to exit: see `Proc.popen`). A daemon started a moment ago is
        sent it once it catches it (collector/entry.py installs the handler first thing; before that the
        interpreter is still starting, and the default action, death, is not the daemon's to choose): one that never
        does within 15 s is sent it all the same, and its death counts as a crash."""
        proc.stopping = True
        until_catches(proc.pid, signal.SIGTERM, 15.0)
        with contextlib.suppress(ProcessLookupError):
            proc.popen.send_signal(signal.SIGTERM)

    def crashes(self) -> list[str]:
        """Processes that exited on their own, did not stop cleanly, or printed a Python traceback; their
        logs are kept in KEPT_LOGS (the scenario's own directory is removed)."""
        for proc in self.procs:
            if not proc.crashed and TRACEBACK in proc.output():
                proc.crashed = f"{proc.mode} pid {proc.pid} printed a traceback: " + _traceback_tail(proc.output())
            if proc.crashed and proc.log.exists():
                KEPT_LOGS.mkdir(parents=True, exist_ok=True)
                kept = KEPT_LOGS / f"{self.dbname}-{proc.log.name}"
                shutil.copyfile(proc.log, kept)
                proc.crashed += f" (log: {kept})"
        return [p.crashed for p in self.procs if p.crashed]

    def count(self, needle: str) -> dict[int, int]:
        return {p.pid: p.output().count(needle) for p in self.procs}


def _traceback_tail(text: str) -> str:
    at = text.find(TRACEBACK)
    lines = [ln.strip() for ln in text[at:at + 6000].replace("\\n", "\n").splitlines() if ln.strip()]
    return (lines[-1] if lines else "?")[:200]


# -- the world: a database of its own, the sandbox API, networks --------------------------------


class World:
    """A throwaway database on the wire server, the sandbox API, and `users` networks of `pages` pages
    each (the sandbox hands out 2 items per page), a quarter of them Stack Exchange."""

    def __init__(self, uri: str, users: int, pages: int, latency: float = 0.0, github_only: bool = False):
        self.uri = uri
        self.client: MongoClient = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=10_000)
        self.dbname = f"collector_faults_{uuid.uuid4().hex[:10]}"
        self.db = self.client[self.dbname]
        self.server = SandboxServer(Sandbox(page_cap=2, latency=latency)).start()
        self.box = self.server.sandbox
        self.workdir = Path(tempfile.mkdtemp(prefix="collector-faults-"))
        self.users = users
        self.networks: dict[str, tuple[Any, str]] = {}  # token -> (user, service)
        now = datetime.now(UTC)
        docs = []
        for i in range(users):
            service = "stackoverflow" if i % 4 == 0 and not github_only else "github"
            token = f"fault-{i:04d}-{uuid.uuid4().hex[:8]}"
            self.box.add_user(service, token, items=pages * 2)
            self.networks[token] = (f"user{i}", service)
            docs.append({"user": f"user{i}", "service": service, "accessToken": token, "mode": "initial",
                         "scheduledTo": now})
        self.db.networks.insert_many(docs)
        self.total_items = users * pages * 2

    def daemons(self, *extra: str) -> Daemons:
        return Daemons(self.uri, self.dbname, self.server.url, self.workdir, *extra)

    def finished(self) -> int:
        return self.db.networks.count_documents({"mode": "normal"})

    def stored(self) -> int:
        return self.db.items.count_documents({})

    def served(self) -> int:
        with self.box.lock:
            return sum(len(ids) for ids in self.box.served_ids.values())

    def tally(self, lease_ttl: float = LEASE_TTL) -> dict[str, int]:
        """runs, served, stored, duplicated, lost, stuck: read from the sandbox and the database."""
        runs = sum(int((d.get("stats") or {}).get("runs") or 0) for d in self.db.networks.find({}, {"stats": 1}))
        keys: Counter = Counter()
        by_user: dict[tuple[Any, str], set[str]] = defaultdict(set)
        for doc in self.db.items.find({}, {"user": 1, "service": 1, "itemId": 1}):
            keys[(str(doc.get("user")), str(doc.get("service")), str(doc.get("itemId")))] += 1
            by_user[(doc.get("user"), doc.get("service"))].add(str(doc.get("itemId")))
        stored = sum(keys.values())
        duplicated = sum(1 for n in keys.values() if n > 1)  # (user, service, itemId) groups stored twice
        with self.box.lock:
            served_ids = {t: {str(i) for i in ids} for t, ids in self.box.served_ids.items()}
        served = sum(len(ids) for ids in served_ids.values())
        lost = sum(len(ids - by_user[self.networks[t]]) for t, ids in served_ids.items() if t in self.networks)
        cutoff = datetime.now(UTC) - timedelta(seconds=lease_ttl)
        stuck = 0
        for doc in self.db.networks.find({}, {"mode": 1, "disabled": 1, "lease": 1}):
            until = (doc.get("lease") or {}).get("until") if isinstance(doc.get("lease"), dict) else None
            stale = isinstance(until, datetime) and until < cutoff
            stuck += 1 if doc.get("mode") != "normal" or doc.get("disabled") or stale else 0
        return {"runs": runs, "served": served, "stored": stored, "duplicated": duplicated, "lost": lost,
                "stuck": stuck}

    def close(self) -> None:
        self.server.stop()
        with contextlib.suppress(Exception):
            self.client.drop_database(self.dbname)
        self.client.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _wait(predicate, timeout: float, step: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def _crash_notes(crashes: list[str]) -> str:
    return f"; CRASH: {crashes[0]}" + (f" (+{len(crashes) - 1} more)" if len(crashes) > 1 else "") if crashes else ""


# -- kill -9 -------------------------------------------------------------------------------------

# latency: seconds the sandbox takes per request, so that the back-fill lasts long enough for the kills to land
# in the middle of it, with runs in flight (on an atomic engine, without it, 200 runs take 3 s)
KILL9 = {
    "small": {"users": 40, "pages": 5, "kills": 4, "concurrency": 4, "latency": 0.4, "limit": 75.0},
    "full": {"users": 200, "pages": 5, "kills": 20, "concurrency": 6, "latency": 0.4, "limit": 480.0},
}


def kill9(uri: str, size: str = "small", *, seed: int | None = None) -> dict[str, Any]:
    """Two initial-mode daemons back-fill `users` x `pages`; a driver SIGKILLs one of them (chosen at
    random) at random moments, `kills` times, restarting it each time. Ends when every network is in
    normal mode (or the time limit passes: then `stuck` says how many are not)."""
    cfg = KILL9[size]
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    began = time.monotonic()
    world = World(uri, cfg["users"], cfg["pages"], latency=cfg["latency"])
    daemons = world.daemons(*FAST, "--concurrency", str(cfg["concurrency"]))
    kills, held, timed_out = 0, 0, False
    try:
        for _ in range(2):
            daemons.start("initial")
        target, deadline = cfg["kills"], began + cfg["limit"]
        # the kills come at random points of the back-fill's progress (shares of the pages served), not of the
        # clock: however fast the machine, each one lands while pages are still being fetched
        marks = sorted(rng.uniform(0.05, 0.85) for _ in range(target))
        # progress is read from the sandbox (free); the database (shared with the daemons) is asked only
        # once every page has been served at least once
        while world.served() < world.total_items or world.finished() < world.users:
            now = time.monotonic()
            if now > deadline:
                timed_out = True
                break
            daemons.revive()
            if kills < target and world.served() >= marks[kills] * world.total_items and daemons.alive():
                victim = rng.choice(daemons.alive())
                held += _leases_of_pid(world, victim.pid)
                daemons.kill(victim)
                daemons.start(victim.mode)
                kills += 1
            time.sleep(0.2 if world.served() < world.total_items else 1.0)
    finally:
        daemons.stop_all()
        try:
            crashes = daemons.crashes()
            figures = world.tally()
        finally:
            world.close()
    notes = (f"{world.users} users x {cfg['pages']} pages, 2 initial daemons, {kills} x kill -9 "
             f"(the victims held {held} live leases), seed {seed}")
    if timed_out:
        notes += f"; TIMED OUT after {cfg['limit']:g}s"
    if kills < target:
        notes += f"; only {kills}/{target} kills: the back-fill finished first"
    return row("kill9", faults=kills, crashes=len(crashes), seconds=round(time.monotonic() - began, 1),
               notes=notes + _crash_notes(crashes), **figures)


def _leases_of_pid(world: World, pid: int) -> int:
    """How many networks the process with this pid holds a live lease on (from its registry document)."""
    doc = world.db.collectors.find_one({"pid": pid}, {"_id": 1})
    if doc is None:
        return 0
    return world.db.networks.count_documents({"lease.owner": doc["_id"], "lease.until": {"$gt": datetime.now(UTC)}})


# -- database outage -----------------------------------------------------------------------------

OUTAGE = {
    "small": {"users": 24, "pages": 5, "seconds": 6.0, "limit": 60.0},
    "full": {"users": 60, "pages": 5, "seconds": 30.0, "limit": 240.0},
}
RETRY_CAP = 5.0  # database.retry_cap for the outage daemons: the backoff reaches its cap within the outage
DB_TIMEOUT = 2.0  # database.timeout: how long one look at a dead server blocks
# a daemon SIGTERMed during the outage exits 0 within this: shutdown_grace (5 s in collector/defaults.test.toml) plus a
# few database timeouts for its last words (lease releases, the "stopped" heartbeat), far below systemd's
# TimeoutStopSec (45 s)
STOP_LIMIT = 20.0


def log_bound(outage: float, poll: float = POLL, retry_cap: float = RETRY_CAP) -> int:
    """The most "database unavailable" lines one daemon may print for an outage this long: one per
    backoff step (doubling from the poll interval up to the cap, then one per cap) plus two."""
    return math.floor(math.log2(max(outage / poll, 1.0)) + outage / retry_cap + 2)


def outage(server: Any, size: str = "small", *, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Two initial-mode daemons back-fill; once a third of the items is served the wire server is killed
    for `seconds` (server.pause()) and started again on the same port with the same data
    (server.resume()). A third daemon is SIGTERMed a third of the way into the outage: it must exit 0
    within STOP_LIMIT. `server` is a scripts/devdb.py Server of our own. Also runs unreachable_at_start.

    `details` (optional) is filled with what the row cannot hold: "database unavailable" lines per
    daemon, the bound, items before/after, how long the daemons took to resume, the start check."""
    cfg = OUTAGE[size]
    details = {} if details is None else details
    began = time.monotonic()
    world = World(server.uri, cfg["users"], cfg["pages"])
    daemons = world.daemons(*FAST, "--concurrency", "8", "--set", f"database.retry_cap={RETRY_CAP:g}",
                            "--set", f"database.timeout={DB_TIMEOUT:g}")
    fails: list[str] = []
    paused, stopped_in = False, None
    try:
        workers = [daemons.start("initial") for _ in range(2)]
        quitter = daemons.start("initial")  # SIGTERMed during the outage: it must still stop cleanly, in time
        if not _wait(lambda: world.served() >= world.total_items // 3, cfg["limit"] / 2):
            fails.append("the back-fill never got a third of the way before the outage")
        stored_before = world.stored()
        # the database is gone at once: every connection closed, operations on the wire cut off mid-way,
        # new connections refused
        server.pause()
        paused, down_at = True, time.monotonic()
        term_at = None
        # the outage lasts `seconds`, and longer if need be until the quitter is gone (or STOP_LIMIT passed):
        # its whole shutdown happens without a database
        while True:
            down = time.monotonic() - down_at
            if term_at is None and down >= cfg["seconds"] / 3:
                daemons.stop(quitter)
                term_at = time.monotonic()
            if term_at is not None and stopped_in is None and quitter.popen.poll() is not None:
                stopped_in = time.monotonic() - term_at
            if daemons.revive():
                fails.append("a daemon exited during the outage")
            if down >= cfg["seconds"] and (stopped_in is not None or time.monotonic() - term_at > STOP_LIMIT):
                break
            time.sleep(0.1)
        exited_during = [p.crashed for p in daemons.procs if p.crashed]
        server.resume()
        paused, up_at, down_for = False, time.monotonic(), time.monotonic() - down_at
        stored_after_resume = world.stored()
        resumed = _wait(lambda: world.stored() > stored_after_resume or world.finished() == world.users, 60, 0.2)
        resumed_in = time.monotonic() - up_at
        if not resumed:
            fails.append("no progress within 60s of the database coming back")
        if not _wait(lambda: daemons.revive() >= 0 and world.finished() == world.users,
                     max(cfg["limit"] - (time.monotonic() - began), 10.0), 0.3):
            fails.append("the back-fill did not finish after the outage")
        for proc in daemons.procs:
            if proc.popen.poll() is not None and not proc.crashed and not proc.stopping:
                proc.crashed = f"{proc.mode} pid {proc.pid} exited on its own with code {proc.popen.returncode}"
    finally:
        if paused:
            with contextlib.suppress(Exception):
                server.resume()
        daemons.stop_all()
        try:
            crashes = daemons.crashes()
            figures = world.tally()
            lines = daemons.count(UNAVAILABLE)
            sizes = {p.pid: len(p.output().splitlines()) for p in daemons.procs}
        finally:
            world.close()
    bound = log_bound(down_for)
    worker_lines = [lines[p.pid] for p in workers]
    over = [n for n in lines.values() if n > bound]
    if over:
        fails.append(f"log flood: {max(over)} '{UNAVAILABLE}' lines > bound {bound}")
    if min(worker_lines) == 0:
        fails.append(f"a daemon never logged '{UNAVAILABLE}' during a {down_for:.0f}s outage")
    quit_code = quitter.popen.returncode
    if stopped_in is None or stopped_in > STOP_LIMIT:
        fails.append(f"a daemon SIGTERMed during the outage was still running {STOP_LIMIT:g}s later")
    elif quit_code != 0:
        fails.append(f"a daemon SIGTERMed during the outage exited with code {quit_code}")
    if stored_after_resume < stored_before:
        fails.append(f"data lost across the restart: {stored_before} items before, {stored_after_resume} after")
    start = unreachable_at_start()
    if not start["ok"]:
        fails.append(f"start against a closed port: {start['problem']}")
    details.update(unavailable_lines=worker_lines, quitter_lines=lines[quitter.pid], bound=bound,
                   down_for=down_for, output_lines=list(sizes.values()), stored_before=stored_before,
                   stored_after_resume=stored_after_resume, resumed_in=round(resumed_in, 1),
                   exited_during_outage=exited_during, quitter={"code": quit_code, "seconds": stopped_in and
                                                                round(stopped_in, 1)},
                   start=start, fails=fails)
    notes = (f"{world.users} users x {cfg['pages']} pages, 2 initial daemons (+1 SIGTERMed during the outage: "
             f"exit {quit_code} in {stopped_in or 0:.1f}s), database down {down_for:.0f}s; '{UNAVAILABLE}' lines "
             f"per daemon {sorted(worker_lines)} (bound {bound}); resumed {resumed_in:.1f}s after restart; closed "
             f"port at start: exit {start['code']} in {start['seconds']}s")
    if fails:
        notes += "; FAIL: " + "; ".join(fails)
    return row("outage", faults=round(down_for), crashes=len(crashes), seconds=round(time.monotonic() - began, 1),
               notes=notes + _crash_notes(crashes), **figures)


def unreachable_at_start(timeout: float = DB_TIMEOUT, limit: float = 10.0) -> dict[str, Any]:
    """A daemon started against a closed port must exit with code 3 within `limit` seconds and say
    "cannot reach MongoDB" (no traceback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the socket is: nothing listens there
    cmd = [sys.executable, "-m", "collector", "--mode", "initial", "--env", "test",
           "--mongodb-uri", f"mongodb://127.0.0.1:{port}/", "--set", f"database.timeout={timeout:g}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_") and k != "NOTIFY_SOCKET"}
    began = time.monotonic()
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=limit * 3)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = None, str(exc.stdout or "") + str(exc.stderr or "")
    seconds = round(time.monotonic() - began, 1)
    problem = ""
    if code != 3:
        problem = f"exit code {code}, expected 3"
    elif seconds > limit:
        problem = f"took {seconds}s (limit {limit:g}s)"
    elif "cannot reach MongoDB" not in out:
        problem = "no 'cannot reach MongoDB' in its output"
    elif TRACEBACK in out:
        problem = "a traceback in its output"
    return {"ok": not problem, "problem": problem, "code": code, "seconds": seconds, "output": out[-2000:]}
