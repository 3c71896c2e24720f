"""The suite reads nothing beside the clone (tests/conftest.py audits every open)."""

from pathlib import Path

from tests.conftest import FIXTURES, ROOT, outside_the_clone


def test_the_audit_tells_the_clone_from_what_is_beside_it():
    assert outside_the_clone(str(ROOT.parent / "shared" / "fixtures" / "likeastore" / "x.json"))
    assert outside_the_clone(str(Path("..") / "shared" / "DESIGN.md")) or not str(Path.cwd()).startswith(str(ROOT))
    assert not outside_the_clone(str(ROOT / "tests" / "fixtures" / "likeastore" / "github.connector.init.json"))
    assert not outside_the_clone(str(Path("/proc/self/status")))
    assert not outside_the_clone(3)


def test_the_recorded_replies_are_inside_the_clone():
    assert FIXTURES.resolve().is_relative_to(ROOT)
    beside = "/".join(("..", "shared"))  # the directory beside the clone the recorded replies once came from
    assert not any(beside in p.read_text(errors="replace") for p in (ROOT / "collector").rglob("*.py"))
