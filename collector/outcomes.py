"""What an exception raised during a run means: one ladder for the connector's request and parse and for a token
refresh, so both end the same way for the same failure (a refresh names itself in the message)."""

from __future__ import annotations

import httpx
import structlog

from collector import http
from collector.sdk import BadResponse, Forbidden, PermanentError, RateLimited, Unauthorized
from collector.states import Kind, Outcome

log = structlog.get_logger("collector.run")


def from_exception(exc: Exception, during: str = "") -> Outcome:
    """The outcome of a run that raised `exc`; `during` ("token refresh") prefixes the message."""
    prefix = f"{during}: " if during else ""
    if isinstance(exc, RateLimited):
        return Outcome(Kind.RATE_LIMITED, rate_limit=exc.rate_limit, error="rate_limited", message=prefix + str(exc))
    if isinstance(exc, Unauthorized):
        return Outcome(Kind.UNAUTHORIZED, error="unauthorized", message=prefix + (str(exc) or "token refused"))
    if isinstance(exc, Forbidden):  # permanent, unless the connector knows it for a fault of the app's own setup
        return Outcome(Kind.TRANSIENT if exc.transient else Kind.PERMANENT, error="forbidden", status=exc.status,
                       message=prefix + str(exc))
    if isinstance(exc, PermanentError):
        return Outcome(Kind.PERMANENT, error="malformed", message=prefix + str(exc))
    if isinstance(exc, BadResponse):
        return Outcome(Kind.TRANSIENT, error="bad_response", message=prefix + str(exc))
    if isinstance(exc, http.TotalTimeout | httpx.TimeoutException):
        return Outcome(Kind.TRANSIENT, error="timeout", message=prefix + (str(exc) or type(exc).__name__))
    if isinstance(exc, http.TooLarge):
        return Outcome(Kind.TRANSIENT, error="too_large", message=prefix + str(exc))
    if isinstance(exc, http.EgressRefused):  # not a connection failure: retrying cannot help
        return Outcome(Kind.PERMANENT, error="egress_refused", message=prefix + str(exc))
    if isinstance(exc, httpx.TransportError):
        return Outcome(Kind.TRANSIENT, error="connection", message=f"{prefix}{type(exc).__name__}: {exc}")
    # a bug in a connector (or its refresh hook) must not stop the daemon
    log.error("connector raised", during=during or "run", exc_info=exc)
    return Outcome(Kind.TRANSIENT, error="connector_error", message=f"{prefix}{type(exc).__name__}: {exc}")
