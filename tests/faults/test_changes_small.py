"""The change feed under kill -9 at size small (scripts/faults.py runs it full): every change one event, every event
its change, sequences in order, every removal made upstream found (tests/faults/changes.py)."""

from __future__ import annotations

import pytest

from tests.faults import changes, scenarios
from tests.faults.test_faults_small import assert_clean

pytestmark = pytest.mark.slow  # real daemons killed and restarted: tens of seconds


def test_changes_under_kill_9_one_event_per_change(wire_uri):
    details: dict = {}
    row = changes.changes(wire_uri, "small", details=details)
    print(f"\n{row}\n{details}")
    assert_clean(row)
    assert row["faults"] >= 2, row["notes"]  # kills landed in the scenario
    assert details["missing"] == 0 and details["orphans"] == 0 and details["doubles"] == 0, details
    assert details["unordered"] == 0 and details["pending"] == 0, details
    assert details["removed"] == details["removed_upstream"] > 0, details  # every removal found, none invented
    assert details["events"] > 0 and not details["timed_out"], details
    assert tuple(row) == scenarios.ROW_KEYS
