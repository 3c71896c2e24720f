"""Work of a run that may take long, such as a connector's parse of a large reply, in a thread of its own under
a deadline, so that the event loop every run shares keeps going: the scheduler, the heartbeat, the watchdog.

Pure-Python work in a thread gives the loop the GIL back every few milliseconds (sys.getswitchinterval). A
thread cannot be killed: work past its deadline ends the run (Overdue) while the thread goes on to its end,
holding its slot, so a process never runs more than `slots` of them at once whatever its servers send. The
threads are daemon threads: one that never ends cannot hold up the daemon's exit.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# a reply larger than this is parsed in a thread of its own, a smaller one inline (cheaper than a thread), at
# most PARSE_SLOTS of them at once per process (the executor's parses)
PARSE_INLINE_BYTES = 256 * 1024
PARSE_SLOTS = 4


class Overdue(Exception):
    """The work did not end within its deadline (its thread may still be running)."""


class Offload:
    def __init__(self, slots: int, inline_bytes: int = 0):
        self._free = asyncio.Semaphore(slots)
        self.inline_bytes = inline_bytes  # run_sized: work on at most this many bytes runs inline

    async def run_sized(self, work: Callable[[], T], size: int, deadline: float, what: str) -> T:
        """`work()` on `size` bytes: inline when they are at most `inline_bytes` (cheaper than a thread, and
        quick), else as `run` does."""
        if size <= self.inline_bytes:
            return work()
        return await self.run(work, deadline, what)

    async def run(self, work: Callable[[], T], deadline: float, what: str) -> T:
        """`work()` in a new thread (with this task's context variables: the run's log fields and secrets),
        its result or its exception; Overdue, naming `what`, when waiting for a slot and the work together
        take over `deadline` seconds."""
        if deadline <= 0:
            raise Overdue(f"{what}: no time left of the run")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def settle(ok: bool, value: Any) -> None:  # on the loop, when the thread ends
            self._free.release()
            if not done.done():  # else the run gave up on it
                if ok:
                    done.set_result(value)
                else:
                    done.set_exception(value)

        def thread() -> None:
            ok: bool = False
            value: Any = RuntimeError(f"{what}: the thread ended without a result")  # a SystemExit, say
            try:
                ok, value = True, work()
            except StopIteration as exc:  # a future refuses it as an exception
                value = RuntimeError(f"{what}: StopIteration {exc}")
            except Exception as exc:
                value = exc
            finally:
                try:
                    loop.call_soon_threadsafe(settle, ok, value)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    pass

        try:
            async with asyncio.timeout(deadline) as timer:
                await self._free.acquire()
                try:
                    threading.Thread(target=contextvars.copy_context().run, args=(thread,), daemon=True,
                                     name="collector-offload").start()
                except BaseException:  # no thread to be had (TasksMax): the slot stays free
                    self._free.release()
                    raise
                return await done
        except TimeoutError:
            if timer.expired():
                raise Overdue(f"{what} took over {deadline:.1f}s") from None
            raise
