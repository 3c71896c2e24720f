"""One run of one network: connector -> items -> state. Every failure ends in a state.

Nothing a connector, an API or a document does escapes this module as an exception, except a
database error while saving (then the lease simply expires and the page is run again: items are
idempotent, so nothing is lost and nothing is duplicated).
"""

from __future__ import annotations

import functools
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import bson
import httpx
import structlog
from bson.errors import InvalidDocument
from pymongo.errors import BulkWriteError, PyMongoError, WriteError

from collector import http, logs, offload, outbox, outcomes
from collector.clock import utcnow
from collector.config import Settings
from collector.incidents import Incidents
from collector.model import Malformed, RunNetwork
from collector.pauses import KnownPauses
from collector.plugins import Registered
from collector.reconcile import Reconciler
from collector.refresh import Refresher
from collector.sdk import Connector, Context, Item, RateLimit
from collector.sdk._errors import ForeignHost
from collector.sdk._urls import inside, origin
from collector.secrets import Vault, open_for_run
from collector.states import Kind, Outcome, State, Transition, label_after, transition
from collector.store import Lease, Store

log = structlog.get_logger("collector.run")
# `inside` is a pure function of two URLs, and a fleet's runs ask it the same few pairs (a service's first-page URL
# under its base): remembered, the URL parsing of every run becomes a lookup. URLs carry no credential (sdk.Request)
_inside_cached = functools.lru_cache(maxsize=4096)(inside)


def _inside(url: Any, base: Any) -> bool:
    return _inside_cached(url, base) if isinstance(url, str) and isinstance(base, str) else inside(url, base)


@dataclass(frozen=True)
class RunResult:
    network_id: Any
    service: str
    outcome: Outcome
    transition: Transition
    new_items: int
    saved: bool  # False: the lease was lost, the state write was dropped
    incident: bool = False  # this run declared an auth incident on its service (collector/incidents.py)


# the longest message of an outcome (lastError, the reasons of a run, a disabled network, a paused service)
MAX_MESSAGE = 1000


def _snippet(response: httpx.Response, limit: int = 200) -> str:
    # scrubbed before the cut: a token the API echoes across the cut would survive as half a token
    text = logs.clip(response.content, limit).strip().replace("\n", " ")
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


def _judged(outcome: Outcome, now: datetime, floor: int) -> Outcome:
    """`outcome`, or the failure it is when what the connector put in it cannot be acted on: a rate limit of junk
    values the state machine would compute with (a string, a naive datetime, a negative wait), or a cursor the
    database cannot hold (an integer past 64 bits: the state write would fail, and the network would be run again
    at every lease expiry). Judged before the run's one transition (collector/states.py reads a rate limit only
    for these kinds, and a limit's `minimum_wait` only when it names no reset)."""
    limit = outcome.rate_limit
    try:
        if limit is not None and outcome.kind in (Kind.PAGE, Kind.NOT_MODIFIED, Kind.RATE_LIMITED, Kind.DEFERRED):
            resume = limit.resume_at(now, floor)
            wait = limit.minimum_wait if outcome.kind is Kind.RATE_LIMITED and resume is None else None
            if wait and wait < 0:
                raise ValueError(f"minimum_wait {wait!r} is negative")
    except Exception as exc:
        log.error("connector returned an invalid outcome", error=logs.describe(exc))
        return Outcome(Kind.TRANSIENT, error="connector_error", status=outcome.status,
                       message=f"invalid outcome from the connector: {type(exc).__name__}: {exc}")
    if outcome.kind in (Kind.PAGE, Kind.NOT_MODIFIED):  # the outcomes whose cursor and progress the state saves
        try:
            bson.encode({"cursor": outcome.cursor, "set": (outcome.reconcile or {}).get("set")})
        except (OverflowError, InvalidDocument) as exc:
            log.error("the new state cannot be stored", error=logs.describe(exc))
            return Outcome(Kind.TRANSIENT, error="store_error", status=outcome.status,
                           message=f"the new state cannot be stored: {logs.describe(exc)}")
    return outcome


class Executor:
    def __init__(self, store: Store, client: httpx.AsyncClient | http.ClientPool, settings: Settings,
                 registry: dict[str, Registered], clock: Callable[[], datetime] = utcnow,
                 rng: random.Random | None = None, vault: Vault | None = None):
        self.store = store
        self.vault = vault or Vault.disabled()  # credentials encrypted at rest (collector/secrets.py)
        self.client = client
        self.settings = settings
        self.registry = registry
        self.clock = clock
        self.rng = rng or random.Random()
        self._connectors: dict[str, Connector] = {}
        # service pauses this process knows of (the scheduler refreshes it every tick; a run that pauses its
        # service adds to it at once); the database is asked again before every request
        self.pauses = KnownPauses(store)
        self.parses = offload.Offload(offload.PARSE_SLOTS, offload.PARSE_INLINE_BYTES)
        self.refresher = Refresher(store, client, settings, seal=self.vault.seal)
        self.incidents = Incidents(store, self.pauses, lambda service: settings.service(service).schedule)
        self.reconciler = Reconciler(self)  # removal detection, inside normal runs (collector/reconcile.py)

    def connector(self, service: str) -> Connector | Outcome:
        if service in self._connectors:
            return self._connectors[service]
        reg = self.registry.get(service)
        if reg is None:
            known = ", ".join(sorted(self.registry)) or "none"
            # bounded (the reason is written three times into the document: 16 MB cap on MongoDB),
            # scrubbed before the cut (half a token would survive the scrub of the whole reason)
            shown = logs.scrub(service)
            shown = repr(shown) if len(shown) <= 64 else f"{shown[:61]!r}... ({len(service)} characters)"
            return Outcome(Kind.PERMANENT, error="unknown_service",
                           message=f"no connector for service {shown} (installed: {known})")
        if reg.cls is None:
            return Outcome(Kind.PERMANENT, error="bad_connector",
                           message=f"connector {service!r} failed to load: {reg.error}")
        try:
            self._connectors[service] = reg.cls(self.settings.service(service))
        except Exception as exc:
            return Outcome(Kind.PERMANENT, error="bad_connector",
                           message=f"connector {service!r} failed to start: {type(exc).__name__}: {exc}")
        return self._connectors[service]

    async def run(self, doc: dict[str, Any], lease: Lease) -> RunResult:
        now = self.clock()
        # the document read once: the run, the state machine and the store work from this value
        network = RunNetwork.read(doc, label=outbox.label, settings=self.settings)
        service = network.service
        structlog.contextvars.bind_contextvars(network=str(network.id), user=str(network.user), service=service,
                                               mode=network.mode)
        secrets = logs.set_run_secrets(network.secrets)
        try:
            # the credentials decrypted in memory for this run, the plaintext ones sealed (collector/secrets.py)
            opened = await open_for_run(self.vault, self.store, network)
            items: list[Item] = []
            added = outbox.Added()  # what the item writes added, for the change feed
            if isinstance(opened, Outcome):
                outcome = opened
            else:
                network = opened
                outcome, items = await self._attempt(network, now)
            # a 401 of a storm pauses the service instead of counting against the network (collector/incidents.py)
            outcome, incident = await self.incidents.judge(service, network.id, outcome, max(now, self.clock()))
            # bounded once, whatever made it (an exception, an API's text): scrubbed before the cut, as every cut
            outcome = replace(outcome, message=logs.clip(outcome.message, MAX_MESSAGE))
            # the next run is scheduled from when the API answered, not from when this run began: a
            # backoff or a pace is the least time between an answer and the next request, and a
            # Retry-After counts from its response (a slow request must not eat into the wait)
            answered = max(now, self.clock())
            try:
                new_items = await self.store.save_items(network.key, items, now, run=lease.id, added=added) \
                    if items else 0
            except (WriteError, BulkWriteError, OverflowError, InvalidDocument) as exc:  # refused: not an outage
                log.error("items refused by the database", error=logs.describe(exc))
                outcome = Outcome(Kind.TRANSIENT, error="store_error", status=outcome.status,
                                  message=f"the database refused the items: {logs.describe(exc)}")
                items, new_items, added = [], 0, outbox.Added(complete=False)
            outcome = replace(outcome, new=new_items)  # adaptive polling counts what was new to the store
            schedule = self.settings.service(service).schedule
            outcome = _judged(outcome, answered, schedule.rate_limit_floor)
            state = State(network.mode, network.errors, network.failing_since, network.limited,
                          await self._service_streak(service, outcome, answered), network.auth_failures,
                          network.interval, network.new_at)
            step = transition(state, outcome, answered, schedule, self.rng)
            step = self.reconciler.hurry(step, outcome, answered)  # a listing under way comes back soon
            if step.service_paused_until is not None:  # first: every other process must see it at once
                self.pauses.note(service, step.service_paused_until)
                await self.store.pause_service(service, step.service_paused_until, logs.scrub(step.reason),
                                               self.clock(), streak=state.service_limited + 1)
            if step.user_paused_until is not None:  # this user's quota on this app: their other networks wait too
                await self.store.defer_user(network.user, service, network.id, step.user_paused_until)
            saved = await self._save(network, lease, outcome, step, new_items, now, added, bool(items))
            fields = dict(outcome=outcome.kind.value, items=outcome.items, new=new_items, reason=step.reason,
                          next=step.scheduled_to.isoformat() if step.scheduled_to else None)
            if not saved:
                log.warning("lease lost: state dropped, items kept", **fields)
            elif step.disabled:
                log.warning("network disabled", **fields)
            elif not step.success:
                log.info("run failed", **fields)
            elif new_items or step.mode != network.mode:
                log.info("run", **fields)
            else:  # nothing new (most runs of a fleet in its steady state): a line at debug, not rendered at info
                log.debug("run", **fields)
            return RunResult(network.id, service, outcome, step, new_items, saved, incident)
        finally:
            logs.reset_run_secrets(secrets)
            structlog.contextvars.unbind_contextvars("network", "user", "service", "mode")

    async def _save(self, network: RunNetwork, lease: Lease, outcome: Outcome, step: Transition,
                    new_items: int, now: datetime, added: outbox.Added | None = None, pointed: bool = False) -> bool:
        """`added`: what the run's item writes added (reported to the change feed); `pointed`: they wrote a pointer."""
        fields: dict[str, Any] = {
            "scheduledTo": step.scheduled_to,
            "errors": step.errors,
            "lastExecution": now,
            "lastOwner": lease.owner,
            "lastOutcome": {"at": now, "kind": outcome.kind.value, "reason": logs.scrub(step.reason),
                            "status": outcome.status, "items": outcome.items, "new": new_items},
        }
        unset = []
        if step.success:
            fields.update(mode=step.mode, lastSuccess=now, unauthorized=False)
            fields.update((outcome.reconcile or {}).get("set", {}))  # a reconciliation's progress (reconcile.py)
            if step.cursor is not None:
                fields["cursor"] = step.cursor
            if step.interval is not None:
                fields["pollInterval"] = step.interval  # adaptive polling (collector/states.py)
            if step.new_at is not None:
                fields["newItemsAt"] = step.new_at
            unset += ["authFailures", "previousRefreshToken"]  # the credentials served a run (collector/refresh.py)
        elif step.auth_failures:
            fields.update(authFailures=step.auth_failures, unauthorized=True)
        if step.error is not None:
            fields["lastError"] = {**step.error, "message": logs.scrub(step.error["message"])}
        if step.rate_limited_until is not None:
            fields["rateLimitedUntil"] = step.rate_limited_until
        if step.failing_since is not None:
            fields["failingSince"] = step.failing_since
        if step.disabled:
            fields.update(disabled=True, disabledReason=logs.scrub(step.reason), disabledAt=now,
                          unauthorized=step.unauthorized)
        counts = {"runs": 1, outcome.kind.value: 1, **({"items": new_items} if new_items else {})}
        if network.counters_ok(counts):
            inc = {f"stats.{k}": v for k, v in counts.items()}
        else:  # a counter we own that is junk (not an object, a string count, near 2**63): start it again,
            # as `$inc` on it would fail the state write on MongoDB, and the run would repeat forever
            fields["stats"] = counts
            inc = None
        if step.failing_since is None:
            unset.append("failingSince")  # a success ends the streak
        if step.limited:
            fields["rateLimitStreak"] = step.limited
        else:
            unset.append("rateLimitStreak")
        if step.parked:
            fields.update(parkedAt=now, parkedReason=logs.scrub(step.reason))
        else:
            unset += ["parkedAt", "parkedReason"]
        became = label_after(step)
        # what the application must act on (the user must reconnect, ...) and what was added: the change feed's
        reported = added.entry(lease.id, now) if added is not None else None
        entries = [reported] if reported is not None else []
        if became != network.label:
            entries.append(outbox.entry(became, lease.id, now, logs.scrub(step.reason)))
        return await self.store.save_state(network.id, lease, fields, unset=unset, inc=inc, entries=entries,
                                           point=None if pointed else network.key)

    async def _service_streak(self, service: str, outcome: Outcome, now: datetime) -> int:
        """App-wide limits in a row of this service (from its pause document), for a limit of the whole app:
        they escalate together, whichever network meets them. 0 for anything else (no read)."""
        limit = outcome.rate_limit
        if outcome.kind is not Kind.RATE_LIMITED or limit is None or limit.scope != "service":
            return 0
        try:
            return await self.store.service_limit_streak(service, now, self.settings.service(service).schedule
                                                         .rate_limit_cap)
        except PyMongoError:
            return 0

    async def _attempt(self, stored: RunNetwork, now: datetime) -> tuple[Outcome, list[Item]]:
        service = stored.service
        if not stored.named:
            return Outcome(Kind.PERMANENT, error="malformed",
                           message="field 'service' must be a non-empty string"), []
        connector = self.connector(service)
        if isinstance(connector, Outcome):
            return connector, []
        try:
            network = stored.network(connector.required)  # what the connector sees, checked for it
        except Malformed as exc:
            return Outcome(Kind.PERMANENT, error=exc.kind, message=str(exc)), []
        paused = await self.pauses.check(service, now)
        if paused is not None:
            until, why = paused
            return Outcome(Kind.DEFERRED, rate_limit=RateLimit(retry_after=(until - now).total_seconds()),
                           message=f"service {service} paused until {until.isoformat()} ({why})"), []
        ctx = Context(network=network, mode=network.mode, cursor=network.cursor, now=now)
        outcome, items = await self._guarded(connector, ctx, now)
        if outcome.kind is Kind.UNAUTHORIZED and network.credentials.get("refreshToken"):
            # the refresh token as the database holds it (sealed): the guard of the new tokens' compare-and-set
            refreshed = await self.refresher.refresh(connector, ctx, stored.stored_credentials.get("refreshToken"), now)
            if isinstance(refreshed, Outcome):
                return refreshed, []
            if refreshed is not None:  # one retry with the new token
                ctx = refreshed
                outcome, items = await self._guarded(connector, ctx, now)
                if outcome.kind is Kind.UNAUTHORIZED:
                    outcome = replace(outcome, message=f"the refreshed token was refused too: {outcome.message}")
        if network.mode == "normal" and outcome.kind in (Kind.PAGE, Kind.NOT_MODIFIED):
            outcome = await self.reconciler.step(connector, ctx, stored, outcome, items)
        return outcome, items

    async def _guarded(self, connector: Connector, ctx: Context, now: datetime) -> tuple[Outcome, list[Item]]:
        """One request and its parse; every exception becomes an outcome (collector/outcomes.py)."""
        try:
            return await self._call(connector, ctx, now)
        except Exception as exc:
            return outcomes.from_exception(exc), []

    async def _call(self, connector: Connector, ctx: Context, now: datetime) -> tuple[Outcome, list[Item]]:
        started = time.monotonic()  # the run's total_timeout bounds the request and the parse together
        request = connector.request(ctx)
        # one check for every connector: the network's credentials go only to its own API, whatever built the URL
        # (a stored cursor, a Link header); then its credentials, as the connector carries them (a header the
        # request sets itself wins)
        if not _inside(request.url, connector.base(ctx)):
            raise ForeignHost(f"refused to send the network's credentials to {origin(request.url)}: "
                              "outside the configured base URL")
        request = replace(request, headers={**connector.auth_headers(ctx), **request.headers})
        response = await http.fetch(self.client, request, max_bytes=self.settings.body_cap(ctx.network.service),
                                    total_timeout=self.settings.http.total_timeout)
        connector.check(ctx, response)
        status = response.status_code
        # a relative reset ("retry in 60 s", Reddit's seconds to the reset) counts from the answer, not from when
        # the run began: a slow request would otherwise eat into the wait the API asked for
        answered = max(now, self.clock())
        limit = connector.rate_limit(response, answered)
        if not 200 <= status < 300:  # the status rules (collector/outcomes.py): 304, 401, 403, 410, 429, 5xx...
            floor = self.settings.service(ctx.network.service).schedule.rate_limit_floor
            return outcomes.from_status(status, lambda: _snippet(response), limit, answered, floor), []
        try:
            # a large reply is parsed in a thread (no reply may block the loop), within the run's total_timeout
            left = self.settings.http.total_timeout - (time.monotonic() - started)
            page = await self.parses.run_sized(lambda: connector.parse(ctx, response), len(response.content), left,
                                               "parsing the reply")
        except offload.Overdue as exc:
            return Outcome(Kind.TRANSIENT, error="timeout", status=status, message=str(exc)), []
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            return Outcome(Kind.TRANSIENT, error="bad_json", status=status, message=f"invalid JSON: {exc}"), []
        except RecursionError:  # a connector's own response.json() of a body nested past the parser's limit
            return Outcome(Kind.TRANSIENT, error="bad_response", status=status,
                           message="unexpected response shape: nested too deeply to parse"), []
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError) as exc:
            # OverflowError: int() of a number JSON read as infinity (1e400)
            return Outcome(Kind.TRANSIENT, error="bad_response", status=status,
                           message=f"unexpected response shape: {type(exc).__name__}: {exc}"), []
        limit = limit.merge(page.rate_limit) if limit else page.rate_limit
        kind = Kind.NOT_MODIFIED if page.not_modified else Kind.PAGE
        return Outcome(kind, items=len(page.items), cursor=page.cursor, more=page.more, rate_limit=limit,
                       status=status), list(page.items)
