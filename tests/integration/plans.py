"""Reading explain() output of the servers the suite may run on: MongoDB's (queryPlanner.winningPlan, stage
names such as IXSCAN and COLLSCAN) and FerretDB v2 + DocumentDB's (queryPlanner.Plan, PostgreSQL's plan
nodes: "Index Scan" / "Bitmap Index Scan" with an "Index Name", or "Seq Scan"). A server with no `explain`
command (mongo-java-server, the suite's own engine) cannot show a plan: the test is skipped with that reason,
and runs wherever a server has it (MONGODB_URI to a real MongoDB)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import OperationFailure

COMMAND_NOT_FOUND = 59


async def explain(cursor: Any) -> dict[str, Any]:
    """cursor.explain(), or the test skipped when the server has no `explain` command."""
    try:
        return dict(await cursor.explain())
    except OperationFailure as exc:
        if exc.code != COMMAND_NOT_FOUND:
            raise
        pytest.skip(f"NO EXPLAIN: the wire server has no `explain` command ({exc.details.get('errmsg', exc)}), so "
                    "it cannot show which index a query reads; run with MONGODB_URI set to a MongoDB to check it")


def _walk(plan: Any):
    if isinstance(plan, dict):
        yield plan
        for value in plan.values():
            yield from _walk(value)
    elif isinstance(plan, list):
        for value in plan:
            yield from _walk(value)


def scans(explain: dict[str, Any]) -> list[tuple[str, str | None]]:
    """Every scan of the winning plan as (kind, index name): kind "index" or "collection"."""
    planner = explain.get("queryPlanner", explain)
    out: list[tuple[str, str | None]] = []
    if "winningPlan" in planner:  # MongoDB
        for node in _walk(planner["winningPlan"]):
            stage = node.get("stage")
            if stage in ("IXSCAN", "COUNT_SCAN", "DISTINCT_SCAN", "EXPRESS_IXSCAN"):
                out.append(("index", node.get("indexName")))
            elif stage in ("COLLSCAN",):
                out.append(("collection", None))
        return out
    if "Plan" in planner:  # PostgreSQL's plan, as DocumentDB returns it
        for node in _walk(planner["Plan"]):
            kind = node.get("Node Type", "")
            if kind in ("Index Scan", "Index Only Scan", "Bitmap Index Scan"):
                out.append(("index", node.get("Index Name")))
            elif kind in ("Seq Scan", "Parallel Seq Scan", "Sample Scan"):
                out.append(("collection", None))
        return out
    raise AssertionError(f"an explain() format this suite cannot read: keys {sorted(planner)}")


def assert_index_scan(explain: dict[str, Any], index: str) -> None:
    """The plan reads through `index` and scans no collection."""
    found = scans(explain)
    assert ("index", index) in found and ("collection", None) not in found, f"plan scans {found}, not {index!r} alone"
