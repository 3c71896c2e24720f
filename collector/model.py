"""The network document, read defensively.

Documents are written by people and by other programs: anything may be missing, of the wrong
type or absurdly large. A run reads its document once (`RunNetwork.read`, which never raises): the
counters the daemon owns are read leniently (junk restarts them), and what makes the document unfit to
run is kept as a `Malformed` to report at the point of the run where it matters. `RunNetwork.network`
then gives the connector its `Network`, or raises `Malformed` with a reason fit to show an operator;
nothing trusts a field that was not checked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from collector.clock import aware
from collector.config import MODES, Settings

MAX_FIELD = 4096  # longest string accepted in an identifying or credential field
MAX_CURSOR = 64 * 1024
MAX_ERRORS_COUNT = 2**31  # a consecutive-failure count at or above this is junk
MAX_STAT = MAX_ERRORS_COUNT * 2**30  # a `stats` counter at or above this is junk: `$inc` must stay within 64 bits
# fields that hold secrets: never logged, never shown, scrubbed from messages (RunNetwork.secrets)
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


def _bson_size(value: Any) -> int:
    if isinstance(value, dict):
        return sum(len(str(k)) + _bson_size(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return sum(_bson_size(v) for v in value)
    return len(str(value))


def _count(value: Any, below: int) -> int | None:
    """A counter the daemon owns, or None when it is junk (not an integer, negative, `below` or more)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < below else None


def service_of(doc: dict[str, Any]) -> str:
    """A network document's service, or "?" when the field is not a string (a malformed document)."""
    return doc["service"] if isinstance(doc.get("service"), str) else "?"


def error_count(doc: dict[str, Any]) -> int:
    """The consecutive-failure counter; a counter we own, so a junk value restarts it at 0. So does an
    absurd one: 2**63 - 1 plus one failure is not a 64-bit integer, and the state write would fail."""
    return _count(doc.get("errors", 0), MAX_ERRORS_COUNT) or 0


def auth_failures(doc: dict[str, Any]) -> int:
    """401s in a row (`authFailures`: the second disables); a junk value counts as none."""
    return _count(doc.get("authFailures", 0), 10_000) or 0


def limit_streak(doc: dict[str, Any]) -> int:
    """Rate limits in a row (`rateLimitStreak`); a junk value starts again at 0."""
    return _count(doc.get("rateLimitStreak", 0), 10_000) or 0


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


def _structure(doc: dict[str, Any]) -> Malformed | None:
    """What makes the document unfit whatever its connector, before its credentials: the first of _id, user,
    service, mode, cursor that is wrong."""
    if "_id" not in doc:
        return Malformed("document has no _id")
    user = doc.get("user")
    if user is None or user == "":
        return Malformed("missing field 'user'")
    # a bool is an int to Python, not a user id (true/false would become every such network's user)
    if isinstance(user, bool) or (not isinstance(user, str | int) and type(user).__name__ != "ObjectId"):
        return Malformed(f"field 'user' must be a string, integer or ObjectId, got {_short(user)}")
    if isinstance(user, str) and len(user) > MAX_FIELD:
        return Malformed(f"field 'user' is longer than {MAX_FIELD} characters")
    service = doc.get("service")
    if not isinstance(service, str) or not service:
        return Malformed(f"field 'service' must be a non-empty string, got {_short(service)}")
    if len(service) > 64:
        return Malformed("field 'service' is longer than 64 characters")
    mode = doc.get("mode", "initial")
    if mode not in MODES:
        return Malformed(f"field 'mode' must be one of {', '.join(MODES)}, got {_short(mode)}")
    cursor = doc.get("cursor")
    if cursor is not None and not isinstance(cursor, dict):
        return Malformed(f"field 'cursor' must be an object, got {_short(cursor)}")
    if cursor and _bson_size(cursor) > MAX_CURSOR:
        return Malformed(f"field 'cursor' is larger than {MAX_CURSOR} bytes")
    return None


def _credentials(credentials: dict[str, Any]) -> dict[str, str]:
    """The credentials as a connector gets them (decrypted), or Malformed naming the first that is junk."""
    for name, value in credentials.items():
        if not isinstance(value, str):
            raise Malformed(f"field '{name}' must be a string")
        if len(value) > MAX_FIELD:
            raise Malformed(f"field '{name}' is longer than {MAX_FIELD} characters")
        if name == "accessToken" and value and not all("\x21" <= c <= "\x7e" for c in value):
            # it goes in an HTTP header: anything else fails every request (or injects a header)
            raise Malformed(f"field '{name}' must be visible ASCII characters only (no spaces)")
    return dict(credentials)


@dataclass(frozen=True)
class NetworkKey:
    """What the item writes and the change feed need of a network: which it is, whose, of which service."""
    id: Any
    user: Any
    service: str

    def fields(self) -> dict[str, Any]:
        """As the document names them (a change-feed pointer's network: collector/outbox.py)."""
        return {"_id": self.id, "user": self.user, "service": self.service}


@dataclass(frozen=True)
class Network:
    """A network as its connector sees it (`Context.network`)."""
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
        """A valid network of a document whose credentials are in plaintext, or Malformed."""
        return RunNetwork.read(doc).network(required)


@dataclass(frozen=True)
class RunNetwork:
    """A network document read once, for its run: what the executor, the state machine and the store need of it.
    The fields the daemon owns are read leniently (a junk counter restarts); what the connector would get is
    checked by `network`, which raises what `problem` (the document's shape) and `options_problem` found."""
    id: Any
    user: Any
    service: str  # "?" when the field is not a string
    named: bool  # the service is a non-empty string: a connector can be looked up
    mode: Any  # as stored ("initial" when absent); `network` checks it
    cursor: dict[str, Any]
    errors: int  # consecutive failures
    failing_since: datetime | None
    limited: int  # rate limits in a row (`rateLimitStreak`)
    auth_failures: int
    interval: float | None  # adaptive polling's normal interval (`pollInterval`)
    new_at: datetime | None  # `newItemsAt`
    label: str  # what the change feed last reported the network as (outbox.label)
    # the `stats` counters holding junk; None: `stats` itself is junk (not an object)
    junk_counters: frozenset[str] | None
    # the credential fields present: `credentials` as the run uses them (decrypted by secrets.open_for_run),
    # `stored_credentials` as the database holds them (sealed: a token refresh's compare-and-set guard)
    credentials: dict[str, Any] = field(repr=False)
    stored_credentials: dict[str, Any] = field(repr=False)
    # what the run scrubs from every message, log line and stored reason (logs.set_run_secrets): each credential
    # field of the document, whatever its type (a malformed one is still the user's secret), and the service's
    # configured client secret
    secrets: tuple[str, ...] = field(repr=False)
    options: dict[str, Any]
    problem: Malformed | None  # the document's shape is wrong (_id, user, service, mode, cursor): not run
    options_problem: Malformed | None
    lease_id: str | None  # the lease the document was claimed with
    reconcile: Any  # the `reconcile` sub-document, as stored (collector/reconcile.py reads it)

    @classmethod
    def read(cls, doc: Any, label: Callable[[dict[str, Any]], str] | None = None,
             settings: Settings | None = None) -> RunNetwork:
        """The document as its run needs it; never raises. `label`: what the change feed calls such a document;
        `settings`: the process's, for the secrets of the network's service."""
        if not isinstance(doc, dict):
            return replace(cls.read({"_id": None}, label, settings),
                           problem=Malformed(f"document is a {type(doc).__name__}, not an object"))
        service = doc.get("service")
        cursor, options, stats, lease = doc.get("cursor"), doc.get("options") or {}, doc.get("stats"), doc.get("lease")
        credentials = {name: doc[name] for name in SECRET_FIELDS if doc.get(name) is not None}
        configured = settings.service(service_of(doc)).options if settings is not None else {}
        secrets = (*credentials.values(), *(configured.get(name) for name in SECRET_OPTIONS))
        # a counter present as null is junk too: MongoDB refuses `$inc` on a null field
        junk = None if stats is not None and not isinstance(stats, dict) else frozenset(
            name for name, value in (stats or {}).items() if _count(value, MAX_STAT) is None)
        lease_id = lease.get("id") if isinstance(lease, dict) and isinstance(lease.get("id"), str) else None
        return cls(
            id=doc.get("_id"), user=doc.get("user"), service=service_of(doc),
            named=isinstance(service, str) and bool(service), mode=doc.get("mode", "initial"),
            cursor=cursor if isinstance(cursor, dict) else {}, errors=error_count(doc),
            failing_since=failing_since(doc), limited=limit_streak(doc), auth_failures=auth_failures(doc),
            interval=poll_interval(doc), new_at=new_items_at(doc), label=label(doc) if label else "",
            junk_counters=junk, credentials=credentials, stored_credentials=credentials,
            secrets=tuple(str(value) for value in secrets if value),
            options=options if isinstance(options, dict) else {}, problem=_structure(doc),
            options_problem=None if isinstance(options, dict) else Malformed(
                f"field 'options' must be an object, got {_short(options)}"),
            lease_id=lease_id, reconcile=doc.get("reconcile"))

    @property
    def key(self) -> NetworkKey:
        return NetworkKey(self.id, self.user, self.service)

    def network(self, required: tuple[str, ...] = ()) -> Network:
        """The network for a connector that needs the credential fields `required`, or Malformed: the document's
        shape first, then its credentials (as decrypted), the required ones, its options."""
        if self.problem is not None:
            raise self.problem
        credentials = _credentials(self.credentials)
        for name in required:
            value = credentials.get(name)
            if not isinstance(value, str) or not value.strip():
                if value in (None, ""):
                    raise Malformed(f"missing field '{name}'", kind="missing_credentials")
                raise Malformed(f"field '{name}' must be a non-empty string")
        if self.options_problem is not None:
            raise self.options_problem
        return Network(self.id, self.user, self.service, self.mode, self.cursor, self.errors, credentials,
                       self.options)

    def counters_ok(self, names: Iterable[str]) -> bool:
        """True when `$inc` of the `stats` counters `names` can succeed: `stats` an object (or absent) whose
        counters `names` are absent or integers well inside 64 bits."""
        return self.junk_counters is not None and self.junk_counters.isdisjoint(names)
