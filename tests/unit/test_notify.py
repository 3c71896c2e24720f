"""collector.notify against real unix datagram sockets (a path in a temporary folder, and the abstract
namespace): the exact bytes systemd would receive, the environment it would set, and the watchdog
loop that stops pinging when the main loop stalls."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from collector.notify import Notifier, watchdog_loop


class Listener:
    """The systemd side: a bound AF_UNIX datagram socket."""

    def __init__(self, address: str):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)

    @property
    def env_value(self) -> str:
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def notifier(self, **env: str) -> Notifier:
        return Notifier.from_env({"NOTIFY_SOCKET": self.env_value, **env}, pid=4242)

    def recv(self, timeout: float = 2.0) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(65536)

    def drain(self) -> list[bytes]:
        """Every datagram already queued, without waiting."""
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536))
            except BlockingIOError:
                return out

    async def collect(self, count: int, within: float = 5.0) -> list[bytes]:
        """Wait (yielding to the event loop) until `count` datagrams arrived."""
        out: list[bytes] = []
        deadline = time.monotonic() + within
        while len(out) < count:
            assert time.monotonic() < deadline, f"only {len(out)} datagrams of {count}: {out}"
            await asyncio.sleep(0.01)
            out += self.drain()
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    path = tmp_path / "notify.sock"
    short = None
    if len(str(path).encode()) > 100:  # sun_path holds 108 bytes
        short = tempfile.mkdtemp(prefix="cn-")
        path = Path(short) / "n.sock"
    lst = Listener(str(path))
    yield lst
    lst.close()
    if short:
        shutil.rmtree(short, ignore_errors=True)


# ---------------------------------------------------------------- the environment


def test_no_notify_socket_is_a_disabled_noop():
    n = Notifier.from_env({"WATCHDOG_USEC": "30000000"}, pid=1)
    assert not n.enabled
    assert n.watchdog_interval == 15.0  # the watchdog setting alone does not enable sending
    assert n.send(STATUS="x") is False
    assert n.ready("up") is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert not Notifier.from_env({}, pid=1).enabled
    assert Notifier.from_env({}, pid=1).watchdog_interval is None


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NOTIFY_SOCKET", "/run/systemd/notify")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier.from_env()
    assert n.enabled and n.watchdog_interval == 15.0
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert not Notifier.from_env().enabled


def test_watchdog_interval_is_half_the_period():
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"}
    assert Notifier.from_env(env, pid=7).watchdog_interval == 15.0  # no WATCHDOG_PID: ours
    assert Notifier.from_env({**env, "WATCHDOG_PID": "7"}, pid=7).watchdog_interval == 15.0
    assert Notifier.from_env({**env, "WATCHDOG_USEC": "100000"}, pid=7).watchdog_interval == 0.05


def test_watchdog_pid_of_another_process_turns_the_watchdog_off():
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}
    n = Notifier.from_env(env, pid=8)
    assert n.enabled
    assert n.watchdog_interval is None
    assert Notifier.from_env({**env, "WATCHDOG_PID": "junk"}, pid=8).watchdog_interval is None


@pytest.mark.parametrize("usec", ["", "0", "-30000000", "abc", "1.5", "30s"])
def test_bad_watchdog_usec_turns_the_watchdog_off(usec: str):
    n = Notifier.from_env({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec}, pid=7)
    assert n.enabled
    assert n.watchdog_interval is None


@pytest.mark.parametrize("value", ["", "relative/notify", "@", "vsock:2:1234"])
def test_unsupported_notify_socket_disables(value: str):
    assert not Notifier.from_env({"NOTIFY_SOCKET": value}, pid=7).enabled


# ---------------------------------------------------------------- messages on a real socket


def test_messages_exact_bytes(listener: Listener):
    n = listener.notifier()
    assert n.enabled
    assert n.ready() is True
    assert listener.recv() == b"READY=1"
    assert n.ready("collecting in normal mode") is True
    assert listener.recv() == b"READY=1\nSTATUS=collecting in normal mode"
    assert n.status("12 runs in flight, 340 done") is True
    assert listener.recv() == b"STATUS=12 runs in flight, 340 done"
    assert n.watchdog() is True
    assert listener.recv() == b"WATCHDOG=1"
    assert n.stopping() is True
    assert listener.recv() == b"STOPPING=1"
    assert n.stopping("finishing 3 runs") is True
    assert listener.recv() == b"STOPPING=1\nSTATUS=finishing 3 runs"
    assert n.send(STATUS="s", EXTEND_TIMEOUT_USEC=5_000_000) is True
    assert listener.recv() == b"STATUS=s\nEXTEND_TIMEOUT_USEC=5000000"
    assert listener.drain() == []  # one datagram per call, nothing else


def test_newlines_are_flattened_into_one_line(listener: Listener):
    n = listener.notifier()
    assert n.status("first line\nsecond\r\nthird\rfourth\n") is True
    assert listener.recv() == b"STATUS=first line second third fourth"
    # a value cannot smuggle in a second assignment
    assert n.status("ok\nREADY=1") is True
    assert listener.recv() == b"STATUS=ok READY=1"
    assert n.status("h\u00e9llo") is True
    assert listener.recv() == "STATUS=h\u00e9llo".encode()
    assert listener.drain() == []


def test_send_with_nothing_to_say_sends_nothing(listener: Listener):
    n = listener.notifier()
    assert n.send() is False
    assert n.send(STATUS=None) is False
    assert listener.drain() == []


def test_abstract_namespace_socket():
    name = f"collector-test-{uuid.uuid4().hex}"
    lst = Listener("\0" + name)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name}, pid=1)
        assert n.enabled
        assert n.ready("up") is True
        assert lst.recv() == b"READY=1\nSTATUS=up"
        assert Notifier.from_env({"NOTIFY_SOCKET": f"@{name}-other"}, pid=1).ready() is False
    finally:
        lst.close()


def test_missing_socket_returns_false_and_warns_once(tmp_path: Path):
    n = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}, pid=1)
    assert n.enabled
    with capture_logs() as logs:
        assert n.ready() is False
        assert n.status("x") is False
        assert n.watchdog() is False
    warnings = [e for e in logs if e["log_level"] == "warning"]
    assert len(warnings) == 1, logs
    assert "FileNotFoundError" in warnings[0]["error"]


def test_full_receive_queue_fails_fast_instead_of_blocking(listener: Listener):
    n = listener.notifier()
    results: list[bool] = []

    def flood() -> None:  # nobody reads: the queue fills up, and a blocking send would hang here
        results.extend(n.status(f"message {i}") for i in range(2000))

    with capture_logs():
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        thread.join(timeout=5)
        hung = thread.is_alive()
        if hung:
            listener.close()  # unblocks the sender so that the test fails instead of hanging
            thread.join(timeout=5)
    assert not hung, "send() blocked on a full receive queue"
    assert results[0] is True
    assert results[-1] is False
    assert listener.recv() == b"STATUS=message 0"


# ---------------------------------------------------------------- the watchdog loop

WATCHDOG_ENV = {"WATCHDOG_USEC": "100000"}  # 0.1 s: a ping every 0.05 s


async def test_watchdog_loop_pings_while_alive_and_stops_when_stalled(listener: Listener):
    n = listener.notifier(**WATCHDOG_ENV)
    assert n.watchdog_interval == 0.05
    state = {"alive": True, "ticks": 0}

    def describe() -> str:
        state["ticks"] += 1
        return f"tick {state['ticks']}"

    with capture_logs() as logs:
        task = asyncio.create_task(watchdog_loop(n, lambda: state["alive"], describe))
        try:
            alive = await listener.collect(3)
            assert all(m.startswith(b"STATUS=tick ") and m.endswith(b"\nWATCHDOG=1") for m in alive), alive
            assert alive[0] == b"STATUS=tick 1\nWATCHDOG=1"  # the first tick is immediate

            state["alive"] = False  # the main loop hangs: every tick from now on sees it
            listener.drain()
            stalled = await listener.collect(3)
            assert all(m.startswith(b"STATUS=tick ") for m in stalled), stalled
            assert not any(b"WATCHDOG" in m for m in stalled), stalled

            state["alive"] = True
            listener.drain()
            again = await listener.collect(2)
            assert all(m.endswith(b"\nWATCHDOG=1") for m in again), again
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    events = [e["event"] for e in logs if e["log_level"] == "error"]
    assert events == ["main loop stalled: not pinging the watchdog"]  # once per stall, not per tick
    assert [e["event"] for e in logs if e["log_level"] == "info"] == ["main loop alive again: pinging the watchdog"]


async def test_watchdog_loop_survives_a_raising_describe(listener: Listener):
    n = listener.notifier(**WATCHDOG_ENV)
    calls = {"n": 0}

    def describe() -> str:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise RuntimeError("scheduler state unreadable")
        return "ok"

    with capture_logs() as logs:
        task = asyncio.create_task(watchdog_loop(n, lambda: True, describe))
        try:
            got = await listener.collect(5)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert got[:3] == [b"STATUS=status unavailable (RuntimeError)"] * 3  # treated as not alive: no ping
    assert got[3] == b"STATUS=ok\nWATCHDOG=1"
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["describe() raised: not pinging the watchdog"]
    assert isinstance(errors[0]["exc_info"], RuntimeError)


@pytest.mark.parametrize("is_alive", [lambda: 1 / 0, lambda: "yes"], ids=["raises", "not-a-bool"])
async def test_watchdog_loop_bad_is_alive_means_no_ping(listener: Listener, is_alive):
    n = listener.notifier(**WATCHDOG_ENV)
    with capture_logs() as logs:
        task = asyncio.create_task(watchdog_loop(n, is_alive, lambda: "busy"))
        try:
            got = await listener.collect(3)
            assert not task.done()
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    assert got[:3] == [b"STATUS=busy"] * 3
    assert [e["event"] for e in logs if e["log_level"] == "error"] == ["is_alive() raised: not pinging the watchdog"]


async def test_watchdog_loop_without_watchdog_sends_status_only(listener: Listener):
    n = listener.notifier()  # no WATCHDOG_USEC
    assert n.watchdog_interval is None
    task = asyncio.create_task(watchdog_loop(n, lambda: True, lambda: "3 in flight", interval=0.05))
    try:
        got = await listener.collect(3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert got[:3] == [b"STATUS=3 in flight"] * 3


async def test_watchdog_loop_disabled_waits_to_be_cancelled():
    n = Notifier.from_env({}, pid=1)
    calls = []
    task = asyncio.create_task(watchdog_loop(n, lambda: calls.append("alive") or True, lambda: "x", interval=0.01))
    await asyncio.sleep(0.1)
    assert not task.done()
    assert calls == []
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
