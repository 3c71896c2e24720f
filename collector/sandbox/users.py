"""A sandbox user: its items (newest first), the items removed upstream (kept aside to be restored in their place),
its quotas, faults and tokens. See collector/sandbox/__init__.py."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import collector.sandbox.tokens as tokens


@dataclass
class User:
    token: str
    service: str
    name: str
    items: list[dict[str, Any]] = field(default_factory=list)  # newest first
    next_id: int = 1
    remaining: int = 5000
    reset_at: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)  # applied to the next requests, in order
    revoked: bool = False
    quota: int = 10_000  # Stack Exchange: this user/app pair's daily quota left
    session: tokens.Session | None = None  # expiring, rotating tokens (collector/sandbox/tokens.py)
    removed: dict[int, dict[str, Any]] = field(default_factory=dict)  # by id: un-starred, un-liked... (restorable)

    def add(self, count: int, now: float) -> None:
        fresh = []
        for _ in range(count):
            n = self.next_id
            self.next_id += 1
            fresh.append({"id": n, "at": now})
        self.items[:0] = reversed(fresh)

    def remove(self, ids: Iterable[int]) -> list[int]:
        """Take these items out of every listing (an un-star upstream); returns the ids that were there."""
        wanted = {int(i) for i in ids}
        gone = [item for item in self.items if item["id"] in wanted]
        self.items = [item for item in self.items if item["id"] not in wanted]
        self.removed.update((item["id"], item) for item in gone)
        return [item["id"] for item in gone]

    def restore(self, ids: Iterable[int]) -> list[int]:
        """Put removed items back in their place (ids grow with time: newest first is descending ids); returns the
        ids restored."""
        back = [self.removed.pop(int(i)) for i in ids if int(i) in self.removed]
        if back:
            self.items = sorted([*self.items, *back], key=lambda item: item["id"], reverse=True)
        return [item["id"] for item in back]
