"""Scenario "revocation_storm" at size small (tests/faults/revocation_storm.py; scripts/faults.py runs it full): 60
networks of GitHub, GitLab and Stack Overflow collecting under three daemons; every GitHub request refused with 401 for
12 s (longer than unauthorized_recheck), then GitHub recovers. GitHub is paused for an auth incident, no network is
disabled at any moment, the other services go on, and afterwards every network has everything, nothing twice."""

from __future__ import annotations

import pytest

from tests.faults import revocation_storm
from tests.faults.scenarios import FAILURE_KEYS, ROW_KEYS

pytestmark = pytest.mark.slow  # a fault scenario with real daemons: seconds (the quick loop: -m "not slow")

CFG = revocation_storm.SIZES["small"]


@pytest.fixture(scope="module")
def report(wire_uri):
    result = revocation_storm.execute(wire_uri, "small")
    print(f"\n{result.row}\npauses seen {result.pauses_seen}")
    return result


def test_the_row_is_clean(report):
    row = report.row
    assert tuple(row) == ROW_KEYS and row["scenario"] == "revocation_storm"
    assert sum(CFG["networks"].values()) >= 60
    assert {k: row[k] for k in FAILURE_KEYS} == dict.fromkeys(FAILURE_KEYS, 0), row["notes"]
    assert "FAIL" not in row["notes"], row["notes"]
    assert row["served"] > 0 and row["stored"] == row["served"], row  # everything collected after the storm


def test_the_storm_is_an_incident_of_the_service_not_revocations(report):
    assert report.refused >= 10, report.row["notes"]  # incident_min_runs (default 10): enough to judge by
    assert report.declared_after is not None, report.pauses_seen
    assert any(r.startswith("auth incident") for r in report.pauses_seen), report.pauses_seen
    assert report.declarations >= 1 and report.incident_at is not None
    # declared before the networks refused first were rechecked (each would have been disabled by its second 401)
    assert report.declared_after < revocation_storm.RECHECK, report.declared_after


def test_nobody_is_disabled_and_the_marks_are_cleared(report):
    assert report.disabled_peak == 0
    assert report.row["stuck"] == 0  # at the end: nobody marked unauthorized, everybody caught up


def test_the_other_services_go_on(report):
    assert report.others_paused == []
    assert report.others_collected_in_storm


def test_every_daemon_ran_throughout(report):
    assert report.crashes == [] and report.row["crashes"] == 0
