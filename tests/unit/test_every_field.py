"""Every field of a network document junk, for every installed connector (hypothesis), driven through the engine.

tests/unit/test_malformed_documents.py judges a few base fields of GitHub and Stack Overflow networks field by field;
here ANY field may be junk, for every connector of collector.plugins.discover() (the example plugin included when it is
installed): the base fields (`user`, `service`, `accessToken`, `mode`, `scheduledTo`, `errors`), the state the
daemon writes (`lease` as false, {}, {until: null}, a string, nested junk, a well-formed lease of another process;
`disabled`, `unauthorized`, `authFailures`, `failingSince`, `rateLimitStreak`, `stats`, `slot`, `lastError`...), the
credentials beside the token (`refreshToken`, `previousRefreshToken`, `accessTokenSecret`, `clientSecret`,
`password`, `credentialsStamp`), the connector's `options` (the keys it reads, with junk values: an instance, a
server URL, a user id, a username, an actor, a site) and its `cursor` (junk shapes, and junk values at the keys it
reads). Each document is inserted beside a valid witness network of another connector and run by the real engine
(Store.repair, claims in both modes, Executor.run, the APIs answered by respx with a valid reply) round after round,
the clock past any backoff each time, until it settles. Properties:

- nothing raises out of repair, claim or Executor.run;
- after every run the network is unleased, its outcome is one of the kinds, and it is due later or disabled with
  its reason (lastError, disabledReason), never due again at once;
- at the end nothing is held by a lease, and every network is either shown disabled (what `{disabled: true}`
  matches on this engine: what `collector status` and `networks list` count) or due at a date the due query of its
  mode matches: nothing is left that nobody claims and nobody shows;
- junk only in the state the daemon owns (its counters, its dates, its reasons, a lease nobody holds) never stops
  a valid network: it runs at once, and the junk is reset;
- a document the engine reads as disabled is never run nor rewritten (what disabled it is not the daemon's);
- the witness runs as if alone: one run, its items stored, its document as it was but for the daemon's fields.

A batch of such documents is also run by the two Schedulers: no crash, every document settles, and a valid network
added afterwards runs. The engine bugs these properties found (a null counter, a document to repair beside an
expired lease) are pinned by the tests at the end of this file.
"""

from __future__ import annotations

import asyncio
import copy
import os
import string
from datetime import datetime, timedelta
from typing import Any

import bson
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import event as hypothesis_event
from hypothesis import note as hypothesis_note
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from collector import leases
from collector.config import MODES
from collector.model import SECRET_FIELDS
from collector.store import due_filter
from tests.harness import run_schedulers
from tests.unit import every_connector as ec
from tests.unit.every_connector import MAX_ERRORS, SERVICES, T0

SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else 1
PROFILE = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                                   HealthCheck.function_scoped_fixture])

# -- the fields ----------------------------------------------------------------------------------------------------

BASE = ("user", "service", "accessToken", "mode", "scheduledTo", "cursor", "errors", "options")
CREDENTIALS = (*SECRET_FIELDS[1:], "credentialsStamp")
# the state the daemon writes (docs/states.md: "State fields written by the daemon") and reads back only as counters,
# dates, reasons or a lease: junk there must not stop a valid network
OWNED = ("lease", "disabled", "unauthorized", "authFailures", "failingSince", "rateLimitStreak", "stats", "slot",
         "lastError", "lastOutcome", "lastExecution", "lastSuccess", "lastOwner", "lastLease", "parkedAt",
         "parkedReason", "rateLimitedUntil", "disabledReason", "disabledAt", "tokenRefreshedAt", "tokenExpiresAt",
         "pollInterval", "newItemsAt", "reconcile", "lastReconcile")
FIELDS = (*BASE, *OWNED, *CREDENTIALS)
HARMLESS = set(OWNED) - {"disabled"} | {"credentialsStamp", "errors"}  # junk there: the network runs all the same

# -- junk ----------------------------------------------------------------------------------------------------------

NESTED_KEYS = st.text(alphabet=string.ascii_letters + string.digits + "._-$ ", max_size=8).filter(
    lambda k: k not in ("$ref", "$id", "$db"))
INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True)
HUGE_STRINGS = st.builds(lambda unit, n: (unit * n)[:n], st.text(min_size=1, max_size=4), st.integers(4_000, 70_000))
STRINGS = st.text(max_size=20) | HUGE_STRINGS
DATETIMES = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                         timezones=st.just(T0.tzinfo))
SCALARS = (st.none() | st.booleans() | INT64 | FLOATS | STRINGS | st.binary(max_size=10) | DATETIMES
           | st.builds(ObjectId))


def nested(leaves: st.SearchStrategy[Any], depth: int = 4) -> st.SearchStrategy[Any]:
    if depth == 0:
        return leaves
    inner = nested(leaves, depth - 1)
    return leaves | st.lists(inner, max_size=3) | st.dictionaries(NESTED_KEYS, inner, max_size=3)


JUNK = nested(SCALARS)
TRUTHY = st.sampled_from([True, 1, 1.0, "true", "yes", "", 0, False, None, [True], [False], [], {}, {"x": True},
                          [1], "0"])
COUNTS = st.sampled_from([-1, 0, 1, 2, MAX_ERRORS - 1, MAX_ERRORS, 10**4, 2**31, 2**63 - 1, -(2**63), 1.5, "1",
                          True, None, [1], {"n": 1}, float("nan"), float("inf")])
DATES = DATETIMES | st.sampled_from(["2026-11-25T12:00:00Z", "yesterday", 0, 1764000000, None, [T0], {"$date": 1}])
LIVE = {"id": "other", "owner": "another-process", "until": T0 + timedelta(seconds=30)}
EXPIRED = {"id": "other", "owner": "another-process", "until": T0 - timedelta(seconds=30)}
LEASES = st.sampled_from([False, True, 0, 7, 1.5, "held", "", [], [1], [LIVE], {}, {"until": None}, {"until": T0},
                          {"id": "a", "owner": "b"}, {"id": "a", "owner": "b", "until": "tomorrow"},
                          {"id": "a", "owner": "b", "until": 1e12}, {"id": 1, "owner": "b", "until": T0},
                          {"id": "a", "owner": ["b"], "until": T0}, {"id": "a", "owner": "b", "until": [T0]},
                          {**LIVE, "0": 1}, EXPIRED, LIVE, None])
# the counters a run increments (`$inc stats.<k>`): runs, one per outcome kind, items
STAT_KEYS = st.sampled_from(["runs", "items", *sorted(ec.OUTCOME_KINDS)]) | NESTED_KEYS
STAT_VALUES = JUNK
URLS = st.sampled_from(["https://evil.test/x", "http://mastodon.test", "https://mastodon.test@evil.test/",
                        "file:///etc/passwd", "https://mastodon.test/../x", "javascript:alert(1)", "https://",
                        "https://[::1]/", "https://gitlab.test:99999/", "mastodon.test", " https://gitlab.test ",
                        "https://gitlab.test/api/v4/users/42/starred_projects?page=3",
                        "https://api.github.test/user/starred?page=2", "https://api.spotify.test/v1/me/tracks?offset=x"])
TEXTS = st.sampled_from(["", " ", "0", "-1", "2", "9" * 30, "abc", "\u0663", "../..", "a b", "@someone", "did:plc:",
                         "did:plc:abc", "someone.bsky.social", "stackoverflow", "superuser", "t3_", "%00", "\n"])
KEY_JUNK = JUNK | URLS | TEXTS | st.integers(-(2**63), 2**63 - 1) | st.lists(TEXTS | st.integers(), max_size=3)


def options_junk(service: str) -> st.SearchStrategy[Any]:
    keys = ec.OPTION_KEYS[service]
    read = st.dictionaries(st.sampled_from(keys), KEY_JUNK, min_size=1, max_size=len(keys)) if keys else st.nothing()
    return read | st.dictionaries(NESTED_KEYS, JUNK, min_size=1, max_size=2) | JUNK


def cursor_junk(service: str) -> st.SearchStrategy[Any]:
    keys = st.sampled_from(ec.CURSOR_KEYS[service])
    huge = st.builds(lambda n, k: {k: "x" * n}, st.integers(70_000, 300_000), keys)
    return (st.dictionaries(keys, KEY_JUNK, min_size=1, max_size=3)
            | st.builds(lambda valid, junk: {**valid, **junk}, st.sampled_from(ec.valid_cursors(service, "normal")),
                        st.dictionaries(keys, KEY_JUNK, min_size=1, max_size=2))
            | huge | JUNK)


def junk_for(name: str, service: str) -> st.SearchStrategy[Any]:
    """Junk aimed at one field (half the time the generic junk instead: see `documents`)."""
    aimed: dict[str, st.SearchStrategy[Any]] = {
        "user": st.sampled_from(["", " ", False, True, 1.5, [], ["u"], {"id": 1}, None]) | HUGE_STRINGS,
        "service": st.sampled_from(["", "GitHub", f"{service} ", f" {service}", f"{service}\n", "twitter",
                                    "x\x00y", "mastodon", "reddit", service.upper()]) | HUGE_STRINGS,
        "accessToken": st.sampled_from(["", " ", "tok en", "tok\u00e9n", "tok\n", "tok "]) | HUGE_STRINGS,
        "mode": st.sampled_from(["Initial", "NORMAL", "", "deleted", "initial ", None, ["initial"], ["normal", "x"]]),
        "scheduledTo": DATES | st.lists(DATETIMES, min_size=1, max_size=2),
        "cursor": cursor_junk(service),
        "options": options_junk(service),
        "errors": COUNTS, "authFailures": COUNTS, "rateLimitStreak": COUNTS,
        "lease": LEASES, "disabled": TRUTHY, "unauthorized": TRUTHY,
        "failingSince": DATES, "lastExecution": DATES, "lastSuccess": DATES, "parkedAt": DATES, "disabledAt": DATES,
        "rateLimitedUntil": DATES, "tokenRefreshedAt": DATES, "tokenExpiresAt": DATES, "newItemsAt": DATES,
        "pollInterval": COUNTS | st.sampled_from([0.5, -1.0, float("nan"), float("inf"), 1e300, "600"]),
        "stats": st.dictionaries(STAT_KEYS, STAT_VALUES, min_size=1, max_size=3) | STAT_VALUES,
        "slot": COUNTS | STRINGS,
        "lastError": st.dictionaries(st.sampled_from(["kind", "message", "at", "status"]), JUNK, max_size=3) | JUNK,
        "lastOutcome": st.dictionaries(st.sampled_from(["kind", "reason", "items", "new"]), JUNK, max_size=3) | JUNK,
    }
    if name in CREDENTIALS:
        return STRINGS | JUNK
    return aimed.get(name, JUNK)


@st.composite
def documents(draw: st.DrawFn, service: str | None = None, field: str | None = None
              ) -> tuple[dict[str, Any], frozenset[str]]:
    """A valid document of `service` (drawn when None), then 0 to 3 fields (`field` always) dropped or made junk;
    and the names of those fields."""
    service = service or draw(st.sampled_from(SERVICES))
    mode = draw(st.sampled_from(MODES))
    doc = ec.valid_document(service, mode, copy.deepcopy(draw(st.sampled_from(ec.valid_cursors(service, mode)))),
                            token=draw(st.text(alphabet=string.ascii_letters + string.digits + "_-", min_size=8,
                                               max_size=24)))
    doc["scheduledTo"] = T0 - timedelta(seconds=draw(st.integers(0, 10**6)))
    names = draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True))
    if field is not None and field not in names:
        names.append(field)
    for name in names:
        if name in doc and draw(st.integers(0, 4)) == 0:
            del doc[name]
        else:
            doc[name] = draw(junk_for(name, service) if draw(st.booleans()) else JUNK)
    return doc, frozenset(names)


def stuck_lease(doc: dict[str, Any]) -> bool:
    """A well-formed lease of another process that runs out far away: documented as STUCK (collector status), not
    what these properties are about."""
    lease = doc.get("lease")
    return lease is not None and not leases.is_malformed(lease) and lease["until"] > T0 + timedelta(hours=1)


# -- driving -------------------------------------------------------------------------------------------------------


def note(text: str) -> None:
    if currently_in_test_context():
        hypothesis_note(text)


def event(text: str) -> None:
    if currently_in_test_context():
        hypothesis_event(text)


def same_bson(a: Any, b: Any) -> bool:
    return bson.encode({"v": a}) == bson.encode({"v": b})


def daemon_field(name: str) -> bool:
    return name in OWNED or name in ("mode", "cursor", "scheduledTo", "errors", "previousRefreshToken",
                                     "credentialsStamp")


async def matches(e: ec.Engine, network_id: Any, query: dict[str, Any]) -> bool:
    return await e.store.networks.count_documents({"_id": network_id, **query}) == 1


async def settle(e: ec.Engine, ids: list[Any]) -> dict[Any, list[bool]]:
    """Repair, then claim and run whatever is due in both modes, checking each network after each run; then on to
    the next moment a network that is neither successful nor disabled is due, until none is left (or max_errors + 3
    rounds). Per network, whether each of its runs succeeded."""
    runs: dict[Any, list[bool]] = {network_id: [] for network_id in ids}
    for _ in range(MAX_ERRORS + 3):
        await e.store.repair(e.clock.now, MODES)
        for mode in MODES:
            for _ in range(5):  # a network due again at once would come back: check_after_run says so first
                claimed = await e.store.claim_many(mode, "prop", e.clock.now, 60, 10)
                if not claimed:
                    break
                for doc, lease in claimed:
                    result = await e.executor.run(doc, lease)
                    assert result.saved
                    net = await e.store.networks.find_one({"_id": doc["_id"]})
                    runs[doc["_id"]].append(ec.succeeded(net))
                    note(f"run {len(runs[doc['_id']])} of {doc.get('service')!r:.40}: {net.get('lastOutcome')} "
                         f"{net.get('lastError')}")
                    ec.check_after_run(net, e.clock.now)
        dues = []
        for network_id in ids:
            net = await e.store.networks.find_one({"_id": network_id})
            if not (ec.succeeded(net) or await matches(e, network_id, {"disabled": True})) and \
                    isinstance(net.get("scheduledTo"), datetime):
                dues.append(net["scheduledTo"])
        if not dues or min(dues) > T0 + timedelta(days=30):
            break
        e.clock.now = max(min(dues), e.clock.now + timedelta(seconds=61))  # a lease of another process: 30 s
    return runs


async def check_settled(e: ec.Engine, baseline: dict[str, Any], runs: list[bool]) -> dict[str, Any]:
    """Nothing held, and shown disabled or due at a date its mode's due query matches."""
    network_id = baseline["_id"]
    net = await e.store.networks.find_one({"_id": network_id})
    assert not await matches(e, network_id, leases.held(e.clock.now)), "still held by a lease"
    if runs:
        assert "lease" not in net
    shown_disabled = await matches(e, network_id, {"disabled": True})
    due = net.get("scheduledTo")
    claimable = isinstance(due, datetime) and any([await matches(e, network_id, due_filter(m, due)) for m in MODES])
    assert shown_disabled or claimable, f"neither shown disabled nor ever due: {net!r:.600}"
    if net.get("disabled") is True and not same_bson(net.get("disabled"), baseline.get("disabled")):
        assert net["disabledReason"] and net["scheduledTo"] is None and net["lastError"]["message"]
        assert net["lastError"]["kind"] in ec.ERROR_KINDS
    return net


async def drive(doc: dict[str, Any], junked: frozenset[str], witness_service: str) -> None:
    async with ec.engine() as e:
        junk_id = (await e.store.networks.insert_one(copy.deepcopy(doc))).inserted_id
        witness_doc = ec.valid_document(witness_service, user="witness", token="witness_token_0123456789")
        witness_id = (await e.store.networks.insert_one(witness_doc)).inserted_id
        baseline = await e.store.networks.find_one({"_id": junk_id})  # as the database holds it
        witness_base = await e.store.networks.find_one({"_id": witness_id})
        disabled_at_start = await matches(e, junk_id, {"disabled": True})
        note(f"junk in {sorted(junked)}; disabled at start: {disabled_at_start}")

        runs = await settle(e, [junk_id, witness_id])

        net = await check_settled(e, baseline, runs[junk_id])
        kind = net["lastError"].get("kind") if isinstance(net.get("lastError"), dict) else None
        event(f"{'disabled' if net.get('disabled') is True else 'ran' if ec.succeeded(net) else 'other'} ({kind})")
        for name in set(baseline) | set(net):  # what the daemon does not own is never rewritten
            if not daemon_field(name) and name != "_id":
                assert name in baseline and name in net and same_bson(baseline[name], net[name]), name
        if disabled_at_start:  # disabled by whoever wrote it: never run, never rewritten
            assert not runs[junk_id] and same_bson(net, baseline)
        elif junked <= HARMLESS:  # junk only in what the daemon owns: runs at once
            assert runs[junk_id][:1] == [True], f"junk in {sorted(junked)} stopped a valid network"
        # the witness ran as if alone
        wit = await e.store.networks.find_one({"_id": witness_id})
        assert ec.succeeded(wit) and runs[witness_id] and all(runs[witness_id]), wit
        assert await e.store.items.count_documents({"network": witness_id}) == len(ec.IDS)
        for name in witness_base:
            if not daemon_field(name):
                assert same_bson(witness_base[name], wit[name]), name


def witness_of(service: str) -> str:
    """Another connector, on another host."""
    others = [s for s in SERVICES if ec.BASES[s] != ec.BASES.get(service)]
    return others[SERVICES.index(service) % len(others)] if service in SERVICES else SERVICES[0]


# -- properties ----------------------------------------------------------------------------------------------------


def test_every_installed_connector_is_known():
    """A connector installed later (a plugin) must be taught to these properties: its host, options and cursor."""
    assert set(SERVICES) == {name for name, reg in ec.REGISTRY.items() if reg.cls is not None}


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("mode", MODES)
async def test_every_valid_cursor_of_every_connector_runs(service, mode):
    """The baseline of the properties: each valid document runs at once, alone."""
    for cursor in ec.valid_cursors(service, mode):
        async with ec.engine() as e:
            network_id = (await e.store.networks.insert_one(ec.valid_document(service, mode, cursor))).inserted_id
            runs = await settle(e, [network_id])
            net = await e.store.networks.find_one({"_id": network_id})
            assert ec.succeeded(net) and runs[network_id] == [True], (cursor, net)


@pytest.mark.slow
@pytest.mark.parametrize("service", SERVICES)
@settings(**PROFILE, max_examples=25 * SCALE)
@given(data=st.data())
def test_any_field_junk_settles_in_a_documented_state(service, data):
    doc, junked = data.draw(documents(service))
    assume(not stuck_lease(doc))
    asyncio.run(drive(doc, junked, witness_of(service)))


@pytest.mark.slow
@pytest.mark.parametrize("field", FIELDS)
@settings(**PROFILE, max_examples=12 * SCALE)
@given(data=st.data())
def test_each_field_junk_for_any_connector_settles_in_a_documented_state(field, data):
    doc, junked = data.draw(documents(field=field))
    assume(not stuck_lease(doc))
    asyncio.run(drive(doc, junked, witness_of(doc["service"] if doc.get("service") in SERVICES else SERVICES[0])))


# -- the scheduler -------------------------------------------------------------------------------------------------


async def drive_schedulers(batch: list[tuple[dict[str, Any], frozenset[str]]]) -> None:
    async with ec.engine() as e:
        ids = [(await e.store.networks.insert_one(copy.deepcopy(doc))).inserted_id for doc, _ in batch]
        schedulers = await run_schedulers(e.store, e.executor, ec.SETTINGS, e.clock)
        for network_id in ids:
            net = await e.store.networks.find_one({"_id": network_id})
            assert not await matches(e, network_id, leases.held(e.clock.now)), net
            assert "lease" not in net or not str(net.get("lastOwner")).startswith("prop-"), net
            due = net.get("scheduledTo")
            assert await matches(e, network_id, {"disabled": True}) or (
                isinstance(due, datetime) and any([await matches(e, network_id, due_filter(m, due)) for m in MODES]))
        # the schedulers still work: a valid network of every connector added afterwards runs
        added = [await e.store.insert_network(ec.valid_document(service, user=f"after-{service}",
                                                                token="after_the_batch_0001")
                                              | {"scheduledTo": e.clock.now}) for service in SERVICES]
        while await schedulers[0].fill(e.clock.now):
            await asyncio.gather(*list(schedulers[0].inflight))
        for network_id in added:
            net = await e.store.networks.find_one({"_id": network_id})
            assert ec.succeeded(net), net
            assert await e.store.items.count_documents({"network": network_id}) == len(ec.IDS)
        assert all(sched.stats.crashes == 0 for sched in schedulers)


@pytest.mark.slow
@settings(**PROFILE, max_examples=6 * SCALE)
@given(batch=st.lists(documents(), min_size=2 * len(SERVICES), max_size=2 * len(SERVICES)))
def test_a_batch_of_any_junk_of_every_connector_settles_and_the_schedulers_keep_working(batch):
    assume(not any(stuck_lease(doc) for doc, _ in batch))
    asyncio.run(drive_schedulers(batch))


# -- engine bugs these properties found, pinned (fixed in collector/executor.py and collector/operations.py) ---


async def run_alone(doc: dict[str, Any]) -> dict[str, Any]:
    async with ec.engine() as e:
        network_id = (await e.store.networks.insert_one(doc)).inserted_id
        await settle(e, [network_id])
        return await e.store.networks.find_one({"_id": network_id})


# a null counter: MongoDB refuses $inc on a null field (a WriteError that escaped the run, forever): reset
@pytest.mark.parametrize("counter", ["runs", "page"])
async def test_a_null_stats_counter_is_reset_like_any_junk_one(counter):
    net = await run_alone(ec.valid_document("github") | {"stats": {counter: None}})
    assert ec.succeeded(net) and isinstance(net["stats"]["runs"], int)


# a well-formed lease nobody holds any more (a process killed during a run) does not keep the repair away
@pytest.mark.parametrize("fields", [{"mode": None}, {"scheduledTo": None}, {"mode": "sideways"},
                                    {"scheduledTo": "2026-11-25"}], ids=repr)
async def test_a_document_to_repair_beside_a_lease_nobody_holds_is_repaired(fields):
    doc = {**ec.valid_document("github"), **fields, "lease": EXPIRED}
    async with ec.engine() as e:
        network_id = (await e.store.networks.insert_one(doc)).inserted_id
        await settle(e, [network_id])
        net = await e.store.networks.find_one({"_id": network_id})
        assert ec.succeeded(net) or (net.get("disabled") is True and net["disabledReason"]), net
