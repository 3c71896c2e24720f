"""One shared httpx.AsyncClient per process: pool limits, timeouts, a body size cap.

`fetch` never reads more than `max_body_bytes` of a (decoded) body and never takes longer than
`total_timeout`, whatever the server does (slow drip, endless body, gzip bomb).
"""

from __future__ import annotations

import asyncio

import httpx

from collector.config import Settings
from collector.sdk import Request


class TooLarge(Exception):
    """The response body is larger than the configured cap."""


class TotalTimeout(Exception):
    """The whole request took longer than the configured total timeout."""


def make_client(settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.read_timeout,
            pool=settings.total_timeout,
        ),
        limits=httpx.Limits(
            max_connections=settings.max_connections,
            max_keepalive_connections=settings.max_connections,
        ),
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


async def fetch(client: httpx.AsyncClient, request: Request, *, max_bytes: int, total_timeout: float) -> httpx.Response:
    """Send `request`; raise TooLarge, TotalTimeout or an httpx.TransportError."""
    try:
        async with asyncio.timeout(total_timeout):
            return await _read(client, request, max_bytes)
    except TimeoutError as exc:
        raise TotalTimeout(f"no complete response within {total_timeout:g}s") from exc
