"""Selectors with real processes on the wire server (issue: scale-out). Daemons split by `--partition K/N` and by
`--services` share 300 networks: every network is run, never by a process whose selectors exclude it, every
page is fetched once and nothing is lost; `collector status` shows the networks of a partition that has no live
process as uncovered; and going from 3 partitions to 4 while running moves only the users the table says."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.selectors import assignment, user_slot
from collector.store import with_slot
from tests.integration.test_daemons import daemon, wait_for
from tests.integration.test_fleet import status_json

pytestmark = pytest.mark.slow  # real daemon processes: seconds each (the quick loop: -m "not slow")

# Stack Overflow at the process's concurrency (16) like GitHub: at its default (8) the service is full while runs of it
# are due, so each fill ends "drained" and the next waits claim_interval: 8 runs per 0.25 s, two thirds of the
# services test's time, and nothing these tests are about
FAST = ["--set", "fleet.heartbeat_interval=0.5", "--set", "fleet.ttl=2.0", "--set", "daemon.poll_interval=0.5",
        "--set", "services.stackoverflow.concurrency=16"]


class Daemon:
    """One `collector` process whose JSON log goes to a file (a pipe would fill and block it): the log says
    which networks this very process ran (at debug: a run that found nothing new is logged at that level)."""

    def __init__(self, tmp: Path, mode: str, uri: str, dbname: str, sandbox_url: str, *selectors: str):
        self.selectors = selectors
        self.log = tmp / f"{mode}-{'-'.join(selectors).replace('/', '_')}-{uuid.uuid4().hex[:6]}.log"
        self.file = self.log.open("wb")
        self.proc = daemon(mode, uri, dbname, sandbox_url, "--concurrency", "16", "--log-format", "json",
                           "--set", "log.level=debug", *FAST, *selectors, stdout=self.file)

    def stop(self) -> int:
        self.proc.terminate()
        code = self.proc.wait(timeout=60)
        self.file.close()
        return code

    def runs(self) -> list[dict]:
        """The runs this process finished (saved or not), in order."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("network") and event.get("outcome"):
                out.append(event)
        return out

    def text(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def seed(db, box, users: int, services: tuple[str, ...], items: int, mode: str) -> dict[str, str]:
    """`users` users with one network per service; half written with their slot (as `collector networks add`
    does), half without (as an application writing its own documents: the daemons stamp them). Returns
    {network id: user}."""
    docs = []
    for i in range(users):
        for service in services:
            token = f"{service[:2]}-{i:03d}-{uuid.uuid4().hex[:6]}"
            box.add_user(service, token, items=items)
            doc = {"user": f"user{i:03d}", "service": service, "accessToken": token, "mode": mode,
                   "scheduledTo": datetime.now(UTC), "cursor": {}}
            docs.append(with_slot(doc) if i % 2 else doc)
    db.networks.insert_many(docs)
    return {str(d["_id"]): d["user"] for d in docs}


def check_each_page_once(box, db, networks: int, items: int) -> None:
    stats = box.stats()
    assert len(stats["by_token"]) == networks
    repeated = {t: n for t, n in stats["by_token"].items() if n != 3}
    assert not repeated, f"{len(repeated)} networks with pages fetched more or less than once"
    assert all(stats["unique_served"][t] == items for t in stats["by_token"])
    assert db.items.count_documents({}) == networks * items
    assert db.networks.count_documents({"lease": {"$exists": True}}) == 0
    assert db.networks.count_documents({"disabled": True}) == 0


def test_three_partitions_share_300_networks_and_a_missing_one_shows_uncovered(wire_uri, sandbox, sync_db, tmp_path):
    db, box = sync_db, sandbox.sandbox
    users = seed(db, box, 150, ("github", "stackoverflow"), items=5, mode="initial")  # 3 pages each
    part = {nid: assignment(3)[user_slot(user)] for nid, user in users.items()}
    daemons = [Daemon(tmp_path, "initial", wire_uri, db.name, sandbox.url, "--partition", f"{k}/3") for k in (0, 1)]
    try:
        mine = sum(1 for k in part.values() if k in (0, 1))
        wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == mine, 300,
                 "partitions 0/3 and 1/3 to finish their back-fill")
        time.sleep(1.0)
        assert db.networks.count_documents({"mode": "normal"}) == mine  # and nothing of partition 2/3
        assert db.networks.count_documents({"slot": {"$exists": False}}) == 0  # the app's documents were stamped
        report = status_json(wire_uri, db.name)
        gaps = {g["service"]: g for g in report["uncovered"] if g["mode"] == "initial"}
        waiting = sum(1 for k in part.values() if k == 2)
        assert sum(g["due"] for g in gaps.values()) == waiting > 0
        assert all(g["why"] == [{"reason": "no live process of partition 2/3", "count": g["due"]}]
                   for g in gaps.values())
        assert {p["selects"] for p in report["processes"] if p["alive"]} == {"partition 0/3", "partition 1/3"}

        daemons.append(Daemon(tmp_path, "initial", wire_uri, db.name, sandbox.url, "--partition", "2/3"))
        wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == 300, 300, "every back-fill")
        assert [g for g in status_json(wire_uri, db.name)["uncovered"] if g["mode"] == "initial"] == []
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0, 0], [d.text() for d in daemons]
    check_each_page_once(box, db, 300, 5)
    for k, d in enumerate(daemons):
        ran = {r["network"] for r in d.runs()}
        assert ran and all(part[nid] == k for nid in ran), f"partition {k}/3 ran another partition's network"
    assert sum(len(d.runs()) for d in daemons) == 900  # 3 runs a network, each by its partition's process


def test_two_daemons_split_by_services_share_300_networks(wire_uri, sandbox, sync_db, tmp_path):
    db, box = sync_db, sandbox.sandbox
    users = seed(db, box, 150, ("github", "stackoverflow"), items=5, mode="initial")
    services = {str(d["_id"]): d["service"] for d in db.networks.find({}, {"service": 1})}
    assert set(services) == set(users)
    daemons = [Daemon(tmp_path, "initial", wire_uri, db.name, sandbox.url, "--services", "github"),
               Daemon(tmp_path, "initial", wire_uri, db.name, sandbox.url, "--exclude-services", "github")]
    try:
        wait_for(lambda: db.networks.count_documents({"mode": "normal"}) == 300, 300, "every back-fill")
        report = status_json(wire_uri, db.name)
        assert sorted(p["selects"] for p in report["processes"] if p["alive"]) == [
            "all services but github", "services github"]
    finally:
        codes = [d.stop() for d in daemons]
    assert codes == [0, 0], [d.text() for d in daemons]
    check_each_page_once(box, db, 300, 5)
    github, others = ({services[r["network"]] for r in d.runs()} for d in daemons)
    assert github == {"github"} and others == {"stackoverflow"}
    assert sum(len(d.runs()) for d in daemons) == 900


def test_going_from_3_to_4_partitions_while_running_moves_only_the_users_the_table_says(
        wire_uri, sandbox, sync_db, tmp_path):
    """A rolling change: four processes of /4 start beside the three of /3, then those stop. Every run is by a
    process whose partition holds the network, and the users that change process index are exactly those the
    table moves to the new partition 3/4 (64 of the 256 slots: about a quarter)."""
    db, box = sync_db, sandbox.sandbox
    users = seed(db, box, 120, ("github",), items=2, mode="normal")
    quick = ["--set", "schedule.normal_interval=1.0", "--set", "schedule.jitter=0.0"]
    old = [Daemon(tmp_path, "normal", wire_uri, db.name, sandbox.url, "--partition", f"{k}/3", *quick)
           for k in range(3)]
    new: list[Daemon] = []
    try:
        wait_for(lambda: db.networks.count_documents({"stats.runs": {"$gte": 2}}) == 120, 120,
                 "every network run twice by the three /3 processes")
        new = [Daemon(tmp_path, "normal", wire_uri, db.name, sandbox.url, "--partition", f"{k}/4", *quick)
               for k in range(4)]
        wait_for(lambda: sum(1 for p in status_json(wire_uri, db.name)["processes"] if p["alive"]) == 7, 60,
                 "the four /4 processes beside the three /3")
        old_codes = [d.stop() for d in old]
        switched = datetime.now(UTC)
        wait_for(lambda: db.networks.count_documents({"lastExecution": {"$gt": switched}}) == 120, 120,
                 "every network run by a /4 process after the /3 ones stopped")
    finally:
        old_codes = [d.stop() if d.proc.poll() is None else d.proc.returncode for d in old]
        new_codes = [d.stop() for d in new]
    assert old_codes == [0, 0, 0] and new_codes == [0, 0, 0, 0], [d.text() for d in old + new]
    before: dict[str, int] = {}
    after: dict[str, int] = {}
    for count, daemons, seen in ((3, old, before), (4, new, after)):
        for k, d in enumerate(daemons):
            for run in d.runs():
                user = users[run["network"]]
                assert assignment(count)[user_slot(user)] == k, f"{user} run by partition {k}/{count}"
                seen[user] = k
    assert len(before) == 120 and len(after) == 120
    changed = {u for u in users.values() if before[u] != after[u]}
    expected = {u for u in users.values() if assignment(3)[user_slot(u)] != assignment(4)[user_slot(u)]}
    assert changed == expected and {after[u] for u in changed} == {3}
    assert 0.1 < len(changed) / 120 < 0.4  # about a quarter; the rest stayed with the same partition index
    assert db.networks.count_documents({"disabled": True}) == 0
