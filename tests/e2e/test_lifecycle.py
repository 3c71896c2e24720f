"""The real daemons (one per mode, separate processes) against the sandbox API over real HTTP and
the wire server: back-fill, new items in normal mode, a rate-limited user, a revoked token and a
flapping 5xx, all judged by the sandbox's own counters."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from collector.sandbox import Sandbox, Server
from tests.integration.test_daemons import assert_exited_clean, daemon, stop, wait_for

pytestmark = pytest.mark.slow  # real daemon processes: seconds (the quick loop: -m "not slow")

FAST = ["--set", "schedule.normal_interval=1.0", "--set", "schedule.backoff_base=0.5",
        "--set", "schedule.rate_limit_slack=0.2", "--set", "schedule.jitter=0.0",
        "--set", "schedule.unauthorized_recheck=1.0"]


def test_lifecycle_of_a_small_fleet(wire_uri, sync_db):
    server = Server(Sandbox(page_cap=10)).start()
    box = server.sandbox
    db = sync_db
    tokens = {name: f"e2e-{name}-{uuid.uuid4().hex[:8]}" for name in
              ("gh", "so", "limited", "revoked", "flapping")}
    services = {"gh": "github", "so": "stackoverflow", "limited": "github", "revoked": "github",
                "flapping": "stackoverflow"}
    for name, token in tokens.items():
        box.add_user(services[name], token, items=25)  # 3 pages of 10
    box.inject(tokens["limited"], "rate_limit", seconds=4)
    box.users[tokens["revoked"]].revoked = True
    box.inject(tokens["flapping"], "status", count=2, status=503)
    now = datetime.now(UTC)
    db.networks.insert_many([{"user": name, "service": services[name], "accessToken": token, "mode": "initial",
                              "scheduledTo": now} for name, token in tokens.items()])
    procs = [daemon(mode, wire_uri, db.name, server.url, *FAST) for mode in ("initial", "normal")]

    def stored_equals_served() -> bool:
        served = sum(box.stats()["unique_served"].values())
        return served > 0 and db.items.count_documents({}) == served

    try:
        wait_for(lambda: db.networks.count_documents({"mode": "normal", "disabled": {"$ne": True}}) == 4
                 and db.networks.count_documents({"unauthorized": True, "disabled": True}) == 1
                 and stored_equals_served(),
                 120, "the back-fill of 4 networks and the revoked one disabled (its 401 confirmed)")
        assert db.items.count_documents({}) == 4 * 25

        # new items upstream are picked up by the normal daemon
        for name in ("gh", "so"):
            box.add_items(tokens[name], 4)
        wait_for(lambda: db.items.count_documents({"user": {"$in": ["gh", "so"]}}) == 2 * 29, 60,
                 "normal mode to pick up 8 new items")
        assert stored_equals_served()
    finally:
        results = [stop(p) for p in procs]
        server.stop()
    assert_exited_clean(results, tokens.values())
    nets = {d["user"]: d for d in db.networks.find()}
    stats = box.stats()
    # every distinct item the sandbox handed out is stored, once (normal runs re-read page 1)
    assert db.items.count_documents({}) == sum(stats["unique_served"].values()) == 4 * 25 + 8
    # the rate-limited user was left alone until the reset it was given (Unix second), then finished
    hits = box.hits[tokens["limited"]]
    assert hits[1] >= int(hits[0] + 4), hits[:3]
    assert nets["limited"]["mode"] == "normal" and nets["limited"]["errors"] == 0
    # the revoked token was tried once, once more after unauthorized_recheck to confirm it, and never again
    assert stats["by_token"][tokens["revoked"]] == 2
    assert nets["revoked"]["unauthorized"] and "Bad credentials" in nets["revoked"]["disabledReason"]
    # the flapping 5xx backed off (0.5 s, then 1 s) and recovered
    flaps = box.hits[tokens["flapping"]]
    assert flaps[1] - flaps[0] >= 0.5 and flaps[2] - flaps[1] >= 1.0, flaps[:3]
    assert nets["flapping"]["mode"] == "normal" and nets["flapping"]["errors"] == 0
    assert not nets["flapping"].get("disabled")
    assert nets["flapping"]["stats"]["transient"] == 2
