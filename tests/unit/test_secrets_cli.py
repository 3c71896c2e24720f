"""`collector secrets init|encrypt|rotate|status` (collector/secrets_cli.py) on mongomock: idempotent, resumable,
and never a token in what they print."""

from __future__ import annotations

import asyncio
import os

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from collector.clock import utcnow
from collector.model import SECRET_FIELDS
from collector.secrets import (
    SecretsError,
    is_sealed,
    key_id,
    new_data_key,
    open_vault,
    read_master_key,
    seal_value,
    unwrap,
    wrap,
)
from collector.secrets_cli import command, encrypt_all, init_keys, rotate, rotation_keys, status
from collector.store import Store
from tests.conftest import make_settings

TOKENS = {i: f"tok-{i:03d}-plaintext-secret" for i in range(40)}


def settings_for(path: str = ""):
    return make_settings(secrets={"master_key_file": path})


class Echo(list[str]):
    def __call__(self, line: str) -> None:
        self.append(line)

    @property
    def text(self) -> str:
        return "\n".join(self)


def no_token_in(text: str) -> bool:
    return not any(token in text for token in TOKENS.values())


async def seed(db, vault, old_key=None):
    """0-24 plaintext, 25-29 sealed under the active key, 30-34 under `old_key` (kid, AESGCM), 35 without credentials,
    36 with a value that does not open."""
    docs = []
    for i in range(35):
        token = TOKENS[i]
        if i >= 30 and old_key:
            token = seal_value(old_key[0], old_key[1], "accessToken", token)
        elif i >= 25:
            token = vault.seal("accessToken", token)
        docs.append({"_id": i, "user": f"u{i}", "service": "github", "accessToken": token})
    docs.append({"_id": 35, "user": "u35", "service": "github"})
    docs.append({"_id": 36, "user": "u36", "service": "github",  # under a data key nobody has
                 "accessToken": seal_value("f" * 16, AESGCM(os.urandom(32)), "accessToken", "lost-token")})
    await db.networks.insert_many(docs)


async def test_init_writes_a_key_creates_one_data_key_and_is_idempotent(mock_db, tmp_path):
    store, path, echo = Store(mock_db), str(tmp_path / "master-key"), Echo()
    master = await init_keys(store, settings_for(), path, echo)
    assert (tmp_path / "master-key").stat().st_mode & 0o777 == 0o600
    keys = await mock_db.collector_keys.find().to_list(None)
    assert len(keys) == 1 and keys[0]["master"] == master.id and keys[0]["alg"] == "A256GCM"
    assert master.id in echo.text and "master_key_file" in echo.text
    again = Echo()
    assert (await init_keys(store, settings_for(path), None, again)).id == master.id
    assert "already initialised" in again.text and await mock_db.collector_keys.count_documents({}) == 1
    with pytest.raises(SecretsError, match="rotate"):  # a second master key would leave the first one's keys behind
        await init_keys(store, settings_for(path), str(tmp_path / "another"), Echo())
    assert not (tmp_path / "another").exists()
    with pytest.raises(SecretsError, match="--new-master-key"):
        await init_keys(store, settings_for(), None, Echo())


async def test_encrypt_seals_and_re_encrypts_everything_once(mock_db, tmp_path):
    path = str(tmp_path / "k")
    store = Store(mock_db)
    master = await init_keys(store, settings_for(), path, Echo())
    old = new_data_key(master, utcnow())  # an older data key, retired since
    await mock_db.collector_keys.insert_one({**old, "retiredAt": utcnow()})
    vault = await open_vault(mock_db, settings_for(path))
    old_aead = AESGCM(unwrap(master, old["_id"], old["wrapped"]))
    await seed(mock_db, vault, (old["_id"], old_aead))

    real = store.seal_credentials

    async def racing(network_id, changes):  # network 7 changes between the read and the write
        if network_id == 7:
            await mock_db.networks.update_one({"_id": 7}, {"$set": {"accessToken": "tok-007-replaced"}})
        return await real(network_id, changes)

    store.seal_credentials = racing  # type: ignore[method-assign]
    echo = Echo()
    progress = await encrypt_all(store, vault, 10, echo)
    assert (progress.total, progress.scanned, progress.sealed, progress.reencrypted, progress.changed,
            progress.undecryptable) == (37, 37, 24, 5, 1, 1)
    assert "10/37 networks" in echo.text and "network 36" in echo.text and no_token_in(echo.text)
    store.seal_credentials = real  # type: ignore[method-assign]
    progress = await encrypt_all(store, vault, 10, Echo())  # the one changed meanwhile now, then nothing
    assert (progress.sealed, progress.reencrypted, progress.changed, progress.undecryptable) == (1, 0, 0, 1)
    progress = await encrypt_all(store, vault, 10, Echo())
    assert (progress.sealed, progress.reencrypted, progress.changed) == (0, 0, 0)
    async for doc in mock_db.networks.find({"_id": {"$lt": 35}}):
        assert key_id(doc["accessToken"]) == vault.active
        plain, _ = await vault.reveal(doc)
        assert plain["accessToken"] == ("tok-007-replaced" if doc["_id"] == 7 else TOKENS[doc["_id"]])


async def test_rotate_rewraps_every_key_re_encrypts_and_resumes(mock_db, tmp_path):
    old_path, new_path = str(tmp_path / "old"), str(tmp_path / "new")
    store = Store(mock_db)
    old_master = await init_keys(store, settings_for(), old_path, Echo())
    second = new_data_key(old_master, utcnow())
    await mock_db.collector_keys.insert_one(second)
    vault = await open_vault(mock_db, settings_for(old_path))
    await seed(mock_db, vault)
    current, new = rotation_keys(settings_for(old_path), new_path, Echo())
    # interrupted after its first key: re-wrapped under the new master, the rest not yet
    await mock_db.collector_keys.update_one({"_id": second["_id"]}, {"$set": {
        "master": new.id, "wrapped": wrap(new, second["_id"], unwrap(old_master, second["_id"], second["wrapped"]))}})
    echo = Echo()
    progress = await rotate(store, settings_for(old_path), current, new, 50, echo)
    assert "1 data keys re-wrapped" in echo.text and "(1 already were)" in echo.text and no_token_in(echo.text)
    keys = await mock_db.collector_keys.find().to_list(None)
    assert len(keys) == 3 and all(k["master"] == new.id for k in keys)
    with pytest.raises(SecretsError, match=old_master.id):
        await open_vault(mock_db, settings_for(old_path))
    after = await open_vault(mock_db, settings_for(new_path))
    assert after.active not in (second["_id"], keys[0]["_id"]) and progress.sealed == 25
    async for doc in mock_db.networks.find({"_id": {"$lt": 35}}):
        assert key_id(doc["accessToken"]) == after.active and (await after.reveal(doc))[0]["accessToken"] == TOKENS[
            doc["_id"]]
    # run again: nothing left to do, and no second new data key
    again = Echo()
    current, new = rotation_keys(settings_for(old_path), new_path, again)
    progress = await rotate(store, settings_for(old_path), current, new, 50, again)
    assert "0 data keys re-wrapped" in again.text and await mock_db.collector_keys.count_documents({}) == 3
    assert (progress.sealed, progress.reencrypted) == (0, 0)


async def test_rotate_refuses_a_key_wrapped_by_neither_master(mock_db, tmp_path):
    store = Store(mock_db)
    await init_keys(store, settings_for(), str(tmp_path / "old"), Echo())
    stranger = read_master_key(str(tmp_path / "old"))
    await mock_db.collector_keys.update_many({}, {"$set": {"master": "local:0000000000000000"}})
    current, new = rotation_keys(settings_for(str(tmp_path / "old")), str(tmp_path / "new"), Echo())
    with pytest.raises(SecretsError, match="neither the current one"):
        await rotate(store, settings_for(str(tmp_path / "old")), current, new, 10, Echo())
    assert stranger.id != new.id
    with pytest.raises(SecretsError, match="current master key"):
        rotation_keys(settings_for(str(tmp_path / "old")), str(tmp_path / "old"), Echo())


async def test_status_counts_and_shows_no_token(mock_db, tmp_path):
    path = str(tmp_path / "k")
    store = Store(mock_db)
    master = await init_keys(store, settings_for(), path, Echo())
    vault = await open_vault(mock_db, settings_for(path))
    await seed(mock_db, vault)
    echo = Echo()
    await status(store, settings_for(path), echo)
    assert master.id in echo.text and vault.active in echo.text and "active" in echo.text
    assert "networks: 37: 25 with plaintext credentials, 11 encrypted, 1 without credentials" in echo.text
    assert no_token_in(echo.text) and not any(is_sealed(word) for word in echo.text.split())
    off = Echo()
    await status(store, settings_for(), off)
    assert "encryption off" in off.text


def test_the_commands_through_click(mock_db, tmp_path):
    path = str(tmp_path / "k")
    store = Store(mock_db)

    def run(ctx, fn, settings=None):
        try:
            return asyncio.run(fn(store))
        except SecretsError as exc:  # as collector.cli._run does
            import click
            raise click.ClickException(str(exc)) from exc

    group = command(lambda ctx: settings_for(path), run)
    runner = CliRunner()
    result = runner.invoke(group, ["init", "--new-master-key", path])
    assert result.exit_code == 0, result.output
    asyncio.run(mock_db.networks.insert_many([{"_id": i, "service": "github", "accessToken": TOKENS[i]}
                                              for i in range(3)]))
    result = runner.invoke(group, ["encrypt", "--batch", "2"])
    assert result.exit_code == 0 and "done: 3/3 networks: 3 sealed" in result.output and no_token_in(result.output)
    result = runner.invoke(group, ["status"])
    assert result.exit_code == 0 and "3 encrypted" in result.output and no_token_in(result.output)
    result = runner.invoke(group, ["rotate", "--new-master-key", str(tmp_path / "new")])
    assert result.exit_code == 0 and "3 re-encrypted" in result.output, result.output
    for doc in asyncio.run(mock_db.networks.find().to_list(None)):
        assert all(doc.get(name) is None or is_sealed(doc[name]) for name in SECRET_FIELDS)
    result = runner.invoke(group, ["init", "--new-master-key", path])  # the file exists
    assert result.exit_code == 1 and "already holds data keys" in result.output
