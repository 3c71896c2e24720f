"""A run reads its network document once (collector/model.py `RunNetwork`) and judges its outcome once: the raw
document is never read again after its decode, and `transition` runs once per run, junk from the connector
included (collector/executor.py `_judged`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx

from collector import clock as clock_module
from collector import executor as executor_module
from collector import outbox, plugins, sdk
from collector.clock import ServerClock
from collector.executor import Executor
from collector.model import Malformed, Network, NetworkKey, RunNetwork
from collector.states import Kind
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one

BASE = "https://once.test"
TOKEN = "tok_once_0123456789"
BIG = 2**64 + 5


class Once(sdk.Connector):
    """A page of one item; the reply's `junk` says what the connector puts in its page."""

    service = "once"
    api = "a fake API"
    default_base_url = BASE

    def request(self, ctx):
        return sdk.Request(f"{self.base_url}/items")

    def parse(self, ctx, response):
        junk = response.json()["junk"]
        if junk == "negative_wait":
            raise sdk.RateLimited("slow down", sdk.RateLimit(minimum_wait=-1e300))
        limit = sdk.RateLimit(retry_after="soon") if junk == "limit" else None
        cursor = {"next": BIG} if junk == "cursor" else {"next": 2}
        return sdk.Page(items=[sdk.Item(id="1", title="one")], cursor=cursor, more=True, rate_limit=limit)


REGISTRY = {"once": plugins.Registered("once", Once, "tests", "0")}


class Sealed(dict):
    """A network document that fails any read once its run has decoded it."""

    decoded = False

    def _check(self) -> None:
        assert not self.decoded, "the raw document was read again after its decode"

    def get(self, *args: Any) -> Any:
        self._check()
        return super().get(*args)

    def __getitem__(self, key: Any) -> Any:
        self._check()
        return super().__getitem__(key)

    def __contains__(self, key: Any) -> bool:
        self._check()
        return super().__contains__(key)

    def __iter__(self) -> Any:
        self._check()
        return super().__iter__()

    def items(self) -> Any:
        self._check()
        return super().items()


@pytest.fixture
async def engine(mock_db, clock, rng, monkeypatch):
    """A store with the change feed on (its pointers name the network), an executor, and a count of transitions."""
    store = Store(mock_db, feed=True)
    await store.ensure_indexes()
    transitions = []
    real = executor_module.transition

    def counted(*args: Any, **kwargs: Any) -> Any:
        transitions.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(executor_module, "transition", counted)
    async with httpx.AsyncClient() as client:
        executor = Executor(store, client, make_settings(), REGISTRY, clock=clock, rng=rng)

        async def run(junk: str = "", **fields: Any) -> tuple[Any, dict[str, Any]]:
            await store.networks.insert_one({"user": "u1", "service": "once", "accessToken": TOKEN, "mode": "initial",
                                             "scheduledTo": clock.now, "errors": 0, **fields})
            doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
            with respx.mock() as api:
                api.get(f"{BASE}/items").mock(return_value=httpx.Response(200, json={"junk": junk}))
                result = await executor.run(Sealed(doc), lease)
            return result, await store.networks.find_one({"_id": doc["_id"]})

        yield run, transitions


async def test_a_run_never_reads_its_document_again_after_the_decode(engine, monkeypatch):
    run, transitions = engine
    real = RunNetwork.read.__func__

    def read_then_seal(cls: type[RunNetwork], doc: Any, **how: Any) -> RunNetwork:
        network = real(cls, doc, **how)
        doc.decoded = True
        return network

    monkeypatch.setattr(RunNetwork, "read", classmethod(read_then_seal))
    result, net = await run(stats={"runs": 4, "page": "junk"})
    assert result.saved and result.outcome.kind is Kind.PAGE and result.new_items == 1
    assert net["cursor"] == {"next": 2} and net["stats"] == {"runs": 1, "page": 1, "items": 1}  # junk: started again
    assert [outcome.kind for outcome in transitions] == [Kind.PAGE]


@pytest.mark.parametrize("junk, error, words", [
    ("limit", "connector_error", "invalid outcome from the connector: TypeError"),
    ("negative_wait", "connector_error", "minimum_wait -1e+300 is negative"),
    ("cursor", "store_error", "the new state cannot be stored: OverflowError"),
])
async def test_junk_in_an_outcome_is_judged_before_the_one_transition(engine, junk, error, words):
    run, transitions = engine
    result, net = await run(junk)
    assert result.saved and result.outcome.kind is Kind.TRANSIENT and result.outcome.error == error
    assert net["errors"] == 1 and net["lastError"]["kind"] == error and words in net["lastError"]["message"]
    assert net.get("cursor") is None and "lease" not in net  # the cursor did not move
    assert [outcome.error for outcome in transitions] == [error]  # one transition, of the judged outcome


def test_the_decode_never_raises_and_the_connector_check_keeps_its_order():
    assert RunNetwork.read(["not", "an", "object"]).problem is not None
    junk = RunNetwork.read({"_id": 1, "user": "u", "service": "s", "options": [1], "stats": "x", "errors": -3,
                            "lease": {"id": "L1"}, "mode": "normal"}, label=outbox.label)
    assert junk.errors == 0 and not junk.counters_ok(["runs"]) and junk.lease_id == "L1" and junk.label == "normal"
    assert junk.key == NetworkKey(1, "u", "s") and junk.key.fields() == {"_id": 1, "user": "u", "service": "s"}
    with pytest.raises(Malformed) as missing:  # the credentials are checked before the options, as always
        junk.network(("accessToken",))
    assert missing.value.kind == "missing_credentials"
    with pytest.raises(Malformed, match="'options'"):
        junk.network()
    doc = {"_id": 1, "user": "u", "service": "s", "accessToken": TOKEN, "cursor": {"next": 2}}
    assert Network.from_doc(doc, ("accessToken",)) == RunNetwork.read(doc).network(("accessToken",))
    assert RunNetwork.read({**doc, "stats": {"runs": 3, "page": None}}).counters_ok(["runs", "items"])
    assert not RunNetwork.read({**doc, "stats": {"runs": 3, "page": None}}).counters_ok(["runs", "page"])


def test_the_server_clock_reads_the_host_clock_as_it_is_when_made(monkeypatch):
    """tests/faults/skewed.py shifts collector.clock.utcnow before the daemon starts: a ServerClock made after
    that reads the shifted clock until its first measurement."""
    shifted = datetime(2030, 1, 1, tzinfo=UTC)
    monkeypatch.setattr(clock_module, "utcnow", lambda: shifted)
    assert ServerClock()() == shifted
