"""Reading explain() output of the engines the suite runs on: MongoDB's (queryPlanner.winningPlan, stage
names such as IXSCAN and COLLSCAN) and FerretDB v2 + DocumentDB's (queryPlanner.Plan, PostgreSQL's plan
nodes: "Index Scan" / "Bitmap Index Scan" with an "Index Name", or "Seq Scan")."""

from __future__ import annotations

from typing import Any


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
