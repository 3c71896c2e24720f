"""The network document, read defensively.

Documents are written by people and by other programs: anything may be missing, of the wrong
type or absurdly large. `Network.from_doc` either returns a valid value or raises `Malformed`
with a reason fit to show an operator; it never trusts a field it did not check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from collector.config import MODES, ServiceSettings

MAX_FIELD = 4096  # longest string accepted in an identifying or credential field
MAX_CURSOR = 64 * 1024
MAX_ERRORS_COUNT = 2**31  # a consecutive-failure count at or above this is junk
# fields that hold secrets: never logged, never shown, scrubbed from messages (run_secrets)
SECRET_FIELDS = ("accessToken", "accessTokenSecret", "refreshToken", "previousRefreshToken", "clientSecret",
                 "password")
# the service settings that hold secrets ([services.<name>]): the OAuth app's, sent on every token refresh
SECRET_OPTIONS = ("client_secret",)


class Malformed(ValueError):
    """The document cannot be run as it is; the message says why, `kind` names the state."""

    def __init__(self, message: str, kind: str = "malformed"):
        super().__init__(message)
        self.kind = kind


def _short(value: Any) -> str:
    """A junk value for a message: whole when short, else only its type and size. Never a cut of it: the engine
    scrubs messages after they are made, and a cut through a secret leaves a fragment no scrub recognizes."""
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__} of {len(text)} characters"


def run_secrets(doc: dict[str, Any], service: ServiceSettings) -> list[str]:
    """What a run of `doc` scrubs from every message, log line and stored reason (logs.set_run_secrets): each
    credential field of the document, whatever its type (a malformed one is still the user's secret), and the
    service's configured client secret."""
    fields = [doc.get(name) for name in SECRET_FIELDS]
    options = [service.options.get(name) for name in SECRET_OPTIONS]
    return [str(value) for value in (*fields, *options) if value]


def _bson_size(value: Any) -> int:
    if isinstance(value, dict):
        return sum(len(str(k)) + _bson_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_bson_size(v) for v in value)
    return len(str(value))


@dataclass(frozen=True)
class Network:
    id: Any
    user: Any
    service: str
    mode: str
    cursor: dict[str, Any]
    errors: int
    credentials: dict[str, str] = field(repr=False)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def token(self) -> str:
        return self.credentials.get("accessToken", "")

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(v for v in self.credentials.values() if v)

    @classmethod
    def from_doc(cls, doc: Any, required: tuple[str, ...] = ()) -> Network:
        if not isinstance(doc, dict):
            raise Malformed(f"document is a {type(doc).__name__}, not an object")
        if "_id" not in doc:
            raise Malformed("document has no _id")
        user = doc.get("user")
        if user is None or user == "":
            raise Malformed("missing field 'user'")
        # a bool is an int to Python, not a user id (true/false would become every such network's user)
        if isinstance(user, bool) or (not isinstance(user, str | int) and type(user).__name__ != "ObjectId"):
            raise Malformed(f"field 'user' must be a string, integer or ObjectId, got {_short(user)}")
        if isinstance(user, str) and len(user) > MAX_FIELD:
            raise Malformed(f"field 'user' is longer than {MAX_FIELD} characters")
        service = doc.get("service")
        if not isinstance(service, str) or not service:
            raise Malformed(f"field 'service' must be a non-empty string, got {_short(service)}")
        if len(service) > 64:
            raise Malformed("field 'service' is longer than 64 characters")
        mode = doc.get("mode", "initial")
        if mode not in MODES:
            raise Malformed(f"field 'mode' must be one of {', '.join(MODES)}, got {_short(mode)}")
        cursor = doc.get("cursor")
        if cursor is None:
            cursor = {}
        if not isinstance(cursor, dict):
            raise Malformed(f"field 'cursor' must be an object, got {_short(cursor)}")
        if _bson_size(cursor) > MAX_CURSOR:
            raise Malformed(f"field 'cursor' is larger than {MAX_CURSOR} bytes")
        errors = error_count(doc)
        credentials = {}
        for name in SECRET_FIELDS:
            value = doc.get(name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise Malformed(f"field '{name}' must be a string")
            if len(value) > MAX_FIELD:
                raise Malformed(f"field '{name}' is longer than {MAX_FIELD} characters")
            if name == "accessToken" and value and not all("\x21" <= c <= "\x7e" for c in value):
                # it goes in an HTTP header: anything else fails every request (or injects a header)
                raise Malformed(f"field '{name}' must be visible ASCII characters only (no spaces)")
            credentials[name] = value
        for name in required:
            value = doc.get(name)
            if not isinstance(value, str) or not value.strip():
                if value in (None, ""):
                    raise Malformed(f"missing field '{name}'", kind="missing_credentials")
                raise Malformed(f"field '{name}' must be a non-empty string")
        options = doc.get("options") or {}
        if not isinstance(options, dict):
            raise Malformed(f"field 'options' must be an object, got {_short(options)}")
        return cls(doc["_id"], user, service, mode, cursor, errors, credentials, options)


def error_count(doc: dict[str, Any]) -> int:
    """The consecutive-failure counter; a counter we own, so a junk value restarts it at 0. So does an
    absurd one: 2**63 - 1 plus one failure is not a 64-bit integer, and the state write would fail."""
    errors = doc.get("errors", 0)
    if not isinstance(errors, int) or isinstance(errors, bool) or not 0 <= errors < MAX_ERRORS_COUNT:
        return 0
    return errors


def auth_failures(doc: dict[str, Any]) -> int:
    """401s in a row (`authFailures`: the second disables); a junk value counts as none."""
    value = doc.get("authFailures", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10_000 else 0


def limit_streak(doc: dict[str, Any]) -> int:
    """Rate limits in a row (`rateLimitStreak`); a junk value starts again at 0."""
    value = doc.get("rateLimitStreak", 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10_000 else 0


def poll_interval(doc: dict[str, Any]) -> float | None:
    """The network's adaptive normal interval in seconds (`pollInterval`), None when unset or junk."""
    value = doc.get("pollInterval")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < 10**8:
        return float(value)
    return None


def new_items_at(doc: dict[str, Any]) -> datetime | None:
    """When a normal run of the network last found new items (`newItemsAt`), None if never or junk."""
    value = doc.get("newItemsAt")
    return aware(value) if isinstance(value, datetime) else None


def failing_since(doc: dict[str, Any]) -> datetime | None:
    """When the current streak of transient failures began (`failingSince`), None if unknown or junk."""
    value = doc.get("failingSince")
    return aware(value) if isinstance(value, datetime) else None


def utcnow() -> datetime:
    return datetime.now(UTC)


def aware(value: datetime) -> datetime:
    """MongoDB returns naive UTC datetimes unless the client is tz_aware; normalize."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
