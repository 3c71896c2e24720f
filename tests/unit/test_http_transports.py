"""Both HTTP transports of collector/http.py (`[http] transport`: aiohttp, httpx) against real servers on
loopback: the egress policy, the body caps, bounded decoding, the timeouts and the errors hold whichever carries
the requests (collector/transport.py for aiohttp), and a failure ends in the same outcome."""

from __future__ import annotations

import asyncio
import gzip
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import httpx
import pytest

from collector import egress, http, outcomes, sdk
from collector.transport import GuardedAiohttpTransport, GuardedConnector, literal
from tests.conftest import make_settings
from tests.harness import sandbox_api

TRANSPORTS = pytest.mark.parametrize("transport", http.TRANSPORTS)


def settings_for(transport: str, **http_settings: object):
    return make_settings(http={"transport": transport, "allow": ["127.0.0.0/8"], **http_settings})


async def fetch(transport: str, url: str, headers: dict[str, str] | None = None, max_bytes: int = 100_000,
                total_timeout: float = 5, **http_settings: object) -> httpx.Response:
    async with http.make_client(settings_for(transport, **http_settings)) as pool:
        return await http.fetch(pool, sdk.Request(url, headers=headers or {}), max_bytes=max_bytes,
                                total_timeout=total_timeout)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serving(reply: bytes | Handler) -> AsyncIterator[str]:
    """A raw HTTP/1.1 server on 127.0.0.1 answering every request with `reply` (bytes) or by `reply(reader,
    writer)`; yields its base URL."""
    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            seen.append(head)
            if callable(reply):
                await reply(reader, writer)
            else:
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


@pytest.fixture
async def raw_server():
    """raw_server(reply) -> base URL of a server answering every request with `reply`."""
    servers = []

    async def start(reply: bytes | Handler) -> str:
        gen = serving(reply)
        servers.append(gen)
        return await gen.__anext__()

    yield start
    for gen in servers:
        await gen.aclose()


@pytest.fixture(scope="module")
def sandbox():
    with sandbox_api() as server:
        server.sandbox.add_user("github", "tok", items=3)
        yield server


# -- the egress policy ------------------------------------------------------------------------------------------


@TRANSPORTS
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0x7f.0.0.1", "127.1", "[::1]",
                                  "[::ffff:127.0.0.1]"])
async def test_every_spelling_of_loopback_is_refused(transport, host):
    async with http.make_client(make_settings(http={"transport": transport, "allow": []})) as pool:
        with pytest.raises(egress.EgressRefused, match="refused by the egress policy"):
            await http.fetch(pool, sdk.Request(f"http://{host}:9/"), max_bytes=1000, total_timeout=5)


@TRANSPORTS
async def test_loopback_is_reached_when_allowed_by_cidr_or_by_name(transport, sandbox):
    port = sandbox.url.rsplit(":", 1)[1]
    for allow, host in ((["127.0.0.0/8"], "127.0.0.1"), (["localhost"], "localhost")):
        async with http.make_client(make_settings(http={"transport": transport, "allow": allow})) as pool:
            response = await http.fetch(pool, sdk.Request(f"http://{host}:{port}/nowhere"), max_bytes=100_000,
                                        total_timeout=5)
        assert response.status_code == 404


def test_literal_reads_an_address_as_the_c_resolver_does():
    assert str(literal("2130706433")) == str(literal("0x7f.1")) == str(literal("0177.0.0.1")) == "127.0.0.1"
    assert str(literal("::ffff:127.0.0.1")) == "::ffff:7f00:1"
    assert literal("localhost") is None and literal("example.org") is None and literal("1.2.3.4 x") is None


class Resolver(aiohttp.abc.AbstractResolver):
    """Answers every name with `addresses` (after `delay` seconds)."""

    def __init__(self, *addresses: str, delay: float = 0.0):
        self.addresses, self.delay, self.asked = addresses, delay, 0

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, object]]:
        self.asked += 1
        await asyncio.sleep(self.delay)
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
                 "proto": 0, "flags": 0} for a in self.addresses]

    async def close(self) -> None:
        pass


async def test_aiohttp_one_refused_address_among_the_answers_refuses_the_host():
    connector = GuardedConnector(egress.Policy(), 5.0, resolver=Resolver("93.184.215.14", "10.0.0.5"))
    try:
        with pytest.raises(egress.EgressRefused, match=r"rebind.example resolves to 10.0.0.5 \(private\)"):
            await connector._resolve_host("rebind.example", 443)
    finally:
        await connector.close()


async def test_aiohttp_connects_to_the_addresses_it_checked(sandbox):
    """A name that resolves to loopback reaches the sandbox only when loopback is allowed: what is checked is what
    aiohttp connects to."""
    port = int(sandbox.url.rsplit(":", 1)[1])
    for allow, refused in (([], True), (["127.0.0.0/8"], False)):
        connector = GuardedConnector(egress.Policy.build(False, allow), 5.0, resolver=Resolver("127.0.0.1"))
        async with aiohttp.ClientSession(connector=connector) as session:
            if refused:
                with pytest.raises(egress.EgressRefused, match=r"sandbox.example resolves to 127.0.0.1 \(loopback\)"):
                    await session.get(f"http://sandbox.example:{port}/nowhere")
            else:
                async with session.get(f"http://sandbox.example:{port}/nowhere") as response:
                    assert response.status == 404


async def test_aiohttp_a_slow_resolver_is_a_connect_timeout():
    connector = GuardedConnector(egress.Policy(), 0.05, resolver=Resolver("93.184.215.14", delay=10))
    try:
        began = time.monotonic()
        with pytest.raises(httpx.ConnectTimeout):
            await connector._resolve_host("slow.example", 443)
        assert time.monotonic() - began < 2
    finally:
        await connector.close()


def test_every_client_of_the_pool_connects_through_the_policy_with_aiohttp():
    pool = http.make_client(make_settings(http={"transport": "aiohttp", "max_connections": 24, "allow_private": True}))
    assert len(pool.clients) == 3
    transports = [c._transport for c in pool.clients]
    assert all(isinstance(t, GuardedAiohttpTransport) for t in transports)
    assert all(t.limits.max_connections == 8 and t.proxy is None for t in transports)


# -- bodies: caps and decoding ----------------------------------------------------------------------------------


@TRANSPORTS
async def test_a_body_over_the_cap_is_refused_unread_by_its_length_or_cut_off_on_the_wire(transport, sandbox):
    for framing in ("length", "chunked", "gzip"):
        box = sandbox.sandbox
        box.inject("tok", "oversize", size=5_000_000, framing=framing)
        with pytest.raises(http.TooLarge, match="over the 100000-byte cap"):
            await fetch(transport, f"{sandbox.url}/user/starred", headers={"Authorization": "Bearer tok"})


@TRANSPORTS
async def test_a_normal_reply_is_read_whole_with_its_headers(transport, sandbox):
    async with http.make_client(settings_for(transport)) as pool:
        response = await http.fetch(pool, sdk.Request(f"{sandbox.url}/user/starred", params={"per_page": 100},
                                                      headers={"Authorization": "Bearer tok"}),
                                    max_bytes=100_000, total_timeout=5)
        again = await http.fetch(pool, sdk.Request(f"{sandbox.url}/user/starred", params={"per_page": 100},
                                                   headers={"Authorization": "Bearer tok",
                                                            "If-None-Match": response.headers["etag"]}),
                                 max_bytes=100_000, total_timeout=5)
    assert response.status_code == 200 and len(response.json()) == 3 and response.headers["x-ratelimit-limit"]
    assert again.status_code == 304 and again.content == b""


@TRANSPORTS
async def test_gzip_is_decoded_by_the_engine_and_only_what_it_decodes_is_advertised(transport, raw_server):
    body = b'{"items": [1, 2, 3]}' + b" " * 500
    wire = gzip.compress(body)
    heads: list[bytes] = []

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s" % (len(wire), wire))
        await writer.drain()

    url = await raw_server(reply)
    async with http.make_client(settings_for(transport, user_agent="bench-ua/1")) as pool:
        def spying(original: Any) -> Any:  # what each client's transport is handed: what goes on the wire
            async def spy(request: httpx.Request) -> httpx.Response:
                heads.append(request.headers.raw)  # type: ignore[arg-type]
                return await original(request)  # type: ignore[no-any-return]
            return spy

        for one in pool.transports or ():
            one.handle_async_request = spying(one.handle_async_request)  # type: ignore[method-assign]
        response = await http.fetch(pool, sdk.Request(url), max_bytes=10_000, total_timeout=5)
    assert response.content == body and "content-encoding" not in response.headers
    sent = dict((k.lower(), v) for k, v in heads[0])
    assert sent[b"accept-encoding"] == b"gzip, deflate" and sent[b"user-agent"] == b"bench-ua/1"


@TRANSPORTS
async def test_nested_codings_are_refused_and_a_bomb_stops_at_the_cap(transport, raw_server):
    nested = gzip.compress(gzip.compress(b"[" + b" " * 2_000_000 + b"]"))
    url = await raw_server(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip, gzip\r\ncontent-length: %d\r\n\r\n%s"
                           % (len(nested), nested))
    with pytest.raises(http.BadEncoding, match="more than one content coding"):
        await fetch(transport, url)
    bomb = gzip.compress(b"[" + b" " * 50_000_000 + b"]", compresslevel=9)
    url = await raw_server(b"HTTP/1.1 200 OK\r\ncontent-encoding: gzip\r\ncontent-length: %d\r\n\r\n%s"
                           % (len(bomb), bomb))
    with pytest.raises(http.TooLarge, match="decoded body over the 100000-byte cap"):
        await fetch(transport, url)


@TRANSPORTS
async def test_redirects_are_not_followed(transport, raw_server):
    url = await raw_server(b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:9/steal\r\ncontent-length: 0\r\n\r\n")
    response = await fetch(transport, url)
    assert response.status_code == 302 and response.headers["location"] == "http://127.0.0.1:9/steal"


# -- timeouts and failures: the same outcome whatever the transport ---------------------------------------------


def kind(exc: BaseException) -> str:
    assert isinstance(exc, Exception)
    return str(outcomes.from_exception(exc).error)


@TRANSPORTS
async def test_a_stalled_reply_is_a_read_timeout_and_a_slow_drip_a_total_timeout(transport, sandbox):
    box = sandbox.sandbox
    box.inject("tok", "timeout", seconds=5)
    with pytest.raises(httpx.ReadTimeout) as stalled:
        await fetch(transport, f"{sandbox.url}/user/starred", read_timeout=0.3, total_timeout=5,
                    headers={"Authorization": "Bearer tok"})
    box.inject("tok", "drip", seconds=30)
    began = time.monotonic()
    with pytest.raises(http.TotalTimeout) as dripped:
        await fetch(transport, f"{sandbox.url}/user/starred", total_timeout=0.5,
                    headers={"Authorization": "Bearer tok"})
    assert time.monotonic() - began < 2
    assert kind(stalled.value) == kind(dripped.value) == "timeout"


@TRANSPORTS
async def test_a_reset_a_refused_port_and_a_garbled_reply_are_connection_failures(transport, sandbox, raw_server):
    sandbox.sandbox.inject("tok", "reset")
    failures = []
    for url, headers in ((f"{sandbox.url}/user/starred", {"Authorization": "Bearer tok"}), ("http://127.0.0.1:9/", {})):
        with pytest.raises(httpx.TransportError) as failed:
            await fetch(transport, url, headers=headers)
        failures.append(failed.value)
    cut = await raw_server(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n[1, 2")
    # a head past both parsers' limits (httpcore: 100 KiB in all; aiohttp: 8190 bytes a header line)
    link = await raw_server(b"HTTP/1.1 200 OK\r\nlink: <" + b"x" * 200_000 + b">\r\ncontent-length: 2\r\n\r\n[]")
    for url in (cut, link):
        with pytest.raises(httpx.TransportError) as failed:
            await fetch(transport, url)
        failures.append(failed.value)
    assert [kind(f) for f in failures] == ["connection"] * 4
    assert isinstance(failures[1], httpx.ConnectError)


@TRANSPORTS
async def test_no_cookie_is_kept_nor_sent_to_another_request(transport, raw_server):
    """A client serves many networks: one user's session cookie must never ride on another user's request."""
    heads: list[bytes] = []

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nset-cookie: session=alice-secret; Path=/\r\nconnection: close\r\n"
                     b"content-length: 2\r\n\r\n[]")
        await writer.drain()

    url = await raw_server(reply)
    async with http.make_client(settings_for(transport, max_connections=1)) as pool:  # one client: the same jar
        assert pool.transports is not None
        original = pool.transports[0].handle_async_request

        async def spy(request: httpx.Request) -> httpx.Response:
            heads.append(bytes(request.headers.get("cookie", ""), "ascii"))
            return await original(request)

        pool.transports[0].handle_async_request = spy  # type: ignore[method-assign]
        for _ in range(2):
            response = await http.fetch(pool, sdk.Request(url), max_bytes=1000, total_timeout=5)
            assert response.headers["set-cookie"].startswith("session=")
        assert not pool.clients[0].cookies
    assert heads == [b"", b""]


@TRANSPORTS
async def test_a_closed_pool_sends_nothing(transport, raw_server):
    """fetch sends to each client's transport directly: a pool once closed refuses, as client.send does."""
    served: list[int] = []

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served.append(1)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n[]")
        await writer.drain()

    url = await raw_server(reply)
    pool = http.make_client(settings_for(transport))
    assert (await http.fetch(pool, sdk.Request(url), max_bytes=1000, total_timeout=5)).content == b"[]"
    await pool.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await http.fetch(pool, sdk.Request(url), max_bytes=1000, total_timeout=5)
    assert served == [1]
