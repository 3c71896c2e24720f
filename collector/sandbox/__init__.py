"""A local sandbox API: a real HTTP/1.1 server on 127.0.0.1 that imitates the APIs our connectors
call, with the same URL shapes, pagination, headers and body fields, and counts everything it
serves so a test can prove nothing was lost or fetched twice.

    GitHub          GET /user/starred?per_page=&page=    Link, ETag/If-None-Match, x-ratelimit-*
    Stack Exchange  GET /2.3/me/favorites?page=&pagesize= gzip, has_more, quota_*, backoff

Control endpoints (JSON): POST /_sandbox/users {service, token, items, user?} creates a user with
`items` starred things (newest first); POST /_sandbox/users/<token>/add {count} makes new items
arrive; POST /_sandbox/users/<token>/faults {kind, count, seconds?, status?, size?} makes the next
`count` requests fail (kinds in FAULTS: 5xx, rate limits, 401, malformed/truncated/wrong-type
bodies, oversize, timeout, connection reset, slow drip, arbitrary (absurd) rate-limit headers);
POST /_sandbox/users/<token>/revoke; GET /_sandbox/stats returns the counters; POST /_sandbox/reset
forgets everything. POST /_sandbox/users/<token>/remove {ids} takes items (the sandbox's numeric ids) out of every
API's listings, as an un-star or an un-like would; POST /_sandbox/users/<token>/restore {ids} puts them back in
their place (Sandbox.remove_items, restore_items).

Expiring and rotating tokens (collector/sandbox/tokens.py): POST /_sandbox/users also takes refresh_token,
access_ttl (seconds), rotation (none | strict | on_use | grace) and grace (seconds); the user's access token
then expires after access_ttl, and POST /oauth/token (form grant_type=refresh_token, refresh_token: every
service, RFC 6749 answers; apis/oauth.py) or Bluesky's POST /xrpc/com.atproto.server.refreshSession gives
new tokens. The user keeps its identity: <token> in these URLs and the counters stays the one it was created
with, any access token it was given also names it. POST /_sandbox/users/<token>/expire: its access token
expires now; GET /_sandbox/users/<token>/tokens: its current tokens and refresh counters. Stats: refreshes,
refresh_reuse (an invalidated refresh token presented again), refresh_invalid, stale_refused (requests with
an expired or superseded access token), tokens (per user).

A revocation storm: POST /_sandbox/storm {service, seconds} makes every request to `service` (omitted or
"*": every service that takes tokens) answer as with a revoked token, each API in its own shape (GitHub 401
Bad credentials, Bluesky 400 ExpiredToken, Stack Exchange 400 invalid_access_token...), for `seconds` (0 ends it);
the tokens were never revoked: then they work again. Token endpoints keep working. Stats: storm_refused
(requests refused, by service), storms (those under way, seconds left).

For benchmarks: POST /_sandbox/bulk {service, prefix, count, items, access_ttl?, rotation?, refresh_prefix?}
creates `count` users whose tokens are prefix0, prefix1... (refresh tokens refresh_prefix0...);
POST /_sandbox/bulk/add {count} gives every user new items; POST /_sandbox/repos {repos} serves full-size
GitHub repositories instead of compact ones: "full", generated from GitHub's documented repository schema
(payloads.py), or a list of repositories served under each item's id and names.
`Sandbox.transfers` records every API reply on the wire: when it arrived and ended, its body size
and how many body bytes were handed to the kernel before the client went away (an oversize body cut
off by the client shows sent << size).

Run it alone:  python -m collector.sandbox --port 8900   (prints the base URL)
Point the connectors at it: --set services.github.base_url=http://127.0.0.1:8900
                            --set services.stackoverflow.base_url=http://127.0.0.1:8900/2.3
"""

from collector.sandbox import apis, control  # noqa: F401  (register the API emulators' routes, the control API)
from collector.sandbox.core import FAULTS, FULL, Response, Sandbox, User, iso, json_reply, repo_list, route
from collector.sandbox.server import Server, main

__all__ = ["FAULTS", "FULL", "Response", "Sandbox", "Server", "User", "iso", "json_reply", "main", "repo_list", "route"]
