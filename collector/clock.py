"""The fleet's one clock: the database server's.

Every due time and lease a process compares was written by some host: `scheduledTo` by the process that
ran the network last, `lease.until` by the one that holds it. Compared on each host's own wall clock, a
host whose clock runs minutes ahead takes leases that are still held and runs networks before they are
due (and one that runs behind leaves them waiting). So every process reads time as the database server
sees it, measured against the server (`hello`'s `localTime`, half the round trip allowed for) at start and
again every `refresh` seconds. The server is the one clock every process already shares.

Between two measurements time is carried forward on this host's MONOTONIC clock, never its wall clock: the
reading is the server's time at the last measurement plus the monotonic time elapsed since. The wall clock
can step (an NTP step, an operator's `date -s`, a VM resumed): were the reading the wall clock plus an
offset, a step of ten minutes would move this process's notion of server time by ten minutes until the next
measurement, and a step forward takes leases other processes still hold (the network runs twice at once).
A monotonic clock never steps. Before the first measurement (and on a server that does not say its time:
mongomock) the reading is the wall clock (`base`).

A server with no `hello` (MongoDB before 4.4.2, which PyMongo still supports from 4.4.0) is asked
the legacy `isMaster`, which carries the same `localTime`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import OperationFailure, PyMongoError

from collector import logs

log = structlog.get_logger("collector.clock")
COMMAND_NOT_FOUND = 59


def utcnow() -> datetime:
    """This host's wall clock, in UTC."""
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """MongoDB returns naive UTC datetimes unless the client is tz_aware; normalize."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class ServerClock:
    # a difference worth telling the operator about (NTP keeps healthy hosts within milliseconds)
    WARN_SKEW = 1.0

    def __init__(self, base: Callable[[], datetime] | None = None, refresh: float = 60.0,
                 monotonic: Callable[[], float] = time.monotonic):
        # this host's wall clock: read before the first measurement only. `utcnow` is looked up when the clock is
        # made, not when this module is loaded: a test harness may shift it in between (tests/faults/skewed.py)
        self.base = base or utcnow
        self.monotonic = monotonic
        self.refresh = refresh
        self.offset = timedelta(0)  # server time minus this host's wall clock, at the last measurement (for logs)
        self.synced = False
        self._at_sync: tuple[datetime, float] | None = None  # (server time, monotonic time) at the last measurement
        self._warned = False
        self._command = "hello"  # "isMaster" once a server said it has no `hello`

    def __call__(self) -> datetime:
        if self._at_sync is None:
            return self.base()
        server, mono = self._at_sync
        return server + timedelta(seconds=self.monotonic() - mono)

    async def sync(self, db: Any) -> bool:
        """Measure the server's time once; False (and the last measurement kept) when the server does not say it."""
        started = self.monotonic()
        try:
            hello = await self._ask(db)
        except PyMongoError as exc:
            log.warning("could not read the database server's time: keeping the last offset",
                        error=logs.describe(exc))
            return False
        except NotImplementedError:  # an in-process stand-in (mongomock): one host, one clock
            return False
        received = self.monotonic()
        server = hello.get("localTime") if isinstance(hello, dict) else None
        if not isinstance(server, datetime):
            return False  # a server that does not say (mongomock): this host's clock
        # the server stamped localTime about half a round trip after we sent (its precision: milliseconds), so
        # when the answer arrived the server's clock read localTime plus half the round trip
        now = aware(server) + timedelta(seconds=(received - started) / 2)
        self._at_sync = (now, received)
        self.offset = now - self.base()
        self.synced = True
        skew = abs(self.offset.total_seconds())
        if skew > self.WARN_SKEW and not self._warned:
            self._warned = True
            log.warning("this host's clock differs from the database server's: due times and leases are read "
                        "on the server's", skew_seconds=round(self.offset.total_seconds(), 3))
        return True

    async def _ask(self, db: Any) -> Any:
        try:
            return await db.command(self._command)
        except OperationFailure as exc:
            if exc.code != COMMAND_NOT_FOUND or self._command != "hello":
                raise
        self._command = "isMaster"
        return await db.command(self._command)

    async def run(self, db: Any) -> None:
        """Keep the offset fresh (a background task of the daemon)."""
        while True:
            await asyncio.sleep(self.refresh)
            await self.sync(db)
