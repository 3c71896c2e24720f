#!/usr/bin/env python3
"""The fault suite of "Reliability under faults", at full size (the test suite runs it small:
tests/faults/test_faults_small.py).

    .venv/bin/python scripts/faults.py [--size small|full] [--only NAME] [--markdown PATH]

Scenarios (tests/faults/scenarios.py, tests/faults/hostile.py):
  kill9     two initial-mode daemons back-fill while one of them is killed -9 at random moments
  outage    the wire server is killed mid-run and comes back on the same port with the same data;
            also: a daemon started against a closed port exits 3 with a clear message
  hostile   hostile API replies (tests/faults/hostile.py, when present)
  secrets   tokens never reach logs or the database's error fields (tests/faults/hostile.py, when present)
  backlog, poison, api_outage, clock_skew
            a backlog far larger than one fill (the systemd watchdog keeps getting pings), integers past 64 bits
            in every payload, an API outage of many 503s in a row (nothing disabled), a daemon on a clock ten
            minutes fast (no lease stolen, nothing run early): tests/faults/fleet.py
  hostile_server
            one daemon, ordinary networks and hostile Mastodon instances (nested gzip bomb, 100 KB Link header,
            `<`-flood content, redirect to loopback, slow drip, 10 MB array, refused addresses): the largest
            event-loop gap, peak RSS over idle, nothing lost, no refused connection: tests/faults/hostile_server.py
  refresh_outage
            access tokens expiring every 1.5 s (GitHub strict and none, GitLab on_use, Bluesky grace and strict
            rotation), refreshed all along while the database goes down at refresh answers and daemons are killed
            -9 (the one holding a credential write, in each outage): nobody of a rotation that allows recovery
            unauthorized, strict losses counted apart: tests/faults/refresh_outage.py (a server of its own)
  revocation_storm
            every GitHub request refused with 401 for longer than unauthorized_recheck: GitHub paused for an auth
            incident, nobody disabled, everything collected after it: tests/faults/revocation_storm.py
  changes   the change feed under kill -9 during a back-fill, then while items arrive and are removed upstream:
            one event per change, no event without its change, every removal found: tests/faults/changes.py

Uses $MONGODB_URI when set, else starts its own mongo-java-server (scripts/devdb.py). The outage and refresh_outage
scenarios always need a server of their own (one they can stop and start again): where scripts/devdb.py cannot start
one they are skipped.
Prints one table row per scenario and exits 1 if any row has lost, duplicated, crashes or stuck > 0
(or a note saying FAIL).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.faults import changes, fleet, hostile_server, refresh_outage, revocation_storm, scenarios  # noqa: E402
from tests.harness import load_devdb  # noqa: E402

FLEET = ("backlog", "poison", "api_outage", "clock_skew")
NAMES = ("kill9", "outage", "hostile", "secrets", *FLEET, "hostile_server", "refresh_outage", "revocation_storm",
         "changes")
# the scenarios that stop and start their server: (server, size, seed) -> row
OWN_SERVER = {"outage": lambda server, size, seed: scenarios.outage(server, size),
              "refresh_outage": lambda server, size, seed: refresh_outage.run(server, size, seed=seed)}
COLUMNS = ("scenario", "runs", "faults", "served", "stored", "duplicated", "lost", "crashes", "stuck", "seconds")


def failed(row: dict[str, Any]) -> bool:
    return any(int(row.get(k) or 0) > 0 for k in scenarios.FAILURE_KEYS) or "FAIL" in str(row.get("notes", ""))


def error_row(name: str, exc: BaseException, began: float) -> dict[str, Any]:
    """A scenario that raised: a failed row (crashes=1) naming the error."""
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    at = f" at {Path(where[0].filename).name}:{where[0].lineno}" if where else ""
    return scenarios.row(name, crashes=1, seconds=round(time.monotonic() - began, 1),
                         notes=f"FAIL: the scenario raised {type(exc).__name__}: {exc}{at}")


def table(rows: list[dict[str, Any]]) -> str:
    cells = [[str(r.get(c, "")) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.upper().ljust(w) if i == 0 else c.upper().rjust(w) for i, (c, w) in
                       enumerate(zip(COLUMNS, widths, strict=True)))]
    for row in cells:
        lines.append("  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in
                               enumerate(zip(row, widths, strict=True))))
    return "\n".join(lines)


def markdown(rows: list[dict[str, Any]], size: str, skipped: list[str]) -> str:
    cols = (*COLUMNS, "notes")
    out = [f"Fault suite, size {size} (`.venv/bin/python scripts/faults.py --size {size}`)", "",
           "| " + " | ".join(cols) + " |", "|" + "|".join("---" if c in ("scenario", "notes") else "---:" for c in cols)
           + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(c, "")).replace("|", "\\|") for c in cols) + " |")
    out += [""] + [f"- skipped: {s}" for s in skipped]
    return "\n".join(out).rstrip() + "\n"


def hostile_module() -> Any | None:
    """tests/faults/hostile.py if it exists (another part of the suite): None when it does not."""
    if importlib.util.find_spec("tests.faults.hostile") is None:
        return None
    return importlib.import_module("tests.faults.hostile")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=scenarios.SIZES, default="full")
    parser.add_argument("--only", choices=NAMES, help="run this scenario only")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="also write the table as markdown here")
    parser.add_argument("--seed", type=int, help="seed of the kill -9 drivers (kill9, refresh_outage; default: random, "
                        "printed)")
    args = parser.parse_args(argv)
    wanted = [args.only] if args.only else list(NAMES)
    devdb = load_devdb()
    rows: list[dict[str, Any]] = []
    skipped: list[str] = []
    started = time.monotonic()

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        mark = "FAILED" if failed(row) else "ok"
        print(f"[{time.monotonic() - started:6.1f}s] {row['scenario']}: {mark} ({row['seconds']}s) {row['notes']}",
              flush=True)

    shared = None
    try:
        if {"kill9", "hostile", "secrets", "hostile_server", "revocation_storm", "changes", *FLEET} & set(wanted):
            shared = devdb.start_server()  # $MONGODB_URI when set
            where = "$MONGODB_URI" if os.environ.get("MONGODB_URI") else f"{shared.engine} at {shared.uri}"
            print(f"database: {where}", flush=True)
        # the scenarios on the shared server, in order: each one's row, or its error's
        on_shared: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("kill9", lambda: scenarios.kill9(shared.uri, args.size, seed=args.seed)),
            *[(name, functools.partial(getattr(fleet, name), shared.uri, args.size)) for name in FLEET],
            ("hostile_server", lambda: hostile_server.run(shared.uri, args.size)),
            ("revocation_storm", lambda: revocation_storm.run(shared.uri, args.size)),
            ("changes", lambda: changes.changes(shared.uri, args.size, seed=args.seed)),
        ]
        for name, scenario_run in on_shared:
            if name in wanted:
                began = time.monotonic()
                try:
                    report(scenario_run())
                except Exception as exc:
                    report(error_row(name, exc, began))
        for name, scenario in OWN_SERVER.items():
            if name not in wanted:
                continue
            began = time.monotonic()
            try:
                own = devdb.start_server(use_env=False)  # one we can stop and start again
            except devdb.DevDBError as exc:
                skipped.append(f"{name}: needs a server of its own ({exc})")
                print(f"{name}: SKIPPED: needs a server of its own ({exc})", flush=True)
            else:
                try:
                    report(scenario(own, args.size, args.seed))
                except Exception as exc:
                    report(error_row(name, exc, began))
                finally:
                    own.stop()
        if {"hostile", "secrets"} & set(wanted):
            began = time.monotonic()
            try:
                module = hostile_module()
            except Exception as exc:
                module = None
                report(error_row("hostile", exc, began))
            else:
                if module is None or not callable(getattr(module, "run", None)):
                    why = "tests/faults/hostile.py not found" if module is None else "it has no run(uri, size)"
                    skipped.append(f"hostile, secrets: {why}")
                    print(f"hostile, secrets: SKIPPED: {why}", flush=True)
                else:
                    try:
                        got = list(module.run(shared.uri, args.size))
                    except Exception as exc:
                        got = [error_row("hostile", exc, began)]
                    if args.only:
                        got = [r for r in got if str(r.get("scenario", "")).startswith(args.only)] or got
                    for r in got:
                        missing = set(scenarios.ROW_KEYS) - set(r)
                        if missing:
                            r = {**scenarios.row(str(r.get("scenario", "hostile"))), **r}
                            r["notes"] = f"FAIL: row without {sorted(missing)}; {r.get('notes', '')}"
                        report(r)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if shared is not None:
            shared.stop()
    total = time.monotonic() - started
    print()
    print(f"fault suite, size {args.size}: {len(rows)} scenario(s) in {total:.0f}s")
    print(table(rows))
    for s in skipped:
        print(f"skipped: {s}")
    if args.markdown:
        args.markdown.write_text(markdown(rows, args.size, skipped))
        print(f"markdown table written to {args.markdown}")
    bad = [r["scenario"] for r in rows if failed(r)]
    if bad:
        print(f"FAILED: {', '.join(bad)} (lost, duplicated, crashes or stuck above 0, or a FAIL note)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
