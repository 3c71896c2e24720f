"""Stop signals held during start-up (the `collector` command's entry point installs the hold first thing:
collector/entry.py).

A stop signal (SIGTERM, SIGINT) that arrives while Python imports the daemon and reads its settings is held
here instead of killing the process: `systemctl stop` or a restart during start-up ends the daemon cleanly
(exit 0), as it does at any later moment. The daemon reads what was held when it starts (collector/app.py
`run_daemon`) and its event loop's handlers take over from there; every other command hands the signals back to
their default behaviour first thing (collector/cli.py), delivering any that was held.

This module imports nothing but `signal`, so the hold is in place before the heavy imports begin.
"""

from __future__ import annotations

import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
held: list[int] = []  # the stop signals received while held, in order


def _hold(signum: int, frame: FrameType | None) -> None:
    held.append(signum)


def hold() -> None:
    for signum in STOP_SIGNALS:
        signal.signal(signum, _hold)


def release() -> None:
    """The default behaviour back (only where this module's handler is still the one installed), then any
    signal held meanwhile delivered: the command stops as it would have without the hold."""
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is _hold:
            if signum == signal.SIGINT:
                signal.signal(signum, signal.default_int_handler)  # Python's own: KeyboardInterrupt
            else:
                signal.signal(signum, signal.SIG_DFL)
    pending, held[:] = list(held), []
    for number in pending:
        signal.raise_signal(number)

