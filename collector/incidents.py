"""A 401 storm is an incident of the API, not a thousand revocations.

An API incident, a misconfigured proxy or a token store of the provider's that answers 401 for an hour would,
run by run, mark every network of the service unauthorized and then disable them all: undoing it would take
an operator's bulk enable, and the users' applications would ask every user to reconnect. So the refusals
are counted per service over a sliding window (`incident_window`, of this process's runs that got an answer
from the API): when more than `incident_share` of at least `incident_min_runs` runs were refused with 401,
the service is paused fleet-wide for `incident_pause` (the `services` document, as an app-wide rate limit
pauses it, with the reason), the refused run is deferred to after the pause, and nobody is marked or
disabled. The pause is renewed while the refusals go on; `collector status` shows it with its reason and
`collector_auth_incidents_total` counts the incidents declared.

The declaration is remembered in the service's document (`authIncidentAt`): for `incident_window` after it,
a 401 seen by any process (one that ran too few of the service's runs to judge by itself, or one whose
runs resume when the pause ends while the API still refuses) is deferred too, not counted against the
network. With fewer than `incident_min_runs` runs of a service in the window, an incident cannot be told
from revocations: each network's own confirmation (collector/states.py: the second 401 in a row disables)
is what protects them then.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import PyMongoError

from collector import logs
from collector.config import Schedule
from collector.limits import RateLimit
from collector.pauses import KnownPauses
from collector.states import Kind, Outcome

log = structlog.get_logger("collector.run")

# the runs of one service remembered for the window, at most (a bound on memory whatever the rate)
MAX_SAMPLES = 20_000


def answered(outcome: Outcome) -> bool:
    """True when the run got an answer from the API (what the share is taken over): not a deferred run, not a
    connection failure or a timeout, not a document the engine refused before any request."""
    return outcome.kind in (Kind.PAGE, Kind.NOT_MODIFIED, Kind.UNAUTHORIZED, Kind.RATE_LIMITED) or (
        outcome.status is not None and outcome.kind is not Kind.DEFERRED)


@dataclass(frozen=True)
class Verdict:
    refused: int  # 401s in the window, this run included
    runs: int  # runs that got an answer in the window

    def describe(self, window: float) -> str:
        span = f"{window / 60:.0f} min" if window >= 120 else f"{window:.0f} s"
        return f"{self.refused} of {self.runs} runs refused with 401 in {span}"


class AuthWatch:
    """The sliding window of one process: per service, when each answered run ended and whether it was a 401."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._runs: dict[str, deque[tuple[float, bool]]] = {}
        self._refused: dict[str, int] = {}

    def record(self, service: str, refused: bool, schedule: Schedule) -> Verdict | None:
        """Count one answered run; a Verdict when the window now holds an incident."""
        now = self.clock()
        runs = self._runs.setdefault(service, deque())
        runs.append((now, refused))
        self._refused[service] = self._refused.get(service, 0) + refused
        while runs and (runs[0][0] < now - schedule.incident_window or len(runs) > MAX_SAMPLES):
            self._refused[service] -= runs.popleft()[1]
        count, bad = len(runs), self._refused[service]
        if count >= schedule.incident_min_runs and bad > schedule.incident_share * count:
            return Verdict(bad, count)
        return None


class Incidents:
    """The executor's side: judge a run's outcome before the state machine sees it."""

    def __init__(self, store: Any, pauses: KnownPauses, schedule: Callable[[str], Schedule],
                 watch: AuthWatch | None = None):
        self.store = store  # anything with declare_auth_incident / auth_incident_at (the Store)
        self.pauses = pauses
        self.schedule = schedule
        self.watch = watch or AuthWatch()

    async def judge(self, service: str, outcome: Outcome, now: datetime) -> tuple[Outcome, bool]:
        """The outcome the state machine gets (a 401 of an incident becomes a deferred run), and whether this
        run declared an incident."""
        if not answered(outcome):
            return outcome, False
        schedule = self.schedule(service)
        refused = outcome.kind is Kind.UNAUTHORIZED
        verdict = self.watch.record(service, refused, schedule)
        if not refused:
            return outcome, False
        if verdict is not None:
            until = now + timedelta(seconds=schedule.incident_pause)
            why = f"auth incident: {verdict.describe(schedule.incident_window)}; nobody is disabled"
            self.pauses.note(service, until)
            try:
                await self.store.declare_auth_incident(service, until, why, now)
            except PyMongoError as exc:  # this process still holds back (noted above); the others judge for themselves
                log.warning("could not record the auth incident", error=logs.describe(exc))
            log.warning("auth incident: service paused", until=until.isoformat(), reason=why)
            return self._deferred(outcome, until, now, f"service {service} paused: {why}"), True
        try:
            declared = await self.store.auth_incident_at(service)
        except PyMongoError:
            declared = None
        if declared is not None and declared > now - timedelta(seconds=schedule.incident_window):
            until = now + timedelta(seconds=schedule.unauthorized_recheck)
            why = f"401 during the auth incident declared on {service} at {declared.isoformat()}: not counted"
            return self._deferred(outcome, until, now, why), False
        return outcome, False

    @staticmethod
    def _deferred(outcome: Outcome, until: datetime, now: datetime, why: str) -> Outcome:
        return replace(outcome, kind=Kind.DEFERRED, rate_limit=RateLimit(retry_after=(until - now).total_seconds()),
                       error=None, message=why)
