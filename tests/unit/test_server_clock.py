"""The server's clock (collector/clock.py): `hello`'s localTime, or the legacy `isMaster`'s on a server with no
`hello` (MongoDB before 4.4.2, which PyMongo supports from 4.4.0); any other refusal keeps the last offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import AutoReconnect, OperationFailure

from collector.clock import ServerClock

HOST_NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
SERVER_NOW = HOST_NOW + timedelta(minutes=3)


class Db:
    """Answers the commands it knows with the server's time; the others as a server without them does."""

    def __init__(self, *known: str, fail: Exception | None = None):
        self.known, self.fail, self.asked = known, fail, []

    async def command(self, name: str):
        self.asked.append(name)
        if self.fail is not None:
            raise self.fail
        if name not in self.known:
            raise OperationFailure(f"no such command: '{name}'", code=59)
        return {"ok": 1, "localTime": SERVER_NOW}


async def test_hello_gives_the_offset():
    clock, db = ServerClock(lambda: HOST_NOW), Db("hello", "isMaster")
    assert await clock.sync(db)
    assert db.asked == ["hello"]
    assert abs(clock.offset - timedelta(minutes=3)) < timedelta(seconds=1)


async def test_a_server_without_hello_is_asked_is_master_and_only_that_from_then_on():
    clock, db = ServerClock(lambda: HOST_NOW), Db("isMaster")
    assert await clock.sync(db) and await clock.sync(db)
    assert db.asked == ["hello", "isMaster", "isMaster"]
    assert abs(clock() - SERVER_NOW) < timedelta(seconds=1)


@pytest.mark.parametrize("fail", [OperationFailure("not authorized", code=13), AutoReconnect("connection closed")])
async def test_other_failures_keep_the_last_offset_and_do_not_switch_commands(fail):
    clock, db = ServerClock(lambda: HOST_NOW), Db(fail=fail)
    assert not await clock.sync(db)
    assert db.asked == ["hello"] and clock.offset == timedelta(0) and not clock.synced


class Host:
    """A host's two clocks, moved by hand: the wall clock (which can step) and the monotonic one (which only runs)."""

    def __init__(self) -> None:
        self.wall, self.mono = HOST_NOW, 1000.0

    def run(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds


async def test_a_wall_clock_step_between_measurements_does_not_move_the_server_time():
    """An NTP step or an operator's `date -s` between two measurements: server time read as wall clock plus
    offset would jump with it (ten minutes forward: leases still held look expired, and are taken)."""
    host = Host()
    clock = ServerClock(lambda: host.wall, monotonic=lambda: host.mono)
    assert clock() == HOST_NOW  # before the first measurement: the wall clock
    assert await clock.sync(Db("hello"))
    assert clock() == SERVER_NOW
    host.run(30)
    assert clock() == SERVER_NOW + timedelta(seconds=30)
    host.wall += timedelta(minutes=10)  # the step forward
    assert clock() == SERVER_NOW + timedelta(seconds=30)
    host.wall -= timedelta(hours=1)  # and one back
    host.run(5)
    assert clock() == SERVER_NOW + timedelta(seconds=35)


async def test_a_failed_measurement_keeps_running_on_the_last_one():
    host = Host()
    clock = ServerClock(lambda: host.wall, monotonic=lambda: host.mono)
    assert await clock.sync(Db("hello"))
    host.run(60)
    host.wall += timedelta(minutes=10)
    assert not await clock.sync(Db(fail=AutoReconnect("connection closed")))
    assert clock() == SERVER_NOW + timedelta(seconds=60)
