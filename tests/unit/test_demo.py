"""`collector demo` end to end in one process: sandbox over real HTTP, in-memory database; and its accounting of
every item upstream (stored, or held back for a reason read from the database)."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from collector.demo import UNEXPLAINED, account, run_demo
from collector.sandbox import Sandbox
from collector.store import Store


def accounting_rows(text: str) -> tuple[int, list[tuple[int, str]], int]:
    """The summary's accounting as printed: (upstream, [(items, what)...], the total line's figure)."""
    upstream = int(re.search(r"upstream +([\d,]+) items", text)[1].replace(",", ""))  # type: ignore[index]
    block = text.split("each one stored or held back:\n", 1)[1].splitlines()
    rows = []
    for row in block:
        n, what = row.split(maxsplit=1)
        if what.startswith("= upstream"):
            return upstream, rows, int(n.replace(",", ""))
        rows.append((int(n.replace(",", "")), what))
    raise AssertionError(f"no total line in {block}")


@pytest.mark.slow
async def test_demo_collects_everything_the_sandbox_served_and_accounts_for_every_item_upstream():
    lines: list[str] = []
    assert await run_demo(users=12, cycles=1, time_limit=120, echo=lines.append)
    text = "\n".join(lines)
    assert "normal cycle 1/1" in text and "equal" in text
    assert "networks     normal 11, unauthorized 1, disabled 0" in text  # user003 has a revoked token
    assert "rate_limited" in text and "transient" in text  # the troublemakers did their thing
    seeded = int(re.search(r"seeded \(([\d,]+) items upstream\)", text)[1].replace(",", ""))  # type: ignore[index]
    arrived = int(re.search(r"normal cycle 1/1: (\d+) new items", text)[1])  # type: ignore[index]
    removed = int(re.search(r"new items arrive upstream, (\d+) are removed", text)[1])  # type: ignore[index]
    assert removed > 0 and f"removals     {removed} of the {removed} items removed upstream marked removed" in text
    assert "items.removed" in text and "network.normal" in text  # the feed shows them
    stored = int(re.search(r"items +([\d,]+) stored", text)[1].replace(",", ""))  # type: ignore[index]
    upstream, rows, total = accounting_rows(text)
    assert upstream == total == seeded + arrived - removed  # every item upstream...
    assert sum(n for n, _ in rows) == upstream  # ...is in exactly one row
    assert rows[0] == (stored - removed, "stored")  # the removed ones are stored too, marked removed
    held = dict((what, n) for n, what in rows[1:])
    assert list(held) == ["held back by a revoked token: disabled after a second 401 (user003)"]
    assert held[next(iter(held))] > 0 and "MISMATCH" not in text


async def test_the_accounting_gives_every_missing_item_its_reason_from_the_networks_state(mock_db, clock):
    store, sandbox, now = Store(mock_db), Sandbox(), clock()
    states = {  # user -> (its network's state, how many of its items (oldest first) are stored)
        "ann": ({"mode": "normal"}, 10),
        "bob": ({"mode": "normal", "disabled": True, "unauthorized": True, "disabledReason": "HTTP 401"}, 0),
        "cid": ({"mode": "normal", "unauthorized": True, "authFailures": 1}, 4),
        "dee": ({"mode": "normal", "disabled": True, "disabledReason": "operator: asked to"}, 2),
        "eve": ({"mode": "normal", "rateLimitedUntil": now + timedelta(minutes=5)}, 7),
        "fay": ({"mode": "initial"}, 3),
        "gus": ({"mode": "normal", "errors": 2}, 9),
        "hal": ({"mode": "normal"}, 6),  # 4 newer ones arrived since its last run
        "ivy": ({"mode": "normal", "parkedAt": now}, 1),
    }
    for name, (state, kept) in states.items():
        user = sandbox.add_user("github", f"tok-{name}", items=10, name=name)
        result = await store.networks.insert_one({"user": name, "service": "github", "accessToken": user.token,
                                                  **state})
        oldest = sorted(i["id"] for i in user.items)[:kept]
        if oldest:
            await store.items.insert_many([{"_id": f"{name}:{n}", "network": result.inserted_id,
                                            "itemId": str(n)} for n in oldest])
    acc = await account(store, sandbox, now)
    assert acc.upstream == 90 and acc.stored == 42 and acc.balanced
    assert {reason: dict(by_user) for reason, by_user in acc.held.items()} == {
        "held back by a revoked token: disabled after a second 401": {"bob": 10},
        "held back by a 401 being confirmed": {"cid": 6},
        "network disabled on purpose": {"dee": 8},
        "rate-limited, due at the reset": {"eve": 3},
        "history still being back-filled": {"fay": 7},
        "retrying after an error": {"gus": 1},
        "arrived upstream since its last run, not yet due": {"hal": 4},
        "parked after rate limits in a row": {"ivy": 9},
    }
    assert acc.upstream == acc.stored + sum(n for n, _ in acc.rows()[1:])
    assert acc.rows()[:2] == [(42, "stored"), (10, "held back by a revoked token: disabled after a second 401 (bob)")]


async def test_an_item_missing_for_no_reason_or_stored_from_nowhere_unbalances_the_accounting(mock_db, clock):
    store, sandbox = Store(mock_db), Sandbox()
    user = sandbox.add_user("github", "tok-ann", items=5, name="ann")
    network = (await store.networks.insert_one({"user": "ann", "service": "github", "accessToken": user.token,
                                                "mode": "normal"})).inserted_id
    newest = sorted(i["id"] for i in user.items)[1:]  # the oldest item is missing though newer ones are stored
    await store.items.insert_many([{"_id": f"ann:{n}", "network": network, "itemId": str(n)} for n in newest])
    acc = await account(store, sandbox, clock())
    assert acc.held == {UNEXPLAINED: {"ann": 1}} and acc.stored == 4 and not acc.balanced
    await store.items.insert_one({"_id": "ann:999", "network": network, "itemId": "999"})  # never upstream
    acc = await account(store, sandbox, clock())
    assert acc.strays == 1 and acc.stored == 4 and acc.upstream == 5


async def test_without_the_demo_extra_the_error_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mongomock_motor", None)  # as if `pip install collector-daemon` alone
    lines: list[str] = []
    assert not await run_demo(users=2, cycles=1, time_limit=30, echo=lines.append)
    assert any('pip install "collector-daemon[demo]"' in line for line in lines), lines
