"""Wiring: settings -> logging -> database -> store -> registry -> executor -> scheduler.

`run_daemon` is what `collector --mode ...` runs. It owns the process-wide pieces (one HTTP
client, one database client) and the signal handling: on SIGTERM/SIGINT it stops claiming,
lets in-flight runs finish within `shutdown_grace`, releases leases of the rest and returns 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from collector import changes, early_stop, http, logs, plugins, webhooks
from collector.clock import ServerClock, utcnow
from collector.config import Settings
from collector.executor import Executor
from collector.fleet import Fleet, version
from collector.metrics import Metrics
from collector.notify import Notifier, watchdog_loop
from collector.observe import NoMetrics, Observer
from collector.scheduler import Scheduler, make_owner_id
from collector.secrets import open_vault
from collector.store import Store

log = structlog.get_logger("collector")


class DatabaseUnavailable(Exception):
    """The database could not be reached within the configured timeout: the message is one short line (where, why
    in a few words, what to do); `detail` is the driver's whole report (printed with --verbose)."""

    def __init__(self, message: str, detail: str = ""):
        super().__init__(message)
        self.detail = detail


# the cause of a failed connection in a few words, by what the driver's report says (the first match wins)
CAUSES = (
    (("connection refused", "errno 111]", "errno 61]"), "connection refused (nothing listens there)"),
    (("name or service not known", "nodename nor servname", "name resolution", "no address associated",
      "getaddrinfo failed"), "host name not found"),
    (("authentication failed", "auth failed", "bad auth"), "authentication failed"),
    (("ssl", "tls", "certificate"), "TLS handshake failed"),
    (("replicasetnoprimary", "no replica set members", "replica set"), "no replica set member matched"),
    (("timed out",), "no answer (timed out)"),
)
POINT_AT_A_SERVER = ("Set MONGODB_URI or --mongodb-uri URI to point at a server (./scripts/dev.sh, in a clone, starts "
                     "a local one); --verbose for the detail")


def unreachable(uri: str, timeout: float, detail: str) -> DatabaseUnavailable:
    """The error of a database that did not answer: one line naming the URI (credentials masked), the cause and how
    to point at a server; the driver's report as its detail."""
    text = detail.lower()
    cause = next((why for words, why in CAUSES if any(w in text for w in words)), detail.split(":", 1)[0])
    return DatabaseUnavailable(f"cannot reach MongoDB at {redacted_uri(uri)} within {timeout:g}s: {cause}. "
                               f"{POINT_AT_A_SERVER}", detail)


def redacted_uri(uri: str) -> str:
    """mongodb://user:pass@host/ -> mongodb://user:[redacted]@host/"""
    if "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:{logs.REDACTED}@{host}"


class StoppedWhileStarting(Exception):
    """A stop signal came before the daemon connected to anything: it exits cleanly (0) having started nothing."""


class UnsafeDatabase(Exception):
    """The server breaks a guarantee the lease protocol relies on (atomic findAndModify and updates per
    document): the daemon refuses to run on it rather than run a network twice at once or lose a save."""


# Servers known to break those guarantees, by their buildInfo: (field, major versions refused, why).
# FerretDB v1 (measured in this project: 120 of 600 pages fetched twice by 2 daemons) runs findAndModify as a
# read then a write, so two connections both claim one network, and loses one of two concurrent updates.
UNSAFE_SERVERS = (
    ("ferretdbVersion", range(0, 2), "its findAndModify is not atomic across connections (two processes can "
                                     "claim one network) and it loses concurrent updates of one document"),
)


def check_server(info: dict[str, Any]) -> None:
    """Raise UnsafeDatabase if buildInfo `info` names a server that breaks the guarantees the daemon needs."""
    for key, majors, why in UNSAFE_SERVERS:
        if key in info:
            version = str(info[key]).lstrip("v")
            major = version.split(".", 1)[0]
            if not major.isdigit() or int(major) in majors:
                name = key.removesuffix("Version")
                raise UnsafeDatabase(f"refusing to run on {name} {info[key]}: {why}. Use MongoDB (or FerretDB >= 2 "
                                     "over PostgreSQL with DocumentDB)")


async def make_store(db: Any, settings: Settings, *, check: bool = False) -> Store:
    """The Store, its indexes created; with `check`, first refuse a server that breaks the guarantees."""
    if check:
        try:
            info = await db.client.admin.command("buildInfo")
        except PyMongoError as exc:
            raise DatabaseUnavailable(f"the database did not answer buildInfo: {logs.describe(exc)}") from exc
        except Exception:  # mongomock and friends: in-process, no concurrency across connections
            info = {}
        check_server(info)
    store = Store(db, store_raw=settings.database.store_raw, write_batch=settings.database.write_batch,
                  write_concern=settings.database.write_concern, write_timeout=max(settings.database.timeout * 6, 60.0),
                  feed=settings.changes.enabled)
    await store.ensure_indexes(settings.selectors)
    if settings.changes.enabled:
        await changes.ensure_indexes(db)
    return store


async def connect(settings: Settings) -> tuple[AsyncMongoClient[dict[str, Any]], Any]:
    """Open the database and check it answers, within `database.timeout` seconds (DatabaseUnavailable if not)."""
    uri, timeout = settings.database.uri, settings.database.timeout
    timeout_ms = max(1, int(timeout * 1000))
    try:
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            uri, tz_aware=True, serverSelectionTimeoutMS=timeout_ms, retryWrites=True,
            connectTimeoutMS=timeout_ms, appname="collector",
            # no database call may hang the loop forever (the watchdog would restart us, but later)
            socketTimeoutMS=max(timeout_ms * 6, 60_000),
        )
    except (PyMongoError, ValueError) as exc:  # a malformed URI (pymongo raises either)
        raise DatabaseUnavailable(f"invalid MongoDB URI {redacted_uri(uri)}: {logs.clip(str(exc), 200)}. "
                                  f"{POINT_AT_A_SERVER}", logs.describe(exc, 20_000)) from exc
    try:
        await asyncio.wait_for(client.admin.command("ping"), timeout)  # the driver's own bound, and a hard one
    except (PyMongoError, TimeoutError) as exc:
        servers = client.topology_description.server_descriptions().values()
        report = logs.describe(exc, 20_000) if isinstance(exc, PyMongoError) else logs.clip(
            "no answer; " + "; ".join(f"{s.address}: {s.error}" for s in servers if s.error), 20_000)
        await client.close()
        raise unreachable(uri, timeout, report) from exc
    return client, client[settings.database.name]


def install_signal_handlers(stop: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def describe(scheduler: Scheduler) -> str:
    """The one-line STATUS systemd shows under `systemctl status`."""
    stats = scheduler.stats
    text = (f"{scheduler.mode}: {len(scheduler.inflight)} in flight, {sum(stats.runs.values())} runs, "
            f"{stats.items_new} new items")
    if scheduler.paused:
        text += f", paused: {','.join(sorted(scheduler.paused))}"
    if not scheduler.database_ok:
        text += ", DATABASE UNAVAILABLE"
    if scheduler.stopping:
        text += ", stopping"
    return text


async def run_daemon(settings: Settings, mode: str, *, db: Any = None,
                     clock: Callable[[], datetime] = utcnow, on_ready: Callable[[Scheduler], None] | None = None,
                     registry: dict[str, plugins.Registered] | None = None) -> Scheduler:
    """Run one scheduler until a signal (or `scheduler.stop()`); returns it for its stats.

    Around the scheduler: the fleet heartbeat (registry document, lease renewal), the systemd
    notifier (READY, STATUS, WATCHDOG gated on the loop being alive, STOPPING) and, when enabled,
    the Prometheus endpoint. What it opens is released by one exit stack, in reverse order, whether start-up
    fails half-way or the scheduler returns: the background tasks, the last state saves, the fleet's last word,
    the metrics endpoint, the HTTP clients, the database client."""
    registry = registry if registry is not None else plugins.discover()
    settings.selectors.check(registry)  # SelectorError: a service name no connector has, before anything starts
    early: list[int] = []  # a stop signal that arrives while starting: honoured once the loop exists
    install_signal_handlers(lambda: early.append(1))  # SIGTERM during start-up is a clean stop, not a kill
    early += early_stop.held  # those that came while Python imported the daemon (collector/early_stop.py)
    early_stop.held.clear()
    if early:
        raise StoppedWhileStarting("stop requested while starting: exited before connecting to the database")
    # every step of the way out is bounded: a database that stops answering (an outage, a connection left hanging
    # by a server restart) must not keep a stopping process past its stop timeout
    bound = settings.database.timeout
    async with contextlib.AsyncExitStack() as stack:
        if db is None:
            mongo, db = await connect(settings)
            stack.push_async_callback(_bounded, mongo.close, bound, "closing the database client")
        store = await make_store(db, settings, check=True)
        vault = await open_vault(db, settings)  # SecretsError: a master key missing or wrong, a clear exit (5)
        # due times and leases are compared on the database server's clock, not this host's (collector/clock.py)
        server_clock = ServerClock(base=clock)
        await server_clock.sync(db)
        clock = server_clock
        for name, reg in sorted(registry.items()):
            if reg.error:
                log.error("connector failed to load: its networks will be disabled", service=name, error=reg.error)
        client = http.make_client(settings)
        stack.push_async_callback(_bounded, client.aclose, bound, "closing the HTTP clients")
        executor = Executor(store, client, settings, registry, clock=clock, vault=vault)
        owner = make_owner_id(mode)
        metrics: Observer = NoMetrics()
        if settings.metrics.enabled:
            prometheus = Metrics(mode, owner, version(), services=registry)
            # MetricsError: a clear exit
            endpoint = stack.enter_context(prometheus.serve(settings.metrics.host, settings.metrics.port))
            log.info("metrics endpoint listening", url=endpoint.url)
            metrics = prometheus
        scheduler = Scheduler(store, executor, settings, mode, owner=owner, clock=clock, metrics=metrics)
        fleet = Fleet(store, scheduler, settings, clock=clock, metrics=metrics)
        notifier = Notifier.from_env()

        def stop() -> None:
            if not scheduler.stopping:
                log.info("stop requested: finishing in-flight runs", grace=settings.daemon.shutdown_grace)
                notifier.stopping(f"stopping: finishing {len(scheduler.inflight)} runs in flight")
            scheduler.stop()

        install_signal_handlers(stop)
        if early:
            stop()
        log.info("collector starting", mode=mode, owner=owner, environment=settings.environment,
                 database=redacted_uri(settings.database.uri), connectors=sorted(registry),
                 config=list(settings.sources))
        await fleet.beat()  # registered before READY (a failure here is logged and retried by the loop)
        stack.push_async_callback(_bounded, fleet.stopped, bound, "recording the stop in the fleet registry")
        stack.push_async_callback(_bounded, store.state_writes.drain, bound, "writing the last state saves")
        background: list[asyncio.Task[Any]] = []  # cancelled first on the way out
        stack.push_async_callback(_cancel, background, bound)
        background += [asyncio.create_task(fleet.run(), name="heartbeat"),
                       asyncio.create_task(server_clock.run(db), name="server clock"),
                       asyncio.create_task(watchdog_loop(notifier, scheduler.alive, lambda: describe(scheduler)),
                                           name="watchdog")]
        if settings.changes.enabled:  # the change feed: events of what the runs wrote (collector/changes.py)
            background.append(asyncio.create_task(changes.Publisher(db, settings, clock).run(), name="change feed"))
        if settings.webhooks.url:  # the feed POSTed to an endpoint, its own task and client (collector/webhooks.py)
            deliverer = webhooks.Deliverer(db, settings, clock, metrics=metrics)
            background.append(asyncio.create_task(deliverer.run(), name="webhooks"))
        notifier.ready(describe(scheduler))
        if on_ready:
            on_ready(scheduler)
        await scheduler.run()
    return scheduler


async def _cancel(tasks: list[asyncio.Task[Any]], seconds: float) -> None:
    """Cancel the background tasks and wait for them to end, for at most `seconds`."""
    for task in tasks:
        task.cancel()
    await _bounded(lambda: asyncio.gather(*tasks, return_exceptions=True), seconds, "background tasks")


async def _bounded(step: Callable[[], Awaitable[Any]], seconds: float, what: str) -> None:
    """Run one step of the shutdown for at most `seconds`; a failure or a timeout is logged, not raised."""
    try:
        await asyncio.wait_for(step(), seconds)
    except TimeoutError:
        log.warning("shutdown step timed out: going on without it", step=what, seconds=seconds)
    except PyMongoError as exc:
        log.warning("shutdown step failed: going on without it", step=what, error=logs.describe(exc))
