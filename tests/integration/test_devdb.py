"""scripts/devdb.py, the test database's own tool: a fresh server per start, an outage that keeps the data and
the port, a detached start and stop through a state file, nothing left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from tests.conftest import ROOT
from tests.harness import load_devdb


def client(uri: str) -> MongoClient:
    return MongoClient(uri, serverSelectionTimeoutMS=2000, connectTimeoutMS=1000, socketTimeoutMS=2000)


@pytest.fixture
def own():
    server = load_devdb().start_server(use_env=False)
    try:
        yield server
    finally:
        server.stop()


def test_a_fresh_server_reports_what_pymongo_needs_and_what_it_lacks(own):
    with client(own.uri) as c:
        assert c.admin.command("buildInfo")["version"] == "5.0.0"
        assert c.admin.command("isMaster")["maxWireVersion"] == 13  # PyMongo 4.20 needs >= 9
        assert c.list_database_names() == []  # empty: every start is a new server
        # what it lacks, said rather than hidden: the clock falls back to isMaster, the index tests skip
        with pytest.raises(PyMongoError, match="no such command"):
            c.admin.command("hello")
        with pytest.raises(PyMongoError, match="no such command"):
            c.t.command("explain", {"find": "x"})
    assert own.engine.startswith("mongo-java-server ")


@pytest.mark.slow  # real processes: seconds (the quick loop: -m "not slow")
def test_an_outage_cuts_every_connection_and_the_same_data_comes_back_on_the_same_port(own):
    with client(own.uri) as c:
        c.t.docs.insert_many([{"_id": i} for i in range(100)])
        own.pause()
        assert own.paused
        began = time.monotonic()
        with pytest.raises(PyMongoError):
            c.t.docs.find_one({"_id": 1})
        assert time.monotonic() - began < 10  # refused, not hanging
        own.resume()
        assert not own.paused
        assert c.t.docs.count_documents({}) == 100
    with pytest.raises(RuntimeError, match="needs a server stopped by pause"):  # devdb.DevDBError
        own.resume()


@pytest.mark.slow  # real processes: seconds (the quick loop: -m "not slow")
def test_start_and_stop_through_a_state_file_leave_nothing_behind(tmp_path):
    state = tmp_path / "db.json"
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
    run = [sys.executable, str(ROOT / "scripts" / "devdb.py")]
    out = subprocess.run([*run, "start", "--state-file", str(state)], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    st = json.loads(state.read_text())
    assert out.stdout.strip() == st["uri"]
    try:
        with client(st["uri"]) as c:
            assert c.admin.command("ping")["ok"] == 1
        again = subprocess.run([*run, "start", "--state-file", str(state)], env=env, capture_output=True, text=True)
        assert again.returncode == 1 and "exists" in again.stderr
    finally:
        stop = subprocess.run([*run, "stop", "--state-file", str(state)], env=env, capture_output=True, text=True,
                              timeout=60)
    assert stop.returncode == 0, stop.stderr
    assert not state.exists() and not Path(st["dir"]).exists()
    assert not Path(f"/proc/{st['pid']}").exists() or b"CollectorDevDB" not in Path(
        f"/proc/{st['pid']}/cmdline").read_bytes()
