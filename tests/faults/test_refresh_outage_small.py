"""Scenario "refresh_outage" at size small (tests/faults/refresh_outage.py; scripts/faults.py runs it full): access
tokens expiring every 1.5 s, refreshed all along by three daemons while the database goes down three times, each
time the moment a refresh was answered (of an on_use, a grace, a strict network), and daemons are killed -9 (in
each outage, the one whose credential write waits). Every network whose provider allows recovery (rotation none,
on_use, grace) ends clean; a strict-rotation network may lose its pair only to a kill -9 between the provider's
answer and the write (counted apart); nothing lost, nothing stored twice, no daemon crashed."""

from __future__ import annotations

import pytest

from tests.faults import refresh_outage
from tests.faults.scenarios import FAILURE_KEYS, ROW_KEYS

pytestmark = pytest.mark.slow  # a fault scenario with real daemons: seconds (the quick loop: -m "not slow")

CFG = refresh_outage.SIZES["small"]


@pytest.fixture(scope="module")
def report(own_wire_server):
    result = refresh_outage.execute(own_wire_server, "small")
    print(f"\n{result.row}\nby rotation {result.by_rotation}\ncounts {result.counts}")
    for state in result.strict_lost:
        print(f"  lost to strict rotation: {state}")
    return result


def test_the_row_is_clean(report):
    row = report.row
    assert tuple(row) == ROW_KEYS and row["scenario"] == "refresh_outage"
    assert {k: row[k] for k in FAILURE_KEYS} == dict.fromkeys(FAILURE_KEYS, 0), row["notes"]
    assert "FAIL" not in row["notes"] and "TIMED OUT" not in row["notes"], row["notes"]
    assert row["served"] > 0 and row["stored"] + report.counts["strict_lost_items"] >= row["served"], row


def test_networks_whose_provider_allows_recovery_end_clean(report):
    assert report.wrongly == []
    for rotation in refresh_outage.RECOVERABLE:
        tally = report.by_rotation[rotation]
        assert tally["networks"] > 0 and tally["clean"] == tally["networks"], (rotation, tally)
        assert tally["unauthorized"] == tally["disabled"] == 0, (rotation, tally)


def test_a_strict_network_is_lost_only_to_a_kill_between_the_answer_and_the_write(report):
    strict = report.by_rotation["strict"]
    # the others ended clean; each one lost is explained by a kill -9 (else it is in `wrongly`, and `stuck`)
    assert strict["clean"] + len(report.strict_lost) == strict["networks"], (strict, report.strict_lost)
    assert strict["reuse"] >= 0 and report.counts["refresh_reuse"] == sum(
        t["reuse"] for t in report.by_rotation.values())


def test_tokens_were_refreshed_all_along(report):
    networks = sum(t["networks"] for t in report.by_rotation.values())
    assert networks == CFG["per_group"] * len(refresh_outage.GROUPS)
    assert report.counts["refreshes"] >= 3 * networks, report.counts
    for rotation, tally in report.by_rotation.items():
        assert tally["refreshes"] >= 2 * tally["networks"], (rotation, tally)


def test_the_faults_landed(report):
    assert len(report.outages) == len(CFG["armed"])
    assert all(o["up"] - o["down"] >= CFG["down"] for o in report.outages), report.outages
    assert sum(1 for o in report.outages if o["trigger"]) >= len(CFG["armed"]) - 1  # most began at a refresh answer
    assert len(report.kills) >= CFG["kills"] - 1, report.kills
    assert sum(1 for k in report.kills if k["during"]) >= len(CFG["armed"])  # one inside each outage
    # credential writes waited for the database, and daemons holding one were killed -9
    assert report.counts["pending"] >= 1 and any(k["holder"] for k in report.kills), (report.counts, report.kills)
    assert report.crashes == []
