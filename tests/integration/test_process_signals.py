"""What a real daemon process tells the outside world: sd_notify datagrams over a real unix socket,
the Prometheus endpoint, a clean refusal of a taken metrics port, and `collector status`."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from unittest import mock

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from collector.sandbox import Sandbox, Server
from tests.conftest import ROOT
from tests.integration.test_daemons import daemon, stop, wait_for

pytestmark = pytest.mark.slow  # real daemon processes: seconds each (the quick loop: -m "not slow")


@pytest.fixture
def sandbox():
    server = Server(Sandbox(page_cap=2)).start()
    yield server
    server.stop()


def launch(mode: str, uri: str, dbname: str, sandbox_url: str, *extra: str,
           env: dict[str, str] | None = None) -> subprocess.Popen:
    """`daemon()` with extra environment variables (it copies os.environ minus COLLECTOR_*)."""
    with mock.patch.dict(os.environ, env or {}):
        return daemon(mode, uri, dbname, sandbox_url, *extra)


def seed_github(sandbox: Server, db, users: int, items: int, mode: str) -> list[str]:
    """`users` GitHub networks due now, each with `items` items upstream; returns their tokens."""
    tokens = [f"ghp_sig{i}_{uuid.uuid4().hex[:12]}" for i in range(users)]
    now = datetime.now(UTC)
    for token in tokens:
        sandbox.sandbox.add_user("github", token, items=items)
    db.networks.insert_many([{"user": f"sig-user{i}", "service": "github", "accessToken": token, "mode": mode,
                              "scheduledTo": now} for i, token in enumerate(tokens)])
    return tokens


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except ConnectionRefusedError:
        return False


@contextlib.contextmanager
def notify_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound AF_UNIX datagram socket under /tmp (tmp_path may exceed the 107-byte limit)."""
    directory = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.bind(path)
        yield sock, path
    finally:
        sock.close()
        shutil.rmtree(directory, ignore_errors=True)


def receive(sock: socket.socket, timeout: float) -> str | None:
    sock.settimeout(max(timeout, 0.01))
    try:
        return sock.recv(65536).decode()
    except TimeoutError:
        return None


def fields(message: str) -> dict[str, str]:
    return dict(line.partition("=")[::2] for line in message.splitlines())


def scrape(port: int) -> tuple[str, dict[tuple[str, frozenset], float]]:
    with httpx.Client(trust_env=False, timeout=5.0) as client:
        response = client.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    return response.text, samples


def collector_cli(*args: str, uri: str, dbname: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    # --env, --mongodb-uri and --set are options of the group: they go before the subcommand
    cmd = [sys.executable, "-m", "collector", "--env", "test", "--mongodb-uri", uri, "--set", f"database.name={dbname}"]
    return subprocess.run([*cmd, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def test_sd_notify_ready_watchdog_status_and_stopping_over_a_real_socket(wire_uri, sandbox, sync_db):
    tokens = seed_github(sandbox, sync_db, users=3, items=4, mode="normal")
    with notify_socket() as (sock, path):
        proc = launch("normal", wire_uri, sync_db.name, sandbox.url,
                      env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000"})
        messages: list[str] = []
        try:
            first = receive(sock, 30)
            assert first is not None, "no READY=1 within 30 s"
            messages.append(first)
            assert fields(first).get("READY") == "1" and fields(first).get("STATUS"), first

            # STATUS + WATCHDOG=1 every 0.5 s (half of WATCHDOG_USEC)
            deadline = time.monotonic() + 3.0
            pings = 0
            while time.monotonic() < deadline:
                message = receive(sock, deadline - time.monotonic())
                if message is None:
                    break
                messages.append(message)
                got = fields(message)
                if got.get("WATCHDOG") == "1":
                    assert got.get("STATUS"), message
                    pings += 1
            assert pings >= 3, messages

            def runs_reported() -> bool:
                while (message := receive(sock, 0.2)) is not None:
                    messages.append(message)
                statuses = [fields(m).get("STATUS", "") for m in messages]
                return any(int(m.group(1)) > 0 for s in statuses if (m := re.search(r"(\d+) runs", s)))

            wait_for(runs_reported, 20, "a STATUS line with runs > 0")
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            stopping = None
            deadline = time.monotonic() + 20
            while stopping is None and time.monotonic() < deadline:
                message = receive(sock, deadline - time.monotonic())
                if message is None:
                    break
                messages.append(message)
                if fields(message).get("STOPPING") == "1":
                    stopping = message
            try:
                out, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                raise
    output = out.decode(errors="replace")
    assert stopping is not None, messages[-5:]
    assert "stopping" in fields(stopping).get("STATUS", "")
    assert proc.returncode == 0, output[-3000:]
    assert not any(token in m for token in tokens for m in messages)
    assert not any(token in output for token in tokens)


def test_metrics_endpoint_of_a_real_daemon(wire_uri, sandbox, sync_db):
    tokens = seed_github(sandbox, sync_db, users=4, items=5, mode="initial")  # 3 pages each
    port = free_port()
    proc = daemon("initial", wire_uri, sync_db.name, sandbox.url, "--set", "metrics.enabled=true",
                  "--set", f"metrics.port={port}", "--set", "fleet.backlog_interval=0.5")
    try:
        wait_for(lambda: sync_db.networks.count_documents({"mode": "normal"}) == len(tokens), 30,
                 "the back-fill of every network")
        served = sum(sandbox.sandbox.stats()["unique_served"].values())
        assert served == len(tokens) * 5
        github = frozenset({"service": "github"}.items())
        # the counter is bumped just after the state is saved: poll until the last run is counted
        wait_for(lambda: scrape(port)[1].get(("collector_items_stored_total", github)) == served, 10,
                 f"collector_items_stored_total to reach {served}")
        body, samples = scrape(port)
        page = frozenset({"service": "github", "outcome": "page"}.items())
        assert samples[("collector_runs_total", page)] > 0
        assert samples[("collector_items_stored_total", github)] == served
        assert samples[("collector_database_up", frozenset())] == 1
        backlog = [labels for name, labels in samples if name == "collector_due_backlog"]
        assert frozenset({"mode": "initial", "service": "github"}.items()) in backlog, body
        assert not any(token in body for token in tokens)
        assert proc.poll() is None
    finally:
        code, out = stop(proc)
    assert code == 0, out[-3000:]
    assert not port_open(port), "the metrics port must be closed after a clean exit"
    assert not any(token in out for token in tokens)


def test_metrics_port_in_use_exits_with_a_clear_message(wire_uri, sandbox, sync_db):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        began = time.monotonic()
        proc = daemon("normal", wire_uri, sync_db.name, sandbox.url, "--set", "metrics.enabled=true",
                      "--set", f"metrics.port={port}")
        try:
            out, _ = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    output = out.decode(errors="replace")
    assert proc.returncode == 2, output[-3000:]
    assert time.monotonic() - began < 20
    assert f"collector: cannot serve metrics on 127.0.0.1:{port}" in output
    assert "Traceback" not in output


def test_collector_status_shows_the_running_then_stopped_daemon(wire_uri, sandbox, sync_db):
    proc = daemon("normal", wire_uri, sync_db.name, sandbox.url)
    try:
        wait_for(lambda: sync_db.collectors.count_documents({"state": "running"}) == 1, 30,
                 "the daemon's registry document")
        running = collector_cli("status", "--json", uri=wire_uri, dbname=sync_db.name)
        assert running.returncode == 0, running.stderr
        report = json.loads(running.stdout)
        assert len(report["processes"]) == 1, report["processes"]
        process = report["processes"][0]
        assert process["alive"] is True and process["state"] == "running"
        assert process["mode"] == "normal" and process["pid"] == proc.pid
        assert process["heartbeatAge"] is not None and process["heartbeatAge"] < 5
        text = collector_cli("status", uri=wire_uri, dbname=sync_db.name)
        assert text.returncode == 0, text.stderr
        assert "FLEET" in text.stdout and process["id"] in text.stdout
        assert process["id"] == sync_db.collectors.find_one()["_id"]
    finally:
        code, out = stop(proc)
    assert code == 0, out[-3000:]
    stopped = collector_cli("status", "--json", uri=wire_uri, dbname=sync_db.name)
    assert stopped.returncode == 0, stopped.stderr
    [after] = json.loads(stopped.stdout)["processes"]
    assert after["id"] == process["id"]
    assert after["state"] == "stopped" and after["alive"] is False
