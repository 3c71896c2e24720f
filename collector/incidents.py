"""A 401 storm is an incident of the API, not a thousand revocations.

An API incident, a misconfigured proxy or a token store of the provider's that answers 401 for an hour would,
run by run, mark every network of the service unauthorized and then disable them all: undoing it would take
an operator's bulk enable, and the users' applications would ask every user to reconnect. So the refusals
are counted per service over a sliding window (`incident_window`, of this process's runs that got an answer
from the API), by network: when at least `incident_min_refused` networks were refused with 401 and they are
more than `incident_share` of at least `incident_min_runs` networks answered, the service is paused fleet-wide
for `incident_pause` (the `services` document, as an app-wide rate limit pauses it, with the reason), the
refused run is deferred to after the pause, and nobody is marked or disabled. The pause is renewed while the
refusals go on; `collector status` shows it with its reason and `collector_auth_incidents_total` counts the
incidents declared (one log line each, not one per refused run).

Networks, not runs: a network refused again and again (its confirmation run, a retry) counts once, so a few
genuine revocations among a small service's networks never add up to an incident by repeating themselves. And
an incident has an end: when one has gone on for `incident_max` (six hours) in this process, its 401s are
judged per network again (the first marks, the second in a row disables): revocations among a service's
networks would otherwise be held back for as long as they are refused, and an API that refuses everyone for
longer than that is told to the operator by the networks' own state.

The declaration is remembered in the service's document (`authIncidentAt`): for `incident_window` after it,
a 401 seen by any process (one that ran too few of the service's runs to judge by itself, or one whose
runs resume when the pause ends while the API still refuses) is deferred too, not counted against the
network. With fewer than `incident_min_refused` networks refused in the window, an incident cannot be told
from revocations: each network's own confirmation (collector/states.py: the second 401 in a row disables)
is what protects them then.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import PyMongoError

from collector import logs
from collector.config import Schedule
from collector.pauses import KnownPauses
from collector.sdk import RateLimit
from collector.states import Kind, Outcome

log = structlog.get_logger("collector.run")

# the networks of one service remembered for the window, at most (a bound on memory whatever the rate)
MAX_NETWORKS = 20_000


def answered(outcome: Outcome) -> bool:
    """True when the run got an answer from the API (what the share is taken over): not a deferred run, not a
    connection failure or a timeout, not a document the engine refused before any request."""
    return outcome.kind in (Kind.PAGE, Kind.NOT_MODIFIED, Kind.UNAUTHORIZED, Kind.RATE_LIMITED) or (
        outcome.status is not None and outcome.kind is not Kind.DEFERRED)


@dataclass(frozen=True)
class Verdict:
    refused: int  # networks refused with 401 in the window, this run's included
    runs: int  # networks whose runs got an answer in the window
    fresh: bool = True  # the first verdict of this incident (none in the window before it)

    def describe(self, window: float) -> str:
        span = f"{window / 60:.0f} min" if window >= 120 else f"{window:.0f} s"
        return f"{self.refused} of {self.runs} networks refused with 401 in {span}"


class _Window:
    """One service's networks whose runs got an answer in the window, and those refused: each with the time of
    its latest such run, the oldest first (the clock is monotonic). A network is in the window while its latest
    run is, so memory follows the networks, not the runs: a back-fill's page after page costs nothing more."""

    def __init__(self) -> None:
        self.answered: OrderedDict[Any, float] = OrderedDict()
        self.refused: OrderedDict[Any, float] = OrderedDict()
        self.since: float | None = None  # when the incident under way began (its first verdict)
        self.last: float | None = None  # its latest verdict

    def add(self, now: float, network: Any, refused: bool) -> None:
        self.answered[network] = now
        self.answered.move_to_end(network)
        if refused:
            self.refused[network] = now
            self.refused.move_to_end(network)

    def drop_before(self, start: float) -> None:
        answered, refused = self.answered, self.refused
        while answered and (next(iter(answered.values())) < start or len(answered) > MAX_NETWORKS):
            network, _ = answered.popitem(last=False)
            refused.pop(network, None)  # a network refused is one answered: never counted without it
        while refused and next(iter(refused.values())) < start:
            refused.popitem(last=False)


class AuthWatch:
    """The sliding window of one process: per service, which networks' runs got an answer and which were refused."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def record(self, service: str, network: Any, refused: bool, schedule: Schedule) -> Verdict | None:
        """Count one answered run; a Verdict when the window now holds an incident (None once it has gone on
        for `incident_max`: see outlasted)."""
        now = self.clock()
        window = self._windows.setdefault(service, _Window())
        window.add(now, str(network), refused)  # any _id a document holds, an object or a list too
        window.drop_before(now - schedule.incident_window)
        runs, bad = len(window.answered), len(window.refused)
        if not (runs >= schedule.incident_min_runs and bad >= schedule.incident_min_refused
                and bad > schedule.incident_share * runs):
            return None
        fresh = window.last is None or window.last < now - schedule.incident_window
        if fresh:
            window.since = now
        window.last = now
        if self.outlasted(service, schedule):
            return None
        return Verdict(bad, runs, fresh)

    def since(self, service: str) -> float | None:
        """When the latest incident of `service` began (this process's clock), if any."""
        window = self._windows.get(service)
        return window.since if window is not None else None

    def outlasted(self, service: str, schedule: Schedule) -> bool:
        """True while an incident of `service` under way has lasted `incident_max`: its 401s count again."""
        window = self._windows.get(service)
        if window is None or window.since is None or window.last is None:
            return False
        now = self.clock()
        return window.last >= now - schedule.incident_window and now - window.since >= schedule.incident_max


class Incidents:
    """The executor's side: judge a run's outcome before the state machine sees it."""

    def __init__(self, store: Any, pauses: KnownPauses, schedule: Callable[[str], Schedule],
                 watch: AuthWatch | None = None):
        self.store = store  # anything with declare_auth_incident / auth_incident_at (the Store)
        self.pauses = pauses
        self.schedule = schedule
        self.watch = watch or AuthWatch()
        self._told: dict[str, float | None] = {}  # the incidents told to have outlasted incident_max, by their start

    async def judge(self, service: str, network: Any, outcome: Outcome, now: datetime) -> tuple[Outcome, bool]:
        """The outcome the state machine gets (a 401 of an incident becomes a deferred run), and whether this
        run declared an incident."""
        if not answered(outcome):
            return outcome, False
        schedule = self.schedule(service)
        refused = outcome.kind is Kind.UNAUTHORIZED
        verdict = self.watch.record(service, network, refused, schedule)
        if not refused:
            return outcome, False
        if verdict is not None:
            until = now + timedelta(seconds=schedule.incident_pause)
            why = f"auth incident: {verdict.describe(schedule.incident_window)}; nobody is disabled"
            known = self.pauses.until(service, now)
            self.pauses.note(service, until)
            try:
                await self.store.declare_auth_incident(service, until, why, now)
            except PyMongoError as exc:  # this process still holds back (noted above); the others judge for themselves
                log.warning("could not record the auth incident", error=logs.describe(exc))
            if verdict.fresh or known is None:  # once per incident and per lapsed pause, not per refused run
                log.warning("auth incident: service paused", until=until.isoformat(), reason=why)
            return self._deferred(outcome, until, now, f"service {service} paused: {why}"), verdict.fresh
        if self.watch.outlasted(service, schedule):
            if self._told.get(service) != self.watch.since(service):  # once per incident
                self._told[service] = self.watch.since(service)
                log.warning("auth incident outlasted incident_max: 401s count against their networks again",
                            incident_max=schedule.incident_max)
            return outcome, False
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
