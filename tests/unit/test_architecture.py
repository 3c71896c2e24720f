"""The tree tells the architecture: imports run one way, from the entry points down to the configuration,
and the tools (the sandbox API, the demo) sit beside the engine, which imports none of them.

    cli -> app -> fleet/status/metrics -> scheduler -> executor -> store/http/states -> plugins -> sdk -> model
        -> config -> clock/logs

A module may import a module of a lower layer, or of its own layer if that makes no cycle. Every import
counts: at the top of a module, inside a function (a lazy import) and under TYPE_CHECKING.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "collector"

# highest first
LAYERS: list[tuple[str, set[str]]] = [
    ("entry points", {"__main__", "entry", "cli", "secrets_cli", "migrations", "config_cli", "changes_cli",
                      "webhooks_cli"}),
    ("the demo (a tool)", {"demo"}),
    ("the daemon", {"app"}),
    ("fleet and observability", {"fleet", "status", "metrics", "notify", "changes", "webhooks"}),
    ("scheduler", {"scheduler", "observe"}),
    ("executor", {"executor", "reconcile"}),
    ("store, http, states", {"store", "leases", "documents", "operations", "pauses", "processes", "batch",
                             "http", "transport", "states", "offload", "outcomes", "incidents", "refresh", "secrets",
                             "outbox", "items", "removals"}),
    ("plugins", {"plugins"}),  # discovery: the engine's view of the installed connectors
    ("sdk", {"sdk"}),  # the package and its internal modules (sdk._errors, ...)
    ("model", {"model"}),
    ("config", {"config", "config_schema", "selectors", "egress", "webhook_rules"}),
    # every layer reads the clock and logs; they import nothing above (early_stop: signals held while starting)
    ("time and logs", {"clock", "logs", "early_stop"}),
]
TOOLS = ("sandbox", "demo")  # beside the engine: only the entry points and the demo may import them


def modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(p for p in parts if p != "__init__")
        out[name or "__init__"] = path
    return out


def imports(path: Path) -> set[str]:
    """The collector modules `path` imports, as names relative to the package ("store", "sandbox.core")."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "collector":
                found |= {alias.name for alias in node.names}
            elif node.module.startswith("collector."):
                found.add(node.module.removeprefix("collector."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("collector.") for a in node.names if a.name.startswith("collector.")}
    return found


def layer_of(name: str) -> int | None:
    top = name.split(".")[0]
    return next((i for i, (_, members) in enumerate(LAYERS) if top in members), None)


GRAPH = {name: imports(path) for name, path in modules().items()}


def test_every_engine_module_has_a_layer():
    """A new module must be placed: this test is where the architecture is written down."""
    engine = [n for n in GRAPH if n not in ("__init__",) and not n.startswith("sandbox")]
    assert [n for n in engine if layer_of(n) is None] == []


@pytest.mark.parametrize("name", sorted(n for n in GRAPH if layer_of(n) is not None))
def test_imports_go_down_the_layers(name):
    mine = layer_of(name)
    upward = [dep for dep in GRAPH[name] if (layer_of(dep) or 0) < mine and not dep.startswith("sandbox")]
    assert upward == [], f"{name} ({LAYERS[mine][0]}) imports from a higher layer: {upward}"


def test_the_engine_imports_no_tool():
    allowed = {"__main__", "entry", "cli", "demo"}
    offenders = {name: sorted(d for d in deps if d.split(".")[0] in TOOLS)
                 for name, deps in GRAPH.items() if name not in allowed and not name.startswith("sandbox")}
    assert {n: d for n, d in offenders.items() if d} == {}


def test_the_sandbox_imports_nothing_of_the_engine():
    """It emulates third-party APIs: it must not share code (and so bugs) with the client it tests."""
    leaks = {name: sorted(d for d in deps if not d.startswith("sandbox"))
             for name, deps in GRAPH.items() if name.startswith("sandbox")}
    assert {n: d for n, d in leaks.items() if d} == {}


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(GRAPH.get(name, ())):
            if dep not in GRAPH or dep == name:
                continue
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path, name, dep]))
            if dep not in state:
                visit(dep, [*path, name])
        state[name] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from collector.store import Store\n"
                      "def f():\n    from collector import sandbox, config\n    import collector.app\n")
    assert imports(source) == {"store", "sandbox", "config", "app"}
