"""Which networks a process claims: its selectors.

    --services github,gitlab      only these services' networks
    --exclude-services youtube    every service but these
    --partition K/N               only the networks of the users in partition K of N

Partitions are consistent and balanced. Every user is hashed once into one of SLOTS slots (`user_slot`, stored
on the network as `slot`, so that an index serves the partitioned claim), and a table gives each slot to a
partition (`assignment`). The table for N+1 partitions is the table for N with the new partition taking
SLOTS // (N+1) slots, one at a time from the largest partition (its highest slot): going from N to N+1 moves
only those slots (about 1/(N+1) of the users, none between the old partitions), every partition owns
SLOTS // N or one more, and a partition is a few contiguous ranges of slots. This is jump consistent
hashing's guarantee (Lamping and Veach, 2014) without its variance: jump hashing of 256 slots gives 10
partitions between 18 and 38 slots each. A user's networks are all in one partition.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

SLOTS = 256  # users hash into this many slots; N is at most SLOTS (a partition owns one slot or more)


class SelectorError(ValueError):
    """A selector that cannot work: the message says which and why."""


def user_slot(user: Any) -> int:
    """The slot of a user id (any type: its text is hashed, so the user "42" and the user 42 are one)."""
    digest = hashlib.blake2b(str(user).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SLOTS


@cache
def assignment(count: int) -> tuple[int, ...]:
    """The partition of each slot when there are `count` partitions (see the module's docstring)."""
    if not 1 <= count <= SLOTS:
        raise SelectorError(f"a partition count must be between 1 and {SLOTS}, got {count}")
    if count == 1:
        return (0,) * SLOTS
    table = list(assignment(count - 1))
    owned: list[list[int]] = [[] for _ in range(count - 1)]
    for slot, part in enumerate(table):
        owned[part].append(slot)
    # each gives up its highest slots first: a partition stays a few contiguous ranges of slots (a cluster sharded
    # by {slot, _id} gets few zone ranges: docs/scaling.md)
    for _ in range(SLOTS // count):
        largest = max(range(count - 1), key=lambda k: (len(owned[k]), -k))
        table[owned[largest].pop()] = count - 1
    return tuple(table)


def slot_number(value: Any) -> bool:
    """Whether a stored `slot` is a slot number: an integer in [0, SLOTS). Anything else (a double, as a
    JavaScript client writes numbers, a string...) is removed by the repair and stamped again."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < SLOTS


@dataclass(frozen=True, order=True)
class Partition:
    index: int
    count: int

    def __post_init__(self) -> None:
        if not 1 <= self.count <= SLOTS:
            raise SelectorError(f"a partition count must be between 1 and {SLOTS}, got {self.count}")
        if not 0 <= self.index < self.count:
            raise SelectorError(f"partition {self.index} of {self.count} does not exist (0 to {self.count - 1})")

    @classmethod
    def parse(cls, text: str) -> Partition:
        """"K/N" (partition K of N, K from 0)."""
        k, sep, n = str(text).strip().partition("/")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit():
            raise SelectorError(f"a partition is K/N, e.g. 0/3 (partition 0 of 3), got {text!r}")
        return cls(int(k), int(n))

    @property
    def slots(self) -> tuple[int, ...]:
        return _slots(self.index, self.count)

    def owns(self, slot: Any) -> bool:
        """Whether a network whose stored `slot` is this is in the partition (a missing or junk slot: no)."""
        return slot_number(slot) and assignment(self.count)[int(slot)] == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@cache
def _slots(index: int, count: int) -> tuple[int, ...]:
    table = assignment(count)
    return tuple(s for s in range(SLOTS) if table[s] == index)


def ranges(slots: Iterable[int]) -> list[tuple[int, int]]:
    """Slots as half-open ranges [start, end), adjacent ones merged: a partition's zone ranges on a cluster
    sharded by {slot, _id} (docs/scaling.md)."""
    out: list[tuple[int, int]] = []
    for slot in sorted(slots):
        if out and out[-1][1] == slot:
            out[-1] = (out[-1][0], slot + 1)
        else:
            out.append((slot, slot + 1))
    return out


def moves(before: int, after: int) -> list[tuple[int, int, int]]:
    """(slot, partition under `before`, partition under `after`) of every slot a change of count moves."""
    old, new = assignment(before), assignment(after)
    return [(slot, old[slot], new[slot]) for slot in range(SLOTS) if old[slot] != new[slot]]


def _names(value: Iterable[str] | str | None) -> frozenset[str]:
    if value is None:
        return frozenset()
    if isinstance(value, str):
        value = value.split(",")
    return frozenset(v.strip() for v in value if str(v).strip())


@dataclass(frozen=True)
class Selectors:
    """A process's selectors; the default selects everything."""

    services: frozenset[str] = field(default_factory=frozenset)  # empty: every service
    exclude: frozenset[str] = field(default_factory=frozenset)
    partition: Partition | None = None

    @classmethod
    def build(cls, services: Iterable[str] | str | None = None, exclude: Iterable[str] | str | None = None,
              partition: str | Partition | None = None, known: Iterable[str] | None = None) -> Selectors:
        """Selectors from flags or settings; `known`: the installed connectors, which every name must be."""
        chosen, excluded = _names(services), _names(exclude)
        if known is not None:
            cls(chosen, excluded).check(known)
        if chosen and not chosen - excluded:
            raise SelectorError("--services and --exclude-services leave no service to run")
        if isinstance(partition, str):
            partition = Partition.parse(partition) if partition.strip() else None
        if partition is not None and partition.count == 1:
            partition = None  # 0/1 is everyone
        return cls(chosen - excluded if chosen else frozenset(), excluded if not chosen else frozenset(), partition)

    def check(self, known: Iterable[str]) -> None:
        """SelectorError naming every service these selectors name that has no installed connector."""
        installed = set(known)
        unknown = sorted((self.services | self.exclude) - installed)
        if unknown:
            raise SelectorError(f"no connector installed for {', '.join(map(repr, unknown))} "
                                f"(installed: {', '.join(sorted(installed)) or 'none'})")

    @property
    def everything(self) -> bool:
        return not self.services and not self.exclude and self.partition is None

    def query(self, skip: Iterable[str] = ()) -> dict[str, Any] | None:
        """The clauses these selectors add to the due filter, with `skip` (services paused or full right now)
        left out too; None when nothing can match (every chosen service skipped)."""
        skipped = set(skip)
        clauses: dict[str, Any] = {}
        if self.services:
            wanted = sorted(self.services - skipped)
            if not wanted:
                return None
            clauses["service"] = wanted[0] if len(wanted) == 1 else {"$in": wanted}
        elif self.exclude | skipped:
            clauses["service"] = {"$nin": sorted(self.exclude | skipped)}
        if self.partition is not None:
            clauses["slot"] = {"$in": list(self.partition.slots)}
        return clauses

    def covers(self, service: Any, slot: Any) -> bool:
        """Whether a network of `service` whose stored slot is `slot` is one these selectors claim."""
        if self.services and service not in self.services:
            return False
        if service in self.exclude:
            return False
        return self.partition is None or self.partition.owns(slot)

    def describe(self) -> dict[str, Any]:
        """As stored in the heartbeat document (and read back by `from_doc`)."""
        return {"services": sorted(self.services), "excludeServices": sorted(self.exclude),
                "partition": str(self.partition) if self.partition else None}

    @classmethod
    def from_doc(cls, doc: Any) -> Selectors:
        """From a heartbeat's `selectors` (absent: a process of an older version, which claims everything).
        A value that cannot be read selects everything rather than hide what it does."""
        if not isinstance(doc, dict):
            return cls()
        try:
            services = doc.get("services") or ()
            exclude = doc.get("excludeServices") or ()
            if not all(isinstance(s, str) for s in (*services, *exclude)):
                return cls()
            return cls.build(services, exclude, doc.get("partition") or None)
        except (SelectorError, TypeError):
            return cls()

    def __str__(self) -> str:
        parts = []
        if self.services:
            parts.append("services " + ",".join(sorted(self.services)))
        if self.exclude:
            parts.append("all services but " + ",".join(sorted(self.exclude)))
        if self.partition is not None:
            parts.append(f"partition {self.partition}")
        return "; ".join(parts) or "everything"
