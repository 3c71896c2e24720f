"""The fault suite at size small (scripts/faults.py runs it full): kill -9 during a back-fill, and a
database outage with the server back on the same port; nothing lost, nothing duplicated, no daemon
crashed, no network stuck, and an outage logged once per backoff step, not once per poll."""

from __future__ import annotations

import os

import pytest

from tests.faults import scenarios
from tests.harness import load_devdb

pytestmark = pytest.mark.slow  # fault scenarios with real daemons: seconds each (the quick loop: -m "not slow")


def assert_clean(row: dict) -> None:
    assert tuple(row) == scenarios.ROW_KEYS
    assert row["served"] > 0 and row["stored"] == row["served"], row
    assert {k: row[k] for k in scenarios.FAILURE_KEYS} == dict.fromkeys(scenarios.FAILURE_KEYS, 0), row
    assert "FAIL" not in row["notes"], row["notes"]


def test_kill_9_at_random_moments_loses_nothing(wire_uri):
    row = scenarios.kill9(wire_uri, "small")
    print(f"\n{row}")
    assert_clean(row)
    assert row["faults"] >= 2, row["notes"]  # the back-fill outlived at least two of the kills
    assert row["runs"] >= 40 * 5


@pytest.fixture
def own_server():
    """A wire server of this test's own (scripts/devdb.py): the outage stops it and starts it again on the same port."""
    try:
        server = load_devdb().start_server(use_env=False)
    except Exception as exc:
        reason = f"NO OWN SERVER: the outage scenario needs a server of its own from scripts/devdb.py ({exc})"
        if os.environ.get("COLLECTOR_REQUIRE_WIRE") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.stop()


def test_database_outage_daemons_wait_log_little_and_resume(own_server):
    details: dict = {}
    row = scenarios.outage(own_server, "small", details=details)
    print(f"\n{row}\n{details}")
    assert_clean(row)
    assert details["fails"] == []
    assert details["exited_during_outage"] == []
    # one line per backoff step, not one per poll: at most log2(outage/poll) + outage/retry_cap + 2
    assert details["bound"] == scenarios.log_bound(details["down_for"])
    assert details["down_for"] >= scenarios.OUTAGE["small"]["seconds"]
    assert all(1 <= n <= details["bound"] for n in details["unavailable_lines"]), details
    assert details["quitter_lines"] <= details["bound"]
    assert details["quitter"]["code"] == 0 and details["quitter"]["seconds"] <= scenarios.STOP_LIMIT
    assert details["stored_after_resume"] >= details["stored_before"]  # the same data came back
    start = details["start"]
    assert start["ok"], start
    assert start["code"] == 3 and start["seconds"] <= 10


def test_a_backlog_larger_than_a_fill_keeps_the_watchdog_fed(wire_uri):
    from tests.faults import fleet

    row = fleet.backlog(wire_uri, "small")
    print(f"\n{row}")
    assert_clean(row)
    assert row["faults"] == 0 and row["runs"] >= fleet.BACKLOG["small"]["users"]


def test_integers_past_64_bits_in_every_payload_are_stored_and_nothing_repeats(wire_uri):
    from tests.faults import fleet

    row = fleet.poison(wire_uri, "small")
    print(f"\n{row}")
    assert_clean(row)
    assert row["faults"] > 0 and row["duplicated"] == 0


def test_an_api_outage_disables_nothing_and_everything_is_collected_after_it(wire_uri):
    from tests.faults import fleet

    row = fleet.api_outage(wire_uri, "small")
    print(f"\n{row}")
    assert_clean(row)
    cfg = fleet.API_OUTAGE["small"]
    assert row["faults"] == cfg["users"] * cfg["fails"]  # every 503 was served, then every page


def test_a_daemon_on_a_clock_ten_minutes_fast_steals_no_lease(wire_uri):
    from tests.faults import fleet

    row = fleet.clock_skew(wire_uri, "small")
    print(f"\n{row}")
    assert_clean(row)
    assert "pages fetched twice: 0" in row["notes"] and "run early: 0" in row["notes"]
