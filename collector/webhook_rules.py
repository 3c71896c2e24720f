"""The rule of the [webhooks] settings (checked with the others by collector/config_schema.py `_check`): an endpoint
needs a signing secret and HTTPS; plain HTTP only to a loopback host (the tests' receivers). The deliverer itself is
collector/webhooks.py. A message never repeats the URL (it may carry credentials) nor the secret."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def _loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def webhook_problem(url: str, secret: str) -> str | None:
    """What is wrong with a webhook `url` and its `secret` (None: nothing, or no url: webhooks off)."""
    if not url:
        return None
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname
        _ = parts.port  # ValueError: a port that is no number
    except ValueError:
        return "url is not a valid URL"
    if not host:
        return "url must name a host, e.g. https://app.example.com/collector/events"
    if not secret.strip():
        return ("url needs a secret to sign the deliveries with: set [webhooks] secret (from the environment: "
                "COLLECTOR_WEBHOOKS__SECRET)")
    if parts.scheme.lower() == "https" or (parts.scheme.lower() == "http" and _loopback(host)):
        return None
    return f"url must be https (http only to a loopback host), got a {parts.scheme or 'scheme-less'} URL to {host}"
