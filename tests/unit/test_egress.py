"""The egress policy (collector/egress.py): non-global addresses are refused where the connection is made, on
the addresses a host resolves to, unless an operator allows them; a refusal disables the network."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import anyio
import httpcore
import pytest

from collector import config, egress, http, plugins, sdk
from collector.executor import Executor
from collector.states import Kind
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one, sandbox_api


@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"),
    ("10.0.0.5", "private"), ("172.16.3.4", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("100.64.0.1", "shared (CGNAT)"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"), ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("255.255.255.255", "reserved"), ("192.0.2.1", "reserved"),
    ("2001:db8::1", "reserved"), ("::7f00:1", "reserved"), ("64:ff9b:1::a00:5", "reserved"),
    ("::ffff:127.0.0.1", "loopback, inside an IPv6 address"),
    ("::ffff:a9fe:a9fe", "link-local, inside an IPv6 address"),
    ("64:ff9b::10.0.0.5", "private, inside an IPv6 address"), ("2002:a00:5::1", "private, inside an IPv6 address"),
    ("8.8.8.8", None), ("2606:4700::1111", None), ("::ffff:8.8.8.8", None), ("64:ff9b::808:808", None),
])
def test_every_non_global_address_is_named(address, kind):
    assert egress.kind(ipaddress.ip_address(address)) == kind


def test_allow_private_lets_private_networks_through_never_loopback_nor_link_local():
    policy = egress.Policy.build(allow_private=True, allow=[])
    for ok in ("10.0.0.5", "100.64.0.1", "fd00::1", "8.8.8.8"):
        assert policy.refusal("h", ipaddress.ip_address(ok)) is None
    for refused in ("127.0.0.1", "169.254.169.254", "::ffff:127.0.0.1"):
        assert "refused by the egress policy" in policy.refusal("h", ipaddress.ip_address(refused))


def test_the_allow_list_takes_cidrs_addresses_and_names_and_the_reason_names_the_setting():
    policy = egress.Policy.build(allow_private=False, allow=["10.20.0.0/16", "::1", "Gitlab.Internal."])
    assert policy.hosts == {"gitlab.internal"}
    assert policy.refusal("h", ipaddress.ip_address("10.20.3.4")) is None
    assert policy.refusal("h", ipaddress.ip_address("::1")) is None
    assert policy.refusal("h.example", ipaddress.ip_address("10.0.0.5")) == (
        "refused by the egress policy: h.example resolves to 10.0.0.5 (private); an operator may allow it with "
        "[http] allow (or allow_private)")
    assert policy.refusal("127.0.0.1", ipaddress.ip_address("127.0.0.1")) == (
        "refused by the egress policy: 127.0.0.1 is loopback; an operator may allow it with [http] allow")
    with pytest.raises(ValueError, match="neither"):
        egress.parse_allow(["10.0.0.0/33x"])


def test_settings_default_to_refusing_and_check_the_allow_list():
    assert not config.load(environ={}).http.allow and not config.load(environ={}).http.allow_private
    assert make_settings().http.allow == ("127.0.0.0/8", "::1")  # the test environment: the tests' servers on loopback
    assert make_settings(http={"allow": "10.0.0.0/8, git.lan"}).http.allow == ("10.0.0.0/8", "git.lan")
    for junk in (["not a host!"], 5, [1]):
        with pytest.raises(config.ConfigError, match=r"\[http\] allow"):
            make_settings(http={"allow": junk})


class Recorder(httpcore.AsyncNetworkBackend):
    """An inner backend that connects nowhere: it records where it was asked to connect."""

    def __init__(self, refuse: set[str] = frozenset()):
        self.hosts: list[str] = []
        self.refuse = refuse

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ASYNC109
        self.hosts.append(host)
        if host in self.refuse:
            raise httpcore.ConnectError("refused")
        return httpcore.AsyncNetworkStream()

    async def sleep(self, seconds):
        pass


def resolving(monkeypatch, *addresses):
    async def getaddrinfo(host, port, **_kw):
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses]
    monkeypatch.setattr(anyio, "getaddrinfo", getaddrinfo)


async def test_the_connection_goes_to_the_checked_address_not_the_name(monkeypatch):
    """DNS rebinding: the name is resolved once, where the connection is made, and the socket goes to an
    address that passed the check; a second lookup by the inner backend could answer something else."""
    resolving(monkeypatch, "93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c")
    inner = Recorder(refuse={"93.184.215.14"})
    backend = egress.GuardedBackend(egress.Policy(), inner)
    await backend.connect_tcp("example.org", 443, timeout=1)
    assert inner.hosts == ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]  # the next on failure


async def test_one_refused_address_among_the_answers_refuses_the_host(monkeypatch):
    resolving(monkeypatch, "93.184.215.14", "10.0.0.5")
    inner = Recorder()
    with pytest.raises(egress.EgressRefused, match=r"rebind.example resolves to 10.0.0.5 \(private\)"):
        await egress.GuardedBackend(egress.Policy(), inner).connect_tcp("rebind.example", 443, timeout=1)
    assert inner.hosts == []  # nothing sent anywhere


async def test_an_allowed_host_name_connects_by_name_and_a_slow_resolver_is_a_connect_timeout(monkeypatch):
    inner = Recorder()
    await egress.GuardedBackend(egress.Policy.build(False, ["gitlab.lan"]), inner).connect_tcp("GitLab.lan", 443)
    assert inner.hosts == ["GitLab.lan"]

    async def stuck(*_a, **_kw):
        await asyncio.sleep(10)
    monkeypatch.setattr(anyio, "getaddrinfo", stuck)
    with pytest.raises(httpcore.ConnectTimeout):
        await egress.GuardedBackend(egress.Policy(), inner).connect_tcp("slow.example", 443, timeout=0.05)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "2130706433", "0x7f.0.0.1", "127.1", "[::1]",
                                  "[::ffff:127.0.0.1]"])
async def test_every_spelling_of_loopback_is_refused_through_the_daemons_client(host):
    """The real client pool, the real resolver: decimal, hex and short IPv4 spellings, IPv4 inside IPv6."""
    async with http.make_client(make_settings(http={"allow": []})) as pool:
        with pytest.raises(egress.EgressRefused, match="refused by the egress policy"):
            await http.fetch(pool, sdk.Request(f"http://{host}:9/"), max_bytes=1000, total_timeout=5)


async def test_loopback_is_reached_when_allowed_by_cidr_or_by_name():
    with sandbox_api() as server:
        port = server.url.rsplit(":", 1)[1]
        for allow, host in ((["127.0.0.0/8"], "127.0.0.1"), (["localhost"], "localhost")):
            async with http.make_client(make_settings(http={"allow": allow})) as pool:
                response = await http.fetch(pool, sdk.Request(f"http://{host}:{port}/nowhere"), max_bytes=100_000,
                                            total_timeout=5)
            assert response.status_code == 404


class Fake(sdk.Connector):
    service = "fake"
    api = "a fake API for engine tests"
    default_base_url = "https://localhost:9"

    def request(self, ctx):
        return sdk.Request(f"{self.base_url}/items?secret=x")

    def parse(self, ctx, response):
        raise AssertionError("never reached")


async def test_a_refused_network_is_disabled_with_the_policy_named_and_no_path(mock_db, clock, rng):
    settings = make_settings(http={"allow": []})
    store = Store(mock_db)
    await store.ensure_indexes()
    await store.networks.insert_one({"user": "u1", "service": "fake", "accessToken": "t0k3n-secret",
                                     "mode": "initial", "scheduledTo": clock.now, "errors": 0})
    doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
    async with http.make_client(settings) as pool:
        executor = Executor(store, pool, settings, {"fake": plugins.Registered("fake", Fake, "tests", "0")},
                            clock=clock, rng=rng)
        result = await executor.run(doc, lease)
    net = await store.networks.find_one({"_id": doc["_id"]})
    assert result.outcome.kind is Kind.PERMANENT and net["disabled"] and net["scheduledTo"] is None
    assert net["lastError"]["kind"] == "egress_refused"
    assert net["disabledReason"] == ("egress_refused: refused by the egress policy: localhost resolves to 127.0.0.1 "
                                     "(loopback); an operator may allow it with [http] allow")


@pytest.mark.parametrize("value, words", [
    ("https://169.254.169.254", "169.254.169.254 is link-local"), ("https://[fe80::1]", "is link-local"),
    ("https://224.0.0.1", "multicast"), ("https://0.0.0.0", "unspecified"), ("https://240.0.0.1", "reserved"),
    ("https://[::ffff:127.0.0.1]", "loopback, inside an IPv6 address"),
    ("https://2130706433", "read as 127.0.0.1"), ("https://0x7f.1", "read as 127.0.0.1"),
    ("https://127.1", "read as 127.0.0.1"), ("https://1", "read as 0.0.0.1"),
])
def test_server_url_refuses_addresses_no_allow_list_is_for(value, words):
    with pytest.raises(sdk.PermanentError, match=f"refused by the egress policy: .*{words}"):
        sdk.server_url(value, "instance", "none given", "https://example.org")


def test_server_url_leaves_loopback_and_private_addresses_to_the_connect_time_check():
    for value in ("http://127.0.0.1:8080", "https://10.0.0.5", "https://[fd00::1]:8443", "https://100.64.0.1"):
        assert sdk.server_url(value, "instance", "none given", "https://example.org") == value
    with pytest.raises(sdk.PermanentError, match="must be https"):
        sdk.server_url("http://10.0.0.5", "instance", "none given", "https://example.org")


def test_every_client_of_the_pool_connects_through_the_policy():
    pool = http.make_client(make_settings(http={"transport": "httpx", "max_connections": 24, "allow_private": True}))
    backends = [c._transport._pool._network_backend for c in pool.clients]
    assert len(backends) == 3 and all(isinstance(b, egress.GuardedBackend) for b in backends)
    assert all(b.policy.allow_private for b in backends)
