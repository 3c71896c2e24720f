"""A host whose clock runs minutes ahead must not take leases other hosts hold, nor run networks before they
are due: the daemon reads due times and leases on the database server's clock (collector/clock.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from collector.app import run_daemon
from collector.clock import ServerClock
from tests.conftest import make_settings

SKEW = timedelta(minutes=10)


@pytest.mark.slow  # a daemon run for seconds (the quick loop: -m "not slow")
async def test_a_clock_ten_minutes_ahead_steals_no_lease_and_runs_nothing_early(wire_db, sandbox):
    now = datetime.now(UTC)
    for token in ("held", "later", "due"):
        sandbox.sandbox.add_user("github", f"skew-{token}", items=2)
    await wire_db.networks.insert_many([
        # held by a live process on another host for two more minutes
        {"user": "held", "service": "github", "accessToken": "skew-held", "mode": "initial",
         "scheduledTo": now - timedelta(seconds=1), "lease": {"id": "theirs", "owner": "host-b",
                                                              "until": now + timedelta(minutes=2)}},
        # due in five minutes
        {"user": "later", "service": "github", "accessToken": "skew-later", "mode": "initial",
         "scheduledTo": now + timedelta(minutes=5)},
        {"user": "due", "service": "github", "accessToken": "skew-due", "mode": "initial", "scheduledTo": now},
    ])
    settings = make_settings(services={"github": {"base_url": sandbox.url}}, daemon={"poll_interval": 0.1})
    ahead = lambda: datetime.now(UTC) + SKEW  # noqa: E731  (this host's wall clock, 10 minutes fast)
    box = []
    task = asyncio.create_task(run_daemon(settings, "initial", db=wire_db, clock=ahead, on_ready=box.append))
    for _ in range(300):
        if await wire_db.networks.count_documents({"user": "due", "lastOutcome": {"$exists": True}}):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # time for a wrong claim of the other two to happen
    box[0].stop()
    await asyncio.wait_for(task, 30)
    nets = {d["user"]: d async for d in wire_db.networks.find({})}
    assert nets["due"]["lastOutcome"]["kind"] == "page"
    assert nets["held"]["lease"]["id"] == "theirs" and "lastOutcome" not in nets["held"]  # not stolen
    assert "lastOutcome" not in nets["later"]  # not run 5 minutes early
    assert sandbox.sandbox.stats()["by_token"].keys() == {"skew-due"}
    # and what it wrote is on the server's clock too: the next page is due after the pace, not 10 minutes later
    assert abs(nets["due"]["lastExecution"] - datetime.now(UTC)) < timedelta(seconds=30)


async def test_the_offset_is_measured_against_the_server(wire_db):
    clock = ServerClock(base=lambda: datetime.now(UTC) - timedelta(hours=3))
    assert await clock.sync(wire_db)
    assert abs(clock.offset - timedelta(hours=3)) < timedelta(seconds=2)
    assert abs(clock() - datetime.now(UTC)) < timedelta(seconds=2)
