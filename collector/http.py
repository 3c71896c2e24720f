"""The process's HTTP clients (a pool of httpx.AsyncClients): connection limits, timeouts, a body size cap.

`fetch` never reads more than `max_body_bytes` of a (decoded) body and never takes longer than
`total_timeout`, whatever the server does (slow drip, endless body, gzip bomb).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections.abc import Iterator

import httpx

from collector.config import Settings
from collector.sdk import Request

CONNECTIONS_PER_CLIENT = 8  # connections per httpx client of the pool


class TooLarge(Exception):
    """The response body is larger than the configured cap."""


class TotalTimeout(Exception):
    """The whole request took longer than the configured total timeout."""


class ClientPool:
    """The process's HTTP clients: `shards` httpx.AsyncClients of a few connections each, the total
    bounded by `http.max_connections`. One client with hundreds of connections spends most of its CPU
    in its own pool bookkeeping (httpcore scans every connection for every request: measured here, 256
    requests in flight cost 14 ms of CPU each on one client, 1.6 ms on 32 clients of 8; see
    bench/RESULTS.md). A request goes to the client with the fewest requests in flight."""

    def __init__(self, clients: list[httpx.AsyncClient]):
        self.clients = clients
        self.busy = [0] * len(clients)

    @contextlib.contextmanager
    def pick(self) -> Iterator[httpx.AsyncClient]:
        i = self.busy.index(min(self.busy))
        self.busy[i] += 1
        try:
            yield self.clients[i]
        finally:
            self.busy[i] -= 1

    async def aclose(self) -> None:
        await asyncio.gather(*(client.aclose() for client in self.clients))

    async def __aenter__(self) -> ClientPool:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


def make_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None,
                per_client: int = CONNECTIONS_PER_CLIENT) -> ClientPool:
    """The process-wide client pool: max_connections spread over clients of `per_client` connections."""
    shards = max(1, math.ceil(settings.max_connections / per_client))
    size = math.ceil(settings.max_connections / shards)
    # one TLS context for every client: building one loads the CA bundle (20 ms of CPU each, 0.6 s for 32)
    tls = httpx.create_ssl_context()
    return ClientPool([_client(settings, size, transport, tls) for _ in range(shards)])


def _client(settings: Settings, connections: int, transport: httpx.AsyncBaseTransport | None,
            tls: ssl.SSLContext) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        verify=tls,
        timeout=httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            pool=settings.total_timeout,
        ),
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        headers={"User-Agent": settings.user_agent},
        follow_redirects=False,
        transport=transport,
    )


def build(client: httpx.AsyncClient, request: Request) -> httpx.Request:
    """The httpx request for a connector's Request. httpx (0.28) replaces a URL's query string with
    `params` instead of merging them; a next-page link keeps its query, explicit params win."""
    url = httpx.URL(request.url)
    if request.params:
        url = url.copy_merge_params(dict(request.params))
    if request.form is not None:
        return client.build_request(request.method, url, headers=dict(request.headers), data=dict(request.form))
    return client.build_request(request.method, url, headers=dict(request.headers))


async def _read(client: httpx.AsyncClient, request: Request, max_bytes: int) -> httpx.Response:
    req = build(client, request)
    response = await client.send(req, stream=True)
    try:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes and "content-encoding" not in response.headers:
            raise TooLarge(f"body of {declared} bytes is over the {max_bytes}-byte cap")
        chunks = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"body over the {max_bytes}-byte cap (cut off unread)")
            chunks.append(chunk)
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
    """Send `request` (through one client of a pool); raise TooLarge, TotalTimeout or an httpx.TransportError."""
    try:
        async with asyncio.timeout(total_timeout):
            if isinstance(client, ClientPool):
                with client.pick() as one:
                    return await _read(one, request, max_bytes)
            return await _read(client, request, max_bytes)
    except TimeoutError as exc:
        raise TotalTimeout(f"no complete response within {total_timeout:g}s") from exc
