"""The token endpoint of every emulated service (RFC 6749 section 6): POST /oauth/token.

Form (application/x-www-form-urlencoded) grant_type=refresh_token, refresh_token=...; client authentication
(HTTP Basic, or client_id/client_secret in the form) is accepted and not checked. Answers as RFC 6749 5.1
and 5.2 say, Cache-Control: no-store: 200 {"access_token", "token_type": "bearer", "expires_in" (when the
user's access tokens expire), "refresh_token" (when the user's rotation mode issues a new one)}; 400
{"error": "invalid_grant"} for a refresh token that is unknown, revoked with its user, or invalidated by a
rotation (a reuse, counted in stats `refresh_reuse`); 400 unsupported_grant_type / invalid_request; 405
for any method but POST. Sessions, rotation modes and expiry: collector/sandbox/tokens.py. Point a service
at it with [services.<name>] token_url = "<sandbox>/oauth/token" (and a client_id)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import collector.sandbox.tokens as tokens
from collector.sandbox.core import Response, Sandbox, json_reply, route

NO_STORE = {"cache-control": "no-store", "pragma": "no-cache"}
REFUSED = {"invalid": "The refresh token is invalid", "revoked": "The refresh token was revoked",
           "reused": "The refresh token was already used (rotated)"}


def _error(status: int, error: str, description: str, headers: dict[str, str] | None = None) -> Response:
    return json_reply(status, {"error": error, "error_description": description}, {**NO_STORE, **(headers or {})})


@route(r"/oauth/token")
def token_endpoint(sandbox: Sandbox, method: str, headers: dict[str, str], query: dict[str, str],
                   match: re.Match[str], body: bytes) -> Response:
    if method != "POST":
        return _error(405, "invalid_request", "use POST", {"allow": "POST"})
    if not headers.get("content-type", "").lower().startswith("application/x-www-form-urlencoded"):
        return _error(400, "invalid_request", "the body must be application/x-www-form-urlencoded")
    form = {k: v[-1] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
    if form.get("grant_type") != "refresh_token":
        return _error(400, "unsupported_grant_type", "only grant_type=refresh_token is served here")
    if not form.get("refresh_token"):
        return _error(400, "invalid_request", "missing refresh_token")
    got = tokens.refresh(sandbox, form["refresh_token"])
    if isinstance(got, str):
        return _error(400, "invalid_grant", REFUSED[got])
    user, access, rotated = got
    out: dict[str, object] = {"access_token": access, "token_type": "bearer"}
    if user.session is not None and user.session.ttl is not None:
        out["expires_in"] = max(int(user.session.ttl), 1)
    if rotated:
        out["refresh_token"] = rotated
    return json_reply(200, out, NO_STORE)
