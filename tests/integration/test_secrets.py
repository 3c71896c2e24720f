"""Credentials encrypted at rest on the wire server: the migration and the rotation of a fleet's networks, then real
processes (the CLI, an application writing the documented format, the daemon) end to end: after the daemon's runs
no credential in `networks` is plaintext, and the APIs got the plaintext tokens."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
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
)
from collector.secrets_cli import encrypt_all, init_keys, rotate, rotation_keys
from collector.store import Store
from tests.conftest import ROOT, make_settings
from tests.integration.test_daemons import daemon, stop, wait_for


def settings_for(path: str = ""):
    return make_settings(secrets={"master_key_file": path})


async def test_init_encrypt_and_rotate_a_fleet_of_networks(wire_db, tmp_path):
    store, path = Store(wire_db, write_concern="majority"), str(tmp_path / "master-key")
    echo: list[str] = []
    master = await init_keys(store, settings_for(), path, echo.append)
    old = new_data_key(master, utcnow())  # an older data key, retired
    await wire_db.collector_keys.insert_one({**old, "retiredAt": utcnow()})
    vault = await open_vault(wire_db, settings_for(path))
    old_aead = AESGCM(unwrap(master, old["_id"], old["wrapped"]))
    tokens = {i: f"tok-{i:04d}-wire-secret" for i in range(300)}
    docs = []
    for i, token in tokens.items():
        doc = {"_id": i, "user": f"u{i}", "service": "github", "accessToken": token}
        if 200 <= i < 250:
            doc["accessToken"] = vault.seal("accessToken", token)
        elif i >= 250:
            doc["accessToken"] = seal_value(old["_id"], old_aead, "accessToken", token)
        if i % 10 == 0:
            doc["refreshToken"] = f"refresh-{token}"
        docs.append(doc)
    await wire_db.networks.insert_many(docs)

    real = store.seal_credentials

    async def racing(network_id, changes):  # network 123 is changed by its application midway
        if network_id == 123:
            await wire_db.networks.update_one({"_id": 123}, {"$set": {"accessToken": "tok-0123-new"}})
        return await real(network_id, changes)

    store.seal_credentials = racing  # type: ignore[method-assign]
    echo.clear()
    progress = await encrypt_all(store, vault, 64, echo.append)
    # sealed: 0-199 but 123, and the 10 of 200-299 with a plaintext refresh token; re-encrypted: the rest of 250-299
    assert (progress.scanned, progress.sealed, progress.reencrypted, progress.changed) == (300, 209, 45, 1)
    assert "64/300 networks" in "\n".join(echo) and not any(t in "\n".join(echo) for t in tokens.values())
    store.seal_credentials = real  # type: ignore[method-assign]
    tokens[123] = "tok-0123-new"
    progress = await encrypt_all(store, vault, 64, echo.append)  # resumed: the skipped one, nothing else
    assert (progress.sealed, progress.reencrypted, progress.changed) == (1, 0, 0)
    assert (await encrypt_all(store, vault, 64, echo.append)).sealed == 0  # idempotent
    async for doc in wire_db.networks.find({}):
        assert all(key_id(doc[f]) == vault.active for f in SECRET_FIELDS if f in doc)
        plain, plaintext = await vault.reveal(doc)
        assert plain["accessToken"] == tokens[doc["_id"]] and plaintext == ()

    new_path = str(tmp_path / "new-master-key")
    current, new = rotation_keys(settings_for(path), new_path, echo.append)
    progress = await rotate(store, settings_for(path), current, new, 64, echo.append)
    assert progress.reencrypted == 300
    with pytest.raises(SecretsError) as refused:
        await open_vault(wire_db, settings_for(path))
    assert path in str(refused.value) and new.id in str(refused.value)
    rotated = await open_vault(wire_db, settings_for(new_path))
    assert rotated.active not in (vault.active, old["_id"])
    async for doc in wire_db.networks.find({}):
        assert all(key_id(doc[f]) == rotated.active for f in SECRET_FIELDS if f in doc)
        assert (await rotated.reveal(doc))[0]["accessToken"] == tokens[doc["_id"]]
    keys = await wire_db.collector_keys.find({}).to_list(None)
    assert len(keys) == 3 and {k["master"] for k in keys} == {new.id}
    assert [k["_id"] for k in keys if not k.get("retiredAt")] == [rotated.active]


def cli(uri: str, dbname: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_")}
    return subprocess.run([sys.executable, "-m", "collector", "--env", "test", "--mongodb-uri", uri,
                           "--set", f"database.name={dbname}", *args], cwd=ROOT, env={**clean, **(env or {})},
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow  # real processes: seconds (the quick loop: -m "not slow")
def test_after_the_daemons_runs_no_credential_is_plaintext(wire_uri, sandbox, sync_db, tmp_path):
    db, key = sync_db, str(tmp_path / "master-key")
    keyset = ("--set", f"secrets.master_key_file={key}")
    init = cli(wire_uri, db.name, "secrets", "init", "--new-master-key", key)
    assert init.returncode == 0 and read_master_key(key).id in init.stdout, init.stdout + init.stderr
    tokens = [f"gh-tok-{i:02d}-e2e-secret" for i in range(12)]
    for token in tokens:
        sandbox.sandbox.add_user("github", token, items=3)  # two pages each
    # plaintext, as they were before encryption was turned on
    db.networks.insert_many([{"user": f"user{i}", "service": "github", "accessToken": t, "mode": "initial",
                              "scheduledTo": utcnow()} for i, t in enumerate(tokens[:10])])
    added = cli(wire_uri, db.name, *keyset, "networks", "add", "--user", "cli-user", "--service", "github",
                "--token-env", "TOKEN", env={"TOKEN": tokens[10]})
    assert added.returncode == 0, added.stderr
    assert is_sealed(db.networks.find_one({"user": "cli-user"})["accessToken"])  # sealed by `networks add`
    example = subprocess.run([sys.executable, str(ROOT / "examples" / "encrypt_network.py"), "--mongodb-uri", wire_uri,
                              "--database", db.name, "--master-key-file", key, "--user", "app-user", "--service",
                              "github"], env={**os.environ, "ACCESS_TOKEN": tokens[11]}, capture_output=True,
                             text=True, timeout=60)
    assert example.returncode == 0, example.stderr
    assert is_sealed(db.networks.find_one({"user": "app-user"})["accessToken"])  # the documented format, by another app

    wrong = str(tmp_path / "wrong-key")
    refused = cli(wire_uri, db.name, "--set", f"secrets.master_key_file={wrong}", "secrets", "init",
                  "--new-master-key", wrong)
    assert refused.returncode == 1 and "already holds data keys" in refused.stderr
    with open(wrong, "w") as handle:  # a master key that wraps none of the data keys: the daemon does not start
        handle.write("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n")
    proc = daemon("initial", wire_uri, db.name, sandbox.url, "--set", f"secrets.master_key_file={wrong}")
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 5 and wrong in out.decode(), out.decode()[-2000:]

    proc = daemon("initial", wire_uri, db.name, sandbox.url, *keyset)
    try:
        wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == 12, 120,
                 "the 12 networks to finish their back-fill")
    finally:
        code, out = stop(proc)
    assert code == 0, out[-3000:]
    assert db.items.count_documents({}) == 12 * 3  # every run decrypted its token: the sandbox served them all
    assert sorted(sandbox.sandbox.stats()["by_token"]) == sorted(tokens)  # plaintext on the wire, never sealed
    for doc in db.networks.find({}):
        for name in SECRET_FIELDS:
            assert doc.get(name) is None or is_sealed(doc[name]), (doc["user"], name)
        assert not any(token in repr(doc) for token in tokens)
    assert not any(token in out for token in tokens)
    shown = cli(wire_uri, db.name, *keyset, "secrets", "status")
    assert shown.returncode == 0 and "12 encrypted" in shown.stdout and "0 with plaintext" in shown.stdout
    assert not any(token in shown.stdout + shown.stderr for token in tokens)
