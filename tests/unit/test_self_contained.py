"""The suite reads nothing beside the clone but the replies Likeastore recorded, and only reads those
(tests/conftest.py audits every open); none of them is in the repository."""

import os
import re
from pathlib import Path

import pytest

from tests import conftest
from tests.conftest import FIXTURES, RECORDED_HOME, ROOT, outside_the_clone

SHARED = ROOT.parent / "shared"
READ = os.O_RDONLY | os.O_CLOEXEC  # what open(path) and open(path, "rb") pass


def test_the_recorded_replies_are_read_from_beside_the_clone():
    assert RECORDED_HOME == ROOT.parent / "shared" / "fixtures" / "likeastore"
    assert "COLLECTOR_FIXTURES" in os.environ or FIXTURES == RECORDED_HOME


@pytest.mark.parametrize("mode, flags", [("r", READ), ("rb", READ), (None, os.O_RDONLY)])
def test_a_read_of_the_recorded_replies_is_allowed(mode, flags):
    for name in ("github.connector.init.json", "stackoverflow.connector.init.json.gz"):
        assert not outside_the_clone(str(RECORDED_HOME / name), mode, flags)
    assert not outside_the_clone(RECORDED_HOME / "github.connector.init.json", mode, flags)  # a Path, as pathlib


@pytest.mark.parametrize("mode, flags", [
    ("w", os.O_WRONLY | os.O_CREAT | os.O_TRUNC), ("a", os.O_WRONLY | os.O_CREAT | os.O_APPEND),
    ("r+", os.O_RDWR), ("x", os.O_WRONLY | os.O_CREAT | os.O_EXCL), ("wb", 0), ("r", os.O_WRONLY),
    (None, os.O_RDWR), (None, os.O_WRONLY | os.O_APPEND),
])
def test_a_write_among_the_recorded_replies_is_flagged(mode, flags):
    assert outside_the_clone(str(RECORDED_HOME / "github.connector.init.json"), mode, flags)
    assert outside_the_clone(str(RECORDED_HOME / "new.json"), mode, flags)


@pytest.mark.parametrize("path", [
    SHARED / "DESIGN.md", SHARED / "specs" / "github" / "openapi.json", SHARED / "fixtures" / "other.json",
    SHARED / "fixtures" / "likeastore-copy" / "github.connector.init.json",  # a name that only starts alike
    RECORDED_HOME / ".." / ".." / "DESIGN.md",  # out of the folder again
])
def test_anything_else_in_shared_is_flagged_even_read(path):
    assert outside_the_clone(str(path), "r", READ)
    assert outside_the_clone(str(path), None, os.O_RDONLY)


def test_the_audit_hook_passes_the_open_mode_and_flags_on():
    """What the hook records (the session fails on it): a write there, not a read."""
    target = str(RECORDED_HOME / "github.connector.init.json")
    try:
        conftest._audit("open", (target, "r", READ))
        assert target not in conftest.OUTSIDE
        conftest._audit("open", (target, "w", os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        assert target in conftest.OUTSIDE
    finally:
        conftest.OUTSIDE.discard(target)  # recorded by this test on purpose: not a finding of the session


def test_a_relative_path_counts_where_it_leads():
    if Path.cwd() != ROOT:
        pytest.skip(f"run from {Path.cwd()}, not the clone's root: the relative paths lead elsewhere")
    assert outside_the_clone(os.path.join("..", "shared", "DESIGN.md"), "r", READ)
    assert not outside_the_clone(os.path.join("..", "shared", "fixtures", "likeastore", "x.json"), "r", READ)
    assert outside_the_clone(os.path.join("..", "shared", "fixtures", "likeastore", "x.json"), "w", READ)


def test_the_clone_and_the_system_are_inside():
    assert not outside_the_clone(str(ROOT / "tests" / "fixtures" / "likeastore" / "x.json"), "w", os.O_WRONLY)
    assert not outside_the_clone(str(ROOT / "bench" / "RESULTS.md"), "r", READ)
    assert not outside_the_clone(str(Path("/proc/self/status")))
    assert not outside_the_clone(3)


def test_the_recorded_replies_are_no_longer_in_the_repository():
    assert not (ROOT / "tests" / "fixtures").exists()


@pytest.mark.recorded
def test_no_recorded_reply_is_in_the_repository_under_another_name():
    """Byte for byte, anywhere in the clone but its .git and .venv."""
    recorded = {p.read_bytes() for p in FIXTURES.iterdir() if p.is_file()}
    sizes = {len(body) for body in recorded}
    skip = {".git", ".venv", "node_modules", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache",
            ".hypothesis"}
    found = []
    for top, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in skip]
        for name in files:
            path = Path(top) / name
            if path.is_file() and path.stat().st_size in sizes and path.read_bytes() in recorded:
                found.append(str(path.relative_to(ROOT)))
    assert not found


def test_the_runtime_package_builds_no_path_beside_the_clone():
    """collector/ may say in help and comments where the recordings are; it never builds a path there."""
    quoted = re.compile(r"""["'](\.\./)?shared["'/]""")  # "shared" as a path part, or a path that starts "../shared"
    found = [f"{p.relative_to(ROOT)}: {m.group()}" for p in (ROOT / "collector").rglob("*.py")
             for m in quoted.finditer(p.read_text(errors="replace"))]
    assert not found
    assert quoted.search('ROOT.parent / "shared" / "fixtures"') and quoted.search("'../shared/x'")
