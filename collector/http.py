"""The process's HTTP clients (a pool of httpx.AsyncClients): connection limits, timeouts, a body size cap,
content decoding with an output limit, and the egress policy (collector/egress.py) under every connection.

`fetch` never reads more than `max_bytes` of a body, on the wire or decoded, and never takes longer than
`total_timeout`, whatever the server does (slow drip, endless body, gzip bomb, nested encodings). The engine
decodes content itself: httpx's decoders have no output limit and chain every listed encoding (`gzip, gzip`
of 1.8 KiB grew a process by 2.1 GiB), so the clients ask httpx for the raw bytes and advertise only the
codings decoded here, one at a time, each decompress call's output bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import zlib
from collections.abc import Iterator
from http.cookiejar import DefaultCookiePolicy

import httpcore
import httpx

from collector import logs
from collector.config import Settings
from collector.egress import EgressRefused as EgressRefused  # raised by fetch: the executor names it here
from collector.egress import GuardedBackend, Policy
from collector.sdk import BadResponse, Request

CONNECTIONS_PER_CLIENT = 8  # connections per httpx client of the pool
ACCEPT_ENCODING = "gzip, deflate"  # what _Decoder decodes, and nothing else
# most bytes one decompress call produces (0.6 ms here); a whole 10 MiB cap of zeros decodes in ~80 ms of loop
DECODE_STEP = 256 * 1024


class TooLarge(Exception):
    """The response body (on the wire or decoded) is larger than the configured cap."""


class BadEncoding(BadResponse):
    """A Content-Encoding the engine does not decode (more than one coding, an unknown one) or a corrupt
    compressed body: a bad response, nothing stored."""


class TotalTimeout(Exception):
    """The whole request took longer than the configured total timeout."""


class _Decoder:
    """Decodes one response's content coding (gzip, deflate or none) with its output counted against the cap:
    a decompress call never produces more than DECODE_STEP bytes, nor more than one byte past the cap."""

    def __init__(self, header: str | None, max_bytes: int):
        codings = [c.strip().lower() for c in (header or "").split(",")]
        codings = [c for c in codings if c and c != "identity"]
        if len(codings) > 1:
            raise BadEncoding(f"Content-Encoding {_shown(header)} refused: more than one content coding")
        self.coding = codings[0] if codings else None
        if self.coding not in (None, "gzip", "x-gzip", "deflate"):
            raise BadEncoding(f"Content-Encoding {_shown(header)} refused: only gzip and deflate are decoded")
        self.max_bytes = max_bytes
        self.size = 0
        self.first = True
        # deflate is the zlib format by the RFC, raw deflate in practice: zlib is tried first, as httpx does
        self.zlib = None if self.coding is None else zlib.decompressobj(
            16 + zlib.MAX_WBITS if self.coding in ("gzip", "x-gzip") else zlib.MAX_WBITS)

    def feed(self, data: bytes) -> list[bytes]:
        """The decoded bytes of the next raw chunk; TooLarge once they pass the cap."""
        if self.zlib is None:
            return [self._count(data)]
        out = []
        while data:
            try:
                piece = self.zlib.decompress(data, min(DECODE_STEP, self.max_bytes - self.size + 1))
            except zlib.error as exc:
                if self.coding == "deflate" and self.first:
                    self.zlib, self.first = zlib.decompressobj(-zlib.MAX_WBITS), False
                    continue
                raise BadEncoding(f"{self.coding} body cannot be decoded: {exc}") from None
            self.first = False
            out.append(self._count(piece))
            data = self.zlib.unconsumed_tail  # what the output limit left unread; after the end: ignored
        return out

    def finish(self) -> list[bytes]:
        """What zlib still holds once the raw body has ended (an output limit can leave some), bounded too."""
        out = []
        while self.zlib is not None and not self.zlib.eof:
            piece = self.zlib.decompress(b"", min(DECODE_STEP, self.max_bytes - self.size + 1))
            if not piece:
                break
            out.append(self._count(piece))
        return out

    def _count(self, piece: bytes) -> bytes:
        self.size += len(piece)
        if self.size > self.max_bytes:
            raise TooLarge(f"decoded body over the {self.max_bytes}-byte cap (max_body_bytes): cut off, "
                           "nothing stored")
        return piece


def _shown(header: str | None) -> str:
    return repr(header if header is None else logs.clip(header, 60))  # an API's text: scrubbed, then cut


class ClientPool:
    """The process's HTTP clients: `shards` httpx.AsyncClients of a few connections each, the total
    bounded by `http.max_connections`. One client with hundreds of connections spends most of its CPU
    in its own pool bookkeeping (httpcore scans every connection for every request; bench/RESULTS.md has
    the figures). A request goes to the client with the fewest requests in flight.

    `transports`: each client's transport, which `fetch` sends to directly (see `_read`)."""

    def __init__(self, clients: list[httpx.AsyncClient], transports: list[httpx.AsyncBaseTransport] | None = None):
        self.clients = clients
        self.transports = transports
        self.busy = [0] * len(clients)

    @contextlib.contextmanager
    def pick(self) -> Iterator[httpx.AsyncClient]:
        with self._slot() as i:
            yield self.clients[i]

    @contextlib.contextmanager
    def _slot(self) -> Iterator[int]:
        i = self.busy.index(min(self.busy))
        self.busy[i] += 1
        try:
            yield i
        finally:
            self.busy[i] -= 1

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


TRANSPORTS = ("aiohttp", "httpx")  # [http] transport: what carries the clients' requests (the first: the default)


def make_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None,
                per_client: int = CONNECTIONS_PER_CLIENT) -> ClientPool:
    """The process-wide client pool: max_connections spread over clients of `per_client` connections, each over
    the transport `[http] transport` names (`transport`, when given, replaces it: tests)."""
    shards = max(1, math.ceil(settings.http.max_connections / per_client))
    size = math.ceil(settings.http.max_connections / shards)
    # one TLS context for every client: building one loads the CA bundle (20 ms of CPU each, 0.6 s for 32)
    tls = httpx.create_ssl_context()
    policy = Policy.build(settings.http.allow_private, settings.http.allow)
    transports = [transport or _transport(settings, size, tls, policy) for _ in range(shards)]
    return ClientPool([_client(settings, size, one, tls) for one in transports], transports)


def _transport(settings: Settings, connections: int, tls: ssl.SSLContext, policy: Policy) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    if settings.http.transport == "aiohttp":
        from collector.transport import GuardedAiohttpTransport  # aiohttp is imported only where it is used

        return GuardedAiohttpTransport(policy, tls, limits, settings.http.connect_timeout)
    return GuardedTransport(policy, tls, limits)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport whose connections are made through the egress policy. httpx does not take a network
    backend, so the connection pool it builds is replaced by one with the same settings that has it (the
    only pool of the transport: `handle_async_request` sends through `_pool`, which tests/unit/test_egress.py
    proves by a refused connection through make_client)."""

    def __init__(self, policy: Policy, tls: ssl.SSLContext, limits: httpx.Limits):
        super().__init__(verify=tls, limits=limits, trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls, max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(policy))


def _client(settings: Settings, connections: int, transport: httpx.AsyncBaseTransport,
            tls: ssl.SSLContext) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    client = httpx.AsyncClient(
        verify=tls,
        timeout=httpx.Timeout(
            connect=settings.http.connect_timeout,
            read=settings.http.read_timeout,
            write=settings.http.read_timeout,
            pool=settings.http.total_timeout,
        ),
        limits=limits,
        headers={"User-Agent": settings.http.user_agent, "Accept-Encoding": ACCEPT_ENCODING},
        follow_redirects=False,
        transport=transport,
    )
    # no cookie is kept: a client serves many networks, and one user's session cookie must never ride on another
    # user's request (build() sends none either; aiohttp's own jar is a DummyCookieJar: collector/transport.py)
    client.cookies.jar.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    return client


def build(client: httpx.AsyncClient, request: Request) -> httpx.Request:
    """The httpx request for a connector's Request: the client's headers (User-Agent, Accept-Encoding) and
    timeouts, never a cookie (no client keeps one: see _client). httpx (0.28) replaces a URL's query string with
    `params` instead of merging them; a next-page link keeps its query, explicit params win."""
    if not request.params:
        url = httpx.URL(request.url)
    elif "?" in request.url:
        url = httpx.URL(request.url).copy_merge_params(dict(request.params))
    else:  # the same URL in one parse instead of two
        url = httpx.URL(request.url, params=dict(request.params))
    headers = httpx.Headers(client.headers)
    headers.update(request.headers)
    extensions = {"timeout": client.timeout.as_dict()}
    if request.form is not None:
        return httpx.Request(request.method, url, headers=headers, data=dict(request.form), extensions=extensions)
    return httpx.Request(request.method, url, headers=headers, extensions=extensions)


async def _read(client: httpx.AsyncClient, request: Request, max_bytes: int,
                transport: httpx.AsyncBaseTransport | None = None) -> httpx.Response:
    """The response to `request`, its body read within the caps. With the client's `transport`, the request goes to
    it directly: what `client.send` adds around the transport (auth flow, redirect loop, event hooks, cookie
    extraction, a timed stream) does nothing for the engine's requests, which carry their credentials in headers,
    follow no redirect, keep no cookie and take their timeouts from `build`, and costs CPU on every run."""
    req = build(client, request)
    if transport is None:
        response = await client.send(req, stream=True)
    else:
        if client.is_closed:  # as client.send: a closed pool sends nothing
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        response = await transport.handle_async_request(req)
        response.request = req
    try:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:  # the wire is capped too
            raise TooLarge(f"body of {declared} bytes is over the {max_bytes}-byte cap (max_body_bytes): "
                           "refused unread")
        decoder = _Decoder(response.headers.get("content-encoding"), max_bytes)
        chunks = []
        wire = 0
        async for raw in response.aiter_raw():
            wire += len(raw)
            if wire > max_bytes:
                raise TooLarge(f"body over the {max_bytes}-byte cap (max_body_bytes) on the wire: cut off unread")
            chunks += decoder.feed(raw)
        chunks += decoder.finish()
    finally:
        await response.aclose()
    # a complete response built from what was read: connectors use the plain httpx API on it
    headers = httpx.Headers(response.headers)
    for name in ("content-encoding", "content-length", "transfer-encoding"):
        headers.pop(name, None)  # the body below is already decoded and whole
    return httpx.Response(response.status_code, headers=headers, content=b"".join(chunks),
                          request=req, extensions=response.extensions)


async def fetch(client: httpx.AsyncClient | ClientPool, request: Request, *, max_bytes: int,
                total_timeout: float) -> httpx.Response:
    """Send `request` (through one client of a pool); raise TooLarge, BadEncoding, TotalTimeout,
    egress.EgressRefused or an httpx.TransportError."""
    try:
        async with asyncio.timeout(total_timeout):
            if isinstance(client, ClientPool):
                with client._slot() as i:
                    return await _read(client.clients[i], request, max_bytes,
                                       client.transports[i] if client.transports else None)
            return await _read(client, request, max_bytes)
    except TimeoutError as exc:
        raise TotalTimeout(f"no complete response within {total_timeout:g}s") from exc
