"""Every installed connector, built in or plugged in, run by the real daemons (one per mode) against
the sandbox API over HTTP and the wire server: back-fill over several pages, then new items in
normal mode; the sandbox's own counters say every item served was stored exactly once."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from collector import plugins
from collector.sandbox import Sandbox, Server
from tests.integration.test_daemons import assert_exited_clean, daemon, stop, wait_for

pytestmark = pytest.mark.slow  # real daemon processes: seconds (the quick loop: -m "not slow")

PAGE_CAP = 10


def networks(url: str) -> dict[str, dict]:
    """Per service: what its network document needs beyond user/service/token ({name}: the user's name)."""
    return {
        "github": {},
        "stackoverflow": {},
        "mastodon_favourites": {"options": {"instance": url}},
        "mastodon_bookmarks": {"options": {"instance": url}},
        "gitlab": {"options": {"base_url": url}},
        "youtube": {},
        "spotify": {},
        "reddit_saved": {"options": {"username": "{name}"}},
        "reddit_upvoted": {"options": {"username": "{name}"}},
        "bluesky": {"options": {"actor": "{name}.bsky.social"}},
        "hackernews": {"options": {"username": "{name}"}},
    }


def seed(box: Sandbox, db, plan: dict[str, dict], user_prefix: str, token_prefix: str,
         items: int) -> tuple[dict[str, str], dict[str, str]]:
    """A sandbox user with `items` items and its network in initial mode, due now, per service of `plan` (the
    network's extra fields, "{name}" replaced by the user's name); returns the tokens and the user names by service."""
    now = datetime.now(UTC)
    tokens, names = {}, {}
    for n, (service, extra) in enumerate(sorted(plan.items())):
        name = f"{user_prefix}{n}user"
        token = f"{token_prefix}-{service}-{uuid.uuid4().hex[:10]}"
        tokens[service], names[service] = token, name
        box.add_user(service, token, items=items, name=name)
        doc = {"user": name, "service": service, "accessToken": token, "mode": "initial", "scheduledTo": now}
        for key, value in extra.items():
            doc[key] = {k: v.replace("{name}", name) for k, v in value.items()}
        db.networks.insert_one(doc)
    return tokens, names


def base_flags(plan: dict[str, dict], url: str) -> list[str]:
    """The daemon's flags pointing each service of `plan` at the sandbox (Mastodon's networks name their instance)."""
    bases = []
    for service in plan:
        if service == "stackoverflow":
            bases += ["--set", f"services.stackoverflow.base_url={url}/2.3"]
        elif service == "hackernews":
            bases += ["--set", f"services.hackernews.base_url={url}/api/v1"]
        elif not service.startswith("mastodon"):
            bases += ["--set", f"services.{service}.base_url={url}"]
    return bases


def test_every_connector_back_fills_and_follows_new_items(wire_uri, sync_db):
    installed = set(plugins.discover())
    server = Server(Sandbox(page_cap=PAGE_CAP)).start()
    box = server.sandbox
    plan = networks(server.url)
    assert installed >= set(plan), f"not installed: {set(plan) - installed}"
    db = sync_db
    tokens, _names = seed(box, db, plan, "sbx", "e2e", PAGE_CAP * 2 + 5)  # 3 pages
    bases = base_flags(plan, server.url)
    fast = ["--set", "schedule.normal_interval=1.0", "--set", "schedule.jitter=0",
            *[x for s in plan for x in ("--set", f"services.{s}.initial_pace=0.05")]]
    procs = [daemon(mode, wire_uri, db.name, server.url, *bases, *fast) for mode in ("initial", "normal")]

    def stored(service: str) -> int:
        return db.items.count_documents({"service": service})

    def states() -> str:
        return "\n".join(f"{d['service']}: mode={d.get('mode')} disabled={d.get('disabled')} "
                         f"stored={stored(d['service'])} last={d.get('lastOutcome')} error={d.get('lastError')}"
                         for d in db.networks.find())

    try:
        try:
            wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == len(plan), 90,
                     "every connector's back-fill")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{states()}") from None
        for service in plan:
            assert stored(service) == PAGE_CAP * 2 + 5, service
        for token in tokens.values():
            box.add_items(token, 3)
        wait_for(lambda: all(stored(s) == PAGE_CAP * 2 + 8 for s in plan), 60,
                 "every connector to pick up 3 new items in normal mode")
    finally:
        results = [stop(p) for p in procs]
        server.stop()
    assert_exited_clean(results, tokens.values())
    unique = box.stats()["unique_served"]
    for service, token in tokens.items():
        assert unique[token] == stored(service) == PAGE_CAP * 2 + 8, service
    assert db.networks.count_documents({"disabled": True}) == 0
    assert not any(token in target for target in box.log for token in tokens.values())
