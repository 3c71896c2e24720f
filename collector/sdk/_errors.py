"""The errors a connector may raise; the executor turns each into an outcome (collector/states.py). Internal:
connectors import them from collector.sdk; ForeignHost is raised by the engine and by `within`."""

from __future__ import annotations

from collector.sdk._limits import RateLimit


class ConnectorError(Exception):
    """Base class; the message is recorded on the network and logged. Never put a token in it, and shorten
    an API's text only with collector.sdk.excerpt (which scrubs the run's secrets before it cuts)."""


class BadResponse(ConnectorError):
    """The API answered something we cannot use (unexpected shape): a transient failure."""


class Unauthorized(ConnectorError):
    """The token is revoked or invalid: the network becomes unauthorized."""


class Forbidden(ConnectorError):
    """Access refused for another reason than limits (a token without the scope, an app without the permission):
    the network is disabled with the reason (error `forbidden`), as the engine does for any 403 that is no limit.
    `transient=True` for a refusal that is the app's own setup and no user's (YouTube's accessNotConfigured):
    retried with backoff like an outage. `status`: the HTTP status, recorded in lastError."""

    def __init__(self, message: str, *, transient: bool = False, status: int | None = 403):
        super().__init__(message)
        self.transient = transient
        self.status = status


class PermanentError(ConnectorError):
    """The network document cannot work (e.g. a missing option): the network is disabled."""


class ForeignHost(BadResponse):
    """A request (or a link to follow) points outside the network's base URL: the engine does not send the
    network's credentials there. Transient, as a bad reply is: the link came from the API."""


class RateLimited(ConnectorError):
    """The API asked us to wait; `rate_limit` says until when."""

    def __init__(self, message: str, rate_limit: RateLimit):
        super().__init__(message)
        self.rate_limit = rate_limit
