"""Credentials encrypted at rest: envelope encryption with AES-256-GCM (docs/secrets.md: the format, for others).

- The master key (32 random bytes, base64 in a file: [secrets] master_key_file, e.g. a systemd credential) never
  enters the database. Its id is its fingerprint: `local:` + the first 16 hex characters of its SHA-256.
- Data keys live in the key collection ([secrets] key_collection), each wrapped by the master key:
  `{_id: kid, alg: "A256GCM", wrapped, master, createdAt, createdUnder, retiredAt?}`. The active key (the newest
  not retired) seals new values; every key opens the values sealed under it.
- A value is the string `collector:v1:<kid>:<base64url(nonce + ciphertext + tag)>`, authenticated with its field
  name (`collector:v1:<kid>:<field>`): an access token moved into the refresh-token field does not open.

The daemon opens the vault at start (every data key unwrapped, or SecretsError: the process does not start),
decrypts a network's credentials in memory for its run (open_for_run) and seals the plaintext ones it finds. No
message here ever holds a credential or a key: field names, key ids, fingerprints and paths only.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo.errors import PyMongoError

from collector import logs
from collector.clock import aware
from collector.config import Settings
from collector.model import MAX_FIELD, SECRET_FIELDS, RunNetwork
from collector.sdk import RateLimit
from collector.states import Kind, Outcome

if TYPE_CHECKING:
    from collector.store import Store

log = structlog.get_logger("collector.secrets")

VERSION = "collector:v1"
ALG = "A256GCM"
KEY_BYTES, NONCE_BYTES, TAG_BYTES = 32, 12, 16
DEK_AAD = b"collector-dek:"  # + kid: the additional data of a wrapped data key
MAX_KEY_FILE = 64
STALE_RETRY = 60.0  # a run deferred because its data key is wrapped by another master (a rotation) waits this long
_SEALED = re.compile(r"collector:v(\d+):")
_V1 = re.compile(r"collector:v1:([A-Za-z0-9_-]{1,64}):([A-Za-z0-9_-]+)")
_B64URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class SecretsError(Exception):
    """A problem of the process, found at start: no usable master key, or data keys it cannot open."""


class Undecryptable(Exception):
    """A problem of one network's credentials; `kind` is what its state records: "undecryptable" (unknown data key,
    altered value, encrypted but no master key configured) or "plaintext_credentials" (require_encrypted)."""

    def __init__(self, message: str, kind: str = "undecryptable"):
        super().__init__(message)
        self.kind = kind


class KeyUnavailable(Undecryptable):
    """The value's data key is wrapped by another master key than this process's (a rotation under way): the
    process's problem, not the network's, so its run is deferred."""

    def __init__(self, message: str):
        super().__init__(message, kind="key_unavailable")


def b64url(data: bytes) -> str:
    """base64url without padding (RFC 4648 section 5), as Node's Buffer.toString("base64url")."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: Any) -> bytes:
    """The inverse of b64url; padding is accepted. ValueError on anything else."""
    if not isinstance(text, str) or not _B64URL.fullmatch(text):
        raise ValueError("not base64url")
    text = text.rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fingerprint(key: bytes) -> str:
    return "local:" + hashlib.sha256(key).hexdigest()[:16]


@dataclass(frozen=True)
class MasterKey:
    key: bytes = field(repr=False)
    source: str  # where it was read (a path), for messages

    @property
    def id(self) -> str:
        return fingerprint(self.key)


def parse_master_key(data: bytes, source: str) -> MasterKey:
    """A key file's content: 44 characters of base64 (32 bytes) and an optional newline, nothing else."""
    text = data[:-1] if data.endswith(b"\n") else data
    key = b""
    if len(text) == 44:
        try:
            key = base64.b64decode(text, validate=True)
        except (ValueError, binascii.Error):
            key = b""
    if len(key) != KEY_BYTES:
        size = f"{len(data)} bytes" if len(data) <= MAX_KEY_FILE else f"more than {MAX_KEY_FILE} bytes"
        raise SecretsError(f"{source} is not a master key: expected 44 characters of base64 (32 random bytes) and "
                           f"an optional newline, found {size}; `collector secrets init --new-master-key FILE` "
                           "writes one")
    return MasterKey(key, source)


def key_path(setting: str) -> str:
    """[secrets] master_key_file with its environment variables (and ~) expanded."""
    path = os.path.expanduser(os.path.expandvars(setting.strip()))
    if "$" in path:
        raise SecretsError(f"[secrets] master_key_file {setting!r}: an environment variable in it is not set "
                           "(under systemd, LoadCredential= sets $CREDENTIALS_DIRECTORY)")
    return path


def read_master_key(setting: str) -> MasterKey:
    path = key_path(setting)
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise SecretsError(f"cannot read the master key file {path} ([secrets] master_key_file): "
                           f"{exc.strerror or type(exc).__name__}") from None
    return parse_master_key(data, path)


def write_master_key(path: str) -> MasterKey:
    """A new random master key in a new file (mode 0600); an existing file is never overwritten."""
    key = os.urandom(KEY_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SecretsError(f"{path} exists: refusing to overwrite a master key (the data keys it wraps would be "
                           "lost with it)") from None
    except OSError as exc:
        raise SecretsError(f"cannot create the master key file {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(base64.b64encode(key) + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    return MasterKey(key, path)


def wrap(master: MasterKey, kid: str, dek: bytes) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return b64url(nonce + AESGCM(master.key).encrypt(nonce, dek, DEK_AAD + kid.encode()))


def unwrap(master: MasterKey, kid: str, wrapped: Any) -> bytes:
    """The data key; ValueError or InvalidTag when `wrapped` is not this master's wrapping of `kid`."""
    raw = unb64url(wrapped)
    dek = AESGCM(master.key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], DEK_AAD + kid.encode())
    if len(dek) != KEY_BYTES:
        raise ValueError("not a 256-bit key")
    return dek


def new_data_key(master: MasterKey, now: datetime) -> dict[str, Any]:
    """A new data key's document (to insert), wrapped by `master`."""
    kid = os.urandom(8).hex()
    return {"_id": kid, "alg": ALG, "wrapped": wrap(master, kid, os.urandom(KEY_BYTES)), "master": master.id,
            "createdAt": now, "createdUnder": master.id}


def is_sealed(value: Any) -> bool:
    """True for a value this module wrote (any format version), False for plaintext."""
    return isinstance(value, str) and _SEALED.match(value) is not None


def key_id(value: Any) -> str | None:
    """The data key id of a sealed v1 value, None for anything else."""
    match = _V1.fullmatch(value) if isinstance(value, str) else None
    return match.group(1) if match else None


def _aad(kid: str, name: str) -> bytes:
    return f"{VERSION}:{kid}:{name}".encode()


def seal_value(kid: str, key: AESGCM, name: str, value: str) -> str:
    nonce = os.urandom(NONCE_BYTES)
    return f"{VERSION}:{kid}:{b64url(nonce + key.encrypt(nonce, value.encode(), _aad(kid, name)))}"


def _created(doc: dict[str, Any]) -> datetime:
    value = doc.get("createdAt")
    return aware(value) if isinstance(value, datetime) else datetime.min.replace(tzinfo=UTC)


def newest(docs: Iterable[dict[str, Any]]) -> Any:
    """The id of the active key among key documents `docs`: the newest not retired (None if there is none)."""
    live = [doc for doc in docs if not doc.get("retiredAt")]
    return max(live, key=lambda doc: (_created(doc), str(doc.get("_id"))))["_id"] if live else None


class Vault:
    """The data keys this process can open, and the active one. Disabled (no master key): values are stored as
    given, and an encrypted one cannot be opened."""

    def __init__(self, master: MasterKey | None, collection: Any = None, require_encrypted: bool = False):
        self.master = master
        self.collection = collection
        self.require_encrypted = require_encrypted
        self.active: str | None = None
        self.docs: dict[str, dict[str, Any]] = {}  # every key document read, by kid
        self._keys: dict[str, AESGCM] = {}
        self._foreign: dict[str, str] = {}  # kid -> the other master key id that wraps it
        self._broken: set[str] = set()  # wrapped by our master key's id, but it does not unwrap (altered)
        self._lock = asyncio.Lock()

    @classmethod
    def disabled(cls) -> Vault:
        return cls(None)

    @property
    def enabled(self) -> bool:
        return self.master is not None

    @property
    def name(self) -> str:
        return str(getattr(self.collection, "name", "?"))

    @property
    def master_id(self) -> str:
        return self.master.id if self.master else "(none)"

    def seal(self, name: str, value: str) -> str:
        """`value` of field `name` as it is stored: sealed under the active key, unchanged when disabled."""
        if self.master is None:
            return value
        if self.active is None:
            raise SecretsError(f"no active data key in {self.name!r}: run `collector secrets init`")
        return seal_value(self.active, self._keys[self.active], name, value)

    def seal_document(self, doc: dict[str, Any]) -> dict[str, Any]:
        """A copy of `doc` with every plaintext credential field sealed (a no-op when disabled)."""
        if self.master is None:
            return doc
        return {k: self.seal(k, v) if k in SECRET_FIELDS and isinstance(v, str) and v and not is_sealed(v) else v
                for k, v in doc.items()}

    async def load(self, strict: bool) -> None:
        """Read the key collection and unwrap the keys of our master. Strict (at start): every key must unwrap,
        else SecretsError naming the key source and the fingerprints."""
        assert self.master is not None
        problems = []
        async for doc in self.collection.find({}):
            kid = doc.get("_id")
            if not isinstance(kid, str):
                problems.append(f"a data key with a non-string _id {type(kid).__name__}")
                continue
            self.docs[kid] = doc
            if kid in self._keys:
                continue
            if doc.get("master") != self.master.id:
                self._foreign[kid] = str(doc.get("master"))
                problems.append(f"data key {kid} is wrapped by master key {doc.get('master')}")
                continue
            try:
                self._keys[kid] = AESGCM(unwrap(self.master, kid, doc.get("wrapped")))
            except (ValueError, TypeError, InvalidTag):
                self._broken.add(kid)
                problems.append(f"data key {kid} names master key {self.master.id} but does not unwrap with it "
                                "(altered or corrupt)")
        if strict and problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise SecretsError(f"the master key in {self.master.source} ({self.master.id}) cannot open every data key "
                               f"in {self.name!r}: {'; '.join(problems[:3])}{more}. A wrong master_key_file, or a "
                               "rotation not finished (`collector secrets rotate` resumes it)")
        self.active = newest(doc for kid, doc in self.docs.items() if kid in self._keys) or self.active

    async def _key(self, kid: str) -> AESGCM:
        if kid not in self._keys and kid not in self._foreign and kid not in self._broken:
            async with self._lock:  # a key created since the start (by `collector secrets rotate`): read them again
                if kid not in self._keys:
                    await self.load(strict=False)
                    if kid in self._foreign:
                        log.error("a data key is wrapped by another master key: restart this process with the new "
                                  "master key", key=kid, wrapped_by=self._foreign[kid], ours=self.master_id)
        if kid in self._keys:
            return self._keys[kid]
        if kid in self._foreign:
            raise KeyUnavailable(f"data key {kid} is wrapped by master key {self._foreign[kid]}, not by this "
                                 f"process's {self.master_id}: restart it with the new master key")
        if kid in self._broken:
            raise Undecryptable(f"data key {kid} does not unwrap with master key {self.master_id} (altered)")
        raise Undecryptable(f"data key {kid} is not in the key collection {self.name!r}")

    async def open(self, name: str, value: str) -> str:
        """The plaintext of sealed `value` of field `name`; Undecryptable (a KeyUnavailable) when it cannot be."""
        match = _V1.fullmatch(value)
        if match is None:
            version = _SEALED.match(value)
            if version and version.group(1) != "1":
                raise Undecryptable(f"field {name!r} is sealed in format v{version.group(1)}, which this version of "
                                    "collector does not read")
            raise Undecryptable(f"field {name!r} holds a malformed encrypted value")
        kid, payload = match.groups()
        if self.master is None:
            raise Undecryptable(f"field {name!r} is encrypted (data key {kid}) but [secrets] master_key_file is "
                                "not set")
        key = await self._key(kid)
        try:
            raw = unb64url(payload)
            return key.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad(kid, name)).decode()
        except (ValueError, InvalidTag):  # UnicodeDecodeError is a ValueError
            raise Undecryptable(f"field {name!r} does not decrypt with data key {kid} (altered, or moved from "
                                "another field)") from None

    async def reveal(self, doc: dict[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
        """A copy of `doc` with its credentials decrypted, and the names of those found in plaintext. A value that
        is no non-empty string is left as it is (RunNetwork.network says what is wrong with it)."""
        plain = dict(doc)
        plaintext = []
        for name in SECRET_FIELDS:
            value = doc.get(name)
            if not isinstance(value, str) or not value:
                continue
            if is_sealed(value):
                plain[name] = await self.open(name, value)
            else:
                plaintext.append(name)
        if plaintext and self.require_encrypted:
            raise Undecryptable(f"plaintext credentials ({', '.join(plaintext)}) while [secrets] require_encrypted "
                                "is on: `collector secrets encrypt` seals them", kind="plaintext_credentials")
        return plain, tuple(plaintext)


async def open_vault(db: Any, settings: Settings) -> Vault:
    """The process's vault, at start: every data key unwrapped under the configured master key, or SecretsError.
    Creates no key (`collector secrets init` does). A PyMongoError is the database's: left to the caller."""
    config = settings.secrets
    collection = db[config.key_collection]
    if not config.master_key_file.strip():
        if await collection.find_one({}, {"_id": 1}) is not None:
            raise SecretsError(f"networks may hold encrypted tokens but [secrets] master_key_file is not set (the key "
                               f"collection {config.key_collection!r} holds data keys)")
        return Vault(None, collection)
    vault = await vault_for(read_master_key(config.master_key_file), collection, config.require_encrypted)
    log.info("credentials encrypted at rest", master=vault.master_id, keys=len(vault.docs), active=vault.active)
    return vault


async def vault_for(master: MasterKey, collection: Any, require_encrypted: bool = False) -> Vault:
    vault = Vault(master, collection, require_encrypted)
    await vault.load(strict=True)
    if vault.active is None:
        raise SecretsError(f"the key collection {vault.name!r} holds no active data key for the master key in "
                           f"{master.source} ({master.id}): run `collector secrets init`")
    return vault


async def open_for_run(vault: Vault, store: Store, network: RunNetwork) -> RunNetwork | Outcome:
    """`network` with its credentials decrypted in memory for its run (added to the run's scrubbed secrets), and
    `stored_credentials` as the database holds them now: the plaintext ones sealed there (compare-and-set on the
    plaintext: a token changed meanwhile is left for the next run; a failed write is logged, not fatal). An
    Outcome instead when the run cannot go ahead."""
    stored = network.stored_credentials
    try:
        plain, plaintext = await vault.reveal(stored)
    except KeyUnavailable as exc:
        return Outcome(Kind.DEFERRED, rate_limit=RateLimit(retry_after=STALE_RETRY), error=exc.kind, message=str(exc))
    except Undecryptable as exc:
        return Outcome(Kind.PERMANENT, error=exc.kind, message=str(exc))
    except PyMongoError as exc:
        return Outcome(Kind.TRANSIENT, error="store_error", message=f"reading the data keys: {logs.describe(exc)}")
    if revealed := [str(plain[name]) for name in SECRET_FIELDS if plain.get(name) != stored.get(name)]:
        logs.add_run_secrets(revealed)  # the decrypted values: scrubbed from everything the run writes or logs
    changes = {name: (stored[name], vault.seal(name, stored[name])) for name in plaintext
               if vault.enabled and len(stored[name]) <= MAX_FIELD}  # a longer one is malformed: its run says so
    if changes:
        try:
            if await store.seal_credentials(network.id, changes):
                stored = {**stored, **{name: new for name, (_old, new) in changes.items()}}
                log.info("plaintext credentials sealed", fields=sorted(changes))
            else:
                log.info("credentials changed meanwhile: not sealed, the next run tries again")
        except PyMongoError as exc:
            log.warning("plaintext credentials not sealed: the next run tries again", error=logs.describe(exc))
    return replace(network, credentials=plain, stored_credentials=stored)
