"""Credentials encrypted at rest (collector/secrets.py): the format, the keys, what refuses to open, and the run path:
an encrypted network runs with its plaintext token, a plaintext one is sealed by its run."""

from __future__ import annotations

import base64
import os
import re

import httpx
import pytest
import respx
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from collector import plugins, sdk
from collector.clock import utcnow
from collector.config import ConfigError
from collector.executor import Executor
from collector.model import SECRET_FIELDS, RunNetwork
from collector.secrets import (
    KeyUnavailable,
    MasterKey,
    SecretsError,
    Undecryptable,
    Vault,
    fingerprint,
    is_sealed,
    key_id,
    new_data_key,
    open_for_run,
    open_vault,
    parse_master_key,
    read_master_key,
    seal_value,
    unwrap,
    write_master_key,
)
from collector.states import Kind, Outcome
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one

BASE = "https://fake.test"
TOKEN = "tok_plain_secret_0123456789"
REFRESH = "refresh_plain_secret_987654"


class Fake(sdk.Connector):
    service = "fake"
    api = "a fake API for the secrets tests"
    default_base_url = BASE

    def request(self, ctx):
        return sdk.Request(f"{self.base_url}/items")

    def parse(self, ctx, response):
        return sdk.Page(items=[sdk.Item(id=str(x)) for x in response.json()["items"]], cursor={}, more=False)


REGISTRY = {"fake": plugins.Registered("fake", Fake, "tests", "0")}


def key_file(tmp_path, name="master-key") -> str:
    path = str(tmp_path / name)
    write_master_key(path)
    return path


def settings_for(path: str = "", **secrets):
    return make_settings(secrets={"master_key_file": path, **secrets})


async def initialised(db, path: str) -> MasterKey:
    """A master key file with one data key in the key collection (what `collector secrets init` makes)."""
    master = read_master_key(path)
    await db.collector_keys.insert_one(new_data_key(master, utcnow()))
    return master


@pytest.fixture
async def vault(mock_db, tmp_path):
    path = key_file(tmp_path)
    await initialised(mock_db, path)
    return await open_vault(mock_db, settings_for(path))


# -- the format --------------------------------------------------------------------------------------------------


async def test_a_sealed_value_is_the_documented_string_and_opens_again(vault):
    sealed = vault.seal("accessToken", TOKEN)
    assert re.fullmatch(r"collector:v1:[0-9a-f]{16}:[A-Za-z0-9_-]+", sealed) and TOKEN not in sealed
    assert is_sealed(sealed) and not is_sealed(TOKEN) and key_id(sealed) == vault.active
    raw = base64.urlsafe_b64decode(sealed.split(":")[3] + "==")
    assert len(raw) == 12 + len(TOKEN) + 16  # nonce, ciphertext, tag
    assert vault.seal("accessToken", TOKEN) != sealed  # a random nonce per value
    plain, plaintext = await vault.reveal({"_id": 1, "accessToken": sealed, "user": "u"})
    assert plain == {"_id": 1, "accessToken": TOKEN, "user": "u"} and plaintext == ()


async def test_a_value_moved_to_another_field_does_not_open(vault):
    sealed = vault.seal("accessToken", TOKEN)
    with pytest.raises(Undecryptable) as caught:
        await vault.reveal({"_id": 1, "refreshToken": sealed})
    assert caught.value.kind == "undecryptable" and "refreshToken" in str(caught.value)
    assert TOKEN not in str(caught.value) and sealed not in str(caught.value)


async def test_an_altered_value_does_not_open(vault):
    sealed = vault.seal("accessToken", TOKEN)
    payload = bytearray(base64.urlsafe_b64decode(sealed.split(":")[3] + "=="))
    payload[20] ^= 1
    altered = ":".join(sealed.split(":")[:3]) + ":" + base64.urlsafe_b64encode(bytes(payload)).decode().rstrip("=")
    with pytest.raises(Undecryptable, match="does not decrypt"):
        await vault.reveal({"accessToken": altered})
    for junk in ("collector:v1:0123456789abcdef:!!", "collector:v9:abc:def"):
        with pytest.raises(Undecryptable):
            await vault.reveal({"accessToken": junk})


def test_the_data_key_is_bound_to_its_id():
    master = MasterKey(os.urandom(32), "test")
    doc = new_data_key(master, utcnow())
    assert len(unwrap(master, doc["_id"], doc["wrapped"])) == 32
    assert doc["master"] == master.id == fingerprint(master.key) and re.fullmatch(r"local:[0-9a-f]{16}", master.id)
    with pytest.raises(Exception):  # noqa: B017 - InvalidTag: the wrapping names its key id
        unwrap(master, "0123456789abcdef", doc["wrapped"])


# -- the master key file -----------------------------------------------------------------------------------------


def test_a_new_key_file_is_private_and_never_overwritten(tmp_path):
    path = tmp_path / "k"
    master = write_master_key(str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_text()) == 45 and read_master_key(str(path)).id == master.id
    with pytest.raises(SecretsError, match="refusing to overwrite"):
        write_master_key(str(path))
    assert read_master_key(str(path)).id == master.id


KEY_TEXT = base64.b64encode(bytes(range(100, 132)))  # a well-formed key file's content (44 characters)


@pytest.mark.parametrize("content", [
    b"", b"\n", KEY_TEXT[:43], bytes(range(100, 132)), KEY_TEXT + b"\n\n", b" " + KEY_TEXT, KEY_TEXT + b"\r\n",
    base64.b64encode(bytes(31)) + b"A", b"!" * 44, base64.b64encode(bytes(33)), KEY_TEXT * 2,
], ids=["empty", "newline", "short", "raw-bytes", "two-newlines", "leading-space", "crlf", "31-bytes", "not-base64",
        "33-bytes", "twice"])
def test_a_malformed_key_file_is_refused_without_showing_it(tmp_path, content):
    path = tmp_path / "k"
    path.write_bytes(content)
    with pytest.raises(SecretsError) as caught:
        read_master_key(str(path))
    message = str(caught.value)
    assert str(path) in message and "44 characters of base64" in message
    assert not content.strip() or content.strip().decode(errors="replace") not in message


def test_a_key_file_with_or_without_its_newline_is_the_same_key():
    text = base64.b64encode(os.urandom(32))
    assert parse_master_key(text, "a").id == parse_master_key(text + b"\n", "b").id


def test_a_missing_key_file_and_an_unset_variable_are_named(tmp_path, monkeypatch):
    with pytest.raises(SecretsError, match=re.escape(str(tmp_path / "nope"))):
        read_master_key(str(tmp_path / "nope"))
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(SecretsError, match="CREDENTIALS_DIRECTORY"):
        read_master_key("${CREDENTIALS_DIRECTORY}/master-key")
    path = key_file(tmp_path)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))  # systemd's LoadCredential= sets it
    assert read_master_key("${CREDENTIALS_DIRECTORY}/master-key").id == read_master_key(path).id


def test_the_settings(monkeypatch):
    from collector import config

    assert make_settings().secrets.master_key_file == "" and make_settings().secrets.key_collection == "collector_keys"
    env = {"COLLECTOR_SECRETS__MASTER_KEY_FILE": "${CREDENTIALS_DIRECTORY}/master-key",
           "COLLECTOR_SECRETS__REQUIRE_ENCRYPTED": "true"}
    loaded = config.load(environment="test", environ=env).secrets
    assert loaded.master_key_file == "${CREDENTIALS_DIRECTORY}/master-key" and loaded.require_encrypted is True
    with pytest.raises(ConfigError, match="require_encrypted needs master_key_file"):
        make_settings(secrets={"require_encrypted": True})
    with pytest.raises(ConfigError, match="key_collection"):
        make_settings(secrets={"key_collection": "system.keys"})
    with pytest.raises(ConfigError):
        make_settings(secrets={"master_key_file": 3})


# -- opening the vault -------------------------------------------------------------------------------------------


async def test_a_wrong_master_key_is_refused_at_start_naming_the_file(mock_db, tmp_path):
    right = key_file(tmp_path, "right")
    master = await initialised(mock_db, right)
    wrong = key_file(tmp_path, "wrong")
    with pytest.raises(SecretsError) as caught:
        await open_vault(mock_db, settings_for(wrong))
    message = str(caught.value)
    assert wrong in message and master.id in message and read_master_key(wrong).id in message


async def test_an_altered_data_key_is_refused_at_start(mock_db, tmp_path):
    path = key_file(tmp_path)
    await initialised(mock_db, path)
    await mock_db.collector_keys.update_many({}, {"$set": {"wrapped": "A" * 80}})
    with pytest.raises(SecretsError, match="altered"):
        await open_vault(mock_db, settings_for(path))


async def test_no_master_key_with_data_keys_in_the_database_is_refused(mock_db, tmp_path):
    assert not (await open_vault(mock_db, settings_for())).enabled  # nothing there: encryption is simply off
    await initialised(mock_db, key_file(tmp_path))
    with pytest.raises(SecretsError, match="master_key_file is not set"):
        await open_vault(mock_db, settings_for())


async def test_a_master_key_without_a_data_key_says_to_run_init(mock_db, tmp_path):
    with pytest.raises(SecretsError, match="secrets init"):
        await open_vault(mock_db, settings_for(key_file(tmp_path)))


async def test_an_encrypted_value_without_a_master_key_is_undecryptable(vault):
    sealed = vault.seal("accessToken", TOKEN)
    with pytest.raises(Undecryptable, match="master_key_file is not set") as caught:
        await Vault.disabled().reveal({"accessToken": sealed})
    assert caught.value.kind == "undecryptable"


async def test_plaintext_with_require_encrypted_is_refused(mock_db, tmp_path):
    path = key_file(tmp_path)
    await initialised(mock_db, path)
    strict = await open_vault(mock_db, settings_for(path, require_encrypted=True))
    with pytest.raises(Undecryptable) as caught:
        await strict.reveal({"accessToken": TOKEN})
    assert caught.value.kind == "plaintext_credentials" and TOKEN not in str(caught.value)
    plain, _ = await strict.reveal({"accessToken": strict.seal("accessToken", TOKEN)})
    assert plain["accessToken"] == TOKEN


async def test_a_key_created_since_the_start_is_read_once_then_a_missing_one_is_undecryptable(vault, mock_db):
    later = new_data_key(vault.master, utcnow())  # another process's `secrets rotate`, same master
    await mock_db.collector_keys.insert_one(later)
    dek = unwrap(vault.master, later["_id"], later["wrapped"])
    sealed = seal_value(later["_id"], AESGCM(dek), "accessToken", TOKEN)
    assert (await vault.reveal({"accessToken": sealed}))[0]["accessToken"] == TOKEN
    missing = sealed.replace(later["_id"], "f" * 16)
    with pytest.raises(Undecryptable, match="not in the key collection"):
        await vault.reveal({"accessToken": missing})


async def test_a_key_of_another_master_defers_the_run(vault, mock_db, tmp_path):
    other = MasterKey(os.urandom(32), "other")
    foreign = new_data_key(other, utcnow())
    await mock_db.collector_keys.insert_one(foreign)
    sealed = seal_value(foreign["_id"], AESGCM(unwrap(other, foreign["_id"], foreign["wrapped"])), "accessToken", TOKEN)
    with pytest.raises(KeyUnavailable):
        await vault.reveal({"accessToken": sealed})
    outcome = await open_for_run(vault, Store(mock_db), RunNetwork.read({"_id": 1, "accessToken": sealed}))
    assert isinstance(outcome, Outcome) and outcome.kind is Kind.DEFERRED and other.id in outcome.message


async def test_a_token_changed_meanwhile_is_not_overwritten(vault, mock_db):
    store = Store(mock_db)
    await mock_db.networks.insert_one({"_id": 1, "accessToken": "changed-meanwhile"})
    read = RunNetwork.read({"_id": 1, "accessToken": TOKEN})  # read before the change
    opened = await open_for_run(vault, store, read)
    assert isinstance(opened, RunNetwork) and opened.credentials["accessToken"] == TOKEN
    assert opened.stored_credentials["accessToken"] == TOKEN
    assert (await mock_db.networks.find_one({"_id": 1}))["accessToken"] == "changed-meanwhile"


# -- the run path ------------------------------------------------------------------------------------------------


@pytest.fixture
async def engine(mock_db, vault, clock, rng):
    store = Store(mock_db)
    await store.ensure_indexes()
    async with httpx.AsyncClient() as client:
        yield store, Executor(store, client, make_settings(), REGISTRY, clock=clock, rng=rng, vault=vault)


async def run_network(engine, clock, **fields):
    store, executor = engine
    network_id = await store.insert_network({"user": "u1", "service": "fake", "mode": "initial",
                                             "scheduledTo": clock.now, "errors": 0, **fields})
    doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
    result = await executor.run(doc, lease)
    return result, await store.networks.find_one({"_id": network_id})


@respx.mock
async def test_an_encrypted_network_runs_with_its_plaintext_token(engine, clock, vault):
    route = respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [1, 2]}))
    sealed = vault.seal("accessToken", TOKEN)
    result, raw = await run_network(engine, clock, accessToken=sealed)
    assert result.outcome.kind is Kind.PAGE and result.new_items == 2
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert raw["accessToken"] == sealed  # untouched: already sealed


@respx.mock
async def test_a_plaintext_network_is_sealed_by_its_run(engine, clock, vault, mock_db):
    route = respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [1]}))
    result, raw = await run_network(engine, clock, accessToken=TOKEN, refreshToken=REFRESH)
    assert result.outcome.kind is Kind.PAGE and route.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"
    for name in SECRET_FIELDS:
        assert raw.get(name) is None or is_sealed(raw[name]), name
    assert TOKEN not in repr(raw) and REFRESH not in repr(raw)
    plain, plaintext = await vault.reveal(raw)
    assert (plain["accessToken"], plain["refreshToken"], plaintext) == (TOKEN, REFRESH, ())
    clock.advance(3600)  # and the next run reads the sealed document
    await mock_db.networks.update_one({"_id": raw["_id"]}, {"$set": {"scheduledTo": clock.now, "mode": "initial"}})
    store, executor = engine
    doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
    assert (await executor.run(doc, lease)).outcome.kind is Kind.PAGE
    assert route.calls.last.request.headers["Authorization"] == f"Bearer {TOKEN}"


@respx.mock
async def test_an_undecryptable_network_is_disabled_without_a_request(engine, clock, vault):
    route = respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": []}))
    moved = vault.seal("refreshToken", TOKEN)  # a refresh token's value put into the access token field
    result, raw = await run_network(engine, clock, accessToken=moved)
    assert not route.called and result.outcome.kind is Kind.PERMANENT
    assert raw["disabled"] is True and raw["lastError"]["kind"] == "undecryptable"
    assert TOKEN not in repr(raw) and raw["accessToken"] == moved


@respx.mock
async def test_without_a_vault_a_plaintext_network_stays_as_it_is(mock_db, clock, rng):
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"items": [1]}))
    store = Store(mock_db)
    async with httpx.AsyncClient() as client:
        executor = Executor(store, client, make_settings(), REGISTRY, clock=clock, rng=rng)
        result, raw = await run_network((store, executor), clock, accessToken=TOKEN)
    assert result.outcome.kind is Kind.PAGE and raw["accessToken"] == TOKEN


async def test_the_documented_test_vector_opens():
    """docs/secrets.md's vector, for writers in other languages: it must stay what this code reads."""
    from tests.conftest import ROOT

    doc = (ROOT / "docs" / "secrets.md").read_text()
    key_text, kid = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "0123456789abcdef"
    wrapped = "AQEBAQEBAQEBAQEBV-LHFkygTkH8fU0zNEp89_tfveiltiDry-I916E0wA5XIzRSXWuOvLOBo7icl0LG"
    value = "collector:v1:0123456789abcdef:AgICAgICAgICAgICCmZF5El0ivOUI8d_Fawo6hwcwQi8NudpWQox1l462M4"
    assert all(part in doc for part in (key_text, wrapped, value, "local:630dcd2966c43366"))
    master = parse_master_key(key_text.encode() + b"\n", "vector")
    assert master.id == "local:630dcd2966c43366" and master.key == bytes(range(32))
    dek = unwrap(master, kid, wrapped)
    assert dek == bytes(range(32, 64))
    vault = Vault(master)
    vault._keys[kid] = AESGCM(dek)
    assert await vault.open("accessToken", value) == "ghp_exampletoken"
