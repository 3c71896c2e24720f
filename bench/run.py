#!/usr/bin/env python3
"""The benchmark suite: every scenario in one run, a table of figures, and bench/RESULTS.md.

    .venv/bin/python bench/run.py            # full size (about 10 minutes on 2 cores, mongo-java-server)
    .venv/bin/python bench/run.py --quick    # small size, run by .ci/run to keep it working

Everything is local: the sandbox API (a real HTTP server on 127.0.0.1, its own process, 100 ms of
latency per request) and a MongoDB wire-protocol server ($MONGODB_URI when set; else mongo-java-server,
empty, in memory: scripts/devdb.py).
Each measured workload runs in a process of its own (bench/workload.py), so its peak RSS and CPU
seconds are its own; the CPU seconds of the sandbox and of the database are read from /proc.
Nothing here asserts a time: the figures are printed, and compared with the targets in the table.

Scenarios (the issue "Benchmarks with figures"):
  cycle    N due networks, one page of 100 items each: the daemon against ceiling A (bare httpx, no
           database), ceiling B (httpx + one insert_many per page) and the old system's way (sequential,
           one lookup per item) on a sample, extrapolated
  scale    claims per second with 10k, 100k, 1M networks stored and 3,000 of them due
  memory   10 consecutive cycles of `cycle` in one daemon process (normal mode, new items each cycle)
  fleet    1, 2 and 4 daemon processes sharing one cycle: wall time, duplicate runs, lost items
  curve    runs per second at concurrency 1, 8, 32, 128, 512, with where the CPU went
  steady   the steady state: normal runs that find nothing (a 304, an empty page) or a few new items, every
           service of the sandbox, the daemon beside ceiling A', for each HTTP transport (bench/steady.py)
  peer     the steady workload run by the way a Python team would build it with a job queue: arq workers over
           Redis, a cron enqueuer, httpx (over aiohttp, as the daemon) and PyMongo (bench/peers/; skipped, saying
           why, without redis-server or arq)
  polling  adaptive polling against a fixed interval on a modelled population, every poll through the daemon's
           state machine: requests per new item, how late items are stored (bench/polling.py; no database)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import polling as polling_scenario  # noqa: E402  (bench/polling.py, beside this script)
import steady as steady_scenario  # noqa: E402  (bench/steady.py, beside this script)
from pymongo import MongoClient  # noqa: E402

from bench.workload import proc_cpu  # noqa: E402
from collector.http import CONNECTIONS_PER_CLIENT  # noqa: E402
from collector.sandbox.payloads import github_repository  # noqa: E402
from tests.harness import load_devdb  # noqa: E402  (scripts/devdb.py, imported by path)

PY = sys.executable
LATENCY = 0.1
# full: the sizes where the test engine lets the whole suite fit in about 10 minutes and in the machine's
# memory (an in-memory engine holds every document: see full_networks, memory_networks), smaller samples where not
SIZES: dict[str, dict[str, Any]] = {
    "full": {"networks": 3000, "full_networks": 1000, "concurrency": 256, "old_sample": 30,
             "scale": (10_000, 100_000, 1_000_000), "due": 3000, "claim_seconds": 10.0, "cycles": 10,
             "memory_networks": 1000, "fleet": (1, 2, 4), "fleet_networks": 1000, "curve": (1, 8, 32, 128, 512),
             "curve_networks": 1000, "steady_networks": 20_000, "steady_due": 5000, "steady_concurrency": 256,
             "steady_stall": 60.0, "steady_paced_seconds": 30.0},
    "quick": {"networks": 300, "full_networks": 300, "concurrency": 64, "old_sample": 10, "scale": (1_000, 10_000),
              "due": 300, "claim_seconds": 10.0, "cycles": 3, "memory_networks": 300, "fleet": (1, 2),
              "fleet_networks": 300, "curve": (1, 32, 128), "curve_networks": 300, "steady_networks": 1000,
              "steady_due": 1000, "steady_concurrency": 256, "steady_stall": 30.0, "steady_paced_seconds": 5.0},
}
SCENARIOS = ("cycle", "feed", "scale", "memory", "fleet", "curve", "steady", "peer", "polling")
# full_networks: the cycle with full-size payloads. An in-memory engine holds every stored document in the JVM:
# mongo-java-server takes about 35 KB of heap for one ~5.5 KB item, so 3,000 networks of 100 would need ~10 GB


def networks_of(cycle: dict[str, Any], key: str, size: dict[str, Any]) -> int:
    """How many networks the cycle variant `key` ran: the full-size payloads' own count, or the cycle's."""
    return int(cycle.get("full_networks", size["networks"])) if key.startswith("full_") else int(size["networks"])


# -- the environment: database, sandbox, CPU of the processes around us ----------------------------


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(entry.name))
    return out


@dataclass
class Env:
    uri: str
    engine: str  # what serves uri: the devdb engine's name, or "external" ($MONGODB_URI)
    sandbox: str
    sandbox_proc: subprocess.Popen[bytes]
    server: Any
    size: dict[str, Any]
    db_pids: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    payload: str = "both"  # the cycle's GitHub payloads: compact, recorded (full-size) or both
    recorded: Path | None = None  # --recorded: full-size repositories from this JSON list, not generated ones

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of the sandbox and of the database processes (and their children)."""
        db = 0.0
        for pid in self.db_pids:
            db += proc_cpu(pid) + sum(proc_cpu(c) for c in children(pid))
        return {"sandbox": proc_cpu(self.sandbox_proc.pid), "database": db}

    def control(self, path: str, body: dict[str, Any] | None = None) -> Any:
        response = httpx.post(f"{self.sandbox}/_sandbox/{path}", json=body or {}, timeout=120)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.sandbox}/_sandbox/stats", timeout=60).json()

    def stats_requests(self) -> int:
        return int(self.stats()["requests"])

    def reset(self) -> None:
        self.control("reset")

    def seed(self, db: str, prefix: str, count: int, items: int = 100, mode: str = "initial",
             due: datetime | None = None) -> None:
        """`count` sandbox users with `items` stars each, and their networks in database `db`."""
        self.control("bulk", {"service": "github", "prefix": prefix, "count": count, "items": items})
        due = due or datetime.now(UTC)
        with MongoClient(self.uri, tz_aware=True) as client:
            client.drop_database(db)
            docs = [{"user": f"{prefix}{i}", "service": "github", "accessToken": f"{prefix}{i}", "mode": mode,
                     "scheduledTo": due, "errors": 0} for i in range(count)]
            for start in range(0, count, 5000):
                client[db].networks.insert_many(docs[start:start + 5000], ordered=False)

    def drop(self, db: str) -> None:
        with MongoClient(self.uri) as client:
            client.drop_database(db)

    def work(self, variant: str, db: str, prefix: str, **opts: Any) -> dict[str, Any]:
        """Run bench/workload.py in a process of its own; its figures plus the sandbox's and the
        database's CPU seconds over the same time."""
        cmd = [PY, str(ROOT / "bench" / "workload.py"), variant, "--uri", self.uri, "--db", db,
               "--sandbox", self.sandbox, "--prefix", prefix]
        for key, value in opts.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        before = self.cpu()
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        after = self.cpu()
        if out.returncode:
            raise RuntimeError(f"workload {variant} failed ({out.returncode}): {out.stderr[-2000:]}")
        figures = json.loads(out.stdout.strip().splitlines()[-1])
        figures["sandbox_cpu"] = round(after["sandbox"] - before["sandbox"], 2)
        figures["db_cpu"] = round(after["database"] - before["database"], 2)
        return figures


def start_env(size: dict[str, Any]) -> Env:
    notes: list[str] = []
    server = load_devdb().start_server()  # $MONGODB_URI when set
    sandbox = subprocess.Popen([PY, "-m", "collector.sandbox", "--port", "0", "--latency", str(LATENCY)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    url = sandbox.stdout.readline().strip() if sandbox.stdout else ""
    if not url.startswith("http://"):
        sandbox.kill()
        server.stop()
        raise RuntimeError("the sandbox API did not start")
    env = Env(server.uri, server.engine, url, sandbox, server, size, notes=notes)
    env.db_pids = [server.pid] if server.pid else []  # the JVM of scripts/devdb.py; none for $MONGODB_URI
    return env


def stop_env(env: Env) -> None:
    env.sandbox_proc.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        env.sandbox_proc.wait(10)
    env.server.stop()


# -- scenarios ------------------------------------------------------------------------------------


def per_s(n: float, wall: float) -> float:
    return round(n / wall, 1) if wall else 0.0


def full_label(cycle: dict[str, Any]) -> str:
    """The cycle's full-size payloads, as the report names them: generated, or recorded (--recorded FILE)."""
    return "recorded payloads" if cycle.get("full_source") else "full-size payloads"


# Likeastore's recorded GitHub repositories (read-only, beside the clone, never in it): `--recorded` compares with them
RECORDING = "../shared/fixtures/likeastore/github.connector.init.json"


def scenario_cycle(env: Env) -> dict[str, Any]:
    n, c = env.size["networks"], env.size["concurrency"]
    pooled = max(1, -(-c // CONNECTIONS_PER_CLIENT))  # as many clients as the daemon's ClientPool has
    res: dict[str, Any] = {}
    if env.payload in ("compact", "both"):
        env.reset()
        env.seed("bench_cycle", "c", n)
        # (one httpx client with every connection, the ceilings before collector.http.ClientPool, are no longer run:
        # 38-47 s of the suite's 10 minutes for a figure bench/optimizations.md keeps, step 3)
        res["ceiling_a_pool"] = env.work("ceiling_a", "bench_ceiling", "c", networks=n, concurrency=c, clients=pooled)
        res["ceiling_b_pool"] = env.work("ceiling_b", "bench_ceiling", "c", networks=n, concurrency=c, clients=pooled)
        res["collector"] = daemon_cycle(env, "bench_cycle", n, c)
        env.drop("bench_ceiling")
        sample = env.size["old_sample"]
        env.seed("bench_old", "c", sample)  # the same users' pages (the sandbox keeps them), a fresh database
        old = env.work("old", "bench_old", "c", networks=sample, concurrency=1)
        old["extrapolated_wall"] = old["wall"] * n / sample
        res["old"] = old
        env.drop("bench_old")
    if env.payload in ("recorded", "both"):
        # full-size GitHub repositories (~5.5 KB of JSON an item) instead of compact ones: generated from GitHub's
        # documented schema (collector/sandbox/payloads.py), or those of --recorded FILE (nothing beside the clone
        # is read unless it names it)
        env.reset()
        given = json.loads(env.recorded.read_text()) if env.recorded else None
        env.control("repos", {"repos": given or "full"})
        served = given or [github_repository(i) for i in range(1, 101)]  # what the seeded users' 100 items get
        res["full_bytes"] = round(sum(len(json.dumps(repo)) for repo in served) / len(served))
        res["full_networks"] = nf = env.size["full_networks"]
        env.seed("bench_cycle", "r", nf)
        res["full_ceiling_b_pool"] = env.work("ceiling_b", "bench_ceiling", "r", networks=nf, concurrency=c,
                                              clients=pooled)
        env.drop("bench_ceiling")  # before the daemon's cycle: an in-memory engine would hold both
        res["full_collector"] = daemon_cycle(env, "bench_cycle", nf, c, prefix="r")
        res["full_source"] = str(env.recorded) if env.recorded else ""
        env.control("repos", {"repos": None})
    return res


def daemon_cycle(env: Env, db: str, n: int, c: int, prefix: str = "c") -> dict[str, Any]:
    """The daemon's cycle over the seeded database `db`, with what it stored; the database is dropped after."""
    fig = env.work("collector", db, prefix, networks=n, concurrency=c)
    with MongoClient(env.uri) as client:
        fig["stored"] = client[db].items.count_documents({})
        fig["persisted"] = client[db].networks.count_documents({"mode": "normal", "lastOutcome.kind": "page"})
    env.drop(db)
    return fig


def scenario_feed(env: Env) -> dict[str, Any]:
    """The compact cycle without the change feed, then with it (collector/changes.py): the wall time until every
    run is persisted and, with the feed, every event published."""
    n, c = env.size["networks"], env.size["concurrency"]
    res: dict[str, Any] = {}
    for feed in ("off", "on"):
        env.reset()
        env.seed("bench_feed", "f", n)
        res[feed] = env.work("collector", "bench_feed", "f", networks=n, concurrency=c, feed=feed)
        env.drop("bench_feed")
    off, on = res["off"]["wall"], res["on"]["wall"]
    res["overhead"] = round(on / off - 1, 3) if off else 0.0
    return res


def scenario_scale(env: Env) -> dict[str, Any]:
    """Networks stored grow 10k -> 100k -> 1M; each time `due` of them are due and unleased."""
    due, rows = env.size["due"], []
    env.reset()
    db = "bench_scale"
    env.drop(db)
    now = datetime.now(UTC)
    stored = 0
    with MongoClient(env.uri, tz_aware=True) as client:
        networks = client[db].networks
        for size in env.size["scale"]:
            t0 = time.perf_counter()
            future = now + timedelta(days=1)
            while stored < size - due:  # the rest of the collection: not due (scheduled tomorrow)
                batch = min(10_000, size - due - stored)
                networks.insert_many([{"user": f"s{stored + i}", "service": "github", "accessToken": "x",
                                       "mode": "initial" if (stored + i) % 2 else "normal",
                                       "scheduledTo": future + timedelta(seconds=stored + i), "errors": 0}
                                      for i in range(batch)], ordered=False)
                stored += batch
            # `due` new networks due now (the ones claimed at the smaller size stay leased: not due)
            due_at = datetime.now(UTC) - timedelta(minutes=1)
            networks.insert_many([{"user": f"d{stored + i}", "service": "github", "accessToken": "x",
                                   "mode": "initial", "scheduledTo": due_at, "errors": 0} for i in range(due)])
            stored += due
            if size == env.size["scale"][0]:
                networks.create_index([("mode", 1), ("scheduledTo", 1)], name="due")
            prep = time.perf_counter() - t0
            fig = env.work("claims", db, "s", due=due, seconds=env.size["claim_seconds"],
                           concurrency=env.size["concurrency"])
            fig.update(stored=size, prep=round(prep, 1))
            rows.append(fig)
    env.drop(db)
    return {"rows": rows}


def scenario_memory(env: Env) -> dict[str, Any]:
    n, c = env.size["memory_networks"], env.size["concurrency"]
    env.reset()
    env.seed("bench_memory", "m", n, mode="normal")
    fig = env.work("collector", "bench_memory", "m", networks=n, concurrency=c, mode="normal",
                   cycles=env.size["cycles"])
    env.drop("bench_memory")
    return fig


def scenario_fleet(env: Env) -> dict[str, Any]:
    n, c = env.size["fleet_networks"], env.size["concurrency"]
    rows = []
    for procs in env.size["fleet"]:
        env.reset()
        db = f"bench_fleet{procs}"
        start = datetime.now(UTC) + timedelta(seconds=4)  # every process up and waiting before it is due
        env.seed(db, f"f{procs}-", n, due=start)
        cmd = [str(Path(PY).parent / "collector"), "--mode", "initial", "--env", "production",
               "--concurrency", str(c), "--log-format", "json", "--log-level", "warning",
               "--set", f"services.github.base_url={env.sandbox}", "--set", f"services.github.concurrency={c}",
               "--set", f"http.max_connections={max(c, 16)}", "--set", "http.allow=127.0.0.1"]
        run_env = {**os.environ, "MONGODB_URI": env.uri, "COLLECTOR_DATABASE__NAME": db}
        daemons = [subprocess.Popen(cmd, env=run_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for _ in range(procs)]
        cpu0 = [0.0] * procs
        before = env.cpu()
        with MongoClient(env.uri, tz_aware=True) as client:
            networks = client[db].networks
            while datetime.now(UTC) < start:
                time.sleep(0.01)
            cpu0 = [proc_cpu(d.pid) for d in daemons]
            t0 = time.perf_counter()
            # polled twice a second: a count shares the two cores with the daemons it measures (the sandbox's
            # request counter tells when to start looking)
            while env.stats_requests() < n or networks.count_documents(
                    {"lastOutcome": {"$exists": True}, "lease": None}) < n:
                if time.perf_counter() - t0 > 600 or any(d.poll() is not None for d in daemons):
                    break
                time.sleep(0.5)
            wall = time.perf_counter() - t0
            cpu = sum(proc_cpu(d.pid) for d in daemons) - sum(cpu0)
            after = env.cpu()
            for d in daemons:
                d.send_signal(signal.SIGTERM)
            crashed = 0
            for d in daemons:
                try:
                    crashed += 1 if d.wait(30) != 0 else 0
                except subprocess.TimeoutExpired:
                    d.kill()
                    crashed += 1
            runs = sum(int((doc.get("stats") or {}).get("runs", 0)) for doc in networks.find({}, {"stats": 1}))
            stored = client[db].items.count_documents({})
        stats = env.stats()
        requests = sum(stats["by_token"].values())
        served = sum(stats["unique_served"].values())
        rows.append({"procs": procs, "wall": wall, "runs": runs, "requests": requests,
                     "duplicate_runs": runs - n, "duplicate_requests": requests - n, "served": served,
                     "stored": stored, "lost": served - stored, "crashed": crashed, "cpu": round(cpu, 2),
                     "sandbox_cpu": round(after["sandbox"] - before["sandbox"], 2),
                     "db_cpu": round(after["database"] - before["database"], 2)})
        env.drop(db)
    return {"rows": rows}


def scenario_curve(env: Env) -> dict[str, Any]:
    rows = []
    for c in env.size["curve"]:
        env.reset()
        n = min(env.size["curve_networks"], max(30, c * 12))
        db = f"bench_curve{c}"
        env.seed(db, f"k{c}-", n)
        fig = env.work("collector", db, f"k{c}-", networks=n, concurrency=c)
        fig["ideal"] = c / LATENCY
        rows.append(fig)
        env.drop(db)
    return {"rows": rows}


def scenario_peer(env: Env) -> dict[str, Any]:
    """The arq peer on the steady workload (bench/peers/try_peer.py measure): its first pass, then the steady one."""
    from bench.peers.arq_peer import peer_missing
    from bench.peers.try_peer import measure

    why = peer_missing()
    if why:
        env.notes.append(f"peer skipped: {why}")
        return {"skipped": why}
    db = "bench_peer"
    env.reset()
    try:  # the daemon's steady collection: steady_networks of which steady_due due (bench/steady.py)
        return measure(env.uri, env.db_pids, env.sandbox, env.sandbox_proc.pid, db, env.size["steady_networks"],
                       env.size["steady_concurrency"], due=env.size["steady_due"], http_transport="aiohttp",
                       job_logs=False)
    finally:
        env.drop(db)


RUNNERS = {"cycle": scenario_cycle, "feed": scenario_feed, "scale": scenario_scale, "memory": scenario_memory,
           "fleet": scenario_fleet,
           "curve": scenario_curve, "steady": steady_scenario.scenario, "peer": scenario_peer,
           "polling": lambda env: polling_scenario.run(quick=env.size is SIZES["quick"])}


# -- the report -----------------------------------------------------------------------------------


def machine(env: Env) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
               if line.startswith("MemTotal"))
    versions = {name: importlib.metadata.version(name) for name in ("collector-daemon", "httpx", "httpx-aiohttp",
                                                                     "aiohttp", "pymongo")}
    with MongoClient(env.uri) as client:
        info = client.admin.command("buildInfo")
    server = f"FerretDB {info['ferretdbVersion']}" if "ferretdbVersion" in info else f"MongoDB {info.get('version')}"
    if env.engine != "external":
        server = env.engine
        with contextlib.suppress(Exception):  # the JVM it runs on: `openjdk version "17.0.15" 2025-04-15`
            out = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr
            server += ", on Java " + out.split('version "', 1)[1].split('"', 1)[0]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 1024 / 1024, 1),
            "python": platform.python_version(), "kernel": platform.release(), "database": server,
            "versions": versions, "commit": commit + ("+changes" if dirty else ""),
            "engine_bounds": getattr(load_devdb(), "ENGINE_BOUNDS", "") if env.engine != "external" else "",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def summarize(results: dict[str, Any], size: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(figure, value, target, verdict) rows: the headline table."""
    rows: list[tuple[str, str, str, str]] = []
    if "cycle" in results:
        r = results["cycle"]
        for prefix, label in (("", ""), ("full_", f", {full_label(r)}")):
            col = r.get(f"{prefix}collector")
            if col is None:
                continue
            n = networks_of(r, prefix, size)
            rows.append((f"cycle{label}: {n} runs persisted", f"{col['wall']:.2f} s", "<= 10 s",
                         "met" if col["wall"] <= 10 else "not met"))
            ratio = r[f"{prefix}ceiling_b_pool"]["wall"] / col["wall"] if col["wall"] else 0
            rows.append((f"cycle{label}: throughput / ceiling B (pooled clients)", f"{ratio:.2f}", ">= 0.8",
                         "met" if ratio >= 0.8 else "not met"))
    if "feed" in results:
        f = results["feed"]
        rows.append((f"change feed: cycle wall time with / without ({f['on']['events']} events)",
                     f"{f['overhead'] * 100:+.1f} %", "<= +10 %", "met" if f["overhead"] <= 0.10 else "not met"))
    if "scale" in results:
        rates = [row["claims_per_s"] for row in results["scale"]["rows"]]
        spread = max(rates) / min(rates) if min(rates) else float("inf")
        rows.append(("scale: claims/s, fastest / slowest size", f"{spread:.1f}x", "<= 2x",
                     "met" if spread <= 2 else "not met"))
    if "memory" in results:
        rss = results["memory"]["rss_cycles"]
        if len(rss) >= 2:
            growth = rss[-1] / rss[1] - 1
            blocks = results["memory"].get("blocks_cycles") or []
            held = (f" (live Python blocks {(blocks[-1] / blocks[1] - 1) * 100:+.1f} %: section 3)"
                    if len(blocks) >= 2 else "")
            rows.append((f"memory: RSS after cycle {len(rss)} vs cycle 2", f"{growth * 100:+.1f} %", "<= +10 %",
                         ("met" if growth <= 0.10 else "not met") + held))
    if "fleet" in results:
        fleet = {row["procs"]: row for row in results["fleet"]["rows"]}
        for procs, target in ((2, 1.3), (4, 1.5)):
            if 1 in fleet and procs in fleet and fleet[procs]["wall"]:
                speedup = fleet[1]["wall"] / fleet[procs]["wall"]
                rows.append((f"fleet: runs/s of {procs} processes / of 1", f"{speedup:.2f}x", f">= {target}x",
                             "met" if speedup >= target else
                             f"not met ({busy(fleet[procs])} of {os.cpu_count()} cores busy)"))
        bad = sum(r["duplicate_runs"] + max(r["lost"], 0) + r["crashed"] for r in results["fleet"]["rows"])
        rows.append(("fleet: duplicate runs + lost items + crashes", str(bad), "0", "met" if bad == 0 else "not met"))
    if "steady" in results:
        rows += steady_scenario.summary(results["steady"])
    steady, peer = results.get("steady", {}), results.get("peer", {}).get("steady")
    daemon = steady_scenario.passes(steady, "aiohttp").get("backlog") if steady else None
    if peer and daemon:
        ratio = steady_scenario.rate(daemon) / peer["runs_per_s"] if peer["runs_per_s"] else 0.0
        rows.append(("steady: daemon runs/s / the arq peer's (aiohttp both)", f"{ratio:.2f}x", ">= 1.0x",
                     "met" if ratio >= 1.0 else "not met (sections 6 and 7: what bounds the daemon here)"))
    if "polling" in results:
        rows += polling_scenario.summary(results["polling"])
    return rows


def problems(results: dict[str, Any], size: dict[str, Any]) -> list[str]:
    """What must hold whatever the speed: every run persisted, nothing lost, nothing run twice, no
    crash. The suite exits 1 on any of these (CI runs --quick to keep the suite and the daemon honest)."""
    out = []
    for key in ("collector", "full_collector"):
        col = results.get("cycle", {}).get(key)
        n = networks_of(results.get("cycle", {}), key, size)
        if col is not None and (col["persisted"] != n or col["stored"] != n * 100 or col["crashes"]):
            out.append(f"cycle ({key}): {col['persisted']}/{n} networks persisted, {col['stored']} items stored, "
                       f"{col['crashes']} crashed runs")
    if "memory" in results:
        m = results["memory"]
        if m["crashes"] or sum(m["cycle_items"]) != size["memory_networks"] * (100 + 99 * (size["cycles"] - 1)):
            out.append(f"memory: new items per cycle {m['cycle_items']}, {m['crashes']} crashed runs")
    for r in results.get("fleet", {}).get("rows", []):
        if r["duplicate_runs"] or r["lost"] or r["crashed"] or r["runs"] != size["fleet_networks"]:
            out.append(f"fleet of {r['procs']}: {r['runs']} runs, {r['duplicate_runs']} duplicate, {r['lost']} "
                       f"items lost, {r['crashed']} processes exited badly")
    out += steady_scenario.problems(results.get("steady", {}))
    out += [f"peer: {p}" for p in results.get("peer", {}).get("problems", [])]
    return out


def busy(r: dict[str, Any]) -> str:
    """Cores busy during a fleet run: every process's CPU seconds per second of wall time."""
    return f"{(r['cpu'] + r['db_cpu'] + r['sandbox_cpu']) / r['wall']:.2f}" if r["wall"] else "?"


def md_table(head: list[str], rows: list[list[Any]]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    return [*out, ""]


def report(results: dict[str, Any], info: dict[str, Any], size_name: str, command: str, notes: list[str],
           total: float) -> str:
    size = SIZES[size_name]
    lines = [f"# Benchmark results ({size_name} size)", "",
             f"Command: `{command}` — {total:.0f} s in all, {info['date']}, commit {info['commit']}.", "",
             f"Machine: {info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB, Linux {info['kernel']}; "
             f"Python {info['python']}, collector {info['versions']['collector-daemon']}, httpx "
             f"{info['versions']['httpx']} (the daemon's transport, unless said otherwise: aiohttp "
             f"{info['versions']['aiohttp']} through httpx-aiohttp {info['versions']['httpx-aiohttp']}), "
             f"PyMongo {info['versions']['pymongo']}; database {info['database']}; the sandbox API in its own "
             f"process, {LATENCY * 1000:.0f} ms latency per request, pages of 100 compact GitHub-shaped items "
             "(about 250 bytes of JSON each, the raw payload stored) unless said otherwise.", ""]
    if info.get("engine_bounds"):
        lines += [f"What the engine bounds: {info['engine_bounds']}", ""]
    lines += [f"- {note}" for note in notes]
    lines += ["", "## Targets", ""]
    lines += md_table(["figure", "measured", "target", ""], [list(r) for r in summarize(results, size)])
    if "cycle" in results:
        r = results["cycle"]
        n = size["networks"]
        lines += ["## 1. Cycle", "", f"{n} due networks, one page of 100 items each, concurrency "
                  f"{size['concurrency']}; wall time until the last run is persisted (for the ceilings: the last "
                  "page parsed / inserted).", ""]
        rows = []
        for key, label in (("ceiling_a_pool", "ceiling A, pooled: the daemon's clients of 8 connections, no database"),
                           ("ceiling_b_pool", "ceiling B, pooled: the daemon's clients of 8 connections + insert_many"),
                           ("collector", "collector (the daemon)"),
                           ("full_ceiling_b_pool", f"{full_label(r)}: ceiling B, pooled"),
                           ("full_collector", f"{full_label(r)}: collector (the daemon)")):
            f = r.get(key)
            if f is not None:
                rows.append([label, f"{f['wall']:.2f}", per_s(f["runs"], f["wall"]), per_s(f["items"], f["wall"]),
                             f["rss_peak"], f["cpu"] and round(f["cpu"], 2), f["sandbox_cpu"], f["db_cpu"]])
        old = r.get("old")
        if old is not None:
            rows.append([f"old way: sequential, a lookup per item ({size['old_sample']} networks, extrapolated to "
                         f"{n})", f"{old['extrapolated_wall']:.0f} (extrapolated)", per_s(old["runs"], old["wall"]),
                         per_s(old["items"], old["wall"]), old["rss_peak"], round(old["cpu"], 2),
                         old["sandbox_cpu"], old["db_cpu"]])
        lines += md_table(["variant", "wall s", "runs/s", "items/s", "peak RSS MiB", "CPU s", "sandbox CPU s",
                           "database CPU s"], rows)
        for key, label in (("collector", "compact payloads"), ("full_collector", full_label(r))):
            col = r.get(key)
            if col is not None:
                lines += [f"The daemon's runs ({label}): {col['outcomes']}; items stored {col['stored']}, "
                          f"networks persisted {col['persisted']} of {networks_of(r, key, size)}.", ""]
                if col.get("commands"):
                    total = sum(col["commands"].values())
                    lines += [f"Database commands the daemon sent ({label}): {total} for {col['runs']} runs, "
                              f"{total / max(1, col['runs']):.2f} a run (heartbeats and start-up included): "
                              + ", ".join(f"{k} {v}" for k, v in col["commands"].items()) + ".", ""]
        if "full_collector" in r and r.get("full_source"):
            lines += [f"Recorded payloads: the sandbox serves the GitHub repositories of `{r['full_source']}` "
                      f"(`--recorded`), {r['full_bytes'] / 1000:.1f} KB of JSON each on average, under each item's "
                      "own id and names (`--payload recorded`).", ""]
        elif "full_collector" in r:
            lines += ["Full-size payloads: the sandbox serves GitHub repositories generated from GitHub's documented "
                      "repository schema (collector/sandbox/payloads.py: every field a starred repository carries, "
                      f"realistic deterministic values, {r['full_bytes'] / 1000:.1f} KB of JSON each on average) "
                      "under each item's own id (`--payload recorded`).", ""]
        if "full_collector" in r and r["full_networks"] != n:
            lines += [f"The full-size cycle runs {r['full_networks']} networks, not {n}: an in-memory engine holds "
                      "every stored document in its heap (mongo-java-server: about 35 KB for one ~5.5 KB item).", ""]
    if "scale" in results:
        lines += ["## 2. Due selection at scale", "", f"{size['due']} networks due, the rest scheduled tomorrow; "
                  "claims through the daemon's own claim path, time-boxed "
                  f"to {size['claim_seconds']:.0f} s per size.", ""]
        lines += md_table(["networks stored", "claimed", "wall s", "claims/s", "CPU s", "database CPU s"],
                          [[f"{row['stored']:,}", row["claims"], f"{row['wall']:.2f}", round(row["claims_per_s"], 1),
                            round(row["cpu"], 2), row["db_cpu"]] for row in results["scale"]["rows"]])
    if "memory" in results:
        m = results["memory"]
        lines += ["## 3. Memory over consecutive cycles", "", f"One normal-mode daemon process, {len(m['walls'])} "
                  f"cycles of {size['memory_networks']} runs; before each cycle after the first, every user gets 99 "
                  "new items upstream and every network is due again. RSS read after each cycle, and the live "
                  "Python blocks after a full collection (sys.getallocatedblocks: the objects the process still "
                  "holds, which a leak grows, without the memory the allocators keep for reuse that RSS counts "
                  "too)."
                  + ("" if size["memory_networks"] == size["networks"] else
                     f" ({size['memory_networks']} networks a cycle, not {size['networks']}: the items pile up over "
                     "the cycles, and an in-memory engine holds them all in its heap: 3,000 networks filled "
                     "mongo-java-server's 12 GB heap before the tenth cycle.)"),
                  ""]
        lines += md_table(["cycle", *[str(i + 1) for i in range(len(m["walls"]))]],
                          [["RSS MiB", *m["rss_cycles"]],
                           *([["live blocks, thousands", *[round(b / 1000, 1) for b in m["blocks_cycles"]]]]
                             if m.get("blocks_cycles") else []),
                           ["wall s", *m["walls"]], ["new items", *m["cycle_items"]]])
    if "fleet" in results:
        lines += ["## 4. Fleet", "", f"N daemon processes (`collector --mode initial`, concurrency "
                  f"{size['concurrency']} each) sharing one cycle of {size['fleet_networks']} networks over one "
                  "database. "
                  "Duplicate runs: runs recorded in the networks' stats beyond one each; lost: unique items the "
                  "sandbox served minus items stored.", ""]
        lines += md_table(["processes", "wall s", "runs/s", "runs", "API requests", "duplicate runs", "served",
                           "stored", "lost", "crashed", "daemons CPU s", "database CPU s", "sandbox CPU s",
                           "cores busy"],
                          [[r["procs"], f"{r['wall']:.2f}", per_s(size["fleet_networks"], r["wall"]), r["runs"],
                            r["requests"], r["duplicate_runs"], r["served"], r["stored"], r["lost"], r["crashed"],
                            r["cpu"], r["db_cpu"], r["sandbox_cpu"], busy(r)] for r in results["fleet"]["rows"]])
        lines += [f"Cores busy: CPU seconds of the daemons, the database and the sandbox per second of wall time; "
                  f"this machine has {os.cpu_count()}. At {os.cpu_count()}, more processes cannot go faster: they "
                  "share the same cores with the engine.", ""]
    if "curve" in results:
        lines += ["## 5. Concurrency curve", "", f"{LATENCY * 1000:.0f} ms per request: the ideal is concurrency / "
                  "latency. CPU columns are seconds of CPU per second of wall time (1.0 = one core busy).", ""]
        lines += md_table(["concurrency", "runs", "wall s", "runs/s", "ideal runs/s", "of ideal", "daemon CPU",
                           "database CPU", "sandbox CPU"],
                          [[r["concurrency"], r["runs"], f"{r['wall']:.2f}", per_s(r["runs"], r["wall"]), r["ideal"],
                            f"{r['runs'] / r['wall'] / r['ideal']:.0%}", f"{r['cpu'] / r['wall']:.2f}",
                            f"{r['db_cpu'] / r['wall']:.2f}", f"{r['sandbox_cpu'] / r['wall']:.2f}"]
                           for r in results["curve"]["rows"]])
    if "steady" in results:
        lines += steady_scenario.section(results["steady"], LATENCY, md_table)
    peer = results.get("peer", {})
    if peer.get("steady"):
        p, first = peer["steady"], peer["first"]
        lines += ["", "## 7. The arq peer, same workload", "",
                  f"{peer['networks']:,} networks of section 6's mix ({peer.get('due', peer['networks']):,} due in the "
                  f"steady pass, as for the daemon), arq {p['versions'].get('arq', '?')} workers over "
                  "Redis (one worker process, max_jobs = the daemon's concurrency), a cron enqueuer, httpx over "
                  "aiohttp and PyMongo into the same engine (bench/peers/arq_peer.py: a benchmark harness, not product "
                  "code). First pass (cursors, ETags) then the steady pass, measured:", ""]
        lines += md_table(["pass", "runs", "runs/s", "peer CPU µs/run", "Redis CPU µs/run", "db commands/run",
                           "engine CPU µs/run", "lag p50 / p99 s", "failed", "duplicate runs"],
                          [[name, f["runs"], f["runs_per_s"], f["cpu_per_run_us"], f["redis_cpu_per_run_us"],
                            f["db_commands_per_run"], round(f["db_cpu_s"] / max(f["runs"], 1) * 1e6),
                            f"{f['lag_p50_s']} / {f['lag_p99_s']}", f["failed"], f["duplicate_runs"]]
                           for name, f in (("first", first), ("steady", p))])
        lines += ["", "What the peer does not guarantee (the daemon does):", ""]
        lines += [f"- {line}" for line in p["not_guaranteed"]]
    elif peer.get("skipped"):
        lines += ["", "## 7. The arq peer", "", f"Skipped: {peer['skipped']}"]
    if "polling" in results:
        lines += ["", "## 8. Adaptive polling", "", polling_scenario.__doc__.split("\n\n", 1)[1].split("`python")[0]
                  .strip(), "", "```", *polling_scenario.lines(results["polling"]), "```"]
    if "feed" in results:
        f = results["feed"]
        lines += ["", "## 9. Change feed", "", f"The compact cycle ({size['networks']} networks of 100 items, "
                  "back-filled) without the change feed, then with it (collector/changes.py): wall time until every "
                  "run is persisted and, with the feed, every event published (no pointer left).", ""]
        lines += md_table(["feed", "wall s", "runs persisted after s", "events", "daemon CPU s", "database CPU s",
                           "database commands"],
                          [[k, f"{f[k]['wall']:.2f}", f"{f[k]['runs_wall']:.2f}", f[k]["events"], round(f[k]["cpu"], 2),
                            f[k]["db_cpu"], sum(f[k]["commands"].values())] for k in ("off", "on")])
        lines += [f"Overhead: {f['overhead'] * 100:+.1f} % of wall time (target <= +10 %). One event per run and "
                  "kind, naming its items: one per item (303,000 events for this cycle) took +92 % on this engine "
                  "(2026-12-05, the same machine), which is why events are per run.", ""]
    history = ROOT / "bench" / "optimizations.md"  # hand-kept: the profile and the before/after figures
    if history.exists():
        lines += ["", history.read_text().rstrip()]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the small size (CI)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help=f"comma-separated: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=None, help="markdown report (default: bench/RESULTS.md for the "
                        "full size, bench/RESULTS-quick.md for --quick)")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures as JSON here")
    parser.add_argument("--payload", choices=("compact", "recorded", "both"), default="both",
                        help="the cycle's GitHub payloads: compact (~250 bytes an item), recorded (full-size GitHub "
                             "payloads generated from GitHub's documented repository schema, ~5.5 KB an item; see "
                             "--recorded) or both (default)")
    parser.add_argument("--recorded", type=Path, default=None, metavar="FILE",
                        help="the full-size payloads are the repositories of this JSON list instead, for a comparison: "
                             f"e.g. Likeastore's recording, {RECORDING} beside the clone "
                             "(by default nothing beside the clone is needed)")
    args = parser.parse_args(argv)
    size_name = "quick" if args.quick else "full"
    size = SIZES[size_name]
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in RUNNERS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    command = "bench/run.py" + (" --quick" if args.quick else "") + ("" if args.only == parser.get_default("only")
                                                                    else f" --only {args.only}")
    command += "" if args.payload == "both" else f" --payload {args.payload}"
    command += f" --recorded {args.recorded}" if args.recorded else ""
    began = time.monotonic()
    env = start_env(size)
    env.payload, env.recorded = args.payload, args.recorded
    results: dict[str, Any] = {}
    try:
        info = machine(env)
        print(f"bench: {size_name} size, database {info['database']}, sandbox {env.sandbox}", flush=True)
        for name in names:
            t0 = time.monotonic()
            results[name] = RUNNERS[name](env)
            print(f"bench: {name} done in {time.monotonic() - t0:.0f} s", flush=True)
    finally:
        stop_env(env)
    total = time.monotonic() - began
    text = report(results, info, size_name, f".venv/bin/python {command}", env.notes, total)
    out = args.out or ROOT / "bench" / ("RESULTS.md" if size_name == "full" else "RESULTS-quick.md")
    out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "size": size_name, "results": results}, indent=1,
                                        default=str))
    print(text)
    print(f"bench: written to {out}")
    wrong = problems(results, size)
    for line in wrong:
        print(f"bench: FAIL {line}", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
