"""The state machine: pure functions, no I/O.

A run ends in one `Outcome`; `transition(state, outcome, now, schedule)` gives the next state of
the network and why. Every row of the table below is a unit test (tests/unit/test_states.py).

| outcome       | condition          | next mode | next due                              | errors | disabled          |
|---------------|--------------------|-----------|---------------------------------------|--------|-------------------|
| page          | more pages waiting | same      | now + initial_pace                    | 0      | -                 |
| page          | initial, no more   | normal    | now + normal_interval                 | 0      | -                 |
| page          | normal, new items  | normal    | now + normal_interval_min             | 0      | -                 |
| page          | normal, none new   | normal    | now + min(max, interval x 1.5) (*)    | 0      | -                 |
| not_modified  | 304                | normal    | now + min(max, interval x 1.5) (*)    | 0      | -                 |
| (any success) | rate limit low     | as above  | max(above, reset + slack)             | 0      | -                 |
| rate_limited  | names its reset    | same      | resume_at + slack (never earlier)     | same   | -                 |
| rate_limited  | names no reset     | same      | now + min(cap, wait * 2^(limited-1))  | same   | -                 |
| rate_limited  | park_after in a row| same      | max(above, now + park_for): parked    | same   | - (parked)        |
| unauthorized  | first 401          | same      | now + unauthorized_recheck            | same   | - (unauthorized)  |
| unauthorized  | second 401 in a row| same      | never                                 | same   | yes, unauthorized |
| transient     | 5xx/timeout/json.. | same      | now + min(cap, base * 2^(errors-1))   | +1     | see below         |
| permanent     | bad input, egress  | same      | never                                 | same   | yes               |
| permanent     | 403, not a limit   | same      | never                                 | same   | yes, forbidden    |
| permanent     | 410 Gone           | same      | never                                 | same   | yes, gone         |
| deferred      | service paused     | same      | pause end + slack (no request made)   | same   | -                 |

Adaptive polling: a network's normal interval (`pollInterval`) follows its user's activity within the service's
`normal_interval_min` and `normal_interval_max`: a normal run that found new items brings it down to the minimum
(and is remembered as `newItemsAt`), each one that found nothing (an empty page, a 304) stretches it by 1.5 (*), up
to `normal_interval` while the network found new items within the last day (ACTIVE_FOR: an active user's next
item is as fresh as with a fixed interval), up to the maximum after that (an idle user costs ever fewer requests);
with jitter as every delay. A back-fill just finished starts at `normal_interval`. Both bounds at 0 (or equal to
`normal_interval`) give a fixed interval. Failures, limits and pauses leave it as it was.

A 401 is confirmed before it disables: the first (after a token refresh, where the network has a refresh token
and its service a token endpoint) marks the network `unauthorized` (`authFailures` 1) and runs it once more after
`unauthorized_recheck` (ten minutes); only a second 401 in a row disables it, with the reason. Any success clears the
mark; other failures in between neither clear nor confirm it. A 401 that belongs to an incident (more than
`incident_share` of a service's runs refused in `incident_window`: an API incident, a proxy answering 401 to all)
never gets here: the executor pauses the service instead and the run is deferred (collector/incidents.py).

A streak of transient failures disables a network only when it has both `max_errors` failures and has
lasted `disable_after` seconds (default a day) since its first failure (`failingSince`): an API outage of
hours backs off to `backoff_cap` and keeps trying, it does not disable every network of the service.
`disable_after = 0` disables on the count alone. Any success ends the streak.

A response the engine will not read is a transient failure, nothing stored: `too_large` when its body passes
the cap (on the wire or decoded; the message names the cap: [http] max_body_bytes or the service's own),
`bad_response` when its Content-Encoding is more than one coding, an unknown one or a corrupt stream. A host
that resolves to an address the egress policy refuses (collector/egress.py) is permanent, `egress_refused`:
the message names the policy and the setting that would allow it, and retrying cannot help.

A 403 that is no rate limit is permanent, `forbidden`: a token without the scope, an app without the permission
(GitHub "Resource not accessible by integration" with `x-ratelimit-remaining` well above 0, YouTube `forbidden` /
`insufficientPermissions`, GitLab `insufficient_scope`, Mastodon "outside the authorized scopes", any Spotify
403). RFC 9110 (15.5.4): "the client SHOULD NOT automatically repeat the request with the same credentials".
The network is disabled with the reason (`disabledReason` "forbidden: HTTP 403: ...", not `unauthorized`: the
token works, it may not do this), shown by `collector status` and `networks list` as every disabled network;
`collector networks enable --service S --reason-kind forbidden` enables them again once the grant is fixed. A
403 that is a limit stays one: a spent quota (`x-ratelimit-remaining: 0`), a `Retry-After`, or what the
connector's `check` names (GitHub's secondary limits, YouTube's `quotaExceeded` / `rateLimitExceeded`). Only
the app's own setup (YouTube `accessNotConfigured`: the API not enabled for the project) is transient
(`Forbidden(transient=True)`): fixed once by the operator, it heals every network without a bulk enable.

A 410 is permanent, `gone`: the user's account or the resource was deleted upstream, and no retry brings it back
(RFC 9110 15.5.11). The network is disabled with the reason ("gone: HTTP 410: ..."), labelled "disabled", and
`collector networks enable` clears it like any other.

Rate limits in a row are counted too (`rateLimitStreak`: only a success ends it). A limit that names
its reset (`Retry-After`, a spent quota with its reset time) is obeyed exactly. One that names none (a
GitHub secondary limit without `retry-after`, YouTube's `rateLimitExceeded`, a Stack Exchange throttle
without seconds) is waited out from the API's documented minimum (`RateLimit.minimum_wait`, else
`rate_limit_wait`), doubling with each limit in a row, with jitter, up to `rate_limit_cap`: never a
constant retry against an API that keeps saying no. At `park_after` limits in a row the network is
parked: due again only after `park_for` (six hours), with `parkedReason` recorded and shown by
`collector status`; `collector networks enable ID` clears it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import pendulum

from collector.config import Schedule
from collector.sdk import RateLimit


class Kind(StrEnum):
    PAGE = "page"
    NOT_MODIFIED = "not_modified"
    RATE_LIMITED = "rate_limited"
    UNAUTHORIZED = "unauthorized"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    DEFERRED = "deferred"  # claimed while its service was paused: handed back without a request


# error kinds recorded in lastError.kind
TRANSIENT_KINDS = (
    "http_5xx", "timeout", "connection", "bad_json", "bad_response", "too_large",
    "client_error", "connector_error", "token_refresh", "store_error",
)
# "forbidden": permanent (a 403 that is no limit), transient only when the connector says it is the app's setup;
# "gone": a 410, the account or resource deleted upstream
PERMANENT_KINDS = ("malformed", "unknown_service", "missing_credentials", "bad_connector", "egress_refused",
                   "forbidden", "gone", "undecryptable", "plaintext_credentials")


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    items: int = 0
    cursor: dict[str, Any] | None = None  # the new cursor (PAGE only); None keeps the old one
    more: bool = False
    rate_limit: RateLimit | None = None
    error: str | None = None  # one of TRANSIENT_KINDS / PERMANENT_KINDS, or "rate_limited"/"unauthorized"
    status: int | None = None
    message: str = ""
    new: int | None = None  # of `items`, how many were new to the store (None: not known, all of them)
    reconcile: dict[str, Any] | None = None  # a reconciliation's progress (collector/reconcile.py): fields to set


@dataclass(frozen=True)
class State:
    mode: str
    errors: int = 0
    failing_since: datetime | None = None  # the first transient failure of the current streak
    limited: int = 0  # rate limits in a row before this run
    service_limited: int = 0  # app-wide limits in a row of this network's service (for an app-wide limit)
    auth_failures: int = 0  # 401s in a row before this run (`authFailures`): the second one disables
    interval: float | None = None  # the network's adaptive normal interval (`pollInterval`), None: not yet set
    new_at: datetime | None = None  # when a normal run last found new items (`newItemsAt`), None: never


@dataclass(frozen=True)
class Transition:
    mode: str
    scheduled_to: datetime | None  # None: never due until an operator acts
    errors: int
    reason: str
    success: bool
    cursor: dict[str, Any] | None = None
    disabled: bool = False
    unauthorized: bool = False
    rate_limited_until: datetime | None = None
    service_paused_until: datetime | None = None
    error: dict[str, Any] | None = field(default=None)
    failing_since: datetime | None = None  # the streak of transient failures this one belongs to, if any
    limited: int = 0  # rate limits in a row, this run included
    parked: bool = False  # too many rate limits in a row: due again after park_for
    user_paused_until: datetime | None = None  # a limit of this user on this app: their other networks wait too
    auth_failures: int = 0  # 401s in a row, this run included (a success clears them; other failures keep them)
    interval: float | None = None  # the normal interval from now on (`pollInterval`), None: unchanged
    new_at: datetime | None = None  # this run found new items in normal mode (`newItemsAt`), None: unchanged


# adaptive polling: each normal run that finds nothing new stretches the interval this much...
STRETCH = 1.5
# ...beyond normal_interval only once the network has found nothing new for this long (an active user is polled at
# least every normal_interval: the first item of their next session is as fresh as with a fixed interval)
ACTIVE_FOR = 86_400.0


def interval_bounds(schedule: Schedule) -> tuple[float, float]:
    """(shortest, longest) normal interval of a network: normal_interval_min and normal_interval_max, 0 meaning
    normal_interval, and always taking normal_interval in (an operator's shorter normal_interval lowers the floor)."""
    base = schedule.normal_interval
    return min(schedule.normal_interval_min or base, base), max(schedule.normal_interval_max or base, base)


def adapt(previous: float | None, found: bool, idle_for: float | None, schedule: Schedule) -> float:
    """The next normal interval: the shortest after a run that found new items (the user is active: come back
    soon), else the previous one stretched by STRETCH, up to normal_interval while the network found new items
    within ACTIVE_FOR (`idle_for`: seconds since, None: never), up to the longest after that (an idle user costs
    ever fewer requests). A network without one (just back-filled, or junk) starts at normal_interval."""
    low, high = interval_bounds(schedule)
    if found:
        return low
    if previous is None:
        return schedule.normal_interval
    if idle_for is not None and idle_for < ACTIVE_FOR:
        high = schedule.normal_interval
    return min(high, max(low, previous * STRETCH))


def _jittered(seconds: float, jitter: float, rng: random.Random) -> timedelta:
    factor = 1.0 + rng.uniform(-jitter, jitter) if jitter else 1.0
    return pendulum.duration(seconds=max(seconds * factor, 0.0))


def backoff(errors: int, schedule: Schedule) -> float:
    """Seconds to wait after the n-th consecutive transient failure (n >= 1), capped."""
    exponent = min(max(errors - 1, 0), 32)
    return float(min(schedule.backoff_cap, schedule.backoff_base * (2**exponent)))


def _after_limit(rate_limit: RateLimit | None, now: datetime, schedule: Schedule,
                 rng: random.Random) -> datetime | None:
    if rate_limit is None:
        return None
    resume = rate_limit.resume_at(now, schedule.rate_limit_floor)
    if resume is None:
        return None
    spread = rng.uniform(0, schedule.jitter * 10) if schedule.jitter else 0.0  # never before the reset
    return resume + pendulum.duration(seconds=schedule.rate_limit_slack + spread)


def transition(state: State, outcome: Outcome, now: datetime, schedule: Schedule,
               rng: random.Random | None = None) -> Transition:
    """The next state of a network after a run that ended in `outcome`."""
    rng = rng or random.Random()
    error = None
    if outcome.error:
        error = {"at": now, "kind": outcome.error, "status": outcome.status, "message": outcome.message}

    if outcome.kind in (Kind.PAGE, Kind.NOT_MODIFIED):
        interval, found = None, False
        if outcome.kind is Kind.PAGE and outcome.more:
            mode, due = state.mode, now + _jittered(schedule.initial_pace, schedule.jitter, rng)
            reason = f"{outcome.items} items, more pages waiting"
        else:
            # a back-fill just done starts at normal_interval; a normal run adapts it (found new items or not)
            found = state.mode == "normal" and outcome.kind is Kind.PAGE and (
                outcome.items if outcome.new is None else outcome.new) > 0
            idle_for = (now - state.new_at).total_seconds() if state.new_at is not None else None
            interval = adapt(state.interval, found, idle_for, schedule) if state.mode == "normal" else \
                schedule.normal_interval
            mode, due = "normal", now + _jittered(interval, schedule.jitter, rng)
            if outcome.kind is Kind.NOT_MODIFIED:
                reason = "not modified (304)"
            elif state.mode == "initial":
                reason = f"{outcome.items} items, history exhausted: switching to normal"
            else:
                reason = f"{outcome.items} items, caught up" if outcome.items else "nothing new"
        limited = _after_limit(outcome.rate_limit, now, schedule, rng)
        if limited and limited > due:
            due = limited
            reason += f"; rate limit low, resuming at {limited.isoformat()}"
        scope = outcome.rate_limit.scope if limited and outcome.rate_limit else None
        return Transition(mode, due, 0, reason, True, cursor=outcome.cursor, rate_limited_until=limited,
                          service_paused_until=limited if scope == "service" else None,
                          user_paused_until=limited if scope == "user" else None, interval=interval,
                          new_at=now if found else None)

    if outcome.kind is Kind.RATE_LIMITED:
        limit = outcome.rate_limit
        streak = state.limited + 1
        limited = _after_limit(limit, now, schedule, rng)
        if limited is None:  # no reset named: from the documented minimum, doubling with each limit in a row
            base = limit.minimum_wait if limit and limit.minimum_wait else schedule.rate_limit_wait
            app_wide = limit is not None and limit.scope == "service"
            exponent = max(streak, state.service_limited + 1) if app_wide else streak
            wait = min(schedule.rate_limit_cap, base * 2 ** min(exponent - 1, 32))
            spread = rng.uniform(0, schedule.jitter * wait) if schedule.jitter else 0.0  # never shorter
            limited = now + pendulum.duration(seconds=wait + spread + schedule.rate_limit_slack)
            how = f"no reset named: waiting {wait:.0f}s"
        else:
            how = "resuming"
        scope = limit.scope if limit else "network"
        reason = f"rate limited ({outcome.message or outcome.status}), {how} until {limited.isoformat()}"
        due, parked = limited, streak >= schedule.park_after
        if parked:
            due = max(limited, now + pendulum.duration(seconds=schedule.park_for))
            reason = (f"parked after {streak} rate limits in a row, due again at {due.isoformat()} (or when an "
                      f"operator enables it); last: {outcome.message or outcome.status}")
        return Transition(state.mode, due, state.errors, reason, False, rate_limited_until=limited,
                          service_paused_until=limited if scope == "service" else None,
                          user_paused_until=limited if scope == "user" else None, error=error,
                          failing_since=state.failing_since, limited=streak, parked=parked,
                          auth_failures=state.auth_failures)

    if outcome.kind is Kind.DEFERRED:
        resume = _after_limit(outcome.rate_limit, now, schedule, rng) or now + pendulum.duration(
            seconds=60 + schedule.rate_limit_slack)
        reason = f"not run: {outcome.message}, due again at {resume.isoformat()}"
        return Transition(state.mode, resume, state.errors, reason, False, failing_since=state.failing_since,
                          limited=state.limited, auth_failures=state.auth_failures)

    if outcome.kind is Kind.UNAUTHORIZED:
        refused = outcome.message or "the API refused the token"
        if state.auth_failures < 1:  # the first: confirmed by one more run before anything is disabled
            due = now + _jittered(schedule.unauthorized_recheck, schedule.jitter, rng)
            reason = f"unauthorized: {refused}; confirming at {due.isoformat()}"
            return Transition(state.mode, due, state.errors, reason, False, unauthorized=True, error=error,
                              failing_since=state.failing_since, limited=state.limited, auth_failures=1)
        reason = f"unauthorized: {refused} (the second 401 in a row: confirmed)"
        return Transition(state.mode, None, state.errors, reason, False, disabled=True,
                          unauthorized=True, error=error, auth_failures=state.auth_failures + 1)

    if outcome.kind is Kind.PERMANENT:
        reason = f"{outcome.error}: {outcome.message}"
        return Transition(state.mode, None, state.errors, reason, False, disabled=True, error=error,
                          auth_failures=state.auth_failures)

    # transient
    errors = state.errors + 1
    since = state.failing_since if state.failing_since is not None and state.errors else now
    lasted = (now - since).total_seconds()
    if errors >= schedule.max_errors and lasted >= schedule.disable_after:
        span = f" over {_span(lasted)}" if schedule.disable_after else ""
        reason = f"disabled after {errors} consecutive failures{span}; last: {outcome.error}: {outcome.message}"
        return Transition(state.mode, None, errors, reason, False, disabled=True, error=error, failing_since=since,
                          limited=state.limited, auth_failures=state.auth_failures)
    delay = backoff(errors, schedule)
    due = now + _jittered(delay, schedule.jitter, rng)
    reason = f"{outcome.error}: {outcome.message}; failure {errors}"
    reason += f" in {_span(lasted)}" if errors > 1 else ""
    reason += f", retry in {delay:.0f}s"
    return Transition(state.mode, due, errors, reason, False, error=error, failing_since=since, limited=state.limited,
                      auth_failures=state.auth_failures)


def _span(seconds: float) -> str:
    """A duration for a reason: 45s, 12 min, 5.5 h."""
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# -- a network's state label, from its document, and the query that finds each ------------------------------------

# the query for each label but a mode: "unauthorized" (a confirmed 401, disabled: the user must reconnect),
# "disabled" (any other reason: an error streak, a 403, a 410, an operator), "unauthorized?" (a first 401 being
# confirmed, still due), "parked" (rate limited park_after times in a row, due again after park_for)
WHERE: dict[str, dict[str, Any]] = {
    "unauthorized": {"disabled": True, "unauthorized": True},
    "disabled": {"disabled": True, "unauthorized": {"$ne": True}},
    "unauthorized?": {"disabled": {"$ne": True}, "unauthorized": True},
    "parked": {"disabled": {"$ne": True}, "parkedAt": {"$exists": True}},
}
# what `networks list --state` filters on: "active" is every network not disabled (due as scheduled), and
# "unauthorized" takes both a confirmed 401 and one being confirmed
FILTERS: dict[str, dict[str, Any]] = {
    "active": {"disabled": {"$ne": True}},
    "disabled": WHERE["disabled"],
    "unauthorized": {"unauthorized": True},
    "parked": WHERE["parked"],
}


def label(doc: dict[str, Any], confirming: bool = False) -> str:
    """What a network is, from its document: one of WHERE's labels, else its mode. A first 401 being confirmed is
    "unauthorized?" only when `confirming` is asked (the change feed leaves it out: the next run confirms or clears
    it). `True` alone counts, as in the claims' `{"disabled": {"$ne": True}}`: a junk value disables nothing."""
    return _label(doc.get("disabled") is True, doc.get("unauthorized") is True, bool(doc.get("parkedAt")),
                  doc.get("mode"), confirming)


def label_after(step: Transition) -> str:
    """What a network is once a run's `step` is saved: `label` of the document the state save writes."""
    return _label(step.disabled, step.unauthorized, step.parked, step.mode)


def _label(disabled: bool, unauthorized: bool, parked: bool, mode: Any, confirming: bool = False) -> str:
    if disabled:
        return "unauthorized" if unauthorized else "disabled"
    if confirming and unauthorized:
        return "unauthorized?"
    return "parked" if parked else str(mode)
