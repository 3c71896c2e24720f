"""Logging with structlog: key=value on a terminal, JSON otherwise; secrets redacted everywhere.

Every line logged while a run is in progress carries network, user, service and mode (bound
through contextvars by the executor). Redaction works at two levels:
  - values of keys that name a secret (token, authorization, password, ...) are replaced;
  - the secret values of the run in progress (`run_secrets`: every credential field of the network and
    the service's configured client secret) are scrubbed from every string, so a token that slips into
    an exception message, an API's error body or a URL never reaches the output. An API echoes a token
    the way it received or serialized it, so each secret is scrubbed in every spelling it may take on
    the way back: raw, URL-encoded (quote, quote_plus), JSON-escaped (with `\\/` for `/` too) and inside
    base64 (a Basic authorization header of client_id:client_secret). The spellings are computed once,
    when the secrets are set, not on every scrub.

Scrub first, then cut: a cut through a secret leaves a fragment that no scrub recognizes any more (20
characters of a 45-character token once reached `lastError` that way). Text from an API or an exception is
shortened only by `clip`, which scrubs before it cuts; connectors get it as `collector.sdk.excerpt`.
"""

from __future__ import annotations

import base64
import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus

import structlog

REDACTED = "[redacted]"
MIN_SECRET = 4  # shorter values are not secrets worth scrubbing (they would redact ordinary words)
_SECRET_KEY = re.compile(r"(token|secret|password|authorization|api[_-]?key|cookie)", re.I)
_INLINE = re.compile(
    r"(?i)((?:access_token|refresh_token|token|key|client_secret|password)=)[^&\s'\"]+|(bearer\s+)[^\s'\"]+"
)
_PERCENT = re.compile(r"%[0-9A-F]{2}")
_MIN_BASE64 = 6  # a shorter run of base64 characters would match ordinary text too often


@dataclass(frozen=True)
class Secrets:
    """The run's secrets, every spelling of them that is scrubbed, and the longest spelling's length."""

    values: tuple[str, ...] = ()
    spellings: tuple[str, ...] = ()
    longest: int = 0


NO_SECRETS = Secrets()
_run_secrets: contextvars.ContextVar[Secrets] = contextvars.ContextVar("run_secrets", default=NO_SECRETS)


def _base64_cores(data: bytes) -> set[str]:
    """What base64 of any text containing `data` always contains, at each of the three byte alignments `data`
    may have in it: the characters that encode bits of `data` alone (the neighbours' bits change the others)."""
    cores = set()
    for shift in range(3):
        start, end = -(-8 * shift // 6), 8 * (shift + len(data)) // 6
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            core = encode(b"\0" * shift + data).decode()[start:end]
            if len(core) >= _MIN_BASE64:
                cores.add(core)
    return cores


def spellings(secret: str) -> set[str]:
    """The ways `secret` can come back in a reply, a URL or an exception message."""
    found = {secret, quote(secret), quote(secret, safe=""), quote_plus(secret), quote_plus(secret, safe="/")}
    found |= {_PERCENT.sub(lambda m: m.group().lower(), s) for s in found}  # %2f: encoders that write lower case
    for ascii_only in (True, False):
        escaped = json.dumps(secret, ensure_ascii=ascii_only)[1:-1]
        found |= {escaped, escaped.replace("/", "\\/"),  # PHP's json_encode escapes "/"
                  escaped.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")}  # Go's
    found |= _base64_cores(secret.encode())
    found |= _base64_cores(quote(secret, safe="").encode())  # sdk.refresh_request quotes the client secret
    return {s for s in found if len(s) >= MIN_SECRET}


def _secrets(values: Iterable[str]) -> Secrets:
    kept = tuple(dict.fromkeys(v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET))
    every = tuple(set().union(*(spellings(v) for v in kept)))
    return Secrets(kept, every, max(map(len, every), default=0))


def set_run_secrets(secrets: Iterable[str]) -> contextvars.Token[Secrets]:
    """Register the secrets of the run in progress (reset with `reset_run_secrets`)."""
    return _run_secrets.set(_secrets(secrets))


def add_run_secrets(secrets: Iterable[str]) -> None:
    """Add secrets to the run's (a refreshed token): the ones set before stay, `reset_run_secrets` drops all."""
    _run_secrets.set(_secrets((*_run_secrets.get().values, *secrets)))


def reset_run_secrets(token: contextvars.Token[Secrets]) -> None:
    _run_secrets.reset(token)


def _replace(text: str, stop: int) -> str:
    """`text` with every spelling of a run secret replaced, then cut at `stop`, except that a secret which
    begins before `stop` is replaced whole. Overlapping occurrences are replaced as one."""
    spans: list[tuple[int, int]] = []
    for spelling in _run_secrets.get().spellings:
        at = text.find(spelling)
        while at >= 0:
            spans.append((at, at + len(spelling)))
            at = text.find(spelling, at + 1)
    pieces, pos = [], 0
    for start, end in sorted(spans):
        if start >= stop:
            break
        if start >= pos:
            pieces += [text[pos:start], REDACTED]
        pos = max(pos, end)
    pieces.append(text[pos:max(pos, stop)])
    return _INLINE.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, "".join(pieces))


def scrub(text: str) -> str:
    """Remove the run's secrets (in all their spellings) and key=value / Bearer forms of secrets."""
    return _replace(text, len(text))


def clip(text: str | bytes, limit: int) -> str:
    """`text` (bytes are decoded as UTF-8) scrubbed, then cut to `limit` characters: the one safe way to
    shorten text from an API or an exception. Only a window of a long text is read: its last characters,
    where a secret may be cut in two, are dropped unscrubbed; the window grows when what the scrub kept of
    it is shorter than `limit`."""
    window = limit + 4096
    while True:
        head = text[:window]
        shown = head.decode("utf-8", "replace") if isinstance(head, bytes) else head
        if len(text) <= window:
            return scrub(shown)[:limit]
        # a secret cut in two by the window lies in its last `longest` characters (one more: a character
        # whose bytes the window split decodes as U+FFFD)
        kept = _replace(shown, len(shown) - _run_secrets.get().longest - 1)
        if len(kept) >= limit:
            return kept[:limit]
        window *= 4


def describe(exc: BaseException, limit: int = 300) -> str:
    """`Type: message` of an exception for a log line or a stored message: scrubbed, then cut to `limit`."""
    return clip(f"{type(exc).__name__}: {exc}", limit)


def _redact(value: Any, depth: int = 0) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if depth > 4:
        return value
    if isinstance(value, dict):
        return {k: REDACTED if isinstance(k, str) and _SECRET_KEY.search(k) and v else _redact(v, depth + 1)
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact(v, depth + 1) for v in value]
    return value


def redact_processor(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    redacted: MutableMapping[str, Any] = _redact(event)
    return redacted


def configure(fmt: str = "auto", level: str = "info", stream: Any = None) -> None:
    """Set up structlog once per process. fmt: auto | console | json."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if hasattr(stream, "isatty") and stream.isatty() else "json"
    renderer: Any
    if fmt == "console":
        renderer = structlog.dev.ConsoleRenderer(colors=False, pad_event_to=0)
    else:
        renderer = structlog.processors.JSONRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(stream),
        cache_logger_on_first_use=False,
    )
