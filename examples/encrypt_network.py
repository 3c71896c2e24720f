#!/usr/bin/env python3
"""An application that is not collector inserts a network whose access token is encrypted at rest.

It writes the format of docs/secrets.md with the `cryptography` package and pymongo alone (it imports nothing of
collector), as a service in any language would:

1. read the master key file: 44 characters of base64 (32 bytes) and an optional newline;
2. read the active data key from the key collection (the newest without `retiredAt`) and check that this master key
   wraps it: its `master` field is the master key's id, "local:" + the first 16 hex characters of its SHA-256;
3. unwrap it: AES-256-GCM under the master key, the first 12 bytes of `wrapped` (base64url) are the nonce, the last
   16 the tag, the additional data is "collector-dek:" + the key id;
4. encrypt the token: AES-256-GCM under the data key, a fresh random 12-byte nonce, the additional data
   "collector:v1:<kid>:accessToken" (the field name: a value only opens in its own field);
5. insert the network with accessToken = "collector:v1:<kid>:" + base64url(nonce + ciphertext + tag).

    pip install cryptography pymongo
    ACCESS_TOKEN=ghp_... python examples/encrypt_network.py --mongodb-uri mongodb://127.0.0.1:27017/ \\
        --database collector --master-key-file /etc/collector/master-key --user alice --service github

The token is read from an environment variable (--token-env, default ACCESS_TOKEN), never from the command line,
where `ps` would show it. Prints the new network's id.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import sys
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pymongo import MongoClient

NONCE, TAG = 12, 16


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    text = text.rstrip("=")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def read_master_key(path: str) -> bytes:
    with open(path, "rb") as handle:
        data = handle.read(65)
    text = data[:-1] if data.endswith(b"\n") else data
    key = base64.b64decode(text, validate=True) if len(text) == 44 else b""
    if len(key) != 32:
        sys.exit(f"{path} is not a master key (44 characters of base64 and an optional newline)")
    return key


def active_data_key(keys: Any, master: bytes) -> tuple[str, bytes]:
    """The active data key's id and its 32 bytes, unwrapped with the master key."""
    live = [doc for doc in keys.find({}) if not doc.get("retiredAt")]
    if not live:
        sys.exit("no data key in the key collection: run `collector secrets init` first")
    doc = max(live, key=lambda d: (d["createdAt"], d["_id"]))
    master_id = "local:" + hashlib.sha256(master).hexdigest()[:16]
    if doc["master"] != master_id:
        sys.exit(f"the active data key {doc['_id']} is wrapped by master key {doc['master']}, this one is {master_id}")
    kid = doc["_id"]
    wrapped = unb64url(doc["wrapped"])
    dek = AESGCM(master).decrypt(wrapped[:NONCE], wrapped[NONCE:], b"collector-dek:" + kid.encode())
    return kid, dek


def seal(kid: str, dek: bytes, field: str, value: str) -> str:
    """A credential as stored: `collector:v1:<kid>:<base64url(nonce + ciphertext + tag)>`."""
    nonce = os.urandom(NONCE)
    aad = f"collector:v1:{kid}:{field}".encode()
    return f"collector:v1:{kid}:" + b64url(nonce + AESGCM(dek).encrypt(nonce, value.encode(), aad))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mongodb-uri", default=os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27017/"))
    parser.add_argument("--database", default="collector")
    parser.add_argument("--key-collection", default="collector_keys")
    parser.add_argument("--master-key-file", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--token-env", default="ACCESS_TOKEN", help="the environment variable holding the token")
    args = parser.parse_args()
    token = os.environ.get(args.token_env)
    if not token:
        sys.exit(f"environment variable {args.token_env} is empty or not set")
    client: MongoClient[dict[str, Any]] = MongoClient(args.mongodb_uri)
    try:
        db = client[args.database]
        kid, dek = active_data_key(db[args.key_collection], read_master_key(args.master_key_file))
        network = {"user": args.user, "service": args.service, "accessToken": seal(kid, dek, "accessToken", token),
                   "mode": "initial", "scheduledTo": datetime.now(UTC)}
        print(db.networks.insert_one(network).inserted_id)
    finally:
        client.close()


if __name__ == "__main__":
    main()
