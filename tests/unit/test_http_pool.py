"""collector.http.ClientPool: the process's connections spread over small httpx clients."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx

from collector import http
from collector.sdk import Request
from tests.conftest import make_settings

HTTPX = {"transport": "httpx"}  # httpx's own pool is inspected, and respx mocks it (aiohttp: test_http_transports.py)


def test_max_connections_are_spread_over_clients_of_a_few_connections():
    pool = http.make_client(make_settings(http={**HTTPX, "max_connections": 256}))
    assert len(pool.clients) == 32
    assert {c._transport._pool._max_connections for c in pool.clients} == {8}
    small = http.make_client(make_settings(http={**HTTPX, "max_connections": 10}))
    assert [c._transport._pool._max_connections for c in small.clients] == [5, 5]  # never more than asked
    one = http.make_client(make_settings(http={**HTTPX, "max_connections": 3}))
    assert len(one.clients) == 1 and one.clients[0]._transport._pool._max_connections == 3
    assert all(c.headers["user-agent"] == "collector/0.1" for c in pool.clients)


def test_the_clients_share_one_tls_context_that_verifies_certificates():
    import ssl

    pool = http.make_client(make_settings(http={**HTTPX, "max_connections": 256}))
    contexts = {id(c._transport._pool._ssl_context) for c in pool.clients}
    assert len(contexts) == 1
    tls = pool.clients[0]._transport._pool._ssl_context
    assert tls.verify_mode == ssl.CERT_REQUIRED and tls.check_hostname


async def test_requests_go_to_the_client_with_the_fewest_in_flight_and_are_counted_back():
    settings = make_settings(http={**HTTPX, "max_connections": 32})
    release = asyncio.Event()
    seen: list[list[int]] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        await release.wait()
        return httpx.Response(200, json={"ok": request.url.params["n"]})

    async with http.make_client(settings) as pool:
        with respx.mock() as api:
            api.get("https://api.test/x").mock(side_effect=slow)
            tasks = [asyncio.create_task(http.fetch(pool, Request("https://api.test/x", params={"n": str(n)}),
                                                    max_bytes=1000, total_timeout=5)) for n in range(12)]
            for _ in range(50):
                await asyncio.sleep(0)
                if sum(pool.busy) == 12:
                    break
            seen.append(list(pool.busy))
            release.set()
            replies = await asyncio.gather(*tasks)
    assert seen == [[3, 3, 3, 3]]  # 4 clients of 8: the 12 requests spread evenly
    assert pool.busy == [0, 0, 0, 0]
    assert sorted(r.json()["ok"] for r in replies) == sorted(str(n) for n in range(12))


async def test_a_failed_request_gives_its_slot_back():
    async with http.make_client(make_settings(http={**HTTPX, "max_connections": 16})) as pool:
        with respx.mock() as api:
            api.get("https://api.test/boom").mock(side_effect=httpx.ConnectError("refused"))
            for _ in range(3):
                with pytest.raises(httpx.ConnectError):
                    await http.fetch(pool, Request("https://api.test/boom"), max_bytes=1000, total_timeout=5)
        assert pool.busy == [0, 0]
