"""Bluesky: the posts the user liked (XRPC query `app.bsky.feed.getActorLikes`).

GET {base}/xrpc/app.bsky.feed.getActorLikes?actor=&limit=100&cursor=, newest like first, no
"since" filter: cursor pagination (an absent cursor is the end), normal mode stops at the first
known post (sdk.sweep): one request when nothing is new. The token is the session's access JWT
(`Authorization: Bearer`), sent to the PDS/entryway in `base_url` (default https://bsky.social).

The actor is the network's `options.actor` (a handle or a DID); without it, the DID of the token
holder, read from the access JWT's `sub` claim (legacy/app-password session tokens carry it:
{"scope": "com.atproto.appPass", "sub": "did:plc:...", "exp": ...}). The method only serves the
requesting account's own likes, so that DID is the right actor and costs no extra request
(com.atproto.server.getSession would). A token without a readable DID and no option: PermanentError.

Docs:
- Lexicon app/bsky/feed/getActorLikes.json: "Get a list of posts liked by an actor. Requires auth,
  actor must be the requesting account."; params actor (at-identifier, required), limit (1-100,
  default 50), cursor; output {cursor?, feed: [feedViewPost]}; errors BlockedActor, BlockedByActor.
  The AppView answers 400 InvalidRequest "Profile not found" when actor is not the viewer, and may
  return a page emptied by its block/deleted-post filters that still carries a cursor: followed
  when it moved on, the end when it did not.
- bsky-docs advanced-guides/rate-limits.md: "Many HTTP API services return rate limit headers";
  "Requests that cross a limit usually receive an HTTP 429"; PDS "Overall API Requests (all
  endpoints) - Rate limited by IP - 3000 per 5 minutes". Headers ratelimit-limit: 3000,
  ratelimit-remaining, ratelimit-reset (Unix seconds), ratelimit-policy: 3000;w=300. The limit is
  the IP's, shared by every network this process runs: an exhausted one pauses the service.
- Errors are {"error": "...", "message": "..."}; the PDS auth verifier throws
  InvalidRequestError('Token has expired', 'ExpiredToken') and ('Token could not be verified',
  'InvalidToken'): HTTP 400, not 401 (a revoked session: 400 ExpiredToken "Token has been
  revoked"); the entryway/AppView send 401 ExpiredToken/InvalidToken, 401 AuthMissing. All of them
  make the network unauthorized, and the engine refreshes the session when the network has a refresh JWT.
- Session refresh (lexicon com.atproto.server.refreshSession, a procedure: "Refresh an authentication session.
  Requires auth using the 'refreshJwt' (not the 'accessJwt')."): POST {base}/xrpc/com.atproto.server.refreshSession
  with `Authorization: Bearer <refreshJwt>` (the network's `refreshToken`) and no body; output {accessJwt,
  refreshJwt, handle, did, didDoc?, status?}; errors AccountTakedown, and the auth verifier's ExpiredToken (an
  expired refresh JWT, or one rotated out: "Token has been revoked") and InvalidToken: the network becomes
  unauthorized; any other answer is a transient failure. The PDS rotates the refresh JWT on every refresh (the
  old one stays usable for a 2-hour grace period, packages/pds AccountManager.rotateRefreshToken): the new one is
  stored. No expires_in comes back: the new access JWT's own lifetime (exp - iat) stands for it, when it has both.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

import httpx

from collector.sdk import (
    BadResponse,
    Connector,
    Context,
    Item,
    Page,
    PermanentError,
    Request,
    Tokens,
    Unauthorized,
    excerpt,
    json_body,
    json_value,
    parse_time,
    sweep,
)

TOKEN_ERRORS = {"ExpiredToken", "InvalidToken", "AuthMissing", "AuthenticationRequired"}
REFRESH_REFUSED = TOKEN_ERRORS | {"AccountTakedown"}  # refreshSession: the session cannot be refreshed
MAX_LIFETIME = 10 * 365 * 86400
DID = re.compile(r"did:[a-z]+:[A-Za-z0-9._:%-]{1,2000}")
HANDLE = re.compile(r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def claims(token: str) -> dict[str, Any] | None:
    """The claims of a JWT (the signature is the server's business); None when it is not one."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        found = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    return found if isinstance(found, dict) else None


def token_did(token: str) -> str | None:
    """The `sub` claim of a JWT access token when it is a DID."""
    sub = (claims(token) or {}).get("sub")
    return sub if isinstance(sub, str) and DID.fullmatch(sub) else None


def lifetime(token: str) -> float | None:
    """A JWT's lifetime as issued (exp - iat, seconds): what refreshSession does not say as expires_in."""
    found = claims(token) or {}
    exp, iat = found.get("exp"), found.get("iat")
    if not (isinstance(exp, int) and isinstance(iat, int)) or isinstance(exp, bool) or isinstance(iat, bool):
        return None
    span = float(exp - iat)
    return span if 0 < span <= MAX_LIFETIME else None


class BlueskyLikes(Connector):
    service = "bluesky"
    api = "Bluesky (AT Protocol): liked posts (GET /xrpc/app.bsky.feed.getActorLikes)"
    default_base_url = "https://bsky.social"
    # ratelimit-*: the PDS limits by IP, so every network of this process shares it (a 429 without them still
    # stops the service, for the engine's default wait)
    limit_scope = "service"

    def actor(self, ctx: Context) -> str:
        actor = ctx.network.options.get("actor")
        if actor is None or actor == "":
            did = token_did(ctx.network.token)
            if did is None:
                raise PermanentError("missing option 'options.actor' (the account's handle or DID): "
                                     "the access token carries no DID")
            return did
        actor = actor.strip().removeprefix("@") if isinstance(actor, str) else ""
        if not (DID.fullmatch(actor) or HANDLE.fullmatch(actor)):
            raise PermanentError("option 'options.actor' must be a handle (alice.bsky.social) or a DID")
        return actor

    def request(self, ctx: Context) -> Request:
        params: dict[str, str | int] = {"actor": self.actor(ctx), "limit": 100}
        if ctx.cursor.get("next"):
            params["cursor"] = str(ctx.cursor["next"])
        return Request(f"{self.base_url}/xrpc/app.bsky.feed.getActorLikes", params=params)

    def check(self, ctx: Context, response: httpx.Response) -> None:
        status = response.status_code
        if status not in (400, 401) or not response.content.lstrip().startswith(b"{"):
            return
        try:
            body = json_value(response.content)  # capped: an error body is API data like any other
        except (ValueError, BadResponse):
            return
        error = body.get("error") if isinstance(body, dict) else None
        if error in TOKEN_ERRORS:
            raise Unauthorized(f"HTTP {status} {error}: {excerpt(str(body.get('message') or ''), 200)}")

    def parse(self, ctx: Context, response: httpx.Response) -> Page:
        body = json_body(response)
        feed = body["feed"]
        nxt = body.get("cursor")
        if not isinstance(feed, list) or not (nxt is None or isinstance(nxt, str)):
            raise BadResponse("expected {feed: [...], cursor?: string}")
        items = [self.item(entry["post"], entry) for entry in feed]
        # a page emptied by the AppView's filters still carries a cursor: sweep follows it, and ends at a cursor
        # that did not move
        fresh, cursor, more = sweep(ctx.cursor, items, nxt or None, ctx.mode)
        return Page(items=fresh, cursor=cursor, more=more)

    def refresh_request(self, ctx: Context, refresh_token: str) -> Request | None:
        """com.atproto.server.refreshSession on the network's own PDS; the refresh JWT is the bearer token (no OAuth
        token endpoint, client id or form)."""
        return Request(f"{self.base(ctx)}/xrpc/com.atproto.server.refreshSession", method="POST",
                       headers={"Authorization": f"Bearer {refresh_token}", "Accept": "application/json"})

    def parse_refresh(self, response: httpx.Response) -> Tokens:
        status = response.status_code
        try:
            body = json_value(response.content)
        except (ValueError, BadResponse):
            body = None
        if not isinstance(body, dict):
            raise BadResponse(f"refreshSession answered HTTP {status} without a JSON object")
        error = body.get("error")
        if status in (400, 401) and error in REFRESH_REFUSED:
            raise Unauthorized(f"session refresh refused: HTTP {status} {error}: "
                               f"{excerpt(str(body.get('message') or ''), 200)}")
        if status != 200:
            known = f" {error}" if isinstance(error, str) and error.isalnum() and len(error) <= 40 else ""
            raise BadResponse(f"refreshSession answered HTTP {status}{known}")
        access, refresh = body.get("accessJwt"), body.get("refreshJwt")
        if not (isinstance(access, str) and access and isinstance(refresh, str) and refresh):
            raise BadResponse("refreshSession reply without accessJwt and refreshJwt strings")
        return Tokens(access, refresh, lifetime(access))

    @staticmethod
    def item(post: dict, entry: dict) -> Item:
        uri = post["uri"]
        if not isinstance(uri, str) or not uri.startswith("at://"):
            raise BadResponse("a liked post without an at:// URI")
        author = post.get("author") or {}
        record = post.get("record") or {}
        handle = author.get("handle")
        profile = handle if isinstance(handle, str) and handle and handle != "handle.invalid" else uri[5:].split("/")[0]
        return Item(
            id=uri,
            title=record.get("text") or None,
            url=f"https://bsky.app/profile/{profile}/post/{uri.rsplit('/', 1)[-1]}",
            author=handle,
            created=parse_time(record.get("createdAt")),
            raw=entry,
        )
