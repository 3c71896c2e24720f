"""One network of one service, the engine that runs it, and what ends up in the database: the
harness the connector tests drive (claim -> executor.run -> read back); and whether a daemon process
catches a stop signal yet (the process tests stop it only then: collector/entry.py)."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx

from collector import plugins
from collector.executor import Executor, RunResult
from collector.sandbox import Sandbox, Server
from collector.store import Store


def load_devdb() -> ModuleType:
    """scripts/devdb.py (the test database) as a module, loaded once: it is a script, not a package."""
    module = sys.modules.get("devdb")
    if module is not None and hasattr(module, "start_server"):
        return module
    spec = importlib.util.spec_from_file_location("devdb", Path(__file__).resolve().parent.parent / "scripts" /
                                                  "devdb.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["devdb"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class Engine:
    def __init__(self, store: Store, executor: Executor, clock, settings, service: str, token: str):
        self.store = store
        self.executor = executor
        self.clock = clock
        self.service = service
        self.token = token
        self.schedule = settings.service(service).schedule

    async def add(self, **fields: Any) -> Any:
        doc = {"user": "u1", "service": self.service, "accessToken": self.token, "mode": "initial",
               "scheduledTo": self.clock.now, "errors": 0, "cursor": {}, **fields}
        return await self.store.insert_network(doc)

    async def run(self, mode: str = "initial") -> RunResult:
        claimed = await claim_one(self.store, mode, "test-owner", self.clock.now, 60)
        assert claimed is not None, f"no {mode} network is due"
        doc, lease = claimed
        return await self.executor.run(doc, lease)

    async def run_when_due(self, mode: str) -> RunResult:
        """Move the clock to the moment the network asked for, then run it."""
        self.clock.now = (await self.network())["scheduledTo"]
        return await self.run(mode)

    async def confirm_unauthorized(self, mode: str = "initial") -> RunResult:
        """Run a network whose API refuses its token, twice: the first 401 only marks it (unauthorized, due again
        after unauthorized_recheck, not disabled), the second, run when due, disables it. Returns the second."""
        first = await self.run(mode)
        assert first.outcome.kind == "unauthorized", first.outcome
        marked = await self.network()
        assert marked["unauthorized"] is True and marked.get("disabled") is not True and marked["authFailures"] == 1
        assert marked["scheduledTo"] is not None and marked["scheduledTo"] > self.clock.now
        return await self.run_when_due(mode)

    async def network(self) -> dict[str, Any]:
        docs = await self.store.networks.find().to_list(None)
        assert len(docs) == 1
        return docs[0]

    async def items(self) -> list[dict[str, Any]]:
        return await self.store.items.find({"user": "u1", "service": self.service}).to_list(None)

    async def item_ids(self) -> set[str]:
        return {item["itemId"] for item in await self.items()}

    async def due_in(self) -> float | None:
        due = (await self.network())["scheduledTo"]
        return None if due is None else (due - self.clock.now).total_seconds()


async def claim_one(store: Store, mode: str, owner: str, now: Any, ttl: float,
                    exclude_services: Any = ()) -> tuple[dict[str, Any], Any] | None:
    """The most overdue network of `mode`, claimed (Store.claim_many for one): None when nothing is due."""
    got = await store.claim_many(mode, owner, now, ttl, 1, exclude_services)
    return got[0] if got else None


async def engine_for(service: str, token: str, mock_db, settings, clock, registry: dict[str, Any] | None = None):
    """Async generator body for an `engine` fixture; `registry`: the connectors (default: those installed)."""
    store = Store(mock_db)
    await store.ensure_indexes()
    registry = plugins.discover() if registry is None else registry
    async with httpx.AsyncClient() as client:
        yield Engine(store, Executor(store, client, settings, registry, clock=clock), clock, settings, service, token)


async def sandboxed_engine(service: str, server: Any, mock_db, clock, registry: dict[str, Any] | None = None):
    """Async generator body for an `engine` fixture whose service is served by the sandbox `server` over HTTP."""
    from tests.conftest import make_settings

    settings = make_settings(http={"total_timeout": 5.0}, services={service: {"base_url": server.url}})
    async for engine in engine_for(service, f"{service}-sandbox-{id(mock_db)}", mock_db, settings, clock, registry):
        yield engine


@contextlib.contextmanager
def sandbox_api(**options: Any) -> Iterator[Server]:
    """The sandbox API (collector/sandbox) served on 127.0.0.1 for the block; `options` are Sandbox's."""
    server = Server(Sandbox(**options)).start()
    try:
        yield server
    finally:
        server.stop()


async def run_schedulers(store: Store, executor: Executor, settings: Any, clock: Any) -> list[Any]:
    """One Scheduler per mode runs everything due, round after round past any retry's backoff, until the
    networks have had max_errors + 2 chances: each round repairs, then fills and awaits the runs until nothing
    due is left (per-service caps). No scheduler may crash or keep a run or a service slot. Returns them."""
    import asyncio

    from collector.config import MODES
    from collector.scheduler import Scheduler

    schedulers = [Scheduler(store, executor, settings, mode, owner=f"prop-{mode}", clock=clock) for mode in MODES]
    for rounds in range(settings.schedule.max_errors + 2):
        if rounds:
            clock.advance(settings.schedule.backoff_cap + 1)
        for sched in schedulers:
            await sched._maybe_repair(clock.now)
            while await sched.fill(clock.now):
                await asyncio.gather(*list(sched.inflight))
    for sched in schedulers:
        assert sched.stats.crashes == 0 and not sched.inflight and not sched.per_service
    return schedulers


def catches(pid: int, signum: int) -> bool:
    """Whether process `pid` has a handler installed for `signum` (Linux: the SigCgt mask of /proc/PID/status).
    False once it has exited."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next((int(line.split()[1], 16) for line in status.splitlines() if line.startswith("SigCgt:")), 0)
    return bool(mask >> (signum - 1) & 1)


def until_catches(pid: int, signum: int, timeout: float) -> bool:
    """Wait (polling every millisecond) until `pid` catches `signum`; False when it does not within `timeout`."""
    deadline = time.monotonic() + timeout
    while not catches(pid, signum):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True
