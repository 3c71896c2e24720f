"""A token refresh after a 401, and the one write that must never be lost: the new credentials.

The connector says how its provider refreshes (`Connector.refresh_request` / `parse_refresh`: RFC 6749's form
POST by default, Bluesky's `com.atproto.server.refreshSession` in its connector). A provider that rotates the
refresh token makes the old one worthless once it has answered, so from that answer on the new pair exists
only in this process's memory until the database has it:

- The write is a compare-and-set on the refresh token the pair was obtained with (its stored value, sealed
  when tokens are encrypted at rest), retried with backoff until the database acknowledges it (a database
  outage of minutes is outlived; the run, and so its lease, which the heartbeat renews, stays in flight
  meanwhile). An answer lost on the way (AutoReconnect after the server applied it) is told from a write that
  never matched by `credentialsStamp`, read back. A shutdown does not cancel the write in progress.
- The refresh token used is kept beside the new one (`previousRefreshToken`) until the new credentials have
  served one successful run (the state save clears it). A refresh refused with the current refresh token
  (`invalid_grant`) is tried once with the previous one: with providers that keep the old refresh token valid
  until the new access token is used (Doorkeeper's `on_use` rotation, GitLab), a pair lost between the answer
  and the write (kill -9) costs nothing. Providers that rotate strictly (the old token dies with the answer:
  Bluesky, GitHub App user tokens) cannot be covered that way: docs/credentials.md says which is which.
- A refusal of the refresh is a 401 like any other: confirmed by a second run before the network is disabled.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import httpx
import structlog
from pymongo.errors import ConnectionFailure, PyMongoError

from collector import http, logs, outcomes
from collector.batch import transient
from collector.config import Settings
from collector.sdk import Connector, Context, Tokens, Unauthorized
from collector.states import Kind, Outcome

log = structlog.get_logger("collector.run")

Seal = Callable[[str, str], Any]  # (field, plaintext) -> the value stored (collector/secrets.py), identity if off


def retryable(exc: PyMongoError) -> bool:
    """A write worth sending again: the connection failed or timed out, or the server gave up for a reason of the
    moment (a write conflict, a deadlock victim). Not a refusal of the write itself."""
    return isinstance(exc, ConnectionFailure) or transient(exc)


class Refresher:
    FIRST_RETRY = 0.2  # seconds before the first retry of the credentials write, doubling...
    RETRY_CAP = 10.0  # ...up to this
    GIVE_UP = 3600.0  # an hour of refusals: the database is not coming back for this run

    def __init__(self, store: Any, client: httpx.AsyncClient | http.ClientPool, settings: Settings,
                 seal: Seal = lambda field, value: value):
        self.store = store
        self.client = client
        self.settings = settings
        self.seal = seal
        self._writes: set[asyncio.Task[bool]] = set()

    async def refresh(self, connector: Connector, ctx: Context, stored: Any, now: datetime) -> Context | Outcome | None:
        """New credentials for the run, stored first; an Outcome when the refresh failed; None when the connector
        has no way to refresh (no token endpoint configured). `stored`: the refresh token as the document holds it
        (the compare-and-set's guard)."""
        network = ctx.network
        current = network.credentials["refreshToken"]
        previous = network.credentials.get("previousRefreshToken")
        tokens: Tokens | None = None
        used = current
        for used in (current, previous) if previous and previous != current else (current,):
            try:
                request = connector.refresh_request(ctx, used)
                if request is None:
                    return None
                response = await http.fetch(self.client, request, max_bytes=self.settings.body_cap(network.service),
                                            total_timeout=self.settings.http.total_timeout)
                tokens = connector.parse_refresh(response)
                break
            except Unauthorized as exc:
                if used is not current or not previous or previous == current:
                    return outcomes.from_exception(exc, "token refresh")
                log.info("refresh token refused: trying the one before it", error=logs.clip(str(exc), 200))
            except Exception as exc:
                return outcomes.from_exception(exc, "token refresh")
        assert tokens is not None
        refresh_token = tokens.refresh_token or used
        logs.add_run_secrets([tokens.access_token, refresh_token])
        fields: dict[str, Any] = {"accessToken": self.seal("accessToken", tokens.access_token), "tokenRefreshedAt": now}
        if refresh_token != current:
            fields["refreshToken"] = self.seal("refreshToken", refresh_token)
        if refresh_token != used:  # rotated: the one used stays beside it until the new pair has served a run
            fields["previousRefreshToken"] = self.seal("previousRefreshToken", used)
        if tokens.expires_in is not None:
            fields["tokenExpiresAt"] = now + timedelta(seconds=max(0.0, min(tokens.expires_in, 10 * 365 * 86400)))
        try:
            stored_now = await self._durably(network.id, stored, fields)
        except PyMongoError as exc:
            log.error("refreshed tokens refused by the database", error=logs.describe(exc))
            return Outcome(Kind.TRANSIENT, error="store_error",
                           message=f"token refresh: the database refused the new tokens: {logs.describe(exc)}")
        if not stored_now:
            return Outcome(Kind.TRANSIENT, error="token_refresh",
                           message="token refreshed but the network's refresh token changed meanwhile: retrying")
        log.info("access token refreshed", rotated=refresh_token != used, previous_used=used is not current)
        credentials = {**network.credentials, "accessToken": tokens.access_token, "refreshToken": refresh_token}
        return replace(ctx, network=replace(network, credentials=credentials))

    async def _durably(self, network_id: Any, stored: Any, fields: dict[str, Any]) -> bool:
        """The compare-and-set, retried until acknowledged; shielded from the run's cancellation (a shutdown):
        the write goes on, and the run ends."""
        task = asyncio.ensure_future(self._write(network_id, stored, fields, uuid.uuid4().hex))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            log.warning("run cancelled while its refreshed tokens were being stored: the write goes on")
            raise

    async def _write(self, network_id: Any, stored: Any, fields: dict[str, Any], stamp: str) -> bool:
        delay, started, attempt = self.FIRST_RETRY, time.monotonic(), 0
        while True:
            attempt += 1
            try:
                return bool(await self.store.update_credentials(network_id, stored, fields, stamp))
            except PyMongoError as exc:
                if not retryable(exc) or time.monotonic() - started > self.GIVE_UP:
                    raise
                log.warning("refreshed tokens not stored yet: retrying until the database takes them",
                            attempt=attempt, retry_in=round(delay, 2), error=logs.describe(exc))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.RETRY_CAP)

    async def drain(self, seconds: float) -> None:
        """Wait (at shutdown) for credential writes still in progress, at most `seconds`."""
        if self._writes:
            await asyncio.wait(set(self._writes), timeout=seconds)
