"""What a lease is, as query clauses: the one definition the claims (collector/store.py due_filter), the repair
(collector/operations.py), the backlog and `collector status` (collector/processes.py) share.

A process only ever writes a lease whole, `{id: str, owner: str, until: date}` (a claim), and then moves its
`until` (a renewal, a release after a crash), guarding each write by the lease id; every version has. So a
`lease` of any other shape (`false`, `{}`, `{until: null}`, a string, a number, an array) was written by
someone else (the application that writes network documents) and nobody holds it: no process can renew it,
save a state under it or give it back. Read as held, it never expires (no date to pass), so the network is
never claimed, never counted as due and never repaired: silently uncollectable.

Hence "held" means: a well-formed lease whose `until` is not past. A claim matches everything else, and its
update (one `$set` of a whole new lease, filtered by the same clause, atomic per document) replaces a junk
lease like an expired one. The guarantee of the lease protocol (one process at a time) is kept: a lease a
process holds is well-formed and live, so no claim, and no repair, ever matches it; of two racing claims on a
junk lease the first one's write makes the lease well-formed and live, which the second one's filter, re-checked
by the server per document, no longer matches. Queries only: `$nor` and `$type`, no `$not` (not every wire
server has it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

# a lease of the one shape a process writes: an array never is one, even of a lease (`lease.0`), nor are arrays
# of the right values (a query's `$type` also matches an array holding that type: `lease.until.0`)
WELL_FORMED: dict[str, Any] = {"lease.id": {"$type": "string"}, "lease.owner": {"$type": "string"},
                               "lease.until": {"$type": "date"}, "lease.0": {"$exists": False},
                               "lease.id.0": {"$exists": False}, "lease.owner.0": {"$exists": False},
                               "lease.until.0": {"$exists": False}}


def held(now: datetime) -> dict[str, Any]:
    """A lease some process may hold at `now`: well-formed and not expired."""
    return {**WELL_FORMED, "lease.until": {"$type": "date", "$gte": now}}


def unheld(now: datetime) -> dict[str, Any]:
    """No lease, an expired one, or one of a shape no process writes (nobody holds it): claimable."""
    return {"$nor": [held(now)]}


def malformed() -> dict[str, Any]:
    """A lease of a shape no process writes (null is no lease, not a junk one): the repair removes it."""
    return {"lease": {"$ne": None}, "$nor": [WELL_FORMED]}


def is_malformed(lease: Any) -> bool:
    """`malformed()` on a value read back: a lease (not null) of any shape but the one a process writes."""
    if lease is None:
        return False
    return not (isinstance(lease, dict) and "0" not in lease and isinstance(lease.get("id"), str)
                and isinstance(lease.get("owner"), str) and isinstance(lease.get("until"), datetime))
