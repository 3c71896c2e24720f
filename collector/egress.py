"""The egress policy: no request leaves for a non-global address unless an operator allows it.

Some servers are chosen by the users (a Mastodon instance, a self-hosted GitLab), so a URL may name the cloud
metadata endpoint, the database's network or a port on this host. The check runs where the connection is
made (an httpcore network backend under every client of the pool): the host is resolved there, every address
it resolves to is checked, and the TCP connection goes to a checked address, so a DNS answer that changes
between a check and the connect (rebinding) cannot slip past. TLS still verifies the name of the URL (httpcore
passes the request's host as `server_hostname`). Every spelling of an address (decimal `2130706433`, octal
`0177.0.0.1`, IPv4 inside IPv6) is checked as the resolver reads it: as the address it is.

Settings ([http]): `allow_private` lets private networks through (RFC 1918, shared CGNAT space, unique-local
IPv6), never loopback, link-local (169.254.169.254) or multicast; `allow` lists CIDRs or host names always
allowed (the sandbox, the demo and the tests allow 127.0.0.0/8 there).
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import anyio
import httpcore

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# what [http] allow_private lets through
PRIVATE_KINDS = ("private", "shared (CGNAT)")
_PRIVATE = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")
# IPv6 prefixes that carry an IPv4 address in their last 32 bits: judged by that address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# IPv6 ranges Python 3.11's is_global calls global though they are not (fixed in later releases)
_NOT_GLOBAL_V6 = tuple(ipaddress.ip_network(n) for n in (
    "::/96",            # IPv4-compatible (deprecated)
    "64:ff9b:1::/48",   # NAT64 local use
    "100::/64",         # discard
    "2001:db8::/32",    # documentation
    "fec0::/10",        # site-local (deprecated)
))


class EgressRefused(Exception):
    """A request's host resolves to an address the egress policy refuses. Not an httpx.TransportError on
    purpose: it is not a connection failure to retry, the network cannot work until an operator allows the
    address or the network's document names another server (the executor disables it)."""


def kind(ip: Address) -> str | None:
    """What makes `ip` non-global ("loopback", "private", ...), None for a global unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.is_unspecified or ip.is_loopback:
            return "unspecified" if ip.is_unspecified else "loopback"
        embedded = ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
                                                        if ip in _NAT64 else None)
        if embedded is not None:
            inner = kind(embedded)
            return f"{inner}, inside an IPv6 address" if inner else None
        if any(ip in net for net in _NOT_GLOBAL_V6):
            return "reserved"
    if ip.is_unspecified:
        return "unspecified"
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_multicast:
        return "multicast"
    if any(ip in net for net in _PRIVATE):
        return "private"
    if ip in _SHARED:
        return "shared (CGNAT)"
    if ip.is_reserved or not ip.is_global:
        return "reserved"
    return None


def parse_allow(values: Iterable[str]) -> tuple[tuple[Network, ...], frozenset[str]]:
    """[http] allow: (networks, host names). A CIDR or an address is a network; anything else must be a host
    name. ValueError names a value that is neither."""
    networks, hosts = [], set()
    for value in values:
        text = value.strip().lower()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        labels = text.rstrip(".").split(".")
        if not text or not all(label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum()
                               and label.isascii() for label in labels):
            raise ValueError(f"{value!r} is neither a CIDR, an address nor a host name")
        hosts.add(text.rstrip("."))
    return tuple(networks), frozenset(hosts)


@dataclass(frozen=True)
class Policy:
    allow_private: bool = False
    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def build(cls, allow_private: bool, allow: Iterable[str]) -> Policy:
        networks, hosts = parse_allow(allow)
        return cls(allow_private, networks, hosts)

    def refusal(self, host: str, ip: Address) -> str | None:
        """Why a connection to `ip` (what `host` resolved to) is refused; None when it may go."""
        what = kind(ip)
        if what is None or any(ip in net for net in self.networks) or (self.allow_private and what in PRIVATE_KINDS):
            return None
        hint = "[http] allow (or allow_private)" if what in PRIVATE_KINDS else "[http] allow"
        where = f"{host} is {what}" if host == str(ip) else f"{host} resolves to {ip} ({what})"
        return f"refused by the egress policy: {where}; an operator may allow it with {hint}"


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default network backend behind the policy: connect_tcp resolves the host, refuses the lot
    when any address is refused, and connects to the checked addresses in turn."""

    def __init__(self, policy: Policy, inner: httpcore.AsyncNetworkBackend | None = None):
        self.policy = policy
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,  # noqa: ASYNC109 (httpcore's)
                          local_address: str | None = None,
                          socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        name = host.lower().rstrip(".")
        if name in self.policy.hosts:
            return await self.inner.connect_tcp(host, port, timeout, local_address, socket_options)
        addresses = await self.resolve(host, port, timeout)
        for ip in addresses:
            reason = self.policy.refusal(host, ip)
            if reason:
                raise EgressRefused(reason)
        for ip in addresses[:-1]:  # the next address when one does not answer, as a resolver's list is used
            with contextlib.suppress(httpcore.ConnectError):
                return await self.inner.connect_tcp(str(ip), port, timeout, local_address, socket_options)
        return await self.inner.connect_tcp(str(addresses[-1]), port, timeout, local_address, socket_options)

    @staticmethod
    async def resolve(host: str, port: int, within: float | None) -> list[Address]:
        """Every address `host` resolves to, in the resolver's order (without duplicates), within the connect
        timeout."""
        try:
            with anyio.fail_after(within):
                infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took longer than {within}s") from exc
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses: list[Address] = []
        for info in infos:
            ip = ipaddress.ip_address(str(info[4][0]))
            if ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        return addresses

    async def connect_unix_socket(self, path: str, timeout: float | None = None,  # noqa: ASYNC109 (httpcore's)
                                  socket_options: Iterable[Any] | None = None) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("refused by the egress policy: no Unix socket connections")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)
