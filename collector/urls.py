"""URL helpers of the SDK: Link headers, and the checks that keep a network's credentials on its own API (the
engine's check before every request, a connector's check of a link before it stores it). Connectors import
them from collector.sdk."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import httpx

from collector.errors import ForeignHost, PermanentError

_LINK_RE = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]+)*)')
_REL_RE = re.compile(r'rel\s*=\s*"?([^";]+)"?')


def links(headers: httpx.Headers | Mapping[str, str]) -> dict[str, str]:
    """Parse an RFC 8288 Link header into {rel: url}."""
    value = headers.get("link") or headers.get("Link") or ""
    out = {}
    for url, params in _LINK_RE.findall(value):
        rel = _REL_RE.search(params)
        if rel:
            for name in rel.group(1).split():
                out[name] = url
    return out


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
    https (http only on this host), no user info, query or fragment, no path unless `path`; a bare host means
    https://host. PermanentError otherwise, `missing` when there is none: the network cannot work until its
    document is fixed. `what` names the field in the messages, `example` shows a good value."""
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
    return f"{url.scheme}://{url.netloc.decode('ascii')}{url.path.rstrip('/') if path else ''}"
