"""`collector secrets init|encrypt|rotate|status`: the keys of the credentials encrypted at rest (collector/secrets.py).

Every step is a compare-and-set, so each command is idempotent and resumable: run it again after an interruption
and it finishes the job. Nothing here prints a credential or a key: key ids, fingerprints, paths and counts only.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from collector.config import Settings
    from collector.secrets import MasterKey, Vault
    from collector.store import Store

Echo = Callable[[str], None]


@dataclass
class Migration:
    total: int = 0  # networks in the collection when the pass began
    scanned: int = 0
    sealed: int = 0  # networks whose plaintext credentials were sealed
    reencrypted: int = 0  # networks whose values moved to the active data key
    changed: int = 0  # skipped: the document changed between the read and the write (the next pass takes it)
    undecryptable: int = 0  # skipped: a value that does not open (shown with its network id and why)

    def line(self) -> str:
        return (f"{self.scanned}/{self.total} networks: {self.sealed} sealed, {self.reencrypted} re-encrypted, "
                f"{self.changed} changed meanwhile (skipped), {self.undecryptable} undecryptable")


def _keys(store: Store, settings: Settings) -> Any:
    """The key collection, its writes acknowledged as [database] write_concern says (a majority): a data key that a
    failover rolled back would take every value sealed under it along."""
    from pymongo.write_concern import WriteConcern

    durable = WriteConcern(w=settings.database.write_concern)
    return store.db.get_collection(settings.secrets.key_collection, write_concern=durable)


async def _changes(vault: Vault, doc: dict[str, Any]) -> tuple[dict[str, tuple[str, str]], bool]:
    """`{field: (stored, new)}` for the credentials of `doc` not sealed under the active key, and whether one of
    them was plaintext. Undecryptable for a value that does not open."""
    from collector.model import MAX_FIELD, SECRET_FIELDS
    from collector.secrets import is_sealed, key_id

    changes, plaintext = {}, False
    for name in SECRET_FIELDS:
        value = doc.get(name)
        if not isinstance(value, str) or not value:
            continue
        if not is_sealed(value):
            if len(value) <= MAX_FIELD:  # a longer one is malformed: its run disables the network, saying why
                changes[name], plaintext = (value, vault.seal(name, value)), True
        elif key_id(value) != vault.active:
            changes[name] = (value, vault.seal(name, await vault.open(name, value)))
    return changes, plaintext


async def encrypt_all(store: Store, vault: Vault, batch: int, echo: Echo) -> Migration:
    """Seal every plaintext credential, and re-encrypt every value under another data key than the active one, one
    compare-and-set per network on its old values (`batch` of them at once); a progress line per batch."""
    from collector.model import SECRET_FIELDS
    from collector.secrets import Undecryptable

    progress = Migration(total=await store.networks.count_documents({}))
    pending: list[tuple[Any, dict[str, tuple[str, str]], bool]] = []

    async def flush() -> None:
        done = await asyncio.gather(*(store.seal_credentials(nid, changes) for nid, changes, _ in pending))
        for (_nid, _edits, plaintext), ok in zip(pending, done, strict=True):
            if not ok:
                progress.changed += 1
            elif plaintext:
                progress.sealed += 1
            else:
                progress.reencrypted += 1
        pending.clear()
        echo(progress.line())

    async for doc in store.networks.find({}, {name: 1 for name in SECRET_FIELDS}).sort("_id", 1):
        progress.scanned += 1
        try:
            changes, plaintext = await _changes(vault, doc)
        except Undecryptable as exc:
            progress.undecryptable += 1
            echo(f"  network {doc['_id']}: {exc}")
            changes = {}
        if changes:
            pending.append((doc["_id"], changes, plaintext))
        if progress.scanned % batch == 0:
            await flush()
    await flush()
    return progress


async def init_keys(store: Store, settings: Settings, new_file: str | None, echo: Echo) -> MasterKey:
    """The first data key, under the configured master key or a new one written to `new_file`. Idempotent."""
    from collector.clock import utcnow
    from collector.secrets import SecretsError, Vault, new_data_key, read_master_key, write_master_key

    config = settings.secrets
    collection = _keys(store, settings)
    if new_file is not None:
        existing = await collection.find_one({})
        if existing is not None:
            raise SecretsError(f"the key collection {config.key_collection!r} already holds data keys (wrapped by "
                               f"master key {existing.get('master')}): `collector secrets rotate --new-master-key "
                               "FILE` changes the master key")
        master = write_master_key(new_file)
        echo(f"wrote a new master key to {new_file} (mode 0600). Keep a copy offline: without it the encrypted "
             "tokens are lost")
    elif config.master_key_file.strip():
        master = read_master_key(config.master_key_file)
    else:
        raise SecretsError("no master key: give --new-master-key FILE (a new key is written there), or set [secrets] "
                           "master_key_file to an existing one")
    vault = Vault(master, collection)
    await vault.load(strict=True)
    if vault.active is not None:
        echo(f"already initialised: data key {vault.active} is active under master key {master.id}")
    else:
        doc = new_data_key(master, utcnow())
        await collection.insert_one(doc)
        echo(f"created data key {doc['_id']} under master key {master.id}")
    echo(f"master key id: {master.id}")
    if new_file is not None:
        echo(f'next: [secrets] master_key_file = "{new_file}" (or COLLECTOR_SECRETS__MASTER_KEY_FILE; under systemd '
             "LoadCredential=, README \"Encrypting tokens at rest\") on every host, restart every collector process, "
             "then `collector secrets encrypt`")
    return master


def rotation_keys(settings: Settings, new_file: str, echo: Echo) -> tuple[MasterKey, MasterKey]:
    """The current master key and the new one, read from `new_file`, or written there if the file does not exist
    (so that a rotation run again after an interruption goes on with the same key)."""
    from collector.secrets import SecretsError, read_master_key, write_master_key

    if not settings.secrets.master_key_file.strip():
        raise SecretsError("[secrets] master_key_file (the current master key) is not set: nothing to rotate from")
    current = read_master_key(settings.secrets.master_key_file)
    if os.path.exists(new_file):
        new = read_master_key(new_file)
        echo(f"using the master key in {new_file} ({new.id})")
    else:
        new = write_master_key(new_file)
        echo(f"wrote a new master key to {new_file} ({new.id}, mode 0600). Keep a copy offline")
    if new.id == current.id:
        raise SecretsError(f"{new_file} holds the current master key ({current.id}): give a new one")
    return current, new


async def rotate(store: Store, settings: Settings, current: MasterKey, new: MasterKey, batch: int,
                 echo: Echo) -> Migration:
    """Re-wrap every data key under master key `new`, then create a new data key under it that every value is
    re-encrypted with. Resumable: a key the new master wraps already is left as it is, as is the new data key an
    interrupted run created."""
    from cryptography.exceptions import InvalidTag

    from collector.clock import utcnow
    from collector.secrets import SecretsError, new_data_key, newest, unwrap, vault_for, wrap

    config = settings.secrets
    collection = _keys(store, settings)
    docs = [doc async for doc in collection.find({})]
    if not docs:
        raise SecretsError(f"no data key in {config.key_collection!r}: `collector secrets init` creates the first")
    plan = []
    for doc in docs:  # every key checked before any is changed
        kid, master = doc.get("_id"), doc.get("master")
        if master not in (current.id, new.id):
            raise SecretsError(f"data key {kid} is wrapped by master key {master}, neither the current one "
                               f"({current.id}, {current.source}) nor the new one ({new.id}, {new.source})")
        try:
            dek = unwrap(current if master == current.id else new, str(kid), doc.get("wrapped"))
        except (ValueError, TypeError, InvalidTag):
            raise SecretsError(f"data key {kid} does not unwrap with master key {master} (altered)") from None
        if master == current.id:
            plan.append((doc, dek))
    now = utcnow()
    for doc, dek in plan:
        result = await collection.update_one(
            {"_id": doc["_id"], "master": current.id, "wrapped": doc["wrapped"]},
            {"$set": {"master": new.id, "wrapped": wrap(new, doc["_id"], dek), "rewrappedAt": now}})
        if result.matched_count != 1 and (await collection.find_one({"_id": doc["_id"]}) or {}).get("master") != new.id:
            raise SecretsError(f"data key {doc['_id']} changed during the rotation: run it again")
    echo(f"{len(plan)} data keys re-wrapped under master key {new.id} ({len(docs) - len(plan)} already were)")
    kid = newest(doc for doc in docs if doc.get("createdUnder") == new.id)
    if kid is not None:
        echo(f"data key {kid}, created by an earlier run of this rotation, is the new one")
    else:
        created = new_data_key(new, now)
        await collection.insert_one(created)
        kid = created["_id"]
        echo(f"created data key {kid} under master key {new.id}")
    retired = await collection.update_many({"_id": {"$ne": kid}, "retiredAt": {"$exists": False}},
                                           {"$set": {"retiredAt": now}})
    echo(f"{retired.modified_count} older data keys retired (they still open the values sealed under them)")
    progress = await encrypt_all(store, await vault_for(new, collection), batch, echo)
    echo(f"next: 1. point [secrets] master_key_file at {new.source} on every host and restart every collector "
         "process (until then, a process with the old key defers the runs of networks re-encrypted under the new "
         "data key, and cannot start again with it); 2. then run `collector secrets encrypt` once more: it "
         f"re-encrypts what old processes sealed meanwhile; 3. destroy every copy of the old master key ({current.id})")
    return progress


async def status(store: Store, settings: Settings, echo: Echo) -> None:
    """The master key, every data key, and how many networks hold plaintext or encrypted credentials (per key)."""
    from cryptography.exceptions import InvalidTag

    from collector.model import SECRET_FIELDS
    from collector.secrets import SecretsError, is_sealed, key_id, newest, read_master_key, unwrap

    config = settings.secrets
    master = None
    if not config.master_key_file.strip():
        echo("master key: not configured ([secrets] master_key_file is empty): encryption off")
    else:
        try:
            master = read_master_key(config.master_key_file)
            echo(f"master key: {master.id} ({master.source})")
        except SecretsError as exc:
            echo(f"master key: unusable: {exc}")
    per_key: Counter[str] = Counter()
    plaintext = encrypted = without = total = 0
    async for doc in store.networks.find({}, {name: 1 for name in SECRET_FIELDS}):
        total += 1
        values = [v for v in (doc.get(name) for name in SECRET_FIELDS) if isinstance(v, str) and v]
        per_key.update({key_id(v) or "(malformed)" for v in values if is_sealed(v)})
        if any(not is_sealed(v) for v in values):
            plaintext += 1
        elif values:
            encrypted += 1
        else:
            without += 1
    keys = [doc async for doc in store.db[config.key_collection].find({})]
    active = newest(keys)
    echo(f"data keys in {config.key_collection!r}: {len(keys)}")
    if keys:
        echo(f"{'KEY':<18}{'ALG':<9}{'WRAPPED BY':<24}{'OPENS':<7}{'CREATED':<27}{'STATE':<9}NETWORKS")
    for doc in keys:
        kid = str(doc["_id"])
        opens = "?"
        if master is not None:
            try:
                opens = "yes" if unwrap(master, kid, doc.get("wrapped")) else "no"
            except (ValueError, TypeError, InvalidTag):
                opens = "no"
        state = "active" if doc["_id"] == active else "retired" if doc.get("retiredAt") else ""
        echo(f"{kid:<18}{doc.get('alg')!s:<9}{doc.get('master')!s:<24}{opens:<7}{doc.get('createdAt')!s:<27}"
             f"{state:<9}{per_key.pop(kid, 0)}")
    echo(f"networks: {total}: {plaintext} with plaintext credentials, {encrypted} encrypted, {without} without "
         "credentials")
    for kid, count in sorted(per_key.items()):
        echo(f"  {count} networks hold values under data key {kid}, which the key collection does not have")


def command(load_settings: Callable[[click.Context], Any], run: Callable[..., Any]) -> click.Group:
    """The `secrets` group, given the CLI's settings loader and database runner (collector/cli.py)."""

    @click.group()
    def secrets() -> None:
        """Credentials encrypted at rest (README "Encrypting tokens at rest", docs/secrets.md)."""

    @secrets.command("init")
    @click.option("--new-master-key", "new_file", metavar="FILE",
                  help="Write a new random master key to FILE (mode 0600, never over an existing file) and use it.")
    @click.pass_context
    def init_command(ctx: click.Context, new_file: str | None) -> None:
        """Create the first data key under the master key (idempotent); prints the master key id."""
        settings = load_settings(ctx)
        run(ctx, lambda store: init_keys(store, settings, new_file, click.echo), settings)

    @secrets.command("encrypt")
    @click.option("--batch", type=click.IntRange(1, 10_000), default=100, show_default=True,
                  help="Networks written at once (and between two progress lines).")
    @click.pass_context
    def encrypt_command(ctx: click.Context, batch: int) -> None:
        """Seal every plaintext credential in place and re-encrypt values under an older data key. Resumable."""
        from collector.secrets import SecretsError, open_vault

        settings = load_settings(ctx)

        async def go(store: Store) -> Migration:
            vault = await open_vault(store.db, settings)
            if not vault.enabled:
                raise SecretsError("encryption is off: set [secrets] master_key_file (`collector secrets init` first)")
            return await encrypt_all(store, vault, batch, click.echo)

        click.echo(f"done: {run(ctx, go, settings).line()}")

    @secrets.command("rotate")
    @click.option("--new-master-key", "new_file", metavar="FILE", required=True,
                  help="The new master key: read if FILE exists, else a new random one is written there (mode 0600).")
    @click.option("--batch", type=click.IntRange(1, 10_000), default=100, show_default=True,
                  help="Networks re-encrypted at once.")
    @click.pass_context
    def rotate_command(ctx: click.Context, new_file: str, batch: int) -> None:
        """Re-wrap every data key under a new master key, then re-encrypt every value under a new data key.
        Resumable: run it again after an interruption."""
        from collector.secrets import SecretsError

        settings = load_settings(ctx)
        try:
            current, new = rotation_keys(settings, new_file, click.echo)
        except SecretsError as exc:
            raise click.ClickException(str(exc)) from exc
        progress = run(ctx, lambda store: rotate(store, settings, current, new, batch, click.echo), settings)
        click.echo(f"done: {progress.line()}")

    @secrets.command("status")
    @click.pass_context
    def status_command(ctx: click.Context) -> None:
        """Master key, data keys, and networks with plaintext or encrypted credentials (never a value)."""
        settings = load_settings(ctx)
        run(ctx, lambda store: status(store, settings, click.echo), settings)

    return secrets
