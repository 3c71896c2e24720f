"""Bounded decoding (collector/http.py): the engine decodes one content coding itself, each decompress call's
output bounded, and the body cap holds on the wire and on the decoded bytes."""

from __future__ import annotations

import gzip
import struct
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest
import respx

from collector import http, sdk
from tests.conftest import make_settings

URL = "https://api.test/x"
# respx mocks httpx's own transport (httpcore); both transports against real servers: test_http_transports.py
HTTPX = {"transport": "httpx"}
MIB = 1 << 20


def gzip_bomb(mib: int) -> bytes:
    """A gzip stream of `mib` MiB of zeros (about 1 KB per MiB), built in well under a second: after a full
    flush the compressor's output for the same input repeats, so one block is compressed and repeated."""
    c = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    zeros = bytes(MIB)
    first = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    block = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH) == block
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    body = first + block * (mib - 1) + c.flush()
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff" + body + struct.pack("<II", crc, (mib * MIB) & 0xFFFFFFFF)


class Raw(httpx.AsyncByteStream):
    """A body sent as it is, in chunks: httpx.Response(content=...) decodes its body when built, and respx reads
    (decodes) a ByteStream before it serves it."""

    def __init__(self, body: bytes):
        self.body = body

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), 65536):
            yield self.body[start:start + 65536]


def raw(body: bytes, **headers: str) -> httpx.Response:
    return httpx.Response(200, headers={k.replace("_", "-"): v for k, v in headers.items()}, stream=Raw(body))


async def fetch(response: httpx.Response, max_bytes: int = 1000) -> httpx.Response:
    with respx.mock() as api:
        api.get(URL).mock(return_value=response)
        async with http.make_client(make_settings(http=HTTPX)) as pool:
            return await http.fetch(pool, sdk.Request(URL), max_bytes=max_bytes, total_timeout=5)


def test_the_bomb_is_what_it_claims():
    assert gzip.decompress(gzip_bomb(3)) == bytes(3 * MIB)


async def test_a_gzip_body_is_decoded_and_comes_back_whole_and_described_as_decoded():
    body = b'{"items": [1, 2, 3]}' + b" " * 500
    wire = gzip.compress(body)
    response = await fetch(raw(wire, content_encoding="GZip", content_length=str(len(wire))))
    assert response.content == body and response.json() == {"items": [1, 2, 3]}
    assert "content-encoding" not in response.headers and response.headers["content-length"] == str(len(body))


@pytest.mark.parametrize("wbits", [zlib.MAX_WBITS, -zlib.MAX_WBITS], ids=["zlib", "raw"])
async def test_deflate_is_decoded_in_both_of_its_forms(wbits):
    body = b"deflated " * 50
    c = zlib.compressobj(6, zlib.DEFLATED, wbits)
    response = await fetch(raw(c.compress(body) + c.flush(), content_encoding="deflate"))
    assert response.content == body


async def test_identity_and_no_encoding_are_read_as_they_are():
    for headers in ({"content_encoding": "identity"}, {}):
        assert (await fetch(raw(b"plain", **headers))).content == b"plain"


@pytest.mark.parametrize("encoding, words", [
    ("gzip, gzip", "more than one content coding"), ("gzip,deflate", "more than one content coding"),
    ("br", "only gzip and deflate"), ("zstd", "only gzip and deflate"), ("compress", "only gzip and deflate"),
])
async def test_nested_and_unknown_encodings_are_refused_as_a_bad_response(encoding, words):
    nested = gzip.compress(gzip.compress(bytes(MIB)))  # 1 MiB in ~1 KB, twice over
    with pytest.raises(http.BadEncoding, match=words) as caught:
        await fetch(raw(nested, content_encoding=encoding), max_bytes=10 * MIB)
    assert isinstance(caught.value, sdk.BadResponse)  # the executor's bad_response: transient, nothing stored


async def test_a_corrupt_stream_is_a_bad_response():
    with pytest.raises(http.BadEncoding, match="gzip body cannot be decoded"):
        await fetch(raw(b"\x1f\x8b not gzip at all", content_encoding="gzip"))


async def test_a_gigabyte_bomb_stops_at_the_cap_with_bounded_memory():
    bomb = gzip_bomb(1024)  # 1 GiB decoded from ~1 MB on the wire
    assert len(bomb) < 2 * MIB
    tracemalloc.start()
    try:
        with pytest.raises(http.TooLarge, match="decoded body over the 4194304-byte cap"):
            await fetch(raw(bomb, content_encoding="gzip"), max_bytes=4 * MIB)
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB + 3 * MIB  # the cap, one decoder step and the raw chunks in flight: not the gigabyte


def test_no_decompress_call_produces_more_than_one_step():
    decoder = http._Decoder("gzip", max_bytes=64 * MIB)
    pieces = decoder.feed(gzip_bomb(8)) + decoder.finish()
    assert sum(map(len, pieces)) == 8 * MIB and max(map(len, pieces)) <= http.DECODE_STEP


async def test_a_declared_length_over_the_cap_is_refused_unread_whatever_the_encoding():
    for headers in ({}, {"content_encoding": "gzip"}):
        with pytest.raises(http.TooLarge, match=r"body of 5000 bytes is over the 1000-byte cap .* refused unread"):
            await fetch(raw(b"x" * 5000, content_length="5000", **headers))


async def test_a_body_over_the_cap_on_the_wire_is_cut_off_without_a_length():
    async def endless():
        for _ in range(100):
            yield b"x" * 600
    with pytest.raises(http.TooLarge, match="over the 1000-byte cap"):
        await fetch(httpx.Response(200, content=endless()))


async def test_the_clients_advertise_only_what_the_engine_decodes():
    with respx.mock() as api:
        route = api.get(URL).mock(return_value=httpx.Response(200))
        async with http.make_client(make_settings(http=HTTPX)) as pool:
            await http.fetch(pool, sdk.Request(URL), max_bytes=1000, total_timeout=5)
    assert route.calls.last.request.headers["accept-encoding"] == "gzip, deflate"


def test_a_service_may_have_its_own_cap_and_user_chosen_servers_have_a_lower_one():
    settings = make_settings(services={"github": {"max_body_bytes": 5000}})
    assert settings.body_cap("github") == 5000 and "max_body_bytes" not in settings.service("github").options
    assert settings.body_cap("nosuchservice") == settings.http.max_body_bytes == 10 * MIB
    for service in ("mastodon_favourites", "mastodon_bookmarks", "gitlab"):
        assert settings.body_cap(service) == 2 * MIB
