"""Real daemon processes against the wire server and the sandbox API over real HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.harness import until_catches

pytestmark = pytest.mark.slow  # real daemon and CLI processes: seconds each (the quick loop: -m "not slow")


def daemon(mode: str, uri: str, dbname: str, sandbox_url: str, *extra: str, stdout: Any = subprocess.PIPE,
           ) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "collector", "--mode", mode, "--env", "test", "--mongodb-uri", uri,
           "--set", f"database.name={dbname}",
           "--set", f"services.github.base_url={sandbox_url}",
           "--set", f"services.stackoverflow.base_url={sandbox_url}/2.3",
           "--set", "services.github.initial_pace=0.05", "--set", "services.stackoverflow.initial_pace=0.05",
           "--set", "log.level=warning", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=stdout, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll an external process's progress (the only way to wait on another process), bounded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(proc: subprocess.Popen) -> tuple[int, str]:
    until_catches(proc.pid, signal.SIGTERM, 15.0)  # a daemon just started: once its handler is in (tests/harness.py)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return proc.returncode, out.decode(errors="replace")


def assert_exited_clean(results: list[tuple[int, str]], secrets) -> None:
    """Every daemon stopped with code 0 and printed none of `secrets` (tokens)."""
    for code, out in results:
        assert code == 0, out[-3000:]
        for secret in secrets:
            assert secret not in out


@pytest.mark.parametrize("processes", [2, 4])
def test_processes_share_200_networks_each_page_fetched_once(processes, wire_uri, sandbox, sync_db):
    """The lease protocol's promise, on an atomic server: N daemons back-fill 200 networks of 3 pages
    each; every page is requested from the sandbox exactly once and every item stored exactly once."""
    db = sync_db
    docs = []
    for i in range(200):
        service = "github" if i % 4 else "stackoverflow"
        token = f"tok-{i:03d}-{uuid.uuid4().hex[:6]}"
        sandbox.sandbox.add_user(service, token, items=5)  # 3 pages (the sandbox serves 2 per page)
        docs.append({"user": f"user{i}", "service": service, "accessToken": token, "mode": "initial",
                     "scheduledTo": datetime.now(UTC)})
    db.networks.insert_many(docs)
    procs = [daemon("initial", wire_uri, db.name, sandbox.url, "--concurrency", "16") for _ in range(processes)]
    try:
        wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == 200, 480,
                 "all 200 networks to finish their back-fill")
    finally:
        results = [stop(p) for p in procs]
    for code, out in results:
        assert code == 0, out[-3000:]
    stats = sandbox.sandbox.stats()
    assert len(stats["by_token"]) == 200
    # nothing lost, nothing stored twice: every item served is stored exactly once
    assert all(stats["unique_served"][t] == 5 for t in stats["by_token"])
    assert db.items.count_documents({}) == 200 * 5
    assert db.networks.count_documents({"lease": {"$exists": True}}) == 0
    assert db.networks.count_documents({"disabled": True}) == 0
    owners = db.networks.distinct("lastOwner")
    assert len(owners) >= 2, owners  # the work was shared (with 4, a late starter may find little left)
    # the claim is atomic: each of the 3 pages of every network fetched exactly once, 3 runs each
    repeated = {t: n for t, n in stats["by_token"].items() if n != 3}
    assert not repeated, f"{len(repeated)} networks with pages fetched more or less than once: {repeated}"
    assert sorted({d["stats"]["runs"] for d in db.networks.find({}, {"stats": 1})}) == [3]


def test_bad_documents_end_disabled_and_the_daemon_keeps_running(wire_uri, sandbox, sync_db):
    db = sync_db
    sandbox.sandbox.add_user("github", "good-token-1", items=3)
    now = datetime.now(UTC)
    db.networks.insert_many([
        {"user": "no-token", "service": "github", "mode": "initial", "scheduledTo": now},
        {"user": "unknown", "service": "myspace", "accessToken": "abcd1234", "mode": "initial",
         "scheduledTo": now},
        {"user": {"nested": ["junk"]}, "service": "github", "accessToken": "abcd1234", "mode": "initial",
         "scheduledTo": now},
        {"user": "revoked", "service": "github", "accessToken": "revoked-token", "mode": "initial",
         "scheduledTo": now},
        {"user": "bare", "service": "github", "accessToken": "good-token-1"},  # no mode, no schedule
    ])
    proc = daemon("initial", wire_uri, db.name, sandbox.url, "--set", "schedule.unauthorized_recheck=0.5")
    try:
        wait_for(lambda: db.networks.count_documents({"disabled": True}) == 4
                 and db.networks.count_documents({"user": "bare", "mode": "normal"}) == 1, 60,
                 "bad documents disabled and the good one collected")
        assert proc.poll() is None, "the daemon must keep running"
    finally:
        code, out = stop(proc)
    assert code == 0, out[-3000:]
    reasons = {str(d["user"]): (d["lastError"]["kind"], d["disabledReason"]) for d in db.networks.find(
        {"disabled": True})}
    assert reasons["no-token"][0] == "missing_credentials"
    assert reasons["unknown"][0] == "unknown_service" and "myspace" in reasons["unknown"][1]
    assert reasons["{'nested': ['junk']}"][0] == "malformed"
    assert reasons["revoked"][0] == "unauthorized"
    assert db.networks.find_one({"user": "revoked"})["unauthorized"] is True
    assert db.items.count_documents({"user": "bare"}) == 3
    assert "revoked-token" not in out and "abcd1234" not in out


def test_networks_add_and_list_through_the_cli(wire_uri, sync_db):
    db = sync_db
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    env.update(MONGODB_URI=wire_uri, COLLECTOR_DATABASE__NAME=db.name, MY_TOKEN="ghp_cli_secret_42")
    base = [sys.executable, "-m", "collector", "--env", "test", "networks"]
    added = subprocess.run([*base, "add", "--user", "alice", "--service", "github", "--token-env", "MY_TOKEN"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert added.returncode == 0, added.stderr
    lines = '{"user": "bob", "service": "stackoverflow", "accessToken": "so-token-1234"}\n'
    piped = subprocess.run([*base, "add", "--stdin"], input=lines, cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert piped.returncode == 0, piped.stderr
    bad = subprocess.run([*base, "add", "--user", "carol", "--service", "myspace"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode != 0 and "unknown service 'myspace'" in bad.stderr
    docs = {d["user"]: d for d in db.networks.find()}
    assert set(docs) == {"alice", "bob"}
    assert docs["alice"]["accessToken"] == "ghp_cli_secret_42" and docs["alice"]["mode"] == "initial"
    listed = subprocess.run([*base, "list"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "alice" in listed.stdout and "bob" in listed.stdout
    assert "ghp_cli_secret_42" not in listed.stdout + listed.stderr
    assert "so-token-1234" not in listed.stdout + listed.stderr

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*base, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

    alice = str(docs["alice"]["_id"])
    shown = cli("show", alice)
    assert shown.returncode == 0 and '"user": "alice"' in shown.stdout
    assert "ghp_cli_secret_42" not in shown.stdout and "[redacted]" in shown.stdout
    assert cli("disable", alice, "--reason", "customer left").returncode == 0
    only_disabled = cli("list", "--state", "disabled")
    assert "alice" in only_disabled.stdout and "bob" not in only_disabled.stdout
    assert "operator: customer left" in only_disabled.stdout
    assert cli("enable", alice).returncode == 0
    assert db.networks.find_one({"user": "alice"})["disabled"] is False
    assert cli("reset", alice).returncode == 0
    assert "stackoverflow" in cli("list", "--service", "stackoverflow").stdout
    assert "alice" not in cli("list", "--service", "stackoverflow").stdout
    missing = cli("enable", "000000000000000000000000")
    assert missing.returncode != 0 and "no network" in missing.stderr


@pytest.mark.parametrize("disable_after", [30, 0])
def test_an_api_outage_backs_off_and_disables_nothing_unless_it_lasts(disable_after, wire_uri, sandbox, sync_db):
    """Every request of 20 networks fails with a 503, 8 times in a row (an outage of a few seconds here, of
    hours in production). With max_errors=3 the networks used to be disabled, for good, after 3 failures:
    now they back off and keep trying until the streak spans `disable_after` (0: the count alone)."""
    db = sync_db
    tokens = [f"outage-{i:02d}-{uuid.uuid4().hex[:6]}" for i in range(20)]
    for token in tokens:
        sandbox.sandbox.add_user("github", token, items=1)
        sandbox.sandbox.inject(token, kind="status", status=503, count=8)
    db.networks.insert_many([{"user": t, "service": "github", "accessToken": t, "mode": "initial",
                              "scheduledTo": datetime.now(UTC)} for t in tokens])
    proc = daemon("initial", wire_uri, db.name, sandbox.url, "--set", "schedule.backoff_base=0.05",
                  "--set", "schedule.backoff_cap=0.2", "--set", "schedule.max_errors=3",
                  "--set", f"schedule.disable_after={disable_after}")
    try:
        if disable_after:
            wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == 20, 90,
                     "every network collected once the outage is over")
        else:
            wait_for(lambda: db.networks.count_documents({"disabled": True}) == 20, 90, "every network disabled")
    finally:
        code, out = stop(proc)
    assert code == 0, out[-3000:]
    requests = sandbox.sandbox.stats()["by_token"]
    if disable_after:
        assert db.networks.count_documents({"disabled": True}) == 0
        assert all(requests[t] == 9 for t in tokens)  # 8 failures, then the page
        assert db.items.count_documents({}) == 20
        assert db.networks.count_documents({"failingSince": {"$exists": True}}) == 0  # the success ended it
    else:
        assert all(requests[t] == 3 for t in tokens)
        net = db.networks.find_one({})
        assert net["errors"] == 3 and "3 consecutive failures" in net["disabledReason"]
        # the operator's way back: a bulk enable by service and last error kind (what an operator disabled stays)
        db.networks.update_one({"user": tokens[0]}, {"$set": {"disabledReason": "operator: customer left"}})
        env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
        env.update(MONGODB_URI=wire_uri, COLLECTOR_DATABASE__NAME=db.name)

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "collector", "--env", "test", "networks", "enable", *args],
                                  cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)

        dry = cli("--service", "github", "--reason-kind", "http_5xx", "--dry-run")
        assert dry.returncode == 0 and "dry run: 19 disabled networks match" in dry.stdout, dry.stdout + dry.stderr
        assert db.networks.count_documents({"disabled": True}) == 20  # a dry run changes nothing
        assert cli("--service", "github", "--reason-kind", "timeout").stdout.startswith("enabled 0 networks")
        done = cli("--service", "github", "--reason-kind", "http_5xx")
        assert done.returncode == 0 and done.stdout.startswith("enabled 19 networks"), done.stdout + done.stderr
        assert [d["user"] for d in db.networks.find({"disabled": True})] == [tokens[0]]
        enabled = db.networks.find_one({"user": tokens[1]})
        assert enabled["errors"] == 0 and "failingSince" not in enabled and "disabledReason" not in enabled
        assert cli().returncode != 0 and cli("--reason-kind", "nonsense").returncode != 0


def test_one_user_s_spent_quota_stops_that_user_only(wire_uri, sandbox, sync_db):
    """Stack Exchange counts a request with an access token against the user/app pair's daily quota: when one
    user's runs out, that user waits for the next day (without spending a request to learn it again) and every
    other user goes on being collected; no app-wide pause."""
    db = sync_db
    sandbox.sandbox.add_user("stackoverflow", "se-thrifty", items=10, quota=2)  # 5 pages, 2 requests a day
    others = [f"se-other-{i}" for i in range(6)]
    for token in others:
        sandbox.sandbox.add_user("stackoverflow", token, items=5)  # 3 pages each
    db.networks.insert_many([{"user": t, "service": "stackoverflow", "accessToken": t, "mode": "initial",
                              "scheduledTo": datetime.now(UTC)} for t in ["se-thrifty", *others]])
    proc = daemon("initial", wire_uri, db.name, sandbox.url)
    try:
        wait_for(lambda: db.networks.count_documents({"user": {"$in": others}, "mode": "normal"}) == len(others),
                 60, "every other user's back-fill")
        time.sleep(1.0)  # room for a wasted request of the spent user
    finally:
        code, out = stop(proc)
    assert code == 0, out[-3000:]
    requests = sandbox.sandbox.stats()["by_token"]
    assert requests["se-thrifty"] == 2 and all(requests[t] == 3 for t in others)
    thrifty = db.networks.find_one({"user": "se-thrifty"})
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert thrifty["mode"] == "initial" and thrifty["scheduledTo"] >= tomorrow
    assert "rate limit low" in thrifty["lastOutcome"]["reason"] and not thrifty.get("disabled")
    assert db.services.count_documents({"pausedUntil": {"$gt": datetime.now(UTC)}}) == 0  # nobody else waits
    assert db.items.count_documents({"user": "se-thrifty"}) == 4  # the pages it did get are kept
