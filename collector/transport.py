"""The aiohttp transport (`[http] transport = "aiohttp"`): httpx's API for the engine and the connectors, aiohttp's
connection pool and HTTP/1.1 parser underneath (the `httpx-aiohttp` package), with every guarantee of
collector/http.py kept.

Why: in the steady state (a 304 or an empty page after 100 ms, 256 requests in flight) httpx's own transport
(httpcore) costs a few times the CPU per request that aiohttp's does (bench/RESULTS.md, "Steady state").

What holds whatever the transport (tests/unit/test_http_transports.py runs both):
- *The egress policy* (collector/egress.py): aiohttp asks `TCPConnector._resolve_host` for the addresses of every
  new connection (an address in the URL included) and connects to those; `GuardedConnector` checks each of them
  there, so what is checked is what is connected to (no rebinding between a check and the connect). A host is
  refused when any of its addresses is; `[http] allow` host names are not checked, as with httpcore.
  aiohttp refuses the legacy IPv4 spellings (`2130706433`, `127.1`) itself; they are judged here first, as the C
  resolver reads them, so a refused one is named as an egress refusal.
- *Body caps and bounded decoding*: aiohttp hands over the raw bytes (`auto_decompress=False`) in chunks of at most
  16 KB, pausing the socket past its buffer's high-water mark; collector/http.py counts and decodes them.
- *Timeouts*: httpx's connect/read/pool timeouts become aiohttp's sock_connect/sock_read/connect; the resolution
  of a host is bounded by the connect timeout; `total_timeout` is collector/http.py's own.
- *Errors*: every aiohttp error becomes the httpx error httpcore raises for the same failure (a refused or
  unresolvable host: ConnectError; a server that closes mid-reply: RemoteProtocolError; a read stall: ReadTimeout;
  a malformed reply, a header line over 8190 bytes: RemoteProtocolError), so runs end in the same outcomes.
- *No redirects, no proxies, nothing from the environment, no cookies*: as the httpx clients (trust_env off, no
  proxy; a DummyCookieJar: a session serves many networks, one user's cookie never rides on another's request).
- *One request sent once*: aiohttp's silent second try of a GET whose connection the server closed is off.
- *Response heads*: aiohttp's parser refuses a header line over 8190 bytes or more than 128 header lines (httpcore:
  a head over 100 KiB): a malformed reply (RemoteProtocolError), the run a transient `connection` failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from collector.egress import Address, EgressRefused, Policy

# aiohttp's own names for the pieces overridden here: checked at import, so a release that renames them fails
# loudly instead of leaving the policy unenforced
if not hasattr(aiohttp.TCPConnector, "_resolve_host") or "_retry_connection" not in aiohttp.ClientSession.ATTRS:
    raise ImportError("aiohttp.TCPConnector._resolve_host or ClientSession._retry_connection is gone: collector "
                      "cannot hook this release of aiohttp")  # pragma: no cover


def literal(host: str) -> Address | None:
    """The address a host names itself (IPv4 in any spelling the C resolver reads, or IPv6); None for a name."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if ":" in host or not host.replace(".", "").replace("x", "").replace("X", "").isalnum():
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))  # 2130706433, 0x7f.1, 127.1, 0177.0.0.1
    except OSError:
        return None


class GuardedConnector(aiohttp.TCPConnector):
    """aiohttp's TCP connector behind the egress policy: the addresses a host resolves to (or the one it is) are
    checked where aiohttp takes them to connect; the resolution is bounded by the connect timeout."""

    def __init__(self, policy: Policy, connect_timeout: float | None, **kwargs: Any):
        super().__init__(**kwargs)
        self.policy = policy
        self.connect_timeout = connect_timeout

    async def _resolve_host(self, host: str, port: int, traces: Sequence[Any] | None = None) -> list[Any]:
        name = host.lower().rstrip(".")
        if name in self.policy.hosts:
            return await super()._resolve_host(host, port, traces)
        given = literal(host)
        if given is not None:
            self._check(host, given)
        try:
            async with asyncio.timeout(self.connect_timeout):
                found = await super()._resolve_host(host, port, traces)
        except TimeoutError:  # this deadline's own (a caller's deadline cancels: it passes through as such)
            raise httpx.ConnectTimeout(f"resolving {host} took longer than {self.connect_timeout}s") from None
        if not found:
            raise httpx.ConnectError(f"{host} resolves to no address")
        for entry in found:
            self._check(host, ipaddress.ip_address(str(entry["host"]).split("%", 1)[0]))
        return found

    def _check(self, host: str, ip: Address) -> None:
        reason = self.policy.refusal(host, ip)
        if reason:
            raise EgressRefused(reason)


def translate(exc: BaseException) -> BaseException:
    """The httpx error httpcore would raise for the failure aiohttp reports as `exc` (itself when it is not an
    aiohttp error)."""
    text = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return httpx.ConnectTimeout(text)
    if isinstance(exc, aiohttp.ServerTimeoutError):  # SocketTimeoutError: no byte within the read timeout
        return httpx.ReadTimeout(text)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.InvalidURL | aiohttp.NonHttpUrlClientError):
        return httpx.ConnectError(text)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return httpx.RemoteProtocolError(text)  # a body cut short or badly framed (httpcore: RemoteProtocolError)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientResponseError):
        return httpx.RemoteProtocolError(text)  # closed before a reply, or a reply aiohttp's parser refused
    if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientError):
        return httpx.ReadError(text)
    return exc


@contextlib.contextmanager
def translated() -> Iterator[None]:
    try:
        yield
    except httpx.TransportError as exc:  # httpx-aiohttp's own mapping: the original is its cause
        cause = exc.__cause__
        raise (translate(cause) if isinstance(cause, aiohttp.ClientError) else exc) from cause
    except aiohttp.ClientError as exc:  # what httpx-aiohttp lets through as it is
        raise translate(exc) from exc


class _Stream(httpx.AsyncByteStream):
    """The response body as aiohttp reads it, errors translated."""

    def __init__(self, inner: httpx.AsyncByteStream):
        self.inner = inner

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with translated():
            async for chunk in self.inner:
                yield chunk

    async def aclose(self) -> None:
        with translated():
            await self.inner.aclose()


class GuardedAiohttpTransport(AiohttpTransport):
    """httpx-aiohttp's transport over one aiohttp session whose connector is a GuardedConnector (made on the first
    request, inside the running loop)."""

    def __init__(self, policy: Policy, tls: ssl.SSLContext, limits: httpx.Limits, connect_timeout: float):
        def session() -> aiohttp.ClientSession:
            connector = GuardedConnector(policy, connect_timeout, ssl=tls, limit=limits.max_connections or 0,
                                         keepalive_timeout=limits.keepalive_expiry)
            session = aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                            cookie_jar=aiohttp.DummyCookieJar())
            # no silent second try of a GET whose connection the server closed (RFC 9112 9.3.1 allows it; httpcore
            # does not): a reset fails the run as it does with httpx, and a request is sent once
            session._retry_connection = False
            return session

        super().__init__(verify=tls, limits=limits, trust_env=False, client=session)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        with translated():
            response: httpx.Response = await super().handle_async_request(request)
        response.stream = _Stream(response.stream)  # type: ignore[arg-type]
        return response
