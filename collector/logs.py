"""Logging with structlog: key=value on a terminal, JSON otherwise; secrets redacted everywhere.

Every line logged while a run is in progress carries network, user, service and mode (bound
through contextvars by the executor). Redaction works at two levels:
  - values of keys that name a secret (token, authorization, password, ...) are replaced;
  - the secret values of the run in progress (`run_secrets`) are scrubbed from every string,
    so a token that slips into an exception message or a URL never reaches the output.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any

import structlog

REDACTED = "[redacted]"
_SECRET_KEY = re.compile(r"(token|secret|password|authorization|api[_-]?key|cookie)", re.I)
_INLINE = re.compile(
    r"(?i)((?:access_token|refresh_token|token|key|client_secret|password)=)[^&\s'\"]+|(bearer\s+)[^\s'\"]+"
)
_run_secrets: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("run_secrets", default=())


def set_run_secrets(secrets: Iterable[str]) -> contextvars.Token[tuple[str, ...]]:
    return _run_secrets.set(tuple(s for s in secrets if s and len(s) >= 4))


def reset_run_secrets(token: contextvars.Token[tuple[str, ...]]) -> None:
    _run_secrets.reset(token)


def scrub(text: str, secrets: Iterable[str] = ()) -> str:
    """Remove secret values and key=value / Bearer forms of secrets from a string."""
    for secret in (*_run_secrets.get(), *secrets):
        if secret and len(secret) >= 4 and secret in text:
            text = text.replace(secret, REDACTED)
    return _INLINE.sub(lambda m: (m.group(1) or m.group(2)) + REDACTED, text)


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
