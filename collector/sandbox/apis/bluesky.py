"""Bluesky emulator: GET /xrpc/app.bsky.feed.getActorLikes (a PDS proxying to the AppView).

Params actor (the user's handle `<name>.bsky.social` or DID, required: anyone else's likes are
400 InvalidRequest "Profile not found", as the AppView answers), limit (1-100, default 50; capped
by the sandbox's page size), cursor (opaque: the last like of the previous page). Output
{"feed": [{"post": postView}], "cursor"}: newest like first; like the AppView's keyset pagination
a non-empty page always carries a cursor and the end is an empty page without one. Every reply
carries ratelimit-limit, ratelimit-remaining, ratelimit-reset (Unix seconds) and ratelimit-policy
("<limit>;w=<window>"); an exhausted window answers 429 {"error": "RateLimitExceeded"}. Token
problems come as the PDS sends them: an unknown token 400 {"error": "InvalidToken"}, a revoked
one (or any token during a revocation storm) 400 {"error": "ExpiredToken", "message": "Token has been
revoked"}, an expired access JWT 400 ExpiredToken "Token has expired", none 401 AuthMissing.

POST /xrpc/com.atproto.server.refreshSession (lexicon com.atproto.server.refreshSession: "Requires auth
using the 'refreshJwt' (not the 'accessJwt')", no input): the refresh JWT as `Authorization: Bearer`;
output {accessJwt, refreshJwt, handle, did}. A refresh token already rotated out (strict rotation, the
default for Bluesky users; see collector/sandbox/tokens.py) or of a revoked user: 400 ExpiredToken "Token
has been revoked" (as the PDS when rotateRefreshToken finds nothing); an access JWT or an unknown token:
400 InvalidToken. Tokens a refresh issues are JWT-shaped like the PDS's: the access JWT {scope:
"com.atproto.access", sub: <did>, iat, exp: iat + access_ttl (default 7200)}, the refresh JWT {scope:
"com.atproto.refresh", sub, jti, iat, exp: 90 days}; the signature is random bytes, checked by nobody.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import time
from typing import Any

import collector.sandbox.tokens as tokens
from collector.sandbox.core import Response, Sandbox, User, iso, json_reply, riding, route

TID_ALPHABET = "234567abcdefghijklmnopqrstuvwxyz"  # base32-sortable, as record keys (TIDs) are written


def did(user: User) -> str:
    return "did:plc:" + hashlib.sha256(f"sandbox:{user.name}".encode()).hexdigest()[:24]


def handle(user: User) -> str:
    return f"{user.name}.bsky.social"


def tid(n: int) -> str:
    out = ""
    for _ in range(13):
        n, r = divmod(n, 32)
        out = TID_ALPHABET[r] + out
    return out


def post_view(user: User, item: dict[str, Any]) -> dict[str, Any]:
    n = item["id"]
    author = f"poster{n % 41}"
    author_did = "did:plc:" + hashlib.sha256(author.encode()).hexdigest()[:24]
    rkey = tid(1_700_000_000_000_000 + n)
    at = iso(item["at"])
    return {
        "uri": f"at://{author_did}/app.bsky.feed.post/{rkey}",
        "cid": "bafyrei" + hashlib.sha256(f"post{n}".encode()).hexdigest()[:52],
        "author": {"did": author_did, "handle": f"{author}.bsky.social", "displayName": f"Poster {n % 41}",
                   "labels": [], "createdAt": "2023-04-01T00:00:00.000Z"},
        "record": {"$type": "app.bsky.feed.post", "text": f"Post {n} & friends", "langs": ["en"],
                   "createdAt": at.replace("Z", ".000Z")},
        "replyCount": n % 7, "repostCount": n % 5, "likeCount": 1 + n % 90, "quoteCount": 0,
        "indexedAt": at.replace("Z", ".000Z"),
        "viewer": {"like": f"at://{did(user)}/app.bsky.feed.like/{tid(1_800_000_000_000_000 + n)}"},
        "labels": [],
    }


def _limits(sandbox: Sandbox, remaining: int, reset_at: float) -> dict[str, str]:
    return {"ratelimit-limit": str(sandbox.rate_limit), "ratelimit-remaining": str(remaining),
            "ratelimit-reset": str(int(reset_at)), "ratelimit-policy": f"{sandbox.rate_limit};w={int(sandbox.window)}"}


def _bluesky_fault(sandbox: Sandbox, resp: Response) -> Response:
    """The sandbox's generic faults (GitHub-shaped) in the PDS's shapes; transport faults unchanged."""
    out = resp
    if resp.status == 401:
        why = "expired" if getattr(resp, "fault", "") == "expired" else "been revoked"
        out = json_reply(400, {"error": "ExpiredToken", "message": f"Token has {why}"})
    elif resp.status == 403 and resp.headers.get("x-ratelimit-remaining") == "0":
        reset = float(resp.headers.get("x-ratelimit-reset", time.time()))
        out = json_reply(429, {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"},
                         _limits(sandbox, 0, reset))
    elif resp.status == 429:
        out = json_reply(429, {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}, resp.headers)
    elif resp.status >= 500:
        try:
            message = str(json.loads(resp.body).get("message"))
        except (ValueError, AttributeError):
            message = "Internal Server Error"
        out = json_reply(resp.status, {"error": "InternalServerError", "message": message})
    out.fault = getattr(resp, "fault", "")
    return out


@route(r"/xrpc/app\.bsky\.feed\.getActorLikes")
def get_actor_likes(sandbox: Sandbox, method: str, headers: dict[str, str], query: dict[str, str], match: re.Match[str],
                    body: bytes) -> Response:
    if not headers.get("authorization", "").lower().startswith("bearer "):
        return json_reply(401, {"error": "AuthMissing", "message": "Authentication Required"})
    user = sandbox.bearer_user(headers, "bluesky")
    if user is None:
        return json_reply(400, {"error": "InvalidToken", "message": "Token could not be verified"})
    ride: dict[str, str] = {}
    if (fault := sandbox.fault(user)) is not None:
        if not riding(fault):
            return _bluesky_fault(sandbox, fault)
        ride = {k: v for k, v in fault.headers.items() if k != "content-type"}
    allowed, remaining, reset_at = sandbox.quota(user)
    limits = _limits(sandbox, remaining, reset_at)
    if not allowed:
        return json_reply(429, {"error": "RateLimitExceeded", "message": "Rate Limit Exceeded"}, limits)
    actor = query.get("actor")
    if not actor:
        return json_reply(400, {"error": "InvalidRequest", "message": 'Error: Params must have the property "actor"'},
                          limits)
    try:
        size = int(query.get("limit", 50))
    except ValueError:
        size = 0
    if not 1 <= size <= 100:
        return json_reply(400, {"error": "InvalidRequest", "message": "Error: limit must be <= 100 and >= 1"},
                          limits)
    if actor not in (did(user), handle(user)):
        return json_reply(400, {"error": "InvalidRequest", "message": "Profile not found"}, limits)
    start = 0
    if query.get("cursor"):
        try:
            start = sandbox.position_after(user, int(query["cursor"].split("::")[-1]))
        except ValueError:
            start = len(user.items)  # a clearly bad cursor: an empty page, as the AppView does
    chunk = sandbox.serve(user, start, size)
    out: dict[str, Any] = {"feed": [{"post": post_view(user, item)} for item in chunk]}
    if chunk:
        out["cursor"] = f"{int(chunk[-1]['at'] * 1000)}::{chunk[-1]['id']}"
    reply = json_reply(200, out, {**limits, **ride})
    reply.fault = "headers" if ride else ""
    return reply


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_jwt(user: User, kind: str, now: float, ttl: float | None) -> str:
    """A session token shaped as the PDS's (tokens.MINTERS): the claims are real, the signature random."""
    claims: dict[str, Any] = {"scope": f"com.atproto.{kind}", "sub": did(user), "iat": int(now),
                              "aud": "did:web:sandbox.bsky.test"}
    if kind == "access":
        claims["exp"] = int(now + (ttl if ttl is not None else 7200))
    else:
        claims.update(jti=_b64(secrets.token_bytes(32)), exp=int(now + 90 * 86400))
    header = {"typ": "at+jwt" if kind == "access" else "refresh+jwt", "alg": "ES256K"}
    return ".".join([_b64(json.dumps(header).encode()), _b64(json.dumps(claims).encode()),
                     _b64(secrets.token_bytes(48))])


tokens.MINTERS["bluesky"] = mint_jwt


@route(r"/xrpc/com\.atproto\.server\.refreshSession")
def refresh_session(sandbox: Sandbox, method: str, headers: dict[str, str], query: dict[str, str],
                    match: re.Match[str], body: bytes) -> Response:
    if method != "POST":
        return json_reply(400, {"error": "InvalidRequest",
                                "message": f"Incorrect HTTP method ({method}) expected POST"})
    auth = headers.get("authorization", "")
    if not auth.lower().startswith("bearer "):
        return json_reply(401, {"error": "AuthMissing", "message": "Authentication Required"})
    presented = auth[7:].strip()
    if sandbox.key(presented) is not None:  # an access token where the refresh JWT belongs
        return json_reply(400, {"error": "InvalidToken", "message": "Bad token scope"})
    got = tokens.refresh(sandbox, presented, service="bluesky")
    if got == "invalid":
        return json_reply(400, {"error": "InvalidToken", "message": "Token could not be verified"})
    if isinstance(got, str):  # rotated out, or the user revoked the session
        return json_reply(400, {"error": "ExpiredToken", "message": "Token has been revoked"})
    user, access, rotated = got
    return json_reply(200, {"did": did(user), "handle": handle(user), "accessJwt": access,
                            "refreshJwt": rotated or presented})
