"""A discrete-event simulation of a collector fleet, to check docs/scaling.md's capacity math past this machine.

Virtual processes with selectors claim from a modelled due set the way Store.claim_many does: a batch reads
the most overdue unleased candidates of the process's selection, the lease update lands one database
operation later, and candidates another process took in between are lost (the claim re-checks its filter per
document) and replaced by another round, at most 8. Runs wait on the API, spend CPU in their process, write
their items and state, and are due again one normal interval later. Every cost is a measured figure of
bench/RESULTS-documentdb.md (see CALIBRATION).

Deterministic (a seeded RNG), pure Python, no database: `python bench/simulate.py` prints

  1. the fleet benchmark of bench/run.py as simulated (1,000 networks of 100 items, 1 / 2 / 4 processes on the
     benchmark's 2 cores, everything sharing them) against its measured runs/s: how closely the model agrees;
  2. scale-out: processes and networks growing 10x and 100x on a 15-minute normal cycle, each process on its own
     core, the database on its own cores, with and without partitions: claims/s, lost claim attempts, lag.

`--quick` runs a shorter window (CI-sized); `--json FILE` writes the figures.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.selectors import SLOTS, assignment

# Measured on the benchmark machine (bench/RESULTS-documentdb.md of 2026-12-02 19:42, FerretDB v2.5.0 + DocumentDB,
# 2 cores), per run unless said:
CALIBRATION = {
    # fleet, 1 process, 1,000 runs of 100 compact items: daemon CPU 4.58 s, database CPU 5.38 s, sandbox 0.87 s
    "daemon_cpu_per_run": 4.58e-3,
    "db_cpu_per_run_100_items": 5.38e-3,
    "sandbox_cpu_per_request": 0.87e-3,
    # a claim batch (3 commands: candidates, update_many, read-back) that finds nothing or one network, 100k
    # networks stored: 12.5 ms of engine time (measured on the same machine for issue 14: 300 batches in a row);
    # a full batch of 256 costs 90 ms (due selection at scale: 3,000 claims in 12 batches, database CPU 1.08 s),
    # so 0.30 ms a network claimed
    "db_cpu_per_claim": 0.30e-3,
    "db_cpu_per_batch": 12.5e-3,
    # the engine's CPU for one document update (lease or state): issue 13's profile, ~0.45 ms (on the machine of
    # the run before, about a third faster: an estimate here)
    "db_cpu_per_update": 0.45e-3,
    "api_latency": 0.100,  # the sandbox's latency in every benchmark
}
MEASURED_FLEET = {1: 123.8, 2: 177.5, 4: 148.2}  # runs/s, bench/RESULTS-documentdb.md section 4 (2026-12-02 19:42)


class Pool:
    """`cores` CPUs serving jobs first come, first served; a job of a `thread` waits for that thread's previous
    job (one process's event loop is one thread: its CPU work is serial)."""

    def __init__(self, sim: Sim, cores: int):
        self.sim, self.free, self.queue = sim, cores, deque()
        self.busy_time = 0.0
        self.thread_busy: set[Any] = set()
        self.thread_queue: dict[Any, deque[tuple[float, Callable[[], None]]]] = {}

    def submit(self, seconds: float, done: Callable[[], None], thread: Any = None) -> None:
        if thread is not None and thread in self.thread_busy:
            self.thread_queue.setdefault(thread, deque()).append((seconds, done))
            return
        if thread is not None:
            self.thread_busy.add(thread)
        self.queue.append((seconds, done, thread))
        self._dispatch()

    def _dispatch(self) -> None:
        while self.free and self.queue:
            seconds, done, thread = self.queue.popleft()
            self.free -= 1
            self.busy_time += seconds
            self.sim.at(self.sim.now + seconds, lambda d=done, t=thread: self._finish(d, t))

    def _finish(self, done: Callable[[], None], thread: Any) -> None:
        self.free += 1
        if thread is not None:
            self.thread_busy.discard(thread)
            waiting = self.thread_queue.get(thread)
            if waiting:
                seconds, nxt = waiting.popleft()
                self.submit(seconds, nxt, thread)
        self._dispatch()
        done()


class Sim:
    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._n = 0

    def at(self, when: float, fn: Callable[[], None]) -> None:
        self._n += 1
        heapq.heappush(self._events, (when, self._n, fn))

    def run(self, until: float, stop: Callable[[], bool] = lambda: False) -> None:
        while self._events and not stop():
            when, _n, fn = heapq.heappop(self._events)
            if when > until:
                break
            self.now = when
            fn()


@dataclass
class Group:
    """The due networks one selection sees (a partition, or everything), in due order; `leased` is shared by all
    groups: a network stays leased from its claim to the end of its run (then it is due again later)."""

    leased: set[int]
    due: deque[int] = field(default_factory=deque)

    def candidates(self, k: int) -> list[int]:
        while self.due and self.due[0] in self.leased:
            self.due.popleft()  # claimed: it re-enters when it is due again
        out = []
        for nid in self.due:
            if nid not in self.leased:
                out.append(nid)
                if len(out) == k:
                    break
        return out


@dataclass
class Model:
    networks: int
    processes: int
    partitions: int  # 1: every process claims everything; N: processes are spread over N partitions
    concurrency: int = 256
    interval: float = 900.0  # the normal cycle; 0: every network due once at the start (the fleet benchmark)
    items: int = 100  # items written per run
    latency: float = CALIBRATION["api_latency"]
    shared_cores: int = 0  # >0: everything (processes, database, API) shares this many cores (the benchmark box)
    db_cores: int = 8  # otherwise: the database's cores; every process has a core of its own
    claim_interval: float = 0.25  # [daemon] claim_interval: with the queue drained, the next look waits this long
    seed: int = 1


def simulate(m: Model, window: float) -> dict[str, Any]:
    """Run `m` for `window` seconds of simulated time (or until every network ran once, when interval is 0)."""
    rng = random.Random(m.seed)
    sim = Sim()
    shared = Pool(sim, m.shared_cores) if m.shared_cores else None
    db = shared or Pool(sim, m.db_cores)
    cal = CALIBRATION
    item_cost = (cal["db_cpu_per_run_100_items"] - cal["db_cpu_per_claim"] - cal["db_cpu_per_update"]) / 100
    table = assignment(m.partitions)
    slot_of = [rng.randrange(SLOTS) for _ in range(m.networks)]
    leased: set[int] = set()
    groups = [Group(leased) for _ in range(m.partitions)]
    pending: list[tuple[float, int]] = []  # (due time, network) not yet due
    for nid in range(m.networks):  # the benchmark: all due at once; a steady state: spread over one interval
        heapq.heappush(pending, (0.0 if m.interval == 0 else rng.uniform(0.0, m.interval), nid))
    stats = {"runs": 0, "claims": 0, "lost": 0, "batches": 0, "lags": []}
    due_at: dict[int, float] = {}
    warm = 0.0 if m.interval == 0 else min(window * 0.2, 10.0)

    def release_due() -> None:
        while pending and pending[0][0] <= sim.now:
            when, nid = heapq.heappop(pending)
            due_at[nid] = when
            groups[table[slot_of[nid]]].due.append(nid)

    def tick_due() -> None:
        release_due()
        if pending:
            sim.at(pending[0][0], tick_due)
        for p in procs:
            p.wake()

    class Proc:
        def __init__(self, index: int):
            self.index = index
            self.group = groups[index % m.partitions]
            self.inflight = 0
            self.claiming = False
            self.cpu = shared or Pool(sim, 1)
            self.drained, self.last_look, self.later = False, -1e9, False

        def wake(self) -> None:
            if self.claiming or self.inflight >= m.concurrency or not self.group.candidates(1):
                return
            if self.drained and sim.now < self.last_look + m.claim_interval:  # the loop looks again later
                if not self.later:
                    self.later = True
                    sim.at(self.last_look + m.claim_interval, self.look)
                return
            self.claim(0)

        def look(self) -> None:
            self.later = False
            self.wake()

        def claim(self, rounds: int) -> None:
            self.claiming = True
            self.last_look = sim.now
            want = m.concurrency - self.inflight
            picked = self.group.candidates(min(2 * want + 8, 1000))[:want]
            if not picked:
                self.claiming, self.drained = False, True
                return
            stats["batches"] += 1
            cost = cal["db_cpu_per_batch"] + cal["db_cpu_per_claim"] * len(picked)

            def landed() -> None:  # the update_many re-checks each candidate: one taken meanwhile is lost
                won = [nid for nid in picked if nid not in leased]
                stats["lost"] += len(picked) - len(won)
                for nid in won:
                    leased.add(nid)
                    if sim.now >= warm:
                        stats["claims"] += 1
                        stats["lags"].append(sim.now - due_at[nid])
                    self.start(nid)
                if len(won) < len(picked) and rounds < 7 and self.inflight < m.concurrency:
                    self.claim(rounds + 1)
                else:
                    self.claiming = False
                    self.drained = self.inflight < m.concurrency  # fewer were due than there was room for

            db.submit(cost, landed)

        def start(self, nid: int) -> None:
            self.inflight += 1
            api = [False, False]

            def answered() -> None:
                self.cpu.submit(cal["daemon_cpu_per_run"], parsed, thread=("proc", self.index))

            def api_part(k: int) -> None:
                api[k] = True
                if all(api):
                    answered()

            sim.at(sim.now + m.latency, lambda: api_part(0))
            if shared is not None:  # the sandbox answers on the same cores
                shared.submit(cal["sandbox_cpu_per_request"], lambda: api_part(1))
            else:
                api[1] = True

            def parsed() -> None:
                db.submit(item_cost * m.items + cal["db_cpu_per_update"], saved)

            def saved() -> None:
                self.inflight -= 1
                leased.discard(nid)
                if sim.now >= warm:
                    stats["runs"] += 1
                if m.interval:
                    heapq.heappush(pending, (sim.now + m.interval * rng.uniform(0.9, 1.1), nid))
                    if pending[0][1] == nid:
                        sim.at(pending[0][0], tick_due)
                self.wake()

    procs = [Proc(i) for i in range(m.processes)]
    sim.at(0.0, tick_due)
    done = (lambda: stats["runs"] >= m.networks) if m.interval == 0 else (lambda: False)
    started = time.perf_counter()
    sim.run(window, stop=done)
    span = (sim.now if m.interval == 0 else window - warm) or 1e-9
    lags = sorted(stats["lags"]) or [0.0]
    return {
        "networks": m.networks, "processes": m.processes, "partitions": m.partitions,
        "runs_per_s": round(stats["runs"] / span, 1), "claims_per_s": round(stats["claims"] / span, 1),
        "lost_claims": stats["lost"], "lost_per_claim": round(stats["lost"] / max(1, stats["claims"]), 3),
        "batches": stats["batches"], "batches_per_s": round(stats["batches"] / span, 1),
        "lag_p50": round(lags[len(lags) // 2], 3),
        "lag_p99": round(lags[int(len(lags) * 0.99)], 3), "lag_max": round(lags[-1], 3),
        "db_busy": round(db.busy_time / span / (m.shared_cores or m.db_cores), 2), "wall": round(sim.now, 2),
        "sim_seconds": round(time.perf_counter() - started, 2),
    }


def fleet_check() -> list[dict[str, Any]]:
    """bench/run.py's fleet scenario as modelled, beside what it measured (that run had no claim_interval)."""
    rows = []
    for procs in (1, 2, 4):
        got = simulate(Model(networks=1000, processes=procs, partitions=1, interval=0, shared_cores=2,
                             claim_interval=0.0), 600.0)
        measured = MEASURED_FLEET[procs]
        rows.append({**got, "measured_runs_per_s": measured,
                     "simulated_over_measured": round(got["runs_per_s"] / measured, 2)})
    return rows


def scale_out(quick: bool) -> list[dict[str, Any]]:
    """A 15-minute normal cycle, one page of 1 new item a run (a normal run finds little), each process on its
    own core, the database on 8 (the replica set's primary) or per partition group; at 1x, 10x, 100x."""
    rows = []
    for factor in (1, 10, 100):
        window = (30.0 if factor < 100 else 8.0) if quick else (120.0 if factor < 100 else 30.0)
        networks, processes = 30_000 * factor, 3 * factor
        for partitions, interval in ((1, 0.0), (1, 0.25), (factor, 0.25))[: 2 if factor == 1 else 3]:
            model = Model(networks=networks, processes=processes, partitions=min(partitions, SLOTS), items=1,
                          latency=0.5, concurrency=256, db_cores=8 * max(1, factor // 10), claim_interval=interval)
            rows.append({**simulate(model, window), "factor": factor, "db_cores": model.db_cores,
                         "claim_interval": interval})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a shorter window (CI)")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    fleet = fleet_check()
    print("1. The fleet benchmark, simulated (1,000 networks, 100 items a run, 2 shared cores)")
    print(f"{'processes':>9} {'simulated runs/s':>17} {'measured runs/s':>16} {'ratio':>6} {'lost claims':>12}")
    for r in fleet:
        print(f"{r['processes']:>9} {r['runs_per_s']:>17} {r['measured_runs_per_s']:>16} "
              f"{r['simulated_over_measured']:>6} {r['lost_claims']:>12}")
    rows = scale_out(args.quick)
    print("\n2. Scale-out on a 15-minute normal cycle (each process its own core; the database's cores as shown)")
    head = ["factor", "networks", "processes", "partitions", "claim_interval", "db_cores", "runs_per_s",
            "claims_per_s", "batches_per_s",
            "lost_per_claim", "lag_p50", "lag_p99", "lag_max", "db_busy", "sim_seconds"]
    print(" ".join(f"{h:>14}" for h in head))
    for r in rows:
        print(" ".join(f"{r[h]!s:>14}" for h in head))
    if args.json:
        Path(args.json).write_text(json.dumps({"fleet": fleet, "scale_out": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
