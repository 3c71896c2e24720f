"""Short-lived access tokens, refreshed by the real daemons against the sandbox API over HTTP: a Bluesky network
(com.atproto.server.refreshSession, strict rotation) and a GitHub network (the sandbox's RFC 6749 token endpoint,
strict rotation) whose access tokens expire every 1.5 s keep back-filling and following new items; no refresh
token is ever presented twice, no network is disabled, no token reaches a log."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from collector.sandbox import Sandbox, Server
from tests.integration.test_daemons import daemon, stop, wait_for

pytestmark = pytest.mark.slow  # real daemon processes: seconds (the quick loop: -m "not slow")

PAGE_CAP = 5
TTL = 1.5


def test_networks_with_expiring_tokens_keep_collecting(wire_uri, sync_db):
    server = Server(Sandbox(page_cap=PAGE_CAP)).start()
    box = server.sandbox
    db = sync_db
    users = {"bluesky": f"e2e-bsky-{uuid.uuid4().hex[:8]}", "github": f"e2e-gh-{uuid.uuid4().hex[:8]}"}
    refresh = {service: f"{token}-refresh" for service, token in users.items()}
    now = datetime.now(UTC)
    for n, (service, token) in enumerate(users.items()):
        name = f"sbx{n}user"  # the handle travels in URLs: not the token
        box.add_user(service, token, items=PAGE_CAP * 3, name=name, refresh_token=refresh[service], access_ttl=TTL,
                     rotation="strict")
        doc = {"user": name, "service": service, "accessToken": token, "refreshToken": refresh[service],
               "mode": "initial", "scheduledTo": now}
        if service == "bluesky":
            doc["options"] = {"actor": f"{name}.bsky.social"}
        db.networks.insert_one(doc)
    extra = ["--set", f"services.bluesky.base_url={server.url}", "--set", "services.bluesky.initial_pace=0.05",
             "--set", f"services.github.token_url={server.url}/oauth/token", "--set", "services.github.client_id=e2e",
             "--set", "schedule.normal_interval=0.5", "--set", "schedule.jitter=0"]
    procs = [daemon(mode, wire_uri, db.name, server.url, *extra) for mode in ("initial", "normal")]

    def stored(service: str) -> int:
        return db.items.count_documents({"service": service})

    def refreshes(token: str) -> int:
        return int(box.stats()["tokens"].get(token, {}).get("refreshes", 0))

    def states() -> str:
        return "\n".join(f"{d['service']}: mode={d.get('mode')} disabled={d.get('disabled')} stored="
                         f"{stored(d['service'])} last={d.get('lastOutcome')} error={d.get('lastError')}"
                         for d in db.networks.find())

    try:
        try:
            wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == 2, 60, "both back-fills")
            wait_for(lambda: all(refreshes(t) >= 2 for t in users.values()), 30, "two refreshes of each network")
            for token in users.values():
                box.add_items(token, 3)
            wait_for(lambda: all(stored(s) == PAGE_CAP * 3 + 3 for s in users), 30, "the new items")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{states()}\n{box.stats()}") from None
    finally:
        results = [stop(p) for p in procs]
        server.stop()
    for code, out in results:
        assert code == 0, out[-3000:]
        assert "Traceback" not in out
        for secret in (*users.values(), *refresh.values()):
            assert secret not in out
    stats = box.stats()
    assert stats["refresh_reuse"] == 0 and stats["refresh_invalid"] == 0
    for service, token in users.items():
        assert stats["unique_served"][token] == stored(service) == PAGE_CAP * 3 + 3
        net = db.networks.find_one({"service": service})
        assert not net.get("disabled") and not net.get("unauthorized"), states()
        session = box.users[token].session
        assert session is not None and net["refreshToken"] == session.refresh != refresh[service]
    assert not any(secret in target for target in box.log for secret in (*users.values(), *refresh.values()))
