"""Fault scenario `changes`: the change feed under kill -9. Daemons back-fill, then keep the networks in sync while
new items arrive upstream and others are removed (found by reconciliations); a driver SIGKILLs daemons at random
moments of both stages. At the end every change in the database has exactly one event and every event has its
change: each stored item one `item.added`, each item marked removed one `item.removed`, each network's last
network event its present state; per user, sequence numbers unique and growing in publication order.

Row: `lost` counts missing events (plus items served and not stored), `duplicated` events written twice for one
change (plus items stored twice); the notes give the events and the changes they were matched with.
"""

from __future__ import annotations

import random
import time
from collections import Counter, defaultdict
from typing import Any

from collector import outbox
from tests.faults.scenarios import FAST, World, _crash_notes, _leases_of_pid, row

CHANGES = {
    "small": {"users": 24, "pages": 4, "kills": 4, "concurrency": 4, "latency": 0.2, "added": 2, "removed": 2,
              "limit": 90.0},
    "full": {"users": 120, "pages": 5, "kills": 16, "concurrency": 6, "latency": 0.2, "added": 3, "removed": 3,
             "limit": 420.0},
}
# normal runs every second or so, a reconciliation every few seconds: the second stage sees many of both
SYNC = ["--set", "schedule.normal_interval=1", "--set", "schedule.reconcile_interval=4",
        "--set", "changes.publish_interval=0.2"]


def audit(db: Any) -> dict[str, Any]:
    """Match the events with the changes they report. Returns missing, orphans (an event whose change is not in the
    database), doubles (a change with two events), unordered (users whose sequence numbers do not grow in the
    order the events were published), events and changes counted."""
    events = list(db.changes.find({}))
    by_change: Counter = Counter()
    named: dict[Any, list[str]] = defaultdict(list)
    for event in events:  # items.* events name each item of a run's change; network.* ones their network
        if event["kind"].startswith("items."):
            for item in event.get("items") or ():
                by_change[(item.get("key"), "item." + event["kind"].split(".", 1)[1])] += 1
                named[(item.get("key"), event["kind"])].append(event["_id"])
        else:
            by_change[(event.get("network"), event["kind"])] += 1
    expected: set[tuple[Any, str]] = set()
    orphans = 0
    items = {doc["_id"]: doc for doc in db.items.find({}, {"removedAt": 1})}
    for key, doc in items.items():
        expected.add((key, "item.added"))
        if doc.get("removedAt") is not None:
            expected.add((key, "item.removed"))
    for (subject, kind), _n in by_change.items():
        if kind.startswith("item.") and (subject, kind) not in expected and kind != "item.restored":
            orphans += 1  # an event whose item, or whose removal, is not in the database
    last: dict[Any, tuple[int, str]] = {}
    for event in events:
        if event["kind"].startswith("network.") and event["seq"] > last.get(event["network"], (0, ""))[0]:
            last[event["network"]] = (event["seq"], event["kind"])  # a network's events are all its user's
    networks = list(db.networks.find({}))
    wrong_state = sum(1 for net in networks
                      if net["_id"] in last and last[net["_id"]][1] != f"network.{outbox.label(net)}")
    never_told = sum(1 for net in networks if net.get("mode") == "normal" and net["_id"] not in last)
    missing = sum(1 for change in expected if by_change[change] == 0) + never_told
    doubles = sum(n - 1 for n in by_change.values() if n > 1)
    seqs: dict[Any, list[tuple[Any, int]]] = defaultdict(list)
    for event in events:
        seqs[event["user"]].append((event["published"], event["seq"]))
    unordered = sum(1 for pairs in seqs.values()
                    if len({s for _, s in pairs}) != len(pairs)
                    or any(a[1] > b[1] and a[0] < b[0] for a, b in zip(sorted(pairs), sorted(pairs)[1:], strict=False)))
    pending = db[outbox.POINTERS].count_documents({}) + db.networks.count_documents({"pending.0": {"$exists": True}})
    twice = [ids for ids in named.values() if len(ids) > 1][:3]
    return {"twice": twice, "missing": missing, "orphans": orphans + wrong_state, "doubles": doubles,
            "unordered": unordered,
            "events": len(events), "changes": len(expected), "pending": pending,
            "removed": sum(1 for d in items.values() if d.get("removedAt") is not None)}


def changes(uri: str, size: str = "small", *, seed: int | None = None,
            details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The scenario; `details` (optional) gets the audit's figures and the removals made upstream."""
    cfg = CHANGES[size]
    details = {} if details is None else details
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    began = time.monotonic()
    deadline = began + cfg["limit"]
    world = World(uri, cfg["users"], cfg["pages"], latency=cfg["latency"], github_only=True)
    daemons = world.daemons(*FAST, *SYNC, "--concurrency", str(cfg["concurrency"]))
    kills, held, timed_out, removed_upstream = 0, 0, False, 0
    marks = sorted(rng.uniform(0.05, 0.95) for _ in range(cfg["kills"]))

    def kill_some(progress: float) -> None:
        """Kill where the scenario's progress (0.5: the back-fill done, 1: the second stage's 20 s over) passed a
        mark: half the kills land in the back-fill, half while in sync."""
        nonlocal kills, held
        while kills < len(marks) and progress >= marks[kills] and daemons.alive():
            victim = rng.choice(daemons.alive())
            held += _leases_of_pid(world, victim.pid)
            daemons.kill(victim)
            daemons.start(victim.mode)
            kills += 1

    try:
        for mode in ("initial", "initial", "normal"):
            daemons.start(mode)
        while world.finished() < world.users or world.served() < world.total_items:
            if time.monotonic() > deadline:
                timed_out = True
                break
            daemons.revive()
            kill_some(0.5 * world.served() / world.total_items)
            time.sleep(0.2)
        # in sync: items arrive and go upstream; normal runs and reconciliations find them, daemons die meanwhile
        tokens = list(world.networks)
        # items stored in the back-fill go upstream (new ones arrive after, so none is removed unseen)
        removals = {t: world.box.remove_items(t, rng.sample(_ids(world, t), cfg["removed"]))
                    for t in rng.sample(tokens, len(tokens) // 2)}
        for token in tokens:
            world.box.add_items(token, cfg["added"])
        removed_upstream = sum(len(ids) for ids in removals.values())
        stage_began = time.monotonic()
        while not timed_out:
            if time.monotonic() > deadline:
                timed_out = True
                break
            daemons.revive()
            found = world.db.items.count_documents({"removedAt": {"$exists": True}})
            kill_some(0.5 + min(0.5, (time.monotonic() - stage_began) / 40.0))
            if found >= removed_upstream and kills == len(marks) and world.stored() >= world.total_items + \
                    cfg["added"] * len(tokens) and _settled(world):
                break
            time.sleep(0.3)
    finally:
        daemons.stop_all()
        try:
            crashes = daemons.crashes()
            figures = world.tally()
            audited = audit(world.db)
        finally:
            world.close()
    details.update(audited, removed_upstream=removed_upstream, timed_out=timed_out)
    figures["lost"] += audited["missing"]
    figures["duplicated"] += audited["doubles"]
    notes = (f"{world.users} users x {cfg['pages']} pages, then {cfg['added']} new items each and {removed_upstream} "
             f"removed upstream; 2 initial + 1 normal daemons, {kills} x kill -9 (victims held {held} leases), "
             f"seed {seed}; {audited['events']} events for {audited['changes']} item changes "
             f"({audited['removed']} removals found): {audited['missing']} missing, {audited['orphans']} without "
             f"their change, {audited['doubles']} twice, {audited['unordered']} users out of order, "
             f"{audited['pending']} entries unpublished")
    if audited["orphans"] or audited["unordered"] or audited["pending"]:
        notes += "; FAIL"
    if timed_out:
        notes += f"; TIMED OUT after {cfg['limit']:g}s"
    return row("changes", faults=kills, crashes=len(crashes), seconds=round(time.monotonic() - began, 1),
               notes=notes + _crash_notes(crashes), **figures)


def _ids(world: World, token: str) -> list[int]:
    with world.box.lock:
        return [item["id"] for item in world.box.users[token].items]


def _settled(world: World) -> bool:
    """Every change published (no pointer left) and no reconciliation half done."""
    db = world.db
    return db[outbox.POINTERS].count_documents({}) == 0 and \
        db.networks.count_documents({"reconcile.cursor": {"$exists": True}}) == 0
