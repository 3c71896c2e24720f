"""Scenarios 3 (hostile APIs) and 5 (secrets) of "Reliability under faults".

Real daemon processes (one initial, one normal) against a wire server and the sandbox API over
real HTTP. Networks are mixed GitHub / Stack Overflow, most healthy, each faulty one with one fault
(every sandbox fault kind, several networks per case). Each network must end in the state
docs/states.md / collector/states.py document for its fault; requests are bounded by http.total_timeout;
oversize bodies are cut off unread; no token appears anywhere (outputs, CLI, database, URLs).

    run(uri, "small" | "full") -> [hostile row, secrets row]
    execute(uri, size) -> Report   (the rows plus per-case detail, for tests/faults/test_hostile_small.py)

Phases: 1. back-fill with the faults; 2. normal mode picks up one new item on a subset (operator
makes them due now); 3. app-wide limits with absurd values on Stack Overflow (the whole service
pauses, so these run alone at the end); then the secret checks and a clean SIGTERM of both daemons.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from collector.sandbox import Sandbox, Server
from tests.harness import until_catches

ROOT = Path(__file__).resolve().parents[2]
GH, SO = "github", "stackoverflow"
KEYS = ("scenario", "runs", "faults", "served", "stored", "duplicated", "lost", "crashes", "stuck", "seconds",
        "notes")

# the settings the daemons run with (and the checks below rely on)
ITEMS = 2  # items per user upstream: one page of PAGE_CAP (a healthy back-fill is one run: the test engine scans)
PAGE_CAP = 2
TOTAL_TIMEOUT = 2.0  # http.total_timeout: below read_timeout (5 s in collector/defaults.test.toml): it is what bounds
MAX_BODY = 1_000_000  # http.max_body_bytes
OVERSIZE = 50_000_000  # bodies the sandbox offers, 50x the cap
BACKOFF_BASE = 0.5
MAX_ERRORS = 5
SLACK = 0.2  # schedule.rate_limit_slack
LEASE_TTL = 30.0  # daemon.lease_ttl of collector/defaults.test.toml
TWO_DAYS = 2 * 86400.0  # collector/sdk/_limits.py MAX_WAIT: the longest any API can make us wait
MINUTE = 60.0  # "told to wait without saying how long: a conservative minute" (states.py)
RECHECK = 1.0  # schedule.unauthorized_recheck: a first 401 marks, the run this much later confirms (or clears) it
SHORT = 3  # seconds of the short network rate limits
PAUSE = 3  # seconds of the Stack Overflow app-wide pauses (throttle_violation, backoff)
# waits count from the API's answer, which follows the request's arrival by at most total_timeout (plus the
# event loop's lag on a loaded machine): the upper tolerance of a wait measured from the arrival
ANSWER = TOTAL_TIMEOUT + 0.75
DRIFT = 0.05  # tolerance between the sandbox's and the daemons' clocks (same host)
FAST = ["--set", f"http.total_timeout={TOTAL_TIMEOUT}", "--set", f"http.max_body_bytes={MAX_BODY}",
        "--set", f"schedule.backoff_base={BACKOFF_BASE}", "--set", f"schedule.max_errors={MAX_ERRORS}",
        "--set", "schedule.disable_after=0",  # the count alone (a day-long streak does not fit the suite)
        "--set", f"schedule.rate_limit_slack={SLACK}", "--set", "schedule.jitter=0.0",
        "--set", "schedule.normal_interval=3600", "--set", f"schedule.unauthorized_recheck={RECHECK:g}",
        # each 401 here is its network's own: the storm detection (collector/incidents.py) is the
        # revocation_storm scenario's subject, and a few 401s among the first runs must not look like one
        "--set", "schedule.incident_min_runs=1000000", "--set", "log.level=info"]


@dataclass(frozen=True)
class Case:
    """One kind of faulty network: its fault and the end state the docs promise for it.

    expect: recovers (errors+1 per failure, backoff, then success: normal mode, errors 0),
            disabled (max_errors failures in a row),
            unauthorized (a 401, confirmed by a second one RECHECK later: disabled + unauthorized),
            rechecked (a single 401: marked, then the recheck RECHECK later succeeds and clears the mark),
            forbidden (a 403 that is no rate limit: disabled at once, not unauthorized),
            limited (network rate limit: due at the reset, errors unchanged, then success),
            paused (Stack Exchange app-wide limit: the whole service waits, then success),
            waits (a long or clamped wait: rate limited, due at hit + wait + slack),
            waits_page (the page stored, then due at the clamped reset),
            healthy (no fault)."""

    name: str
    kind: str  # a sandbox FAULTS kind, "revoked" or "healthy"
    service: str
    expect: str
    fault: dict[str, Any] | None = None
    error: str | None = None  # lastError.kind
    failures: int = 0  # requests that fail before the fault clears
    wait: float = 0.0  # the documented wait of a rate limit (before slack)
    phase: int = 1
    redacted: bool = False  # the API echoes the token in its error body: must show up as [redacted]


def _hdr(name: str, status: int, headers: dict[str, str], expect: str, wait: float = 0.0,
         error: str | None = "rate_limited", failures: int = 0) -> Case:
    return Case(f"headers-{name}", "headers", GH, expect, {"kind": "headers", "status": status, "headers": headers},
                error, failures, wait)


FAR = "99999999999"  # year 5138
CASES: list[Case] = [
    Case("5xx-500-gh", "status", GH, "recovers", {"kind": "status", "status": 500, "count": 2}, "http_5xx", 2),
    Case("5xx-503-so", "status", SO, "recovers", {"kind": "status", "status": 503, "count": 2}, "http_5xx", 2),
    Case("5xx-502-persistent-gh", "status", GH, "disabled", {"kind": "status", "status": 502, "count": MAX_ERRORS},
         "http_5xx", MAX_ERRORS),
    Case("5xx-echo-gh", "status", GH, "recovers", {"kind": "status", "status": 500, "echo": True}, "http_5xx", 1,
         redacted=True),
    Case("5xx-echo-so", "status", SO, "recovers", {"kind": "status", "status": 500, "echo": True}, "http_5xx", 1,
         redacted=True),
    # the token right across the 200-byte cut of the error snippet recorded in lastError: half a token is a leak
    Case("5xx-echo-cut-gh", "status", GH, "recovers", {"kind": "status", "status": 500, "echo": True, "pad": 150},
         "http_5xx", 1),
    Case("rate_limit-gh", "rate_limit", GH, "limited", {"kind": "rate_limit", "seconds": SHORT}, "rate_limited",
         wait=SHORT),
    Case("rate_limit-so", "rate_limit", SO, "paused", {"kind": "rate_limit", "seconds": PAUSE}, "rate_limited",
         wait=PAUSE),
    Case("retry_after-gh", "retry_after", GH, "limited", {"kind": "retry_after", "seconds": SHORT}, "rate_limited",
         wait=SHORT),
    # Stack Exchange limits are in the body: its connector reads no headers, so a 429 + Retry-After is a
    # rate limit "without saying how long": the conservative minute
    Case("retry_after-so", "retry_after", SO, "waits", {"kind": "retry_after", "seconds": SHORT}, "rate_limited",
         wait=MINUTE),
    # one 401 (the sandbox's default count): marked, and the recheck succeeds; two in a row: disabled
    Case("unauthorized-gh", "unauthorized", GH, "rechecked", {"kind": "unauthorized"}, "unauthorized", 1),
    Case("unauthorized-so", "unauthorized", SO, "rechecked", {"kind": "unauthorized"}, "unauthorized", 1),
    Case("unauthorized-echo-gh", "unauthorized", GH, "unauthorized", {"kind": "unauthorized", "echo": True,
                                                                      "count": 2}, "unauthorized", redacted=True),
    Case("unauthorized-echo-so", "unauthorized", SO, "unauthorized", {"kind": "unauthorized", "echo": True,
                                                                      "count": 2}, "unauthorized", redacted=True),
    Case("revoked-gh", "revoked", GH, "unauthorized", None, "unauthorized"),
    Case("revoked-so", "revoked", SO, "unauthorized", None, "unauthorized"),
    *[Case(f"{kind}-{tag}", kind, svc, "recovers", {"kind": kind}, "bad_json", 1)
      for kind in ("malformed", "truncated", "wrong_type") for tag, svc in (("gh", GH), ("so", SO))],
    Case("oversize-length-gh", "oversize", GH, "recovers", {"kind": "oversize", "size": OVERSIZE}, "too_large", 1),
    Case("oversize-chunked-so", "oversize", SO, "recovers",
         {"kind": "oversize", "size": OVERSIZE, "framing": "chunked"}, "too_large", 1),
    Case("oversize-gzip-gh", "oversize", GH, "recovers", {"kind": "oversize", "size": OVERSIZE, "framing": "gzip"},
         "too_large", 1),
    *[Case(f"{kind}-{tag}", kind, svc, "recovers", {"kind": kind, "seconds": 30},
           "timeout" if kind != "reset" else "connection", 1)
      for kind in ("timeout", "drip", "reset") for tag, svc in (("gh", GH), ("so", SO))],
    Case("backoff-so", "backoff", SO, "paused", {"kind": "backoff", "seconds": PAUSE}, wait=PAUSE),
    # absurd rate-limit headers (GitHub reads x-ratelimit-* and Retry-After)
    _hdr("reset-far", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": FAR}, "waits", TWO_DAYS),
    _hdr("reset-negative", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "-5"}, "waits", MINUTE),
    _hdr("reset-garbage", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "soon"}, "waits", MINUTE),
    _hdr("reset-inf", 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": "1e999"}, "waits", MINUTE),
    _hdr("retry-after-huge", 429, {"retry-after": "999999999"}, "waits", TWO_DAYS),
    _hdr("retry-after-date", 429, {"retry-after": "Fri, 31 Dec 9999 23:59:59 GMT"}, "waits", TWO_DAYS),
    _hdr("retry-after-garbage", 429, {"retry-after": "soon!"}, "waits", MINUTE),
    _hdr("retry-after-negative", 429, {"retry-after": "-5"}, "waits", MINUTE),
    _hdr("429-bare", 429, {}, "waits", MINUTE),
    # a 403 that is no rate limit is a permission error: disabled at once with the reason, never retried
    _hdr("403-bare", 403, {}, "forbidden", error="forbidden"),
    _hdr("remaining-garbage", 403, {"x-ratelimit-remaining": "lots", "x-ratelimit-reset": FAR}, "forbidden",
         error="forbidden"),
    _hdr("200-reset-far", 200, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": FAR}, "waits_page", TWO_DAYS,
         error=None),
]
# phase 3: app-wide limits with absurd values pause the whole Stack Overflow service, so they run last, alone
APP_WIDE = [
    Case("app-throttle-absurd-so", "rate_limit", SO, "waits", {"kind": "rate_limit", "seconds": 10**20},
         "rate_limited", wait=TWO_DAYS, phase=3),
    Case("app-backoff-absurd-so", "backoff", SO, "waits_page", {"kind": "backoff", "seconds": 999_999_999},
         wait=TWO_DAYS, phase=3),
]
HEALTHY = {GH: Case("healthy-gh", "healthy", GH, "healthy"), SO: Case("healthy-so", "healthy", SO, "healthy")}
SERVICE_PAUSES = {"rate_limit-so", "backoff-so"}  # each pauses every Stack Overflow network: fewer of them


@dataclass
class Net:
    case: Case
    user: str
    token: str
    id: Any = None
    extra: int = 0  # items added upstream in phase 2


@dataclass
class Report:
    rows: list[dict[str, Any]]
    cases: dict[str, dict[str, Any]]  # per case: kind, service, expect, networks, problems, end states
    longest_request: float  # seconds, arrival to end of the reply (or the client gone), over every API request
    longest_run: float  # seconds, request arrival to the daemon's log line of that run
    oversize: list[dict[str, Any]]  # the sandbox's transfers of oversize bodies: size vs bytes sent
    leaks: list[str]
    places: int
    problems: list[str]
    crashes: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    pauses: dict[str, float] = field(default_factory=dict)  # phase 3: service pause length, seconds


def plan(size: str, rng: random.Random) -> list[Net]:
    """"small": 120 networks, every case once and every fault kind at least twice; "full": 1,000 networks,
    every case 8 times (the app-wide Stack Overflow pauses 4 times: each one stops every Stack Overflow network)."""
    if size == "small":
        cases = list(CASES)
        kinds = Counter(c.kind for c in cases)
        cases += [c for c in CASES if kinds[c.kind] < 2]  # backoff has one case: twice
        total = 120
    elif size == "full":
        cases = [c for c in CASES for _ in range(4 if c.name in SERVICE_PAUSES else 8)]
        total = 1000
    else:
        raise ValueError(f"size must be 'small' or 'full', not {size!r}")
    healthy = total - len(cases)
    cases += [HEALTHY[GH if i % 5 < 3 else SO] for i in range(healthy)]
    rng.shuffle(cases)
    return [Net(c, f"u{i:04d}-{c.name}", f"tok-{uuid.uuid4().hex}") for i, c in enumerate(cases)]


# -- processes --------------------------------------------------------------------------------------------


def launch(mode: str, uri: str, dbname: str, sandbox_url: str, out: Path) -> subprocess.Popen:
    """tests/integration/test_daemons.py daemon(), logging to a file: info-level JSON logs of a thousand
    networks would fill a pipe nobody reads until the end, and block the daemon."""
    cmd = [sys.executable, "-m", "collector", "--mode", mode, "--env", "test", "--mongodb-uri", uri,
           "--set", f"database.name={dbname}",
           "--set", f"services.github.base_url={sandbox_url}",
           "--set", f"services.stackoverflow.base_url={sandbox_url}/2.3",
           "--set", "services.github.initial_pace=0.05", "--set", "services.stackoverflow.initial_pace=0.05",
           *FAST]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    with out.open("wb") as sink:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> int:
    if proc.poll() is None:
        until_catches(proc.pid, signal.SIGTERM, 15.0)  # a daemon just started: once its handler is in
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


def cli(uri: str, dbname: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update(MONGODB_URI=uri, COLLECTOR_DATABASE__NAME=dbname)
    return subprocess.run([sys.executable, "-m", "collector", "--env", "test", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def wait_until(predicate, timeout: float, step: float = 1.0) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


# -- the documented end states ------------------------------------------------------------------------------


def _ts(value: Any) -> float | None:
    return value.timestamp() if isinstance(value, datetime) else None


def backoff(n: int) -> float:
    return BACKOFF_BASE * 2 ** (n - 1)  # states.backoff: far below backoff_cap here


def _finished(doc: dict[str, Any], stored: int, expected: int) -> bool:
    return (doc.get("mode") == "normal" and not doc.get("disabled") and doc.get("errors", 0) == 0
            and stored == expected and "lease" not in doc and (_ts(doc.get("scheduledTo")) or 0) > time.time() + 600)


def judge(net: Net, doc: dict[str, Any] | None, hits: list[float], stored: int,
          so_hits: list[float]) -> tuple[bool, list[str]]:
    """(settled, problems): settled = finished, or in the documented terminal / waiting state; problems =
    every way the network differs from what docs/states.md and states.py say for its fault (empty when right)."""
    c = net.case
    if doc is None:
        return False, ["network document missing"]
    expected = ITEMS + net.extra
    stats = doc.get("stats") or {}
    err = (doc.get("lastError") or {}).get("kind")
    reason = str(doc.get("disabledReason") or "")
    until = _ts(doc.get("rateLimitedUntil"))
    due = _ts(doc.get("scheduledTo"))
    done = _finished(doc, stored, expected)
    p: list[str] = []

    def want(cond: bool, what: str) -> None:
        if not cond:
            p.append(what)

    def gaps() -> None:  # exponential backoff between the failed attempts and the next one
        for i in range(min(c.failures, len(hits) - 1)):
            want(hits[i + 1] - hits[i] >= backoff(i + 1) - 0.3,
                 f"retry {i + 1} after {hits[i + 1] - hits[i]:.2f}s < backoff {backoff(i + 1)}s")

    def waited(wait: float) -> None:  # due at the (clamped) reset + slack, counted from the API's answer
        if not hits:
            return p.append("never requested")
        want(until is not None, "no rateLimitedUntil")
        if until is not None:
            # a wait clamped to collector/sdk/_limits.py MAX_WAIT may hold the slack inside the clamp
            lo = hits[0] + (wait if wait >= TWO_DAYS else wait + SLACK) - DRIFT
            hi = hits[0] + wait + SLACK + ANSWER + DRIFT
            if c.kind == "rate_limit" and c.service == GH:  # x-ratelimit-reset is a whole Unix second
                lo, hi = int(hits[0] + wait) + SLACK - DRIFT, int(hits[0] + wait) + 1 + SLACK + DRIFT
            want(lo <= until <= hi, f"rateLimitedUntil hit+{until - hits[0]:.1f}s, documented {wait:g}+{SLACK}s")
        if len(hits) > 1:
            floor = int(hits[0] + wait) if c.kind == "rate_limit" and c.service == GH else hits[0] + wait - 0.2
            want(hits[1] >= floor - DRIFT, f"called again {hits[1] - hits[0]:.2f}s after the limit of {wait:g}s")
        want(doc.get("errors", 0) == 0 and not stats.get("transient"), "a rate limit counted as an error")

    if c.expect == "healthy":
        settled = done
        want(done, f"not finished: mode={doc.get('mode')} stored={stored}/{expected}")
        want(not stats.get("transient") and not stats.get("rate_limited"), f"healthy network failed: {stats}")
    elif c.expect == "recovers":
        settled = done
        want(done, f"not recovered: mode={doc.get('mode')} errors={doc.get('errors')} stored={stored}/{expected}")
        want(stats.get("transient") == c.failures, f"transient runs {stats.get('transient')} != {c.failures}")
        want(err == c.error, f"lastError.kind {err} != {c.error}")
        want(len(hits) >= c.failures + 1, f"{len(hits)} requests for {c.failures} failures and a success")
        gaps()
    elif c.expect == "disabled":
        settled = bool(doc.get("disabled"))
        want(settled and not doc.get("unauthorized"), "not disabled (or disabled as unauthorized)")
        want(doc.get("errors") == MAX_ERRORS, f"errors {doc.get('errors')} != max_errors {MAX_ERRORS}")
        want(f"disabled after {MAX_ERRORS} consecutive failures" in reason, f"disabledReason {reason[:80]!r}")
        want(err == c.error, f"lastError.kind {err} != {c.error}")
        want(len(hits) == MAX_ERRORS, f"{len(hits)} requests, expected {MAX_ERRORS} then none")
        want(doc.get("scheduledTo") is None, "a disabled network is still scheduled")
        gaps()
    elif c.expect == "forbidden":
        settled = bool(doc.get("disabled"))
        want(settled and not doc.get("unauthorized"), "not disabled (or disabled as unauthorized)")
        want(reason.startswith("forbidden"), f"disabledReason {reason[:80]!r}")
        want(err == "forbidden", f"lastError.kind {err}")
        want(len(hits) == 1, f"{len(hits)} requests after a permission error, expected 1")
        want(stored == 0, "items stored")
    elif c.expect in ("unauthorized", "rechecked"):  # the first 401 marks, the run RECHECK later decides
        if c.expect == "unauthorized":
            settled = bool(doc.get("disabled"))
            want(settled and doc.get("unauthorized") is True, "not disabled+unauthorized")
            want(reason.startswith("unauthorized"), f"disabledReason {reason[:80]!r}")
            want(stats.get("unauthorized") == 2 and stored == 0, f"stats {stats}, {stored} stored")
        else:
            settled = done
            want(done and doc.get("unauthorized") is False, f"not cleared by the recheck: {end_state(doc)}")
            want(stats.get("unauthorized") == 1 and "authFailures" not in doc, f"stats {stats}")
        want(err == "unauthorized", f"lastError.kind {err}")
        want(len(hits) == 2 + net.extra, f"{len(hits)} requests with a refused token, expected 2 (the 401, its "
             f"recheck) + {net.extra} (phase 2)")
        gap = hits[1] - hits[0] if len(hits) > 1 else RECHECK
        want(gap >= RECHECK - DRIFT, f"rechecked {gap:.2f}s after the first 401, unauthorized_recheck {RECHECK:g}s")
        want(doc.get("errors", 0) == 0, "errors counted")
    elif c.expect in ("limited", "paused"):
        settled = done
        want(done, f"not finished after its limit: mode={doc.get('mode')} stored={stored}/{expected}")
        waited(c.wait)
        if c.kind == "backoff":  # the page itself is fine: stored, then the whole service waits
            want(stats.get("page", 0) >= 1 and not stats.get("rate_limited"), f"stats {stats}")
        else:
            want(stats.get("rate_limited") == 1 and err == "rate_limited", f"stats {stats}, lastError {err}")
        if c.expect == "paused" and hits:  # app-wide: no Stack Overflow request at all during the pause
            quiet = [h for h in so_hits if hits[0] + 1.5 <= h <= hits[0] + c.wait - 0.2]
            want(not quiet, f"{len(quiet)} Stack Overflow requests during its app-wide pause")
    elif c.expect == "waits":
        waiting = (len(hits) == 1 and (doc.get("lastOutcome") or {}).get("kind") == "rate_limited"
                   and doc.get("mode") == "initial" and due is not None and until is not None
                   and abs(due - until) < 0.01)
        settled = waiting or done
        want(settled, f"neither waiting for its limit nor finished: {doc.get('lastOutcome')}")
        want(err == "rate_limited", f"lastError.kind {err}")
        waited(c.wait)
    elif c.expect == "waits_page":  # history exhausted (one page), due at the reset rather than normal_interval
        waiting = (len(hits) == 1 and stats.get("page") == 1 and due is not None and until is not None
                   and abs(due - until) < 0.01)
        settled = waiting
        want(waiting, f"not waiting after its page: hits={len(hits)} stats={stats}")
        want(stored == ITEMS, f"page not stored: {stored}/{ITEMS}")
        want(doc.get("mode") == "normal" and doc.get("errors", 0) == 0, "mode/errors not those of a success")
        waited(c.wait)
    else:
        raise ValueError(c.expect)
    if c.redacted:
        text = reason if c.expect == "unauthorized" else str((doc.get("lastError") or {}).get("message", ""))
        want("[redacted]" in text, f"echoed token not shown as [redacted]: {text[:120]!r}")
    lease = doc.get("lease")
    if lease and (_ts(lease.get("until")) or time.time()) < time.time():
        p.append("still leased past its lease")
    return settled, p


def end_state(doc: dict[str, Any] | None) -> tuple:
    """A short, comparable summary of a network's end state."""
    if doc is None:
        return ("missing",)
    return (doc.get("mode"), bool(doc.get("disabled")), bool(doc.get("unauthorized")), doc.get("errors", 0),
            (doc.get("lastError") or {}).get("kind"), (doc.get("lastOutcome") or {}).get("kind"))


# -- the scenario -------------------------------------------------------------------------------------------


def run(uri: str, size: str) -> list[dict[str, Any]]:
    return execute(uri, size).rows


def execute(uri: str, size: str, seed: int = 3) -> Report:
    from pymongo import MongoClient

    started = time.monotonic()
    rng = random.Random(seed)
    nets = plan(size, rng)
    client = MongoClient(uri, tz_aware=True, serverSelectionTimeoutMS=10_000)
    dbname = f"collector_faults_{uuid.uuid4().hex[:10]}"
    tmp = Path(tempfile.mkdtemp(prefix="collector-hostile-"))
    try:
        return _execute(size, nets, uri, client[dbname], tmp, started)
    finally:
        client.drop_database(dbname)
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _execute(size: str, nets: list[Net], uri: str, db, tmp: Path, started: float) -> Report:
    server = Server(Sandbox(page_cap=PAGE_CAP)).start()
    box = server.sandbox
    dbname = db.name
    procs: dict[str, subprocess.Popen] = {}
    timings: dict[str, float] = {}
    try:
        for net in nets:
            _arm(box, net)
        docs = [{"user": n.user, "service": n.case.service, "accessToken": n.token, "mode": "initial",
                 "scheduledTo": datetime.now(UTC)} for n in nets]
        for net, oid in zip(nets, db.networks.insert_many(docs).inserted_ids, strict=True):
            net.id = oid
        procs = {mode: launch(mode, uri, dbname, server.url, tmp / f"{mode}.log") for mode in ("initial", "normal")}

        def settled(group: list[Net]) -> bool:
            if any(p.poll() is not None for p in procs.values()):
                return True  # a daemon died: stop waiting, it is counted
            soon = datetime.now(UTC) + timedelta(seconds=10)  # cheap first: nothing leased or due soon
            busy = {"disabled": {"$ne": True}, "$or": [{"lease": {"$ne": None}}, {"scheduledTo": {"$lt": soon}}]}
            if group is not nets:  # (the test engine scans the whole collection for every query: one, not two)
                busy["_id"] = {"$in": [n.id for n in group]}
            if db.networks.count_documents(busy):
                return False
            snap = _snapshot(db, box, group)
            return all(judge(n, *snap[n.user])[0] for n in group)

        # 1. back-fill under faults
        mark = time.monotonic()
        poll = 2.0 if size == "small" else 5.0  # every look costs the wire server (the test engine: full scans)
        wait_until(lambda: settled(nets), 100.0 if size == "small" else 1800.0, poll)
        timings["backfill"] = time.monotonic() - mark

        # 2. normal mode: one new item upstream for a quarter of the finished networks, made due now
        mark = time.monotonic()
        snap = _snapshot(db, box, nets)
        again = [n for i, n in enumerate(nets) if n.case.expect in ("healthy", "recovers", "rechecked", "limited",
                                                                     "paused")
                 and _finished(snap[n.user][0] or {}, snap[n.user][2], ITEMS) and i % 4 == 0]
        for net in again:
            box.add_items(net.token, 1)
            net.extra = 1
        db.networks.update_many({"_id": {"$in": [n.id for n in again]}, "mode": "normal"},
                                {"$set": {"scheduledTo": datetime.now(UTC)}})
        wait_until(lambda: settled(again), 60.0 if size == "small" else 900.0, poll)
        timings["normal"] = time.monotonic() - mark

        # 3. app-wide limits with absurd values, one at a time (each pauses the whole service)
        mark = time.monotonic()
        pauses: dict[str, float] = {}
        for case in APP_WIDE:
            db.services.delete_many({})
            time.sleep(1.0)  # every scheduler re-reads the pauses each tick (poll_interval 0.2 s)
            net = Net(case, f"u{len(nets):04d}-{case.name}", f"tok-{uuid.uuid4().hex}")
            _arm(box, net)
            net.id = db.networks.insert_one({"user": net.user, "service": SO, "accessToken": net.token,
                                             "mode": "initial", "scheduledTo": datetime.now(UTC)}).inserted_id
            nets.append(net)
            wait_until(lambda net=net: settled([net]) or len(box.hits.get(net.token, [])) > 2, 20.0, 0.3)
            wait_until(lambda: db.services.find_one({"_id": SO}) is not None, 5.0, 0.3)
            service = db.services.find_one({"_id": SO}) or {}
            hits = box.hits.get(net.token) or [time.time()]
            pauses[case.name] = (_ts(service.get("pausedUntil")) or hits[0]) - hits[0]
        timings["app_wide"] = time.monotonic() - mark

        # leases: none may outlive its ttl while the daemons run
        now = datetime.now(UTC)
        expired = {d["_id"] for d in db.networks.find({"lease.until": {"$lt": now}}, {"_id": 1})}

        # scenario 5, secrets: the operator views, with the daemons still running (status shows them)
        mark = time.monotonic()
        outputs = _cli_outputs(uri, dbname, nets)
        timings["cli"] = time.monotonic() - mark
    finally:
        codes = {mode: (p.poll(), stop(p)) for mode, p in procs.items()}
        server.stop()
    logs = {mode: (tmp / f"{mode}.log").read_text(errors="replace") for mode in procs}
    return _report(nets, db, box, codes, logs, outputs, expired, pauses, timings, started)


def _arm(box: Sandbox, net: Net) -> None:
    box.add_user(net.case.service, net.token, ITEMS, name=net.user)
    if net.case.kind == "revoked":
        box.users[net.token].revoked = True
    elif net.case.fault:
        fault = dict(net.case.fault)
        box.inject(net.token, fault.pop("kind"), **fault)


def _snapshot(db, box: Sandbox, nets: list[Net]) -> dict[str, tuple]:
    """Per user: (network doc, sandbox hits, stored items, every Stack Overflow hit)."""
    users = [n.user for n in nets]
    docs = {d["user"]: d for d in db.networks.find({"user": {"$in": users}}, {"accessToken": 0})}
    stored = Counter(d["user"] for d in db.items.find({"user": {"$in": users}}, {"user": 1, "_id": 0}))
    with box.lock:
        hits = {t: list(h) for t, h in box.hits.items()}
    so_hits = sorted(h for n in nets if n.case.service == SO for h in hits.get(n.token, []))
    return {n.user: (docs.get(n.user), hits.get(n.token, []), stored[n.user], so_hits) for n in nets}


def _cli_outputs(uri: str, dbname: str, nets: list[Net]) -> dict[str, str]:
    """Every operator view: status (text, JSON), networks list (text, and JSON: every field of every network)
    and `show` of one network of each case whose API echoes the token."""
    commands = [("status",), ("status", "--json"), ("networks", "list", "--limit", "100000"),
                ("networks", "list", "--json", "--limit", "100000")]
    seen: set[str] = set()
    for net in nets:
        if (net.case.fault or {}).get("echo") and net.case.name not in seen:
            seen.add(net.case.name)
            commands.append(("networks", "show", str(net.id)))
    with ThreadPoolExecutor(5) as pool:
        done = pool.map(lambda args: (" ".join(args), cli(uri, dbname, *args)), commands)
        return {name: f"exit {res.returncode}\n{res.stdout}\n{res.stderr}" for name, res in done}


def _longest_run(logs: dict[str, str], nets: list[Net], hits: dict[str, list[float]]) -> float:
    """From the daemons' JSON logs: for each run that made a request, its request's arrival at the sandbox
    to the log line that ends the run (bounded by total_timeout plus the state's save)."""
    ends: dict[str, list[float]] = defaultdict(list)
    for text in logs.values():
        for line in text.splitlines():
            if not line.startswith("{"):
                continue
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("outcome") and event.get("outcome") != "deferred" and event.get("network"):
                ends[event["network"]].append(datetime.fromisoformat(event["timestamp"]).timestamp())
    longest = 0.0
    for net in nets:
        arrivals, finished = hits.get(net.token, []), sorted(ends.get(str(net.id), []))
        for arrived, ended in zip(arrivals, finished, strict=False):
            longest = max(longest, ended - arrived)
    return longest


TOKEN_RE = re.compile(r"tok-[0-9a-f]{6,32}")


def _leaks(where: str, text: str, tokens: set[str], prefixes: dict[str, list[str]]) -> list[str]:
    """Whole tokens, and any 6+ hex-char prefix of one (a token cut in half by a snippet is still a leak)."""
    found = []
    for match in set(TOKEN_RE.findall(text)):
        if match in tokens or any(t.startswith(match) for t in prefixes.get(match[:10], ())):
            found.append(f"{where}: {match}")
    return found


def _report(nets: list[Net], db, box: Sandbox, codes: dict[str, tuple], logs: dict[str, str],
            outputs: dict[str, str], expired: set, pauses: dict[str, float], timings: dict[str, float],
            started: float) -> Report:
    snap = _snapshot(db, box, nets)
    stats = box.stats()
    docs = {n.user: snap[n.user][0] for n in nets}

    # hostile: every network in its documented state
    cases: dict[str, dict[str, Any]] = {}
    problems, stuck = [], 0
    for net in nets:
        doc, hits, stored, so_hits = snap[net.user]
        _settled, p = judge(net, doc, hits, stored, so_hits)
        if doc is not None and doc["_id"] in expired:
            p.append("lease expired while the daemons ran")
        if doc is not None and doc.get("lease"):
            p.append("lease not released at shutdown")
        row = cases.setdefault(net.case.name, {"kind": net.case.kind, "service": net.case.service,
                                               "expect": net.case.expect, "networks": 0, "problems": [],
                                               "end": Counter(), "requests": 0})
        row["networks"] += 1
        row["requests"] += len(hits)
        row["end"][end_state(doc)] += 1
        row["problems"] += [f"{net.user}: {x}" for x in p]
        if p:
            stuck += 1
            problems += [f"{net.user}: {x}" for x in p]

    # counters
    served_by = stats["unique_served"]
    counted = [n for n in nets if n.case.expect in ("healthy", "recovers", "rechecked", "limited", "paused")]
    lost = sum(max(served_by.get(n.token, 0) - snap[n.user][2], 0) for n in counted)
    stored = db.items.count_documents({})
    keys = Counter((d["user"], d["service"], d["itemId"]) for d in db.items.find({}, {"user": 1, "service": 1,
                                                                                    "itemId": 1, "_id": 0}))
    duplicated = sum(1 for n in keys.values() if n > 1)
    runs = sum((d or {}).get("stats", {}).get("runs", 0) for d in docs.values())
    revoked_refusals = sum(len(snap[n.user][1]) for n in nets if n.case.kind == "revoked")
    faults = sum(stats["faults"].values()) + revoked_refusals  # injected faults served + revoked-token refusals
    crashes = []
    for mode, (early, code) in codes.items():
        text = logs[mode]
        if early is not None or code != 0 or "Traceback" in text or '"exception"' in text:
            tail = [ln for ln in text.splitlines() if "exception" in ln or "Traceback" in ln][:1]
            crashes.append(f"{mode}: died={early} exit={code} {tail[0][:300] if tail else ''}")

    # bounded requests: the sandbox's view (arrival to reply sent / client gone) and the daemons' logs
    transfers = list(box.transfers)
    slowest = max(transfers, key=lambda t: t["ended"] - t["arrived"], default=None)
    longest_request = slowest["ended"] - slowest["arrived"] if slowest else 0.0
    with box.lock:
        hits_by_token = {t: list(h) for t, h in box.hits.items()}
    longest_run = _longest_run(logs, nets, hits_by_token)
    oversize = [{k: t[k] for k in ("size", "sent", "complete")} | {"framing": _framing(nets, t["token"])}
                for t in transfers if t["fault"] == "oversize"]
    # not a network's state, so in no counter: "FAIL" in the notes (which the suite checks) and in problems
    failed = []
    if longest_request > TOTAL_TIMEOUT + 0.75:
        failed.append(f"a request took {longest_request:.2f}s, total_timeout {TOTAL_TIMEOUT}s")
    cut = [o for o in oversize if o["framing"] != "gzip" and (o["complete"] or o["sent"] >= o["size"] // 2)]
    if cut:
        failed.append(f"{len(cut)} oversize bodies read (nearly) whole: {cut[:3]}")
    problems += failed
    hostile_seconds = time.monotonic() - started

    # secrets: every place a token could surface
    mark = time.monotonic()
    tokens = {n.token for n in nets}
    prefixes: dict[str, list[str]] = defaultdict(list)
    for t in tokens:
        prefixes[t[:10]].append(t)
    places, leaks = 0, []
    sources: list[tuple[str, str]] = [(f"daemon {m} output", text) for m, text in logs.items()]
    sources += [(f"`collector {name}`", text) for name, text in outputs.items()]
    for coll in ("networks", "items", "services", "collectors"):
        for doc in db[coll].find({}, {"accessToken": 0, "refreshToken": 0}):  # the token's own field is its home
            sources.append((f"db.{coll} {doc.get('_id')}", json.dumps(doc, default=str)))
    sources += [(f"sandbox URL #{i}", target) for i, target in enumerate(box.log)]
    for where, text in sources:
        places += 1
        leaks += _leaks(where, text, tokens, prefixes)
    cli_failures = [name for name, text in outputs.items() if not text.startswith("exit 0")]
    secrets_seconds = time.monotonic() - mark + timings.get("cli", 0.0)

    most = {}  # per framing, the most any oversize transfer sent
    for o in oversize:
        if o["sent"] >= most.get(o["framing"], {"sent": -1})["sent"]:
            most[o["framing"]] = o
    notes = (f"longest request {longest_request:.2f}s ({(slowest and slowest['fault']) or '-'}, sandbox), "
             f"run {longest_run:.2f}s after its request (logs), total_timeout {TOTAL_TIMEOUT:g}s; "
             f"oversize bytes sent/size (most of {len(oversize)}) "
             + ", ".join(f"{f} {o['sent']:,}/{o['size']:,}" for f, o in sorted(most.items()))
             + f" (cap {MAX_BODY:,}); app-wide pauses "
             + ", ".join(f"{k} {v / 86400:.2f}d" for k, v in pauses.items())
             + (f"; FAIL: {'; '.join(failed)}" if failed else "")
             + (f"; {len(problems)} problems: {'; '.join(problems[:3])}" if problems else "")
             + (f"; crashes: {'; '.join(crashes)}" if crashes else ""))
    hostile = {"scenario": "hostile", "runs": runs, "faults": faults, "served": sum(served_by.values()),
               "stored": stored, "duplicated": duplicated, "lost": lost, "crashes": len(crashes),
               "stuck": stuck,
               "seconds": round(hostile_seconds, 1), "notes": notes}
    # secrets: `faults` is the number of places checked; a leak must fail the suite's zero checks, so the count
    # of leaks goes into `stuck` (and the leaks into notes); a CLI view that could not be produced is a crash
    secrets = {"scenario": "secrets", "runs": runs, "faults": places, "served": sum(served_by.values()),
               "stored": stored, "duplicated": 0, "lost": 0, "crashes": len(cli_failures), "stuck": len(leaks),
               "seconds": round(secrets_seconds, 1),
               "notes": (f"{places} places ({len(logs)} daemon outputs, {len(outputs)} CLI outputs, database "
                         f"documents, {len(box.log)} URLs): {len(leaks)} leaks"
                         + (f": FAIL: {'; '.join(leaks[:5])}" if leaks else "")
                         + (f"; CLI failed: {', '.join(cli_failures)}" if cli_failures else ""))}
    return Report([hostile, secrets], cases, longest_request, longest_run, oversize, leaks, places, problems,
                  crashes, timings, pauses)


def _framing(nets: list[Net], token: str) -> str:
    for net in nets:
        if net.token == token:
            return (net.case.fault or {}).get("framing", "length")
    return "?"


if __name__ == "__main__":  # python -m tests.faults.hostile URI [small|full]
    for row in run(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "small"):
        print(json.dumps(row))
