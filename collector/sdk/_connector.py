"""The connector's base class and the values it exchanges with the engine (public through collector.sdk)."""

from __future__ import annotations

import base64
import dataclasses
import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import httpx

if TYPE_CHECKING:
    from collector.config import ServiceSettings
    from collector.model import Network

from collector import logs
from collector.sdk._bounded import item_id, json_value
from collector.sdk._errors import BadResponse, Unauthorized
from collector.sdk._limits import RateLimit, header_rate_limit


@dataclass(frozen=True, slots=True)
class Item:
    """One collected thing. `id` is the API's own id, unique per (user, service), or per (user, service, scope)
    for a connector whose servers number their items apart (Connector.item_scope). `scope` is filled in from that
    hook after every parse: a connector does not set it."""

    id: str
    title: str | None = None
    url: str | None = None
    author: str | None = None
    created: datetime | None = None
    raw: dict[str, Any] | None = None
    scope: str | None = None


@dataclass(frozen=True, slots=True)
class Tokens:
    """What a token endpoint gave back (a provider may rotate the refresh token, or not)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_in: float | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """An HTTP request a connector wants sent. Tokens go in headers, never in the URL."""

    url: str
    params: Mapping[str, Any] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    method: str = "GET"
    form: Mapping[str, str] | None = None  # an application/x-www-form-urlencoded body (token requests)


@dataclass(frozen=True, slots=True)
class Page:
    """The result of one request.

    cursor: the connector-owned checkpoint to store (the next request starts from it).
    more:   another page is waiting right now; False ends the sweep (initial mode switches to
            normal, normal mode waits for its interval).
    """

    items: list[Item]
    cursor: dict[str, Any]
    more: bool
    rate_limit: RateLimit | None = None
    not_modified: bool = False


@dataclass(frozen=True, slots=True)
class Context:
    """What a connector knows about the run in progress."""

    network: Network
    mode: str
    cursor: dict[str, Any]
    now: datetime


class Connector(ABC):
    """Subclass this, set the class attributes, implement `request` and `parse` (both abstract: a class missing
    either is reported broken when it loads, collector/plugins.py)."""

    service: ClassVar[str]
    api: ClassVar[str] = ""
    default_base_url: ClassVar[str] = ""
    # the credential fields a network document must carry for this connector (accessToken, accessTokenSecret,
    # refreshToken, clientSecret, password; checked before any request: missing, the network is disabled)
    required: ClassVar[tuple[str, ...]] = ("accessToken",)
    # whom a limit read from the API's headers holds back (_limits.SCOPES): "network" (the token's own limit),
    # "user" (the user's quota on the app) or "service" (the app's or the IP's: every network waits)
    limit_scope: ClassVar[str] = "network"
    # the header that carries the access token, and the scheme before it ("" sends the bare token)
    auth_header: ClassVar[str] = "Authorization"
    auth_scheme: ClassVar[str] = "Bearer"

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        self.base_url = (settings.base_url or self.default_base_url).rstrip("/")
        self.options = settings.options

    @abstractmethod
    def request(self, ctx: Context) -> Request:
        """The request for the page `ctx.cursor` points at; the engine adds the credentials (auth_headers)."""

    @abstractmethod
    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        """The page `response` holds: its items, the cursor to store, whether another page waits."""

    def check(self, ctx: Context, response: httpx.Response) -> None:
        """Look at any response before the engine's own status handling; raise to classify it
        (e.g. an API that reports throttling as HTTP 400 with a body field). The default accepts every response."""
        return None

    def item_scope(self, ctx: Context) -> str | None:
        """Where this network's item ids are unique, when not across the whole service: None (the default) for an
        API that numbers its items once for every user (GitHub's repository ids); the network's server, normalized
        (lower-case scheme and host, no default port, no trailing slash), for an API that every server numbers
        apart (a Mastodon instance, a self-hosted GitLab). Scoped items are keyed [service, user, scope, itemId] and
        carry the scope as their `server` field, so two networks of one user on two servers never overwrite each
        other's items. One value per network, the same on every run; a connector that starts scoping items it has
        stored already needs `collector migrate item-scopes` (collector/migrations.py)."""
        return None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Every `parse` a connector defines hands back its items with their scope (item_scope) filled in: the
        store keys them by it, whatever called the parse. This runs before ABCMeta collects the abstract methods,
        so it sees the wrapper: functools.wraps copies `__isabstractmethod__` with the function's attributes, and a
        class that defines `parse` is concrete (one that redeclares it abstract stays abstract)."""
        super().__init_subclass__(**kwargs)
        parse = cls.__dict__.get("parse")
        if inspect.isfunction(parse):
            cls.parse = _scoping(parse)  # type: ignore[method-assign,assignment]

    def base(self, ctx: Context) -> str:
        """The base URL of this network's API. The engine sends a request carrying the network's credentials
        only inside it (ForeignHost otherwise), whatever built the URL: a stored cursor, a Link header. The
        service's configured base URL; a connector whose networks name their own server (a Mastodon instance,
        a self-hosted GitLab) returns that one."""
        return self.base_url

    def auth_headers(self, ctx: Context) -> dict[str, str]:
        """The headers that carry the network's credentials, added by the engine to every request (a header
        the request sets itself wins): `auth_header: auth_scheme <accessToken>`, none without a token."""
        token = ctx.network.token
        return {self.auth_header: f"{self.auth_scheme} {token}".lstrip()} if token else {}

    def rate_limit(self, response: httpx.Response, now: datetime) -> RateLimit | None:
        """Read the API's rate-limit headers; the default knows every common family (see header_rate_limit)
        and gives them `limit_scope`. A 429 that names no limit still holds back `limit_scope` when that is
        wider than the network (the engine treats any 429 as a limit)."""
        limit = header_rate_limit(response.headers, now)
        if self.limit_scope == "network":
            return limit
        if limit is None:
            return RateLimit(scope=self.limit_scope) if response.status_code == 429 else None
        return dataclasses.replace(limit, scope=self.limit_scope)

    # -- OAuth2 refresh (RFC 6749 section 6) --------------------------------------------------------
    # A network that carries a `refreshToken` gets a new access token once per run when the API answers
    # 401, if the service is configured with a token endpoint: [services.<name>] token_url, client_id,
    # client_secret (put the secret in the environment: COLLECTOR_SERVICES__<NAME>__CLIENT_SECRET).

    def refresh_request(self, ctx: Context, refresh_token: str) -> Request | None:
        """The token request; None when this service has no token endpoint configured."""
        token_url = self.settings.options.get("token_url")
        if not token_url or not self.settings.options.get("client_id"):
            return None  # an OAuth app must be configured: without one a refresh can only fail
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        headers = {"Accept": "application/json"}
        client_id = str(self.settings.options.get("client_id") or "")
        client_secret = str(self.settings.options.get("client_secret") or "")
        if client_id and client_secret:  # client_secret_basic, which every provider accepts
            pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode()
        elif client_id:  # a public client
            form["client_id"] = client_id
        return Request(str(token_url), headers=headers, method="POST", form=form)

    def parse_refresh(self, response: httpx.Response) -> Tokens:
        """The new tokens from the token endpoint's reply; raise Unauthorized when it refuses."""
        try:
            body = json_value(response.content)
        except (ValueError, BadResponse):
            body = None
        error = body.get("error") if isinstance(body, dict) else None
        if error and (response.status_code in (400, 401) or error == "bad_refresh_token"):
            # GitHub answers an expired or used refresh token with HTTP 200 and {"error": "bad_refresh_token"}
            raise Unauthorized(f"token refresh refused: {logs.clip(str(error), 100)}")
        if response.status_code != 200 or not isinstance(body, dict):
            raise BadResponse(f"token endpoint answered HTTP {response.status_code}")
        access = body.get("access_token")
        if not isinstance(access, str) or not access:
            raise BadResponse("token endpoint reply has no access_token")
        refresh = body.get("refresh_token")
        expires = body.get("expires_in")
        return Tokens(access, refresh if isinstance(refresh, str) and refresh else None,
                      float(expires) if isinstance(expires, int | float) and not isinstance(expires, bool) else None)


def _scoping(parse: Callable[[Any, Context, httpx.Response], Page]) -> Callable[[Any, Context, httpx.Response], Page]:
    """`parse`, its page's items checked and stamped with the connector's item_scope: an id that is not a
    non-blank string is a BadResponse; a title, url or author that is not a string becomes None (readers of
    the items collection get text or null)."""

    @functools.wraps(parse)
    def scoped(self: Connector, ctx: Context, response: httpx.Response) -> Page:
        page = parse(self, ctx, response)
        if not isinstance(page, Page) or not page.items:
            return page
        scope = self.item_scope(ctx)
        items = [_checked(item, scope) if isinstance(item, Item) else item for item in page.items]
        return dataclasses.replace(page, items=items)

    return scoped


def _checked(item: Item, scope: str | None) -> Item:
    """`item` with its scope, its id checked (an integer becomes text), its shown fields text or None."""
    ident = item_id(item.id)
    shown = ("title", "url", "author")
    changes: dict[str, Any] = {k: None for k in shown if not isinstance(getattr(item, k), str | None)}
    if ident is not item.id:
        changes["id"] = ident
    if scope is not None and item.scope != scope:
        changes["scope"] = scope
    return dataclasses.replace(item, **changes) if changes else item
