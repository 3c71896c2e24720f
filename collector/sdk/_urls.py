"""URL helpers of the SDK: Link headers, and the checks that keep a network's credentials on its own API (the
engine's check before every request, a connector's check of a link before it stores it). Internal:
connectors import the public ones from collector.sdk; `inside` and `origin` are the engine's."""

from __future__ import annotations

import contextlib
import ipaddress
import re
import socket
from collections.abc import Mapping
from typing import Any

import httpx

from collector import egress
from collector.sdk._errors import BadResponse, ForeignHost, PermanentError

MAX_LINK = 8192  # characters of a Link header: a few links of a few hundred characters each are the norm


def links(headers: httpx.Headers | Mapping[str, str]) -> dict[str, str]:
    """Parse an RFC 8288 Link header into {rel: url} (several headers come joined with ", "). One pass,
    time linear in the header; relation types are compared in lower case, a link's first `rel` counts (RFC
    8288 section 3.3) and holds one or more of them. Link values and parameters that cannot be read are
    skipped. A header over MAX_LINK characters is refused (BadResponse), not cut: a cut one could drop the
    rel="next" link, and a connector would take the history for exhausted."""
    value = headers.get("link") or headers.get("Link") or ""
    if len(value) > MAX_LINK:
        raise BadResponse(f"Link header over the cap of {MAX_LINK} characters ({len(value)})")
    out = {}
    for link in _split(value, ",", brackets=True):
        link = link.strip()
        end = link.find(">")
        if not link.startswith("<") or end < 0:
            continue
        target, *params = _split(link[end + 1:], ";", brackets=False)
        rels = [v for k, v in (_param(p) for p in params) if k == "rel"]
        if target.strip() or not rels:
            continue
        for name in rels[0].lower().split():
            out[name] = link[1:end]
    return out


def _split(text: str, sep: str, brackets: bool) -> list[str]:
    """`text` cut at every `sep` outside quoted strings (and outside <...> with `brackets`): one pass."""
    parts: list[str] = []
    start, quoted, bracketed, escaped = 0, False, False, False
    for at, char in enumerate(text):
        if quoted:
            escaped, quoted = (False, True) if escaped else (char == "\\", char != '"')
        elif bracketed:
            bracketed = char != ">"
        elif char == '"':
            quoted = True
        elif char == "<" and brackets:
            bracketed = True
        elif char == sep:
            parts.append(text[start:at])
            start = at + 1
    parts.append(text[start:])
    return parts


def _param(text: str) -> tuple[str, str]:
    """One link parameter, `name=value` or `name="quoted value"`, as (lower-case name, value)."""
    name, _, value = text.partition("=")
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
    return name.strip().lower(), value


def inside(url: str, base_url: str) -> bool:
    """True when `url` is `base_url` or below it: same scheme, host and port, and a path under the base's."""
    try:
        target, base = httpx.URL(url), httpx.URL(base_url.rstrip("/"))
    except (httpx.InvalidURL, TypeError):
        return False
    if not base.host or (target.scheme, target.host, target.port) != (base.scheme, base.host, base.port):
        return False
    if target.userinfo:
        return False
    root = base.raw_path.split(b"?")[0].rstrip(b"/")
    path = target.raw_path.split(b"?")[0]
    return path == root or path.startswith(root + b"/") or (not root and path in (b"", b"/"))


def origin(url: str) -> str:
    """scheme://host[:port] of `url` (what a message may show of a URL: never its path or query)."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        return "an invalid URL"
    port = f":{parsed.port}" if parsed.port else ""
    return f"{parsed.scheme}://{parsed.host}{port}" if parsed.host else "a URL without a host"


def within(url: str | None, base_url: str, what: str = "Link header") -> str | None:
    """`url` (None stays None), refused with ForeignHost when it leaves `base_url`: the network's credentials
    go with a request, so a link from an API reply is checked before it is stored in the cursor."""
    if url and not inside(url, base_url):
        raise ForeignHost(f"{what} points outside the configured base URL")
    return url or None


def next_link(response: httpx.Response, base_url: str) -> str | None:
    """The Link header's rel="next" URL, refused (ForeignHost) when it leaves `base_url`."""
    return within(links(response.headers).get("next"), base_url)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def server_url(value: Any, what: str, missing: str, example: str, path: bool = False) -> str:
    """The base URL of a server a network names itself (a Mastodon instance, a self-hosted GitLab), checked:
    https (http only on this host, which the egress policy refuses unless [http] allow lists it), no user info,
    query or fragment, no path unless `path`; a bare host means https://host. An address that no allow-list is
    meant for (link-local such as 169.254.169.254, multicast, unspecified, reserved, IPv4 inside IPv6) or an
    IPv4 address spelled other than a.b.c.d (2130706433, 0x7f.1) is refused here; loopback and private
    addresses are left to the egress policy, at connect time, where the operator's allow-list decides.
    PermanentError otherwise, `missing` when there is none: the network cannot work until its document is
    fixed. `what` names the field in the messages, `example` shows a good value."""
    if not isinstance(value, str) or not value.strip():
        raise PermanentError(missing)
    text = value.strip().rstrip("/")
    if len(text) > 300:
        raise PermanentError(f"{what} is longer than 300 characters")
    try:
        url = httpx.URL(text if "://" in text else "https://" + text)
    except (httpx.InvalidURL, ValueError):
        raise PermanentError(f"{what} {value!r} is not a URL") from None
    if url.scheme != "https" and not (url.scheme == "http" and url.host in LOCAL_HOSTS):
        raise PermanentError(f"{what} {value!r} must be https (http only for 127.0.0.1 or localhost)")
    if not url.host or url.userinfo or url.query or url.fragment or (not path and url.path not in ("", "/")):
        raise PermanentError(f"{what} {value!r} must be the server's address only, like {example}")
    try:
        ip = ipaddress.ip_address(url.host)
    except ValueError:
        with contextlib.suppress(OSError):  # what the resolver would read as an address, spelled otherwise
            read = socket.inet_ntoa(socket.inet_aton(url.host))
            raise PermanentError(f"{what} {value!r} refused by the egress policy: {url.host} is read as {read}, "
                                 "an IPv4 address is written a.b.c.d") from None
    else:
        kind = egress.kind(ip)
        if kind and kind not in ("loopback", *egress.PRIVATE_KINDS):
            raise PermanentError(f"{what} {value!r} refused by the egress policy: {url.host} is {kind}")
    return f"{url.scheme}://{url.netloc.decode('ascii')}{url.path.rstrip('/') if path else ''}"
