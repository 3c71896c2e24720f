"""A junk `stats` counter (a field the daemon owns) is started again, on a real server.

mongomock ignores an `$inc` into a string or an object that is not one; MongoDB (and every wire server
the suite has run on) refuses the whole update, so the state save would fail on every run and the network
would repeat forever with no reason recorded. The executor writes a fresh counter object instead.
"""

from __future__ import annotations

import httpx
import pytest
import respx

from collector.executor import Executor
from collector.store import Store
from tests.conftest import make_settings
from tests.harness import claim_one
from tests.integration.conftest import fresh_database
from tests.unit.test_executor import REGISTRY, TOKEN, page


@pytest.mark.parametrize("junk", ["junk", [1, 2], {"runs": "many"}, {"runs": 2**63 - 1}, {"page": True},
                                  {"runs": 1.5}, None, {"runs": 3, "page": 2, "items": 7}])
async def test_a_junk_stats_field_is_started_again_and_the_state_saved(wire_uri, clock, junk):
    settings = make_settings()
    async with fresh_database(wire_uri) as db, httpx.AsyncClient() as client:
        store = Store(db)
        await store.ensure_indexes()
        executor = Executor(store, client, settings, REGISTRY, clock=clock)
        doc = {"user": "u1", "service": "fake", "accessToken": TOKEN, "mode": "initial",
               "scheduledTo": clock.now, "errors": 0}
        if junk is not None:
            doc["stats"] = junk
        await store.networks.insert_one(doc)
        claimed, lease = await claim_one(store, "initial", "me", clock.now, 60)
        with respx.mock() as api:
            api.get("https://fake.test/items").mock(return_value=page(3))
            result = await executor.run(claimed, lease)
        net = await store.networks.find_one({"_id": claimed["_id"]})
    assert result.saved and "lease" not in net and net["mode"] == "normal"
    if junk == {"runs": 3, "page": 2, "items": 7}:  # a sound counter is incremented, never reset
        assert net["stats"] == {"runs": 4, "page": 3, "items": 10}
    else:
        assert net["stats"] == {"runs": 1, "page": 1, "items": 3}
