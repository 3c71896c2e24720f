"""Adaptive polling against a fixed interval, on a modelled population of users (issue 29, item 3).

Every poll of a network in normal mode goes through the daemon's own state machine (collector.states.transition,
with the settings' Schedule and jitter): only the users are modelled. A poll costs one API request (a normal run
is one request: a 304, an empty page, or a page of the few new items) and collects every item that appeared
upstream since the network's previous poll; an item's delay is from its appearance to the poll that stores it.

The population (seeded, deterministic):
- active users (ACTIVE_SHARE, 10 %): sessions arrive as a Poisson process, SESSIONS_PER_DAY on average; a session
  adds 1-5 items spread over up to 30 minutes (someone starring a few repositories, liking a few videos);
- idle users (the other 90 %): single items, IDLE_ITEMS_PER_DAY on average (one a month).

Two policies over the same population and the same item arrivals: fixed (`normal_interval` 900 s, bounds 0) and
adaptive (the shipped defaults: normal_interval_min 300 s, normal_interval_max 3600 s). Reported per policy: API
requests a day, requests per new item, and the p50 / p99 delay of the items of active and of idle users.

`python bench/polling.py [--quick] [--json FILE]`; bench/run.py runs it as the `polling` benchmark.
"""

from __future__ import annotations

import argparse
import bisect
import heapq
import json
import random
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.config import Schedule
from collector.states import Kind, Outcome, State, transition

ACTIVE_SHARE = 0.10
SESSIONS_PER_DAY = 3.0
SESSION_ITEMS = (1, 5)
SESSION_SPAN = 1800.0
IDLE_ITEMS_PER_DAY = 1 / 30
DAY = 86_400.0
SIZES = {"full": {"users": 2_000, "days": 4.0}, "quick": {"users": 300, "days": 2.0}}
T0 = datetime(2026, 12, 1, tzinfo=UTC)
BASE = Schedule()  # the shipped defaults (collector/defaults.toml agrees: tests/unit/test_config_defaults.py)
POLICIES = {
    "fixed": replace(BASE, normal_interval_min=0.0, normal_interval_max=0.0),
    "adaptive": BASE,
}


def arrivals(rng: random.Random, days: float, active: bool) -> list[float]:
    """When one user's items appear upstream (seconds from the start), sorted."""
    out: list[float] = []
    end = days * DAY
    if active:
        t = rng.expovariate(SESSIONS_PER_DAY / DAY)
        while t < end:
            out += [t + rng.uniform(0, SESSION_SPAN) for _ in range(rng.randint(*SESSION_ITEMS))]
            t += rng.expovariate(SESSIONS_PER_DAY / DAY)
    else:
        t = rng.expovariate(IDLE_ITEMS_PER_DAY / DAY)
        while t < end:
            out.append(t)
            t += rng.expovariate(IDLE_ITEMS_PER_DAY / DAY)
    return sorted(x for x in out if x < end)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def simulate(schedule: Schedule, users: list[tuple[bool, list[float]]], days: float, seed: int) -> dict[str, Any]:
    """Every user's network polled by the state machine's schedule for `days`; what it cost and how late items came."""
    rng = random.Random(seed)
    end = days * DAY
    # every network starts in normal mode at a random point of its first interval (a fleet already running)
    due = [(rng.uniform(0, schedule.normal_interval), n) for n in range(len(users))]
    heapq.heapify(due)
    states = [State("normal") for _ in users]
    seen = [0] * len(users)  # how many of the user's items are stored
    polled_at = [0.0] * len(users)
    requests = 0
    delays: dict[bool, list[float]] = {True: [], False: []}
    while due:
        at, n = heapq.heappop(due)
        if at >= end:
            break
        requests += 1
        active, items = users[n]
        upto = bisect.bisect_right(items, at)
        new = items[seen[n]:upto]
        delays[active] += [at - t for t in new]
        seen[n] = upto
        outcome = Outcome(Kind.PAGE, items=len(new)) if new else Outcome(Kind.NOT_MODIFIED)
        now = T0 + timedelta(seconds=at)
        step = transition(states[n], outcome, now, schedule, rng)
        states[n] = State("normal", interval=step.interval if step.interval is not None else states[n].interval,
                          new_at=step.new_at or states[n].new_at)
        polled_at[n] = at
        assert step.scheduled_to is not None
        heapq.heappush(due, ((step.scheduled_to - T0).total_seconds(), n))
    collected = sum(len(d) for d in delays.values())
    return {
        "requests_per_day": round(requests / days),
        "items": collected,
        "requests_per_item": round(requests / collected, 1) if collected else None,
        "active_p50_s": round(percentile(delays[True], 0.50)),
        "active_p99_s": round(percentile(delays[True], 0.99)),
        "idle_p50_s": round(percentile(delays[False], 0.50)),
        "idle_p99_s": round(percentile(delays[False], 0.99)),
    }


def run(quick: bool = False, seed: int = 7) -> dict[str, Any]:
    size = SIZES["quick" if quick else "full"]
    rng = random.Random(seed)
    users = []
    for _ in range(size["users"]):
        active = rng.random() < ACTIVE_SHARE
        users.append((active, arrivals(rng, size["days"], active)))
    started = time.perf_counter()
    out: dict[str, Any] = {
        "users": size["users"], "days": size["days"],
        "active": sum(active for active, _ in users),
        "policies": {name: simulate(schedule, users, size["days"], seed) for name, schedule in POLICIES.items()},
    }
    fixed, adaptive = out["policies"]["fixed"], out["policies"]["adaptive"]
    if fixed["requests_per_item"] and adaptive["requests_per_item"]:
        out["fewer_requests_per_item"] = round(1 - adaptive["requests_per_item"] / fixed["requests_per_item"], 3)
    ratio = adaptive["active_p50_s"] / fixed["active_p50_s"] if fixed["active_p50_s"] else None
    out["active_p50_ratio"] = round(ratio, 2) if ratio is not None else None
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def lines(result: dict[str, Any]) -> list[str]:
    head = (f"Adaptive polling, {result['users']:,} users ({result['active']} active) over {result['days']:g} days "
            f"(the daemon's state machine, modelled users):")
    rows = [head, f"  {'policy':<9} {'requests/day':>13} {'req/item':>9} {'active p50':>11} {'active p99':>11} "
                  f"{'idle p50':>9} {'idle p99':>9}"]
    for name, p in result["policies"].items():
        rows.append(f"  {name:<9} {p['requests_per_day']:>13,} {p['requests_per_item']!s:>9} {p['active_p50_s']:>10}s "
                    f"{p['active_p99_s']:>10}s {p['idle_p50_s']:>8}s {p['idle_p99_s']:>8}s")
    rows.append(f"  adaptive: {result.get('fewer_requests_per_item', 0):.0%} fewer requests per new item, active "
                f"users' p50 delay x{result['active_p50_ratio']} of fixed (target: >= 50 % fewer at <= x1.0)")
    return rows


def summary(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """bench/run.py's headline rows: fewer requests per new item, at active users' p50 freshness."""
    fewer, ratio = result.get("fewer_requests_per_item") or 0.0, result.get("active_p50_ratio")
    return [("polling: adaptive, fewer API requests per new item than fixed", f"{fewer:.0%}", ">= 50 %",
             "met" if fewer >= 0.5 else "not met"),
            ("polling: active users' p50 delay, adaptive / fixed", f"x{ratio}", "<= x1.0",
             "met" if ratio is not None and ratio <= 1.0 else "not met")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    result = run(args.quick)
    print("\n".join(lines(result)))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
