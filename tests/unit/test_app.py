"""`run_daemon` releases what it opened in the reverse order, on a clean stop and when start-up fails half-way
(mongomock-motor; the database client is the test's own)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from collector.app import run_daemon
from collector.fleet import Fleet
from collector.http import ClientPool
from collector.metrics import MetricsError
from tests.conftest import make_settings


@pytest.fixture
def order(monkeypatch):
    """The steps of the way out, as they happen: the heartbeat cancelled, the fleet's last word, the HTTP clients
    closed."""
    steps: list[str] = []

    async def heartbeat(self):
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            steps.append("heartbeat cancelled")
            raise

    async def stopped(self):
        steps.append("fleet stopped")

    close = ClientPool.aclose

    async def aclose(self):
        steps.append("http closed")
        await close(self)

    monkeypatch.setattr(Fleet, "run", heartbeat)
    monkeypatch.setattr(Fleet, "stopped", stopped)
    monkeypatch.setattr(ClientPool, "aclose", aclose)
    return steps


async def test_a_clean_stop_releases_everything_in_the_reverse_order_of_opening(mock_db, order):
    def stop_soon(sched):  # once the background tasks have started
        asyncio.get_running_loop().call_later(0.05, sched.stop)

    scheduler = await asyncio.wait_for(run_daemon(make_settings(), "initial", db=mock_db, on_ready=stop_soon), 30)
    assert scheduler.stopping
    assert order == ["heartbeat cancelled", "fleet stopped", "http closed"]


async def test_a_start_up_that_fails_half_way_closes_what_it_had_opened(mock_db, order):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = make_settings(metrics={"enabled": True, "host": "127.0.0.1", "port": port})
        with pytest.raises(MetricsError, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            await asyncio.wait_for(run_daemon(settings, "initial", db=mock_db), 30)
    assert order == ["http closed"]  # opened before the metrics endpoint; nothing after it was started
