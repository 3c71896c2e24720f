"""systemd service notifications (``Type=notify``): READY, STATUS, WATCHDOG and STOPPING.

The protocol (sd_notify(3)) is small enough to speak without libsystemd: systemd passes the path
of a unix datagram socket in ``$NOTIFY_SOCKET`` (an absolute path, or ``@name`` for a socket in
the Linux abstract namespace, i.e. ``\\0name``), and the service sends it datagrams of
newline-separated ``KEY=value`` assignments:

  - ``READY=1``: start-up is complete. With ``Type=notify`` the unit stays "activating" until
    then, so units ordered after it (and ``systemctl start``) wait for a daemon that actually
    reached its database, not just for a process that exists.
  - ``STATUS=...``: one free-form line shown by ``systemctl status`` (runs in flight, done, ...).
  - ``WATCHDOG=1``: a keep-alive. With ``WatchdogSec=`` set, systemd exports ``$WATCHDOG_USEC``
    (and ``$WATCHDOG_PID``) and kills the service (``WatchdogSignal=``, SIGABRT by default) when no
    ping arrived for that long; ``Restart=on-failure`` then starts it again. The usual advice is to
    ping every half period, which is what :attr:`Notifier.watchdog_interval` returns.
  - ``STOPPING=1``: shutdown has begun (a graceful stop may take up to ``shutdown_grace``).

With ``NotifyAccess=main`` only the main process may send; the datagram's sender is checked by
systemd through the socket credentials, so nothing else is needed. Outside systemd (no
``$NOTIFY_SOCKET``) every call is a no-op, and a failure to send is logged once and never raised:
notifications must not be able to take the daemon down.

Why :func:`watchdog_loop` gates the ping on ``is_alive()``: the loop is an asyncio task, so it
keeps running as long as the *event loop* does. But the failure worth a restart is usually not a
frozen event loop, it is a main loop (the scheduler's claim/dispatch cycle) that is stuck awaiting
something that never completes, a dead task, a deadlock on a lock or a semaphore, while every
other task, this one included, ticks along happily. A ping sent unconditionally would certify that
hung daemon as healthy forever. So the caller passes ``is_alive``, which must answer from the main
loop's own progress (e.g. "the scheduler completed an iteration within the last N seconds"), and
the ping is withheld whenever it says no: systemd then does what it is for, kills the process and
restarts it. A blocked event loop is covered for free: this task cannot run to ping either.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from typing import Any

import structlog

log = structlog.get_logger("collector.notify")

#: STATUS refresh period when there is no watchdog to follow (seconds).
STATUS_INTERVAL = 5.0


def _socket_address(value: str | None) -> str | None:
    """``$NOTIFY_SOCKET`` as an AF_UNIX address, or None when unset or of an unsupported form."""
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:] if len(value) > 1 else None
    if value.startswith("/"):
        return value
    # systemd >= 254 may also pass "vsock:CID:PORT" (for VMs): not for this daemon.
    return None


def _positive_int(value: str | None) -> int | None:
    try:
        number = int(value) if value is not None else 0
    except ValueError:
        return None
    return number if number > 0 else None


def _one_line(value: Any) -> str:
    text = str(value)
    return " ".join(text.splitlines()) if ("\n" in text or "\r" in text) else text


class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET``; a no-op when there is none.

    Build it with :meth:`from_env`. Every method returns True when a datagram was sent and False
    otherwise (disabled, or the send failed); none of them raises.
    """

    def __init__(self, address: str | None = None, watchdog_usec: int | None = None):
        self._address = address
        self._watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._warned = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID`` (default: ``os.environ``).

        The watchdog is on only if ``WATCHDOG_USEC`` is a positive integer and ``WATCHDOG_PID`` is
        absent or names this process (`pid`, default ``os.getpid()``): a child that inherited the
        variables must not ping in its parent's name.
        """
        env = os.environ if environ is None else environ
        pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET")
        address = _socket_address(raw)
        if raw and address is None:
            log.warning("NOTIFY_SOCKET not understood: systemd notifications are off", notify_socket=raw)
        usec = _positive_int(env.get("WATCHDOG_USEC"))
        watchdog_pid = env.get("WATCHDOG_PID")
        if usec is not None and watchdog_pid is not None and _positive_int(watchdog_pid) != pid:
            usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        """True when there is a notification socket to send to."""
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """How often to ping, in seconds (half the watchdog period), or None when the watchdog is off."""
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 2 / 1e6

    def send(self, **fields: Any) -> bool:
        """Send one datagram ``KEY=value\\nKEY=value``; fields whose value is None are left out.

        Values are flattened to one line. Never raises: an OSError is logged (a warning the first
        time, then nothing) and reported as False.
        """
        address = self._address
        if address is None:
            return False
        lines = [f"{key}={_one_line(value)}" for key, value in fields.items() if value is not None]
        if not lines:
            return False
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the event loop: a full receive queue is a failed send, not a stall.
                sock.setblocking(False)
                sock.sendto(message, address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("systemd notification failed; further failures will not be logged",
                            notify_socket=address.replace("\0", "@"), error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """``READY=1`` (and the first STATUS line): start-up is complete."""
        return self.send(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """``STATUS=text``: the line ``systemctl status`` shows."""
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        """``WATCHDOG=1``: a keep-alive ping."""
        return self.send(WATCHDOG=1)

    def stopping(self, status: str | None = None) -> bool:
        """``STOPPING=1``: shutdown has begun."""
        return self.send(STOPPING=1, STATUS=status)


async def watchdog_loop(notifier: Notifier, is_alive: Callable[[], bool], describe: Callable[[], str],
                        interval: float | None = None) -> None:
    """Every `interval` seconds send ``STATUS=describe()``, plus ``WATCHDOG=1`` if ``is_alive()`` is True.

    `interval` defaults to the notifier's :attr:`~Notifier.watchdog_interval`, or
    :data:`STATUS_INTERVAL` (STATUS only, no ping) when the watchdog is off. The first tick is
    immediate. Runs until cancelled; when the notifier is disabled it just waits to be cancelled.

    ``is_alive()`` must return exactly True for a ping (a truthy non-bool, such as a coroutine from
    an ``async def`` passed by mistake, counts as a failure). While it says no, no ping is sent, so
    systemd restarts a hung main loop; that is logged once per stall, not once per tick. An
    exception from ``describe()`` or ``is_alive()`` is logged (once per streak) and counts as "not
    alive"; it never ends the loop.
    """
    if not notifier.enabled:
        await asyncio.get_running_loop().create_future()  # nothing to do: wait to be cancelled
        return
    ping = notifier.watchdog_interval is not None
    if interval is None:
        interval = notifier.watchdog_interval or STATUS_INTERVAL
    if interval <= 0:
        raise ValueError(f"watchdog_loop interval must be positive, not {interval!r}")
    period = notifier.watchdog_interval * 2 if notifier.watchdog_interval else None
    if ping and period is not None and interval >= period:
        log.warning("watchdog interval is not shorter than the watchdog period: systemd will kill the daemon",
                    interval=interval, watchdog_sec=period)

    stalled = False  # is_alive() said no, and that was logged
    failing: str | None = None  # the callback whose exception was logged, while it keeps raising

    while True:
        alive = False
        raised: str | None = None
        error: Exception | None = None
        status: str | None = None
        try:
            status = describe()
        except Exception as exc:
            raised, error = "describe", exc
            status = f"status unavailable ({type(exc).__name__})"
        if raised is None:
            try:
                result = is_alive()
                if not isinstance(result, bool):
                    if asyncio.iscoroutine(result):
                        result.close()  # an async is_alive by mistake: no "never awaited" warning per tick
                    raise TypeError(f"is_alive() returned {type(result).__name__}, not bool")
                alive = result
            except Exception as exc:
                raised, error = "is_alive", exc

        if raised is not None:
            if failing != raised:
                log.error(f"{raised}() raised: not pinging the watchdog", exc_info=error)
            failing = raised
        elif not alive:
            if not stalled:
                log.error("main loop stalled: not pinging the watchdog", status=status)
            stalled, failing = True, None
        else:
            if stalled or failing:
                log.info("main loop alive again: pinging the watchdog", status=status)
            stalled, failing = False, None

        notifier.send(STATUS=status, WATCHDOG=1 if (alive and ping) else None)
        await asyncio.sleep(interval)
