"""Process selectors: services, excluded services and consistent, balanced partitions of the users
(collector/selectors.py), the claims that honour them, the slots new networks get, and the networks
`collector status` reports as uncovered."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from click.testing import CliRunner

from collector import config
from collector.cli import main
from collector.selectors import SLOTS, Partition, SelectorError, Selectors, assignment, user_slot
from collector.status import uncovered
from collector.store import Store

# -- the partition table ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("count", range(1, SLOTS + 1))
def test_every_partition_count_gives_each_slot_one_partition_and_balances_within_one_slot(count):
    table = assignment(count)
    sizes = Counter(table)
    assert len(table) == SLOTS and set(sizes) == set(range(count))
    assert max(sizes.values()) - min(sizes.values()) <= 1
    assert sorted(s for k in range(count) for s in Partition(k, count).slots) == list(range(SLOTS))


@pytest.mark.parametrize("count", range(1, SLOTS))
def test_one_more_partition_moves_only_its_share_and_only_to_itself(count):
    before, after = assignment(count), assignment(count + 1)
    moved = [s for s in range(SLOTS) if before[s] != after[s]]
    assert len(moved) == SLOTS // (count + 1)  # about 1/(N+1) of the slots, the least that balances
    assert {after[s] for s in moved} == {count}  # none between the partitions that were already there


def test_users_spread_over_the_slots_and_about_a_quarter_move_from_3_to_4_partitions():
    users = [f"user-{i}" for i in range(20_000)]
    slots = [user_slot(u) for u in users]
    per_slot = Counter(slots)
    assert len(per_slot) == SLOTS and max(per_slot.values()) < 2 * min(per_slot.values())
    moved = sum(1 for s in slots if assignment(3)[s] != assignment(4)[s])
    assert 0.22 < moved / len(users) < 0.28  # 64 of 256 slots


def test_a_user_id_hashes_by_its_text_whatever_its_type_and_the_hash_never_changes():
    assert user_slot("42") == user_slot(42) and 0 <= user_slot(None) < SLOTS
    # stored on every network: a new hash function would silently move users between partitions
    assert (user_slot("alice"), user_slot("bob"), user_slot("507f1f77bcf86cd799439011")) == (137, 146, 121)


@pytest.mark.parametrize("text, error", [
    ("3", "K/N"), ("a/3", "K/N"), ("3/3", "does not exist"), ("-1/3", "K/N"), ("0/0", "between 1 and"),
    (f"0/{SLOTS + 1}", "between 1 and"),
])
def test_a_bad_partition_is_a_clear_error(text, error):
    with pytest.raises(SelectorError, match=error):
        Partition.parse(text)


# -- selectors -----------------------------------------------------------------------------------------------------


def test_selectors_build_the_due_query_clauses():
    assert Selectors.build().query() == {} and Selectors.build().everything
    assert Selectors.build("github").query() == {"service": "github"}
    assert Selectors.build("github,gitlab").query(skip={"gitlab"}) == {"service": "github"}
    assert Selectors.build(["github", "gitlab"]).query(skip={"github", "gitlab"}) is None  # all paused or full
    assert Selectors.build(exclude="youtube").query(skip={"reddit_saved"}) == {
        "service": {"$nin": ["reddit_saved", "youtube"]}}
    part = Selectors.build(partition="1/3").query()
    assert part == {"slot": {"$in": list(Partition(1, 3).slots)}}
    assert Selectors.build(partition="0/1").partition is None  # one partition is everyone


def test_selectors_refuse_what_cannot_work():
    with pytest.raises(SelectorError, match="no connector installed for 'gitub'"):
        Selectors.build("gitub", known=["github", "gitlab"])
    with pytest.raises(SelectorError, match="leave no service"):
        Selectors.build("github", exclude="github")


def test_covers_and_the_heartbeat_form_round_trip():
    sel = Selectors.build("github", partition="2/3")
    slot = Partition(2, 3).slots[0]
    other = Partition(0, 3).slots[0]
    assert sel.covers("github", slot) and not sel.covers("github", other) and not sel.covers("gitlab", slot)
    assert not sel.covers("github", None) and not sel.covers("github", "7") and not sel.covers("github", True)
    assert Selectors.from_doc(sel.describe()) == sel and str(sel) == "services github; partition 2/3"
    assert Selectors.from_doc(None).everything  # an older process's heartbeat: it claims everything
    assert Selectors.from_doc({"services": [1, 2], "partition": "x"}).everything  # junk: shown as what it does


def test_settings_read_selectors_from_files_environment_and_flags():
    s = config.load(environ={"COLLECTOR_DAEMON__SERVICES": "github, gitlab", "COLLECTOR_DAEMON__PARTITION": "1/3"})
    assert s.selectors == Selectors.build(["github", "gitlab"], partition="1/3")
    s = config.load(overrides={"daemon": {"exclude_services": ["youtube"]}}, environ={})
    assert s.selectors.exclude == {"youtube"}
    assert config.load(environ={}).selectors.everything
    for bad, words in (({"partition": 3}, "must be"), ({"partition": "5/3"}, "does not exist"),
                       ({"services": [1]}, "list of service names")):
        with pytest.raises(config.ConfigError, match=words):
            config.load(overrides={"daemon": bad}, environ={})


def test_the_daemon_refuses_a_service_no_connector_has_before_it_starts():
    result = CliRunner().invoke(main, ["--mode", "normal", "--services", "github,myspace",
                                       "--mongodb-uri", "mongodb://127.0.0.1:9/"])
    assert result.exit_code == 2
    assert "no connector installed for 'myspace'" in result.output and "github" in result.output


# -- claims, slots and the status report ---------------------------------------------------------------------------


async def seed(store, clock, users=60):
    docs = [{"user": f"u{i}", "service": "github" if i % 2 else "gitlab", "mode": "normal",
             "accessToken": "t", "scheduledTo": clock.now - timedelta(seconds=1)} for i in range(users)]
    for doc in docs:
        await store.insert_network(doc)
    return docs


async def test_partitioned_claims_take_only_their_users_and_together_take_everyone(mock_db, clock):
    store = Store(mock_db)
    await store.ensure_indexes(Selectors.build(partition="0/3"))
    await seed(store, clock)
    taken = {}
    for k in range(3):
        sel = Selectors.build(partition=f"{k}/3")
        claims = await store.claim_many("normal", f"p{k}", clock.now, 60, 100, selectors=sel)
        for doc, _lease in claims:
            assert doc["_id"] not in taken
            full = await store.get_network(doc["_id"])
            assert full["slot"] == user_slot(full["user"]) and Partition(k, 3).owns(full["slot"])
            taken[doc["_id"]] = k
    assert len(taken) == 60 and set(taken.values()) == {0, 1, 2}


async def test_service_selectors_claim_only_their_services(mock_db, clock):
    store = Store(mock_db)
    await store.ensure_indexes(Selectors.build("github"))
    await seed(store, clock)
    github = await store.claim_many("normal", "a", clock.now, 60, 100, selectors=Selectors.build("github"))
    assert len(github) == 30 and {d["service"] for d, _ in github} == {"github"}
    rest = await store.claim_many("normal", "b", clock.now, 60, 100, selectors=Selectors.build(exclude="github"))
    assert len(rest) == 30 and {d["service"] for d, _ in rest} == {"gitlab"}
    # its only service paused or full: nothing is claimed, no query is sent for nothing
    assert await store.claim_many("normal", "a", clock.now, 60, 100, exclude_services={"github"},
                                  selectors=Selectors.build("github")) == []


async def test_networks_written_without_a_slot_are_stamped_and_then_claimed(mock_db, clock):
    store = Store(mock_db)
    await store.ensure_indexes(Selectors.build(partition="0/2"))
    await store.networks.insert_many([{"user": f"app-{i}", "service": "github", "mode": "normal",
                                       "accessToken": "t", "scheduledTo": clock.now} for i in range(40)])
    sel = [Selectors.build(partition=f"{k}/2") for k in range(2)]
    assert [await store.claim_many("normal", "p", clock.now, 60, 100, selectors=s) for s in sel] == [[], []]
    assert await store.stamp_slots("normal", limit=25) == 25
    assert await store.stamp_slots("normal") == 15
    assert await store.stamp_slots("normal") == 0
    claimed = [len(await store.claim_many("normal", "p", clock.now, 60, 100, selectors=s)) for s in sel]
    assert sum(claimed) == 40


def process(mode, selectors, alive=True):
    return {"mode": mode, "alive": alive, "selectors": selectors.describe()}


def test_uncovered_says_which_due_networks_no_live_process_takes_and_why():
    p0, p2 = Partition(0, 3).slots[0], Partition(2, 3).slots[0]
    due = [{"mode": "normal", "service": "github", "slot": p0, "n": 5},
           {"mode": "normal", "service": "github", "slot": p2, "n": 7},
           {"mode": "normal", "service": "github", "slot": None, "n": 2},
           {"mode": "normal", "service": "youtube", "slot": p0, "n": 3},
           {"mode": "initial", "service": "github", "slot": p0, "n": 4}]
    fleet = [process("normal", Selectors.build(exclude="youtube", partition="0/3")),
             process("normal", Selectors.build(exclude="youtube", partition="1/3")),
             process("normal", Selectors.build(exclude="youtube", partition="2/3"), alive=False),
             process("initial", Selectors.build(), alive=False)]
    rows = {(r["mode"], r["service"]): r for r in uncovered(due, fleet)}
    assert rows[("initial", "github")]["due"] == 4
    assert rows[("initial", "github")]["why"] == [{"reason": "no live initial process", "count": 4}]
    assert rows[("normal", "youtube")]["why"] == [{"reason": "no live normal process runs youtube", "count": 3}]
    github = {w["reason"]: w["count"] for w in rows[("normal", "github")]["why"]}
    assert rows[("normal", "github")]["due"] == 9 and github["no live process of partition 2/3"] == 7
    assert github["no partition slot yet (a partitioned process stamps new networks within a tick)"] == 2
    # the dead 2/3 is back: only the unstamped remain (and youtube, and the initial mode)
    fleet[2]["alive"] = True
    rows = {(r["mode"], r["service"]): r for r in uncovered(due, fleet)}
    assert rows[("normal", "github")]["due"] == 2
    assert uncovered(due, [process("normal", Selectors()), process("initial", Selectors())]) == []


async def test_the_status_report_shows_the_selectors_and_the_uncovered_from_the_heartbeats(mock_db, clock):
    from collector.status import render, status

    store = Store(mock_db)
    await store.ensure_indexes()
    await seed(store, clock)
    later = clock.now + timedelta(minutes=1)
    for k in (0, 1):
        await store.heartbeat(f"p{k}", {"state": "running", "heartbeatAt": clock.now, "deadAt": later},
                              {"mode": "normal", "selectors": Selectors.build(partition=f"{k}/3").describe()})
    report = await status(store, clock.now)
    assert sorted(p["selects"] for p in report["processes"]) == ["partition 0/3", "partition 1/3"]
    third = sum(1 for i in range(60) if Partition(2, 3).owns(user_slot(f"u{i}")))
    assert sum(g["due"] for g in report["uncovered"]) == third > 0
    assert {w["reason"] for g in report["uncovered"] for w in g["why"]} == {"no live process of partition 2/3"}
    text = render(report)
    assert f"UNCOVERED  {third} due network(s)" in text and "no live process of partition 2/3" in text


def test_partitions_are_few_contiguous_ranges_for_zone_sharding():
    from collector.selectors import ranges

    assert ranges([5, 1, 2, 3, 7]) == [(1, 4), (5, 6), (7, 8)] and ranges([]) == []
    for count in (2, 3, 4):
        for k in range(count):
            got = ranges(Partition(k, count).slots)
            assert sum(end - start for start, end in got) == len(Partition(k, count).slots)
            assert len(got) <= count  # a new partition takes the top of each old one
    assert ranges(Partition(0, 2).slots) == [(0, 128)] and ranges(Partition(1, 2).slots) == [(128, 256)]


def test_the_partitions_command_shows_shares_moves_and_zone_ranges():
    out = CliRunner().invoke(main, ["partitions", "4", "--from", "3", "--zones", "collector.networks"])
    assert out.exit_code == 0, out.output
    assert out.output.count(": 64 of 256 slots (25.0% of the users)") == 4  # four equal partitions
    assert "from 3 to 4: 64 of 256 slots move (25.0% of the users)" in out.output
    assert "0/3 -> 3/4: 21" in out.output and "2/3 -> 1/4" not in out.output
    assert 'sh.updateZoneKeyRange("collector.networks", {slot: 0, _id: MinKey}' in out.output
    assert CliRunner().invoke(main, ["partitions", "0"]).exit_code == 2
