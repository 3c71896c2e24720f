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
forgets everything. For benchmarks: POST /_sandbox/bulk {service, prefix, count, items} creates `count`
users whose tokens are prefix0, prefix1...; POST /_sandbox/bulk/add {count} gives every user new items;
POST /_sandbox/repos {repos} serves full-size GitHub repositories instead of compact ones: "full", generated from
GitHub's documented repository schema (payloads.py), or a list of repositories served under each item's id and names.
`Sandbox.transfers` records every API reply on the wire: when it arrived and ended, its body size
and how many body bytes were handed to the kernel before the client went away (an oversize body cut
off by the client shows sent << size).

Run it alone:  python -m collector.sandbox --port 8900   (prints the base URL)
Point the connectors at it: --set services.github.base_url=http://127.0.0.1:8900
                            --set services.stackoverflow.base_url=http://127.0.0.1:8900/2.3
"""

from collector.sandbox import apis  # noqa: F401  (registers the API emulators' routes)
from collector.sandbox.core import FAULTS, FULL, Response, Sandbox, User, iso, json_reply, repo_list, route
from collector.sandbox.server import Server, main

__all__ = ["FAULTS", "FULL", "Response", "Sandbox", "Server", "User", "iso", "json_reply", "main", "repo_list", "route"]
