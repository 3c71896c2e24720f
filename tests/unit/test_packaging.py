"""The distribution: its name, what the wheel holds, and the locks that pin the test and CI install. The quick checks
of what scripts/packaged.py proves in CI on a real wheel in a fresh virtualenv."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from collector import fleet

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
ENVIRONMENT = {"python_version": "3.11", "python_full_version": "3.11.0", "sys_platform": "linux",
               "platform_system": "Linux", "os_name": "posix", "implementation_name": "cpython",
               "platform_python_implementation": "CPython", "platform_machine": "x86_64"}


def test_the_distribution_is_the_name_the_code_and_the_plugin_ask_for():
    assert PYPROJECT["project"]["name"] == fleet.DISTRIBUTION == "collector-daemon"
    plugin = tomllib.loads((ROOT / "examples" / "collector-hackernews" / "pyproject.toml").read_text())
    assert fleet.DISTRIBUTION in plugin["project"]["dependencies"]
    assert PYPROJECT["project"]["scripts"] == {"collector": "collector.entry:main"}


def test_the_wheel_lists_every_package_and_maps_the_connectors_into_collector():
    """packages are listed by hand (the mapping of connectors/ rules out discovery): a new one must be added."""
    found = {".".join(("collector", *path.parent.relative_to(ROOT / "collector").parts))
             for path in (ROOT / "collector").rglob("__init__.py")}
    setuptools = PYPROJECT["tool"]["setuptools"]
    assert set(setuptools["packages"]) == found | {"collector.connectors"}
    assert setuptools["package-dir"] == {"collector.connectors": "connectors"}


def test_every_builtin_connector_is_registered_inside_the_collector_namespace():
    points = PYPROJECT["project"]["entry-points"]["collector.connectors"]
    assert all(target.startswith("collector.connectors.") for target in points.values()), points
    modules = {path.stem for path in (ROOT / "connectors").glob("*.py")} - {"__init__"}
    assert {target.split(":")[0].removeprefix("collector.connectors.") for target in points.values()} == modules


def test_nothing_imports_a_top_level_connectors_package():
    offenders = []
    for folder in ("collector", "connectors", "tests", "bench", "scripts", "examples"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                names = ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for name in names
                              if name == "connectors" or name.startswith("connectors.")]
    assert offenders == []


def pins(lock: str) -> dict[str, str]:
    text = (ROOT / "requirements" / lock).read_text()
    return {canonicalize_name(m[1]): m[2] for m in re.finditer(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", text, re.M)}


@pytest.mark.parametrize(("lock", "extras", "build"), [("test.lock", ("test", "demo"), True),
                                                       ("demo.lock", ("demo",), False)])
def test_the_locks_pin_every_dependency_of_pyproject_within_its_range(lock, extras, build):
    """Fails after a dependency was added or its range moved without scripts/lock.sh."""
    project = PYPROJECT["project"]
    wanted = [*project["dependencies"], *(r for extra in extras for r in project["optional-dependencies"][extra]),
              *(PYPROJECT["build-system"]["requires"] if build else [])]
    pinned = pins(lock)
    stale = []
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(ENVIRONMENT):
            continue
        version = pinned.get(canonicalize_name(req.name))
        if version is None or not req.specifier.contains(version, prereleases=True):
            stale.append(f"{line} (locked: {version})")
    assert stale == [], f"requirements/{lock} is stale: run scripts/lock.sh"
    assert all("--hash=sha256:" in block for block in (ROOT / "requirements" / lock).read_text().split("==")[1:])
