"""A connector's parse of a large reply runs off the event loop, under the run's deadline: the loop keeps
ticking while it runs, a parse past total_timeout ends the run as a transient failure naming the deadline, and
at most a few parses run at once per process (a thread past its deadline keeps its slot). No timed assertion:
the slow parses below wait for events, or for the loop's own ticks."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import respx
import structlog

from collector import plugins, sdk
from collector.executor import Executor
from collector.offload import PARSE_INLINE_BYTES, Offload, Overdue
from collector.states import Kind
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one

BASE = "https://fake.test"
PADDING = "x" * (PARSE_INLINE_BYTES + 1024)  # makes a reply large enough to be parsed in a thread


class Probe(sdk.Connector):
    """A connector whose parse does what the test puts in `hook` (on the thread that parses), then parses."""

    service = "probe"
    default_base_url = BASE
    hook = staticmethod(lambda: None)

    def request(self, ctx):
        return sdk.Request(f"{self.base_url}/items")

    def parse(self, ctx, response):
        type(self).hook()
        data = response.json()
        return sdk.Page(items=[sdk.Item(id=str(i)) for i in data["items"]], cursor={}, more=False)


REGISTRY = {"probe": plugins.Registered("probe", Probe, "tests", "0")}


@pytest.fixture
async def env(mock_db, clock, rng):
    store = Store(mock_db)
    await store.ensure_indexes()
    settings = make_settings(http={"max_body_bytes": 4 * PARSE_INLINE_BYTES, "total_timeout": 5.0})
    async with httpx.AsyncClient() as client:
        yield store, Executor(store, client, settings, REGISTRY, clock=clock, rng=rng)
    Probe.hook = staticmethod(lambda: None)


async def run(env, clock):
    store, executor = env
    doc = {"user": "u1", "service": "probe", "accessToken": "tok_probe_secret", "mode": "initial",
           "scheduledTo": clock.now, "errors": 0}
    await store.networks.insert_one(doc)
    doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
    return await executor.run(doc, lease)


def reply(padding: str = PADDING) -> httpx.Response:
    return httpx.Response(200, json={"items": [1, 2, 3], "padding": padding})


@respx.mock
async def test_a_large_reply_is_parsed_in_a_thread_while_the_loop_keeps_ticking(env, clock):
    respx.get(f"{BASE}/items").mock(return_value=reply())
    ticks = 0
    seen = {}

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    def slow():  # pure Python until the loop has ticked 5 times (it could not, were the parse on the loop)
        seen["thread"] = threading.current_thread() is not threading.main_thread()
        seen["network"] = structlog.contextvars.get_contextvars().get("network")
        start, give_up = ticks, time.monotonic() + 30
        while ticks < start + 5 and time.monotonic() < give_up:
            pass
        seen["ticked"] = ticks - start

    Probe.hook = staticmethod(slow)
    task = asyncio.create_task(ticker())
    try:
        result = await run(env, clock)
    finally:
        task.cancel()
    assert result.outcome.kind is Kind.PAGE and result.new_items == 3
    assert seen["thread"] and seen["ticked"] >= 5
    assert seen["network"] == str(result.network_id)  # the run's context (log fields, secrets) goes along


@respx.mock
async def test_a_small_reply_is_parsed_inline(env, clock):
    respx.get(f"{BASE}/items").mock(return_value=reply(""))
    seen = {}
    Probe.hook = staticmethod(lambda: seen.setdefault("main", threading.current_thread() is threading.main_thread()))
    result = await run(env, clock)
    assert result.outcome.kind is Kind.PAGE and seen["main"]


@respx.mock
async def test_a_parse_past_the_deadline_is_a_transient_failure_naming_it(env, clock):
    store, executor = env
    executor.settings = make_settings(http={"max_body_bytes": 4 * PARSE_INLINE_BYTES, "total_timeout": 0.3})
    respx.get(f"{BASE}/items").mock(return_value=reply())
    release = threading.Event()
    Probe.hook = staticmethod(lambda: release.wait(30))
    try:
        result = await run(env, clock)
    finally:
        release.set()
    assert result.outcome.kind is Kind.TRANSIENT and result.outcome.error == "timeout"
    assert result.outcome.message.startswith("parsing the reply took over")
    net = await store.networks.find_one({"_id": result.network_id})
    assert net["errors"] == 1 and "parsing the reply took over" in net["lastError"]["message"]


@respx.mock
@pytest.mark.parametrize(("body", "error"), [
    (b'{"items": [' + b" " * (PARSE_INLINE_BYTES + 10), "bad_json"),      # the thread's exception comes back
    (b"[" * 100_000 + b"]" * 100_000, "bad_response"),                     # response.json() past the recursion limit
])
async def test_a_failing_parse_in_a_thread_ends_as_it_would_inline(env, clock, body, error):
    respx.get(f"{BASE}/items").mock(return_value=httpx.Response(200, content=body))
    result = await run(env, clock)
    assert result.outcome.kind is Kind.TRANSIENT and result.outcome.error == error


async def test_at_most_slots_works_run_at_once():
    offload = Offload(2)
    release, full = threading.Event(), threading.Event()
    lock = threading.Lock()
    running = peak = 0

    def work(n):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            if running == 2:
                full.set()
        release.wait(30)
        with lock:
            running -= 1
        return n

    tasks = [asyncio.create_task(offload.run(lambda n=n: work(n), 30, "work")) for n in range(5)]
    await asyncio.to_thread(full.wait, 30)
    release.set()
    assert await asyncio.gather(*tasks) == list(range(5))
    assert peak == 2


async def test_work_past_its_deadline_keeps_its_slot_until_its_thread_ends():
    offload = Offload(1)
    release = threading.Event()
    with pytest.raises(Overdue, match="stuck took over"):
        await offload.run(lambda: release.wait(30), 0.05, "stuck")
    started = []
    with pytest.raises(Overdue):  # the only slot is still held: this work never starts
        await offload.run(lambda: started.append(1), 0.05, "next")
    release.set()
    assert await offload.run(lambda: "done", 30, "after") == "done"
    assert started == []
    with pytest.raises(Overdue, match="no time left"):
        await offload.run(lambda: "late", 0, "late")
