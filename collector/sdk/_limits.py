"""Rate limits in one shape (`RateLimit`) and the readers of every header family APIs use for them. Internal:
connectors import the public ones from collector.sdk (the readers behind header_rate_limit stay here)."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

SCOPES = ("network", "user", "service")  # narrowest first


@dataclass(frozen=True, slots=True)
class RateLimit:
    """What an API said about its limits, in one shape the engine acts on.

    `scope` is who the limit stops: "network" (this network), "user" (every network of this user on
    this service: a quota per user and app, such as Stack Exchange's with an access token) or
    "service" (the whole app: nobody may call the service until it resets).

    `minimum_wait` is the least wait the API's documentation gives for a limit that names no reset
    (GitHub's secondary limits without `retry-after`: a minute). A limit that names its reset
    (`retry_after`, or `remaining` spent with `reset_at`) is obeyed exactly; one that does not is waited
    out from `minimum_wait`, doubling with each limit in a row (see collector/states.py).
    """

    remaining: int | None = None
    limit: int | None = None
    reset_at: datetime | None = None
    retry_after: float | None = None
    scope: str = "network"
    minimum_wait: float | None = None

    def resume_at(self, now: datetime, floor: int) -> datetime | None:
        """When calling again is allowed, or None when the API left room for more now. Never further
        than MAX_WAIT: connectors build RateLimits from bodies too (a Stack Exchange `backoff` or
        throttle_violation of 10**20 seconds), and the headers' own clamps do not cover those."""
        moments = []
        if self.retry_after is not None and self.retry_after > 0:
            moments.append(now + timedelta(seconds=min(self.retry_after, MAX_WAIT.total_seconds())))
        if self.remaining is not None and self.remaining < floor:
            moments.append(self.reset_at if self.reset_at and self.reset_at > now else now + timedelta(seconds=60))
        return min(max(moments), now + MAX_WAIT) if moments else None

    def merge(self, other: RateLimit | None) -> RateLimit:
        """Combine two readings (headers and body): the stricter one of each field wins."""
        if other is None:
            return self

        def pick(a: Any, b: Any, fn: Callable[[Any, Any], Any]) -> Any:
            return b if a is None else a if b is None else fn(a, b)

        return RateLimit(
            remaining=pick(self.remaining, other.remaining, min),
            limit=pick(self.limit, other.limit, max),
            reset_at=pick(self.reset_at, other.reset_at, max),
            retry_after=pick(self.retry_after, other.retry_after, max),
            scope=max(self.scope, other.scope, key=SCOPES.index),
            minimum_wait=pick(self.minimum_wait, other.minimum_wait, max),
        )


MAX_FIELD = 64  # characters of a number or a date read from a header or a body: no real one is longer


def count(value: object) -> int | None:
    """A count from a header or a JSON body (a quota, a backoff): an int, or None unless it is a finite number
    (a bool, "1e999", "inf", junk, a string over MAX_FIELD characters)."""
    if isinstance(value, bool) or (isinstance(value, str) and len(value) > MAX_FIELD):
        return None
    try:
        return int(float(value)) if isinstance(value, str | int | float) else None
    except (TypeError, ValueError, OverflowError):  # "1e999", "inf": int(float) overflows
        return None


def retry_after(value: str | None, now: datetime) -> float | None:
    """Retry-After in delta-seconds or as an HTTP date, as seconds from now (None if absent/invalid)."""
    if value is None or len(value) > MAX_FIELD:
        return None
    value = value.strip()
    seconds = count(value)
    if seconds is not None:
        return float(max(seconds, 0))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


MAX_WAIT = timedelta(days=2)  # an API never makes us wait longer: absurd headers are clamped


def epoch(value: str | int | float | None, now: datetime) -> datetime | None:
    """A reset given as Unix seconds, clamped to [now, now + 2 days]."""
    seconds = value if isinstance(value, int) else count(value)  # a float may be inf or nan
    if seconds is None:
        return None
    try:
        when = datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return now + MAX_WAIT
    return min(max(when, now), now + MAX_WAIT)


RELATIVE_LIMIT = 10**8  # a numeric reset below this is seconds from now (Reddit, IETF); above, Unix seconds


def reset_time(value: str | int | float | None, now: datetime) -> datetime | None:
    """A rate-limit reset in any of the forms APIs use, as a moment clamped to [now, now + 2 days]:
    Unix seconds (GitHub, GitLab, Bluesky), seconds from now (Reddit, IETF RateLimit), or an ISO
    8601 time (Mastodon). None when absent or unreadable."""
    if value is None:
        return None
    if isinstance(value, str) and count(value) is None:
        when = parse_time(value.strip())
        return None if when is None else min(max(when, now), now + MAX_WAIT)
    seconds = value if isinstance(value, int | float) and not isinstance(value, bool) else count(value)
    if seconds is None or seconds != seconds:  # absent, nan
        return None
    if seconds < 0:
        return now
    if seconds < RELATIVE_LIMIT:
        return now + timedelta(seconds=min(seconds, MAX_WAIT.total_seconds()))
    if seconds == float("inf"):
        return now + MAX_WAIT
    return epoch(int(seconds), now)


_STRUCTURED_RE = re.compile(r"(limit|remaining|reset|r|t)\s*=\s*([0-9.]+)")


def header_rate_limit(headers: httpx.Headers | Mapping[str, str], now: datetime) -> RateLimit | None:
    """The rate-limit header families, whichever the API sends:

    - `x-ratelimit-limit/remaining/reset`: GitHub (reset in Unix seconds), Mastodon (ISO time),
      Reddit (`x-ratelimit-used/remaining/reset`, remaining a float, reset in seconds from now);
    - IETF `ratelimit-limit/remaining/reset` (GitLab and Bluesky send Unix seconds, the draft
      seconds from now) and the structured `RateLimit: limit=100, remaining=0, reset=30`;
    - `Retry-After` in seconds or as an HTTP date.
    Absurd values are clamped (a wait never exceeds two days)."""
    get = headers.get
    remaining = limit = None
    reset = None
    for prefix in ("x-ratelimit-", "ratelimit-"):
        if get(prefix + "remaining") is not None:
            remaining = count(get(prefix + "remaining"))
            limit = count(get(prefix + "limit"))
            reset = get(prefix + "reset")
            break
    structured = (get("ratelimit") or "")[:1024]  # a few short fields; scanned up to here only
    if remaining is None and structured:
        fields = dict(_STRUCTURED_RE.findall(structured.lower()))
        remaining = count(fields.get("remaining") or fields.get("r"))
        limit = count(fields.get("limit"))
        reset = fields.get("reset") or fields.get("t")
    after = retry_after(get("retry-after"), now)
    if remaining is None and after is None:
        return None
    if after is not None:
        after = min(after, MAX_WAIT.total_seconds())
    return RateLimit(remaining=remaining, limit=limit, reset_at=reset_time(reset, now), retry_after=after)


def parse_time(value: Any) -> datetime | None:
    """ISO 8601 strings and Unix seconds to aware UTC datetimes; None for anything else."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str) and len(value) <= MAX_FIELD:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None
