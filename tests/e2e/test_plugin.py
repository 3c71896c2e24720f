"""The plugin path end to end: the example package examples/collector-hackernews (its own
pyproject.toml, one entry point, no change to the engine) is installed by scripts/test.sh, listed by
`collector connectors`, and run by the real daemons against the sandbox over HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from collector import plugins
from collector.sandbox import Sandbox, Server
from tests.conftest import ROOT
from tests.integration.test_daemons import daemon, stop, wait_for


def test_the_example_plugin_is_discovered_with_its_package():
    found = plugins.discover()
    assert "hackernews" in found, "examples/collector-hackernews is not installed (scripts/test.sh installs it)"
    reg = found["hackernews"]
    assert reg.error is None and reg.package == "collector-hackernews" and reg.version == "0.1.0"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    out = subprocess.run([sys.executable, "-m", "collector", "connectors"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60).stdout
    line = next(x for x in out.splitlines() if x.startswith("hackernews"))
    assert "collector-hackernews 0.1.0" in line and "HN Search API" in line


@pytest.mark.slow  # real processes: seconds (the quick loop: -m "not slow")
def test_the_daemons_run_the_plugin_back_fill_then_new_items(wire_uri, sync_db):
    db = sync_db
    server = Server(Sandbox()).start()
    box = server.sandbox
    names = ["pg", "dang"]
    for n, name in enumerate(names):
        box.add_user("hackernews", f"internal-{name}", items=150 + 60 * n, name=name)  # 2 and 3 pages of 100
    now = datetime.now(UTC)
    db.networks.insert_many([{"user": f"u-{name}", "service": "hackernews", "options": {"username": name},
                              "mode": "initial", "scheduledTo": now} for name in names])
    extra = ["--set", f"services.hackernews.base_url={server.url}/api/v1", "--set", "schedule.normal_interval=1.0",
             "--set", "services.hackernews.initial_pace=0.05", "--set", "schedule.jitter=0.0"]
    procs = [daemon(mode, wire_uri, db.name, server.url, *extra) for mode in ("initial", "normal")]
    try:
        wait_for(lambda: db.networks.count_documents({"mode": "normal", "service": "hackernews"}) == 2, 60,
                 "the back-fill of two Hacker News users")
        assert db.items.count_documents({"service": "hackernews"}) == 150 + 210
        for name in names:
            box.add_items(f"internal-{name}", 110)  # more than one page of new items each
        wait_for(lambda: db.items.count_documents({"service": "hackernews"}) == 360 + 2 * 110, 60,
                 "normal mode to pick up 220 new items")
    finally:
        results = [stop(p) for p in procs]
        server.stop()
    for code, out in results:
        assert code == 0, out[-3000:]
    served = box.stats()["unique_served"]
    assert sum(served.values()) == db.items.count_documents({"service": "hackernews"}) == 580
    assert db.networks.count_documents({"disabled": True}) == 0
    for doc in db.networks.find():
        assert doc["lastOutcome"]["kind"] in ("page", "not_modified"), doc["lastOutcome"]
