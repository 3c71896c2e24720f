"""The sandbox's OAuth state: access tokens that expire or are superseded, refresh tokens that rotate.

A user created with `access_ttl` and/or `refresh_token` (Sandbox.add_user, POST /_sandbox/users) gets a
Session. Its first access token is the user's own token, which stays the user's identity (the key of
Sandbox.users: items and counters never move); every access token a refresh issues is an alias of it
(Sandbox.aliases). The API emulators accept only the current access token (on_use: the previous one too,
until the new one is first used), and only for `access_ttl` seconds after it was issued; any other is
refused the way each API refuses a revoked token (Sandbox._refusal), so that the client refreshes. A
refresh (the token endpoint of every service, collector/sandbox/apis/oauth.py, or Bluesky's
com.atproto.server.refreshSession) gives a new access token and, by the user's rotation mode, a new
refresh token:

    none    the refresh token is kept (the answer carries none)
    strict  a new one each time; the one presented is invalid at once (GitHub App user tokens: "Once you use
            a refresh token, that refresh token and the old user access token will no longer work")
    on_use  a new one; the previous refresh token and access token stay valid until the new access token is
            first used (Doorkeeper's revoke-on-use, the OAuth server GitLab runs)
    grace   a new one; the one presented stays usable for `grace` seconds and gives the same successor again
            (the atproto PDS: REFRESH_GRACE_MS = 2 hours, AccountManager.rotateRefreshToken)

Default: strict for Bluesky, none for the others. A refresh token presented after it was invalidated is
refused (invalid_grant / ExpiredToken) and counted as a reuse (stats `refresh_reuse`, per user in
`tokens`). Users without a Session behave as before: their one token never expires.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ROTATIONS = ("none", "strict", "on_use", "grace")
DEFAULT_ROTATION = {"bluesky": "strict"}
GRACE = 7200.0  # seconds (the atproto PDS's refresh grace period)
# service -> (user, "access" | "refresh", now, access_ttl) -> a new token in that API's format (default: opaque)
MINTERS: dict[str, Callable[[Any, str, float, float | None], str]] = {}


@dataclass
class Session:
    access: str
    refresh: str | None
    rotation: str
    ttl: float | None  # access-token lifetime in seconds (None: never expires)
    expires_at: float | None  # of the current access token (Unix seconds)
    grace: float = GRACE
    previous: tuple[str, str | None, float | None] | None = None  # on_use: (access, refresh, expires_at) before
    graced: dict[str, tuple[str, float]] | None = None  # grace: old refresh token -> (its successor, usable until)
    refreshes: int = 0
    reuse: int = 0

    def info(self) -> dict[str, Any]:
        return {"access_token": self.access, "refresh_token": self.refresh, "rotation": self.rotation,
                "access_ttl": self.ttl, "expires_at": self.expires_at, "refreshes": self.refreshes,
                "refresh_reuse": self.reuse}


def mint(user: Any, kind: str, now: float, ttl: float | None) -> str:
    minter = MINTERS.get(user.service)
    if minter is not None:
        return minter(user, kind, now, ttl)
    return f"sbx-{'at' if kind == 'access' else 'rt'}-{secrets.token_hex(16)}"


def start(box: Any, user: Any, refresh_token: str | None = None, access_ttl: float | None = None,
          rotation: str | None = None, grace: float | None = None) -> None:
    """Give `user` a Session when its tokens are to expire or rotate (nothing otherwise)."""
    rotation = rotation or DEFAULT_ROTATION.get(user.service, "none")
    if rotation not in ROTATIONS:
        raise ValueError(f"rotation must be one of {', '.join(ROTATIONS)}")
    if refresh_token is None and access_ttl is None:
        return
    ttl = float(access_ttl) if access_ttl is not None else None
    now = time.time()
    with box.lock:
        user.session = Session(user.token, refresh_token, rotation, ttl, now + ttl if ttl is not None else None,
                               GRACE if grace is None else float(grace), graced={})
        if refresh_token:
            box.refresh_owner[refresh_token] = user.token


def check(box: Any, user: Any, token: str) -> str:
    """Whether `token` is a good access token of `user` now: "" (yes), "expired" or "superseded"."""
    session = user.session
    if session is None:
        return ""
    now = time.time()
    with box.lock:
        if token == session.access:
            if session.expires_at is not None and now >= session.expires_at:
                return "expired"
            session.previous = None  # on_use: the new access token is used, the previous pair is revoked
            return ""
        if session.previous is not None and token == session.previous[0]:
            expires = session.previous[2]
            return "expired" if expires is not None and now >= expires else ""
        return "superseded"


def expire(box: Any, user: Any) -> bool:
    """The user's current access token expires now (False: the user has no Session)."""
    with box.lock:
        if user.session is None:
            return False
        user.session.expires_at = time.time()
        return True


def refresh(box: Any, presented: str, service: str | None = None) -> tuple[Any, str, str | None] | str:
    """A refresh with `presented`: (user, new access token, new refresh token or None when it is kept), or why
    not: "invalid" (not a refresh token of this service), "revoked" (the user revoked the grant), "reused" (a
    refresh token invalidated by a rotation, counted)."""
    now = time.time()
    with box.lock:
        user = box.users.get(box.refresh_owner.get(presented, ""))
        session = user.session if user is not None else None
        if session is None or (service is not None and user.service != service):
            box.oauth["refresh_invalid"] += 1
            return "invalid"
        if user.revoked:
            box.oauth["refresh_invalid"] += 1
            return "revoked"
        graced = (session.graced or {}).get(presented)
        previous = session.previous is not None and presented == session.previous[1]
        if presented != session.refresh and not previous and not (graced and graced[1] > now):
            session.reuse += 1
            box.oauth["refresh_reuse"] += 1
            return "reused"
        access = mint(user, "access", now, session.ttl)
        new: str | None = None
        if session.rotation == "grace" and presented != session.refresh and graced:
            new = graced[0]  # the PDS hands out the same successor again
        elif session.rotation != "none":
            new = mint(user, "refresh", now, session.ttl)
            if session.rotation == "on_use" and not previous:
                session.previous = (session.access, session.refresh, session.expires_at)
            if session.rotation == "grace" and session.graced is not None:
                session.graced[presented] = (new, now + session.grace)
            session.refresh = new
            box.refresh_owner[new] = user.token
        session.access = access
        session.expires_at = now + session.ttl if session.ttl is not None else None
        session.refreshes += 1
        box.oauth["refreshes"] += 1
        box.aliases[access] = user.token
        return user, access, new


def stats(box: Any) -> dict[str, Any]:
    """The token and storm counters of Sandbox.stats (called with the sandbox's lock held)."""
    now = time.time()
    return {"refreshes": box.oauth["refreshes"], "refresh_reuse": box.oauth["refresh_reuse"],
            "refresh_invalid": box.oauth["refresh_invalid"], "stale_refused": box.oauth["stale_refused"],
            "storm_refused": dict(box.storm_refused),
            "storms": {service: round(end - now, 3) for service, end in box.storms.items() if end > now},
            "tokens": {token: {"refreshes": user.session.refreshes, "refresh_reuse": user.session.reuse}
                       for token, user in box.users.items() if user.session is not None}}
