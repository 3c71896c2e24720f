"""What the end of a request means, as data: the rules for an HTTP status and for an exception, each a table of
outcome kind and error, and one function over each table. The executor's response (`from_status`), its parse and a
token refresh (`from_exception`) all end through them, so one failure ends the same way wherever it happens (a
refresh names itself in the message). What each kind then does to the network is the state machine's
(collector/states.py).

Adding an outcome takes a row here, its error in states.py's TRANSIENT_KINDS or PERMANENT_KINDS (a test holds
the tables to those lists), and a test of it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import httpx
import structlog

from collector import http
from collector.sdk import BadResponse, Forbidden, PermanentError, RateLimit, RateLimited, Unauthorized
from collector.states import Kind, Outcome

log = structlog.get_logger("collector.run")


@dataclass(frozen=True)
class Rule:
    """What a response status ends in: the kind, the error recorded (None: no error), and whether the response's
    rate limit goes with it (a rate-limited outcome always carries one)."""
    kind: Kind
    error: str | None
    keeps_limit: bool = False


# a response status outside 2xx -> its rule; a status not listed is SERVER_ERROR from 500 up, else OTHER
STATUS: dict[int, Rule] = {
    304: Rule(Kind.NOT_MODIFIED, None, keeps_limit=True),
    401: Rule(Kind.UNAUTHORIZED, "unauthorized"),
    # refused, not throttled (unless THROTTLED applies): a token without the scope, an app without the permission.
    # RFC 9110 15.5.4: "the client SHOULD NOT automatically repeat the request with the same credentials"
    403: Rule(Kind.PERMANENT, "forbidden"),
    408: Rule(Kind.TRANSIENT, "http_5xx", keeps_limit=True),  # the server gave up waiting: as an outage
    # the account or the resource was deleted upstream (RFC 9110 15.5.11: "likely to be permanent")
    410: Rule(Kind.PERMANENT, "gone"),
    429: Rule(Kind.RATE_LIMITED, "rate_limited"),
}
SERVER_ERROR = Rule(Kind.TRANSIENT, "http_5xx", keeps_limit=True)  # an outage may name when to come back
OTHER = Rule(Kind.TRANSIENT, "client_error")
# a 403 whose rate limit names when to resume (a spent quota, a Retry-After, a limit the connector's check named)
THROTTLED = Rule(Kind.RATE_LIMITED, "rate_limited")


def from_status(status: int, message: Callable[[], str], limit: RateLimit | None, now: datetime,
                floor: int) -> Outcome:
    """The outcome of a response whose status is outside 2xx; `message`: the response's snippet, made only for an
    outcome that records an error (a 304 records none, and is most runs of a fleet), `limit`: the rate
    limit the connector read from it, `now` and `floor`: what it is judged against (a 403 that names a resume)."""
    rule = STATUS.get(status) or (SERVER_ERROR if status >= 500 else OTHER)
    if status == 403 and limit is not None and limit.resume_at(now, floor) is not None:
        rule = THROTTLED
    if rule.kind is Kind.RATE_LIMITED:
        limit = limit or RateLimit()
    elif not rule.keeps_limit:
        limit = None
    return Outcome(rule.kind, rate_limit=limit, error=rule.error, status=status,
                   message=message() if rule.error else "")


def _text(exc: Exception) -> str:
    return str(exc)


def _typed(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _text_or_type(exc: Exception) -> str:
    return str(exc) or type(exc).__name__


def _text_or_refused(exc: Exception) -> str:
    return str(exc) or "token refused"


@dataclass(frozen=True)
class Raised:
    """What an exception of `types` ends in, and how its message reads."""
    types: tuple[type[Exception], ...]
    kind: Kind
    error: str
    message: Callable[[Exception], str] = _text


# the first row whose types match wins (a subclass before its base: ForeignHost is a BadResponse, a timeout an
# httpx.TransportError). Forbidden is transient when the connector says so (the app's own setup, fixed once by the
# operator); RateLimited carries its limit (from_exception)
RAISED: tuple[Raised, ...] = (
    Raised((RateLimited,), Kind.RATE_LIMITED, "rate_limited"),
    Raised((Unauthorized,), Kind.UNAUTHORIZED, "unauthorized", _text_or_refused),
    Raised((Forbidden,), Kind.PERMANENT, "forbidden"),
    Raised((PermanentError,), Kind.PERMANENT, "malformed"),
    Raised((BadResponse,), Kind.TRANSIENT, "bad_response"),
    Raised((http.TotalTimeout, httpx.TimeoutException), Kind.TRANSIENT, "timeout", _text_or_type),
    Raised((http.TooLarge,), Kind.TRANSIENT, "too_large"),
    Raised((http.EgressRefused,), Kind.PERMANENT, "egress_refused"),  # not a connection failure: retrying cannot help
    Raised((httpx.TransportError,), Kind.TRANSIENT, "connection", _typed),
)
# anything else: a bug in a connector (or its refresh hook), which must not stop the daemon
BUG = Raised((Exception,), Kind.TRANSIENT, "connector_error", _typed)


def from_exception(exc: Exception, during: str = "") -> Outcome:
    """The outcome of a run that raised `exc`; `during` ("token refresh") prefixes the message."""
    rule = next((r for r in RAISED if isinstance(exc, r.types)), None)
    if rule is None:
        log.error("connector raised", during=during or "run", exc_info=exc)
        rule = BUG
    kind = Kind.TRANSIENT if isinstance(exc, Forbidden) and exc.transient else rule.kind
    return Outcome(kind, error=rule.error, message=(f"{during}: " if during else "") + rule.message(exc),
                   rate_limit=exc.rate_limit if isinstance(exc, RateLimited) else None,
                   status=exc.status if isinstance(exc, Forbidden) else None)
