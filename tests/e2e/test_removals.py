"""Removal detection end to end: the real daemons (one per mode) on the wire server, every built-in connector against
the sandbox API over HTTP. Items removed upstream get `removedAt` within one reconcile_interval, an item that
reappears loses it, and the change feed publishes both; the queries run on the wire server as they do on MongoDB."""

from __future__ import annotations

import math

import pytest

from collector.sandbox import Sandbox, Server
from tests.e2e.test_every_connector import base_flags, networks, seed
from tests.integration.test_daemons import assert_exited_clean, daemon, stop, wait_for
from tests.unit.test_reconcile import SERVICES, upstream_id

pytestmark = pytest.mark.slow  # real daemon processes: seconds (the quick loop: -m "not slow")

PAGE_CAP = 10
ITEMS = 25  # 3 pages
INTERVAL = 4.0  # reconcile_interval, seconds


def item_events(db, user: str) -> set[tuple[str, str]]:
    """(what happened, item id) of a user's events (an event reports one item or several)."""
    found = set()
    for event in db.changes.find({"user": user}):
        for item in event.get("items") or ([event["item"]] if "item" in event else []):
            found.add((event["kind"].split(".")[-1], item["id"]))
    return found


def test_every_connector_detects_removals_and_restorations(wire_uri, sync_db):
    server = Server(Sandbox(page_cap=PAGE_CAP)).start()
    box = server.sandbox
    plan = {s: extra for s, extra in networks(server.url).items() if s in SERVICES}
    assert set(plan) == set(SERVICES)
    db = sync_db
    tokens, names = seed(box, db, plan, "rmv", "e2e-rm", ITEMS)
    bases = base_flags(plan, server.url)
    fast = ["--set", "schedule.normal_interval=1.0", "--set", "schedule.jitter=0",
            "--set", f"schedule.reconcile_interval={INTERVAL}", "--set", "changes.publish_interval=0.2",
            *[x for s in plan for x in ("--set", f"services.{s}.initial_pace=0.05")]]
    procs = [daemon(mode, wire_uri, db.name, server.url, *bases, *fast) for mode in ("initial", "normal")]

    def removed(service: str) -> set[str]:
        return {d["itemId"] for d in db.items.find({"service": service, "removedAt": {"$exists": True}})}

    def ids(service: str, *ns: int) -> set[str]:
        return {upstream_id(service, box, tokens[service], n) for n in ns}

    def states() -> str:
        return "\n".join(f"{d['service']}: mode={d.get('mode')} removed={sorted(removed(d['service']))} "
                         f"reconcile={d.get('reconcile')} last={d.get('lastReconcile')} error={d.get('lastError')}"
                         for d in db.networks.find())

    def reached(predicate, timeout: float, what: str) -> None:
        try:
            wait_for(predicate, timeout, what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{states()}") from None

    try:
        reached(lambda: db.networks.count_documents({"mode": "normal", "lastReconcile.complete": True}) == len(plan),
                120, "every connector's back-fill and first reconciliation")
        assert all(not removed(s) for s in plan)
        for token in tokens.values():
            box.remove_items(token, [3, 24])  # one on the last page, one on the first
        reached(lambda: all(removed(s) == ids(s, 3, 24) for s in plan), 60, "every removal detected")
        for token in tokens.values():
            box.restore_items(token, [24])
        reached(lambda: all(removed(s) == ids(s, 3) for s in plan), 60, "every restoration detected")
        reached(lambda: all({("removed", i) for i in ids(s, 3, 24)} | {("restored", i) for i in ids(s, 24)}
                            <= item_events(db, names[s]) for s in plan), 30, "the change feed's events")
    finally:
        results = [stop(p) for p in procs]
        server.stop()
    assert_exited_clean(results, tokens.values())
    for doc in db.networks.find():
        last = doc["lastReconcile"]
        pages = math.ceil(ITEMS / PAGE_CAP) + 1  # at most one more: an empty last page, GitLab's GET /user
        assert last["complete"] and last["requests"] <= 2 * pages, (doc["service"], last)
    assert db.networks.count_documents({"disabled": True}) == 0
    assert not any(token in target for target in box.log for token in tokens.values())
