"""Poison pages, on the wire server: a value BSON cannot hold (JSON integers have no limit: an API may send
2**64) used to make the item insert or the state save raise OverflowError; the run aborted, the lease
expired and the same page ran again every lease_ttl, forever, never counted. Now the items are stored
(the value as its text) and a state that cannot be stored ends as a recorded store_error."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx

from collector import plugins, sdk
from collector.executor import Executor
from collector.states import Kind
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one
from tests.unit.test_executor import REGISTRY, TOKEN

BIG = 2**64 + 5


class Raw(sdk.Connector):
    """Items with their payload stored; the cursor is what the API's `next` says."""

    service = "raw"
    api = "a fake API whose numbers may be past 64 bits"
    default_base_url = "https://raw.test"

    def request(self, ctx):
        return sdk.Request(f"{self.base_url}/items", headers={"Authorization": f"Bearer {ctx.network.token}"})

    def parse(self, ctx, response):
        data = response.json()
        items = [sdk.Item(id=str(x["id"]), title=str(x["id"]), raw=x) for x in data["items"]]
        return sdk.Page(items=items, cursor={"next": data["next"]} if data["next"] else {}, more=bool(data["next"]))


@pytest.fixture
async def run(wire_db, clock):
    store = Store(wire_db)
    await store.ensure_indexes()
    registry = {**REGISTRY, "raw": plugins.Registered("raw", Raw, "tests", "0")}
    async with httpx.AsyncClient() as client:
        executor = Executor(store, client, make_settings(), registry, clock=clock)

        async def go(body: str, user: str = "u1"):
            await store.networks.insert_one({"user": user, "service": "raw", "accessToken": TOKEN, "mode": "initial",
                                             "scheduledTo": clock.now, "errors": 0})
            doc, lease = await claim_one(store, "initial", "me", clock.now, 60)
            with respx.mock() as api:
                api.get("https://raw.test/items").mock(return_value=httpx.Response(
                    200, content=body.encode(), headers={"content-type": "application/json"}))
                result = await executor.run(doc, lease)
            return result, await store.networks.find_one({"_id": doc["_id"]})

        yield store, go


async def test_an_integer_past_64_bits_in_a_payload_is_stored_as_its_text(run):
    store, go = run
    body = f'{{"items": [{{"id": 1, "stars": {BIG}, "deep": [{{"n": -{BIG}}}], "ok": 7}}, {{"id": 2}}], "next": null}}'
    result, net = await go(body)
    assert result.outcome.kind is Kind.PAGE and result.new_items == 2 and result.saved
    assert "lease" not in net and net["mode"] == "normal" and net["errors"] == 0
    item = await store.items.find_one({"itemId": "1"})
    assert item["raw"] == {"id": 1, "stars": str(BIG), "deep": [{"n": str(-BIG)}], "ok": 7}
    assert (await store.items.find_one({"itemId": "2"}))["raw"] == {"id": 2}


async def test_a_state_that_cannot_be_stored_ends_as_a_recorded_store_error(run):
    store, go = run
    result, net = await go(f'{{"items": [{{"id": 1}}], "next": {BIG}}}')
    # the items are kept; the state is a failed run with its reason, the lease released, the cursor not moved
    assert result.saved and result.outcome.kind is Kind.TRANSIENT and result.outcome.error == "store_error"
    assert "lease" not in net and net["errors"] == 1 and net.get("cursor") is None
    assert net["lastError"]["kind"] == "store_error" and "cannot be stored" in net["lastError"]["message"]
    assert await store.items.count_documents({}) == 1


async def test_a_poison_state_does_not_fail_the_saves_it_shares_a_bulk_with(wire_db, clock):
    store = Store(wire_db)
    await store.ensure_indexes()
    registry = {**REGISTRY, "raw": plugins.Registered("raw", Raw, "tests", "0")}
    await store.networks.insert_many([{"user": f"u{i}", "service": "raw", "accessToken": f"{TOKEN}-{i}",
                                       "mode": "initial", "scheduledTo": clock.now, "errors": 0} for i in range(8)])
    claims = await store.claim_many("initial", "me", clock.now, 60, 8)

    def answer(request):
        i = int(request.headers["authorization"].rsplit("-", 1)[1])
        return httpx.Response(200, json={"items": [{"id": i}], "next": BIG if i == 3 else i + 100})

    async with httpx.AsyncClient() as client:
        executor = Executor(store, client, make_settings(), registry, clock=clock)
        with respx.mock() as api:
            api.get("https://raw.test/items").mock(side_effect=answer)
            results = await asyncio.gather(*(executor.run(doc, lease) for doc, lease in claims))
    nets = {net["user"]: net async for net in store.networks.find({})}
    for (doc, _), result in zip(claims, results, strict=True):
        i = int(doc["user"][1:])
        assert result.saved and "lease" not in nets[doc["user"]]
        if i == 3:
            assert result.outcome.error == "store_error" and nets["u3"].get("cursor") is None
        else:
            assert result.outcome.kind is Kind.PAGE and nets[doc["user"]]["cursor"] == {"next": i + 100}
